"""Labels you can trust: suspect labels by confident learning, reviewed on the same mechanism as
recounts; the curation file changes what is trained on, never what is scored."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.classical import ClassicalConfig, train_classical
from core.data.curation import read_curation
from core.data.dataset import prepare_dataset
from core.data.synthetic import write_abid_collection
from core.reconcile.review import Review, history, record_review
from core.reconcile.suspects import subject, suspect_labels, write_curation
from core.store.database import Store
from tests.builders import CLASSICAL_TINY, open_page


def test_confident_learning_puts_the_confidently_contradicted_labels_first():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 25)
    probs = np.full((100, 4), 0.02)
    probs[np.arange(100), labels] = 0.94
    probs += rng.random((100, 4)) * 0.01
    flipped = [3, 40, 77]
    for i in flipped:  # the model is sure of another count
        probs[i] = np.roll(probs[i], 1)
    probs /= probs.sum(axis=1, keepdims=True)
    predictions = pd.DataFrame({"image_id": [f"p{i}" for i in range(100)], "path": "", "true_count": labels,
                                "probs": list(probs.tolist())})
    found = suspect_labels(predictions)
    assert 2 <= len(found) and set(found["image_id"]) <= {f"p{i}" for i in flipped}  # no clean label listed
    assert (found["suspected"] == (found["label"] + 1) % 4).all()
    with pytest.raises(ValueError, match="held-out photos"):
        suspect_labels(predictions.iloc[:0])


@pytest.fixture
def curated(tmp_path):
    """ABID-layout data, and label reviews of three photos: one of the train split relabelled, one
    excluded, and one of the test split relabelled (a test figure must not see it)."""
    data = write_abid_collection(tmp_path / "data", [count for count in range(6) for _ in range(6)])
    store = Store(tmp_path / "store")
    plain = prepare_dataset(data, image_size=32, store_root=store.root, progress=False, open_top=True)
    train, test = plain.split("train"), plain.split("test")
    relabel, exclude, scored = train.iloc[0], train.iloc[1], test.iloc[0]
    where = subject(data)
    record_review(store, Review("label", where, relabel["image_id"], "relabel", "ann", (relabel["count"] + 1) % 6))
    record_review(store, Review("label", where, exclude["image_id"], "exclude", "ann", note="taped"))
    record_review(store, Review("label", where, scored["image_id"], "relabel", "ann", (scored["count"] + 2) % 6))
    record_review(store, Review("label", where, train.iloc[2]["image_id"], "label_right", "bob"))
    return data, store, plain, relabel, exclude, scored


def test_the_curation_file_holds_the_latest_decisions(curated):
    data, store, _, relabel, exclude, scored = curated
    path = write_curation(store, data)
    assert path is not None and path.parent == store.root / "curation"
    decisions = read_curation(path)
    assert decisions == {relabel["image_id"]: (relabel["count"] + 1) % 6, exclude["image_id"]: None,
                         scored["image_id"]: (scored["count"] + 2) % 6}  # "label right" changes nothing
    assert len(history(store, "label", subject(data))) == 4


def test_cleaning_changes_only_what_is_trained_on_never_what_is_scored(curated):
    data, store, plain, relabel, exclude, scored = curated
    path = write_curation(store, data)
    cleaned = prepare_dataset(data, image_size=32, store_root=store.root, progress=False, open_top=True,
                              curation=path)
    train = cleaned.split("train").set_index("image_id")
    assert train.loc[relabel["image_id"], "count"] == (relabel["count"] + 1) % 6
    assert exclude["image_id"] not in train.index
    assert len(train) == len(plain.split("train")) - 1
    for name in ("val", "test"):  # every photo, with its original label
        pd.testing.assert_frame_equal(cleaned.split(name), plain.split(name))
    pd.testing.assert_frame_equal(cleaned.table, plain.table)  # out-of-fold pools read the table: originals
    assert cleaned.fingerprint != plain.fingerprint  # another training set, another experiment key

    tiny = ClassicalConfig("raw", "logreg", grid={"C": [1]}, **CLASSICAL_TINY)
    with_cleaning = train_classical(data, tiny, store, n_jobs=1, progress=False, curation=path)
    without = train_classical(data, tiny, store, n_jobs=1, progress=False)
    assert with_cleaning != without
    for split in ("test", "val"):
        a = store.predictions(with_cleaning, split).set_index("image_id")["true_count"].sort_index()
        b = store.predictions(without, split).set_index("image_id")["true_count"].sort_index()
        pd.testing.assert_series_equal(a, b)  # scored on the same photos, with the same labels
    test_labels = store.predictions(with_cleaning, "test").set_index("image_id")["true_count"]
    assert test_labels[scored["image_id"]] == scored["count"]  # the relabelled test photo scores as recorded


def test_the_suspect_labels_page_records_a_decision(tmp_path, monkeypatch):
    data = write_abid_collection(tmp_path / "data", [count for count in range(6) for _ in range(8)])
    store = Store(tmp_path / "store")
    monkeypatch.setenv("BINSIGHT_STORE", str(store.root))
    assert "train.py suite" in open_page("suspect_labels").code[0].value  # what makes the page's model
    train_classical(data, ClassicalConfig("raw", "logreg", grid={"C": [1]}, cv=2, **CLASSICAL_TINY), store,
                    n_jobs=1, progress=False)
    at = open_page("suspect_labels")
    photo = at.selectbox(key="s-photo").value
    at.radio(key=f"s-outcome-{photo}").set_value("relabel")
    at.number_input(key=f"s-count-{photo}").set_value(4)
    next(b for b in at.button if b.label == "Record").click()
    at.run()
    assert not at.exception
    entries = history(store, "label", subject(data), photo)
    assert entries["outcome"].tolist() == ["relabel"] and entries["count"].tolist() == [4]
    assert read_curation(write_curation(store, data)) == {photo: 4}


def test_suspects_come_from_photos_the_model_never_trained_on(tmp_path):
    """A single model's validation and test photos; a cross-validated one's out-of-fold and test photos."""
    from core.reconcile.suspects import held_out_predictions

    data = write_abid_collection(tmp_path / "data", [count for count in range(6) for _ in range(8)])
    store = Store(tmp_path / "store")
    for cv in (0, 2):
        train_classical(data, ClassicalConfig("raw", "logreg", grid={"C": [1]}, cv=cv, **CLASSICAL_TINY), store,
                        n_jobs=1, progress=False)
    single, crossed = sorted(store.experiments("finished"), key=lambda e: e.folds)
    for exp, splits in ((single, ("val", "test")), (crossed, ("oof", "test"))):
        held = held_out_predictions(store, exp)
        logged = store.split(exp.id)
        assert held.splits == splits
        assert sorted(held.predictions["image_id"]) == sorted(logged[logged["split"].isin(splits)]["image_id"])
        assert "train" not in set(logged[logged["image_id"].isin(held.predictions["image_id"])]["split"])
    assert "validation and test" in held_out_predictions(store, single).described
    assert "out-of-fold" in held_out_predictions(store, crossed).described
