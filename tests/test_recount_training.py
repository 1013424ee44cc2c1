"""Recounts become labels: the store's recounts collection, laid over the training data."""
from __future__ import annotations

import pandas as pd
import pytest

import core.classical.experiment as classical_experiment
from core.classical import ClassicalConfig
from core.data.collection import CONTENT_GROUP, load_collection
from core.data.dataset import prepare_dataset
from core.data.synthetic import bin_jpeg, write_abid_collection
from core.reconcile.batches import batch_settings, save_report
from core.reconcile.inventory import REPORT_COLUMNS
from core.reconcile.recount_labels import write_recounts_collection
from core.reconcile.review import Review, record_review
from core.store.database import Store
from core.store.files import file_hash
from tests.builders import CLASSICAL_TINY

TINY = ClassicalConfig("raw", "logreg", grid={"C": [1]}, **CLASSICAL_TINY)


class Counter:  # what `batch_settings` reads of a counter
    num_classes = 7
    exp = type("Exp", (), {"open_top": True, "num_classes": 7})()


def folder_batch(store: Store, photos: dict[str, tuple[str, int]]) -> str:
    """A batch of folder photos {key: (path, recorded)}, kept by path and content hash."""
    report = pd.DataFrame([{"image": key, "recorded_quantity": recorded, "predicted_count": recorded,
                            "expected_count": float(recorded), "confidence": 0.5, "p_recorded": 0.5,
                            "p_mismatch": 0.6, "mismatch": True, "note": "", "error": "", "probs": [1 / 7] * 7}
                           for key, (_, recorded) in photos.items()], columns=REPORT_COLUMNS)
    sources = {key: (key.split("/")[-1].split(".")[0], path, file_hash(path), "") for key, (path, _) in photos.items()}
    return save_report(store, report, model="m", model_name="tiny", settings=batch_settings(Counter, 0.2, 0.5, None),
                       sources=sources)


@pytest.fixture
def recounted(tmp_path):
    """ABID-layout data (six photos of each count 0..5); a label-2 photo of its train split recounted
    to 3 (after a first recount of 4 that was corrected), and a photo the data lacks recounted to 1."""
    data = write_abid_collection(tmp_path / "data", [count for count in range(6) for _ in range(6)])
    store = Store(tmp_path / "store")
    plain = prepare_dataset(data, image_size=32, store_root=store.root, progress=False, open_top=True)
    two = plain.table[(plain.table["count"] == 2) & (plain.table["split"] == "train")].iloc[0]
    extra = tmp_path / "elsewhere" / "new-bin.jpg"
    extra.parent.mkdir()
    extra.write_bytes(bin_jpeg(1, seed=9999))
    batch = folder_batch(store, {"bin-images/" + two["image_id"] + ".jpg": (two["path"], 2),
                                 "new-bin.jpg": (str(extra), 4)})
    key = "bin-images/" + two["image_id"] + ".jpg"
    record_review(store, Review("recount", batch, key, "recounted", "ann", 4))
    record_review(store, Review("recount", batch, key, "recounted", "bob", 3, note="corrected"))
    record_review(store, Review("recount", batch, "new-bin.jpg", "recounted", "ann", 1))
    return data, store, two, plain


def test_recounts_form_a_manifest_collection_with_their_ids_and_content_groups(recounted):
    _, store, two, _ = recounted
    folder = write_recounts_collection(store)
    table = load_collection(folder, items=False).table.set_index("image_id")
    assert table.loc[two["image_id"], "count"] == 3  # the latest recount, keeping the ABID id
    assert table.loc["new-bin", "count"] == 1
    assert table.loc[two["image_id"], "group"] == CONTENT_GROUP + file_hash(two["path"])


def test_a_photo_labelled_2_and_recounted_3_trains_as_3(recounted, monkeypatch):
    data, store, two, plain = recounted
    seen = []

    def spy(*args, **kwargs):
        seen.append(prepare_dataset(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(classical_experiment, "prepare_dataset", spy)
    exp_id = classical_experiment.train_classical(data, TINY, store, n_jobs=1, progress=False,
                                                  recounts=write_recounts_collection(store))
    trained = seen[0].table.set_index("image_id")
    assert trained.loc[two["image_id"], "count"] == 3 and trained.loc[two["image_id"], "split"] == "train"
    assert trained.loc["new-bin", "count"] == 1  # a recounted photo the data lacked is added
    assert len(trained) == len(plain.table) + 1
    others = trained.drop(index=[two["image_id"], "new-bin"])
    assert (others["count"] == plain.table.set_index("image_id").loc[others.index, "count"]).all()
    exp = store.experiment(exp_id)
    assert exp.recounted_photos == 2
    split = store.split(exp_id).set_index("image_id")["split"]
    assert split[two["image_id"]] == "train" and "new-bin" in split.index
    assert exp.config_key != store.experiment(classical_experiment.train_classical(
        data, TINY, store, n_jobs=1, progress=False)).config_key  # other labels, other key


def test_the_cli_trains_with_recounts_and_the_overview_shows_how_many(recounted, monkeypatch):
    from tests.builders import open_page

    data, store, _, _ = recounted
    import train

    train.main(["classical", "--features", "raw", "--model", "logreg", "--grid", '{"C": [1]}', "--image-size", "32",
                "--feature-params", '{"size": 32}', "--folds", "3", "--jobs", "1", "--quiet", "--data", str(data),
                "--with-recounts", "--store", str(store.root)])
    assert [e.recounted_photos for e in store.experiments()] == [2]
    monkeypatch.setenv("BINSIGHT_STORE", str(store.root))
    board = open_page("overview").dataframe[0].value
    assert board["recounted photos"].tolist() == [2]
