"""The counting service on real (tiny) trained models: every awkward photo, the calibration stored
at training, accuracy-coverage, `best`, and the evaluate command line (reconciliation: tests/test_reconcile.py)."""
from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.counting.service import CountResult, ModelNotFound, load_counter, resolve_experiment
from core.data.images import ImageError, open_image
from core.data.synthetic import bin_photo, write_manifest_collection
from core.store.database import Store
from tests.builders import run_cli


def jpeg(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def counters(trained_store):
    store = Store(trained_store)
    by_family = {}
    for exp in store.experiments("finished"):
        if exp.is_model and exp.family not in by_family:
            by_family[exp.family] = load_counter(exp.id, store)
    return by_family


@pytest.mark.parametrize("family", ["classical", "cnn"])
def test_count_returns_a_consistent_result(counters, family):
    counter = counters[family]
    result = counter.count(jpeg(bin_photo(3, seed=7)))
    assert isinstance(result, CountResult)
    assert len(result.probs) == counter.num_classes == 6
    assert sum(result.probs) == pytest.approx(1, abs=1e-4)
    assert result.count == int(np.argmax(result.probs)) and result.confidence == max(result.probs)
    assert 0 <= result.expected <= 5


@pytest.mark.parametrize("family", ["classical", "cnn"])
def test_awkward_but_valid_photos_are_counted(counters, family):
    counter = counters[family]
    photo = bin_photo(2, seed=3)
    rgba = photo.convert("RGBA")
    sixteen = Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
    frames = [photo, bin_photo(4, seed=4)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 8  # Orientation: the stored pixels are the upright photo turned 90 degrees clockwise
    sources = {
        "png with alpha": png(rgba), "16-bit png": png(sixteen), "cmyk jpeg": jpeg(photo.convert("CMYK")),
        "grayscale": jpeg(photo.convert("L")), "animated gif": gif.getvalue(),
        "exif-rotated": jpeg(photo.rotate(-90, expand=True), exif=exif, quality=95),
    }
    for name, data in sources.items():
        assert isinstance(counter.count(data), CountResult), name
    # The EXIF-rotated photo is decoded upright, so it is counted as the upright one is.
    upright = jpeg(photo, quality=95)
    decoded, expected = open_image(sources["exif-rotated"]), open_image(upright)
    assert decoded.size == expected.size == photo.size
    assert np.abs(np.asarray(decoded, dtype=float) - np.asarray(expected, dtype=float)).mean() < 4
    assert counter.count(sources["exif-rotated"]).count == counter.count(upright).count


BAD = {
    "empty file": b"",
    "not an image": b"%PDF-1.4 definitely not a photo",
    "truncated": jpeg(Image.effect_noise((300, 300), 60).convert("RGB"))[:1500],
    "decompression bomb": png(Image.new("1", (9000, 6000))),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_a_clear_error(counters, name):
    with pytest.raises(ImageError):
        counters["cnn"].count(BAD[name])


def test_batch_counts_the_good_and_reports_the_bad_in_place(counters):
    sources = [jpeg(bin_photo(1, seed=1)), BAD["empty file"], jpeg(bin_photo(4, seed=2)), BAD["not an image"]]
    results = counters["classical"].count_batch(sources, batch_size=2)
    assert [type(r).__name__ for r in results] == ["CountResult", "ImageError", "CountResult", "ImageError"]


def test_weights_are_loaded_without_unpickling_code(counters, trained_store, tmp_path):
    store = Store(trained_store)
    exp = store.experiment(counters["cnn"].exp_id)
    folder = store.artifact_dir(exp.id)
    original = (folder / "model.pt").read_bytes()

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    try:
        (folder / "model.pt").write_bytes(pickle.dumps(Evil()))
        with pytest.raises(pickle.UnpicklingError):
            load_counter(exp.id, store)
        assert not (tmp_path / "pwned").exists()
    finally:
        (folder / "model.pt").write_bytes(original)


def test_unknown_model_is_a_clear_error(trained_store, tmp_path):
    with pytest.raises(ModelNotFound, match="choose one of"):
        resolve_experiment(Store(trained_store), "no-such-model")
    with pytest.raises(ModelNotFound, match="python train.py suite"):
        resolve_experiment(Store(tmp_path / "empty"), "best")


def test_calibration_is_stored_with_the_model_when_it_is_trained(counters, trained_store):
    exp = Store(trained_store).experiment(counters["cnn"].exp_id)
    calibration = exp.calibration
    assert calibration.method in ("none", "temperature", "temperature+bias") and calibration.temperature > 0
    assert counters["cnn"].members[0].calibration == calibration  # loading only reads it
    nll = calibration.nll_by_method  # chosen on held-out halves of the validation photos
    assert nll[calibration.method] <= min(nll.values()) + 1e-3
    assert calibration.n_fit == exp.val_metrics.n
    assert sum(calibration.fit_prior) == pytest.approx(1, abs=1e-4) and calibration.shown_prior == "uniform"
    coverage, accuracy = calibration.coverage, calibration.coverage_accuracy
    assert list(coverage) == sorted(coverage) and coverage[-1] == 1.0
    assert accuracy[-1] == pytest.approx(exp.metrics.accuracy, abs=1e-3)


def odd_photos() -> dict[str, bytes]:
    """The uploads of issue #18 whose count contradicted their bars: an animated GIF, a grayscale
    JPEG and a 16-bit PNG (from the awkward batch the dashboard tests upload)."""
    from tests.builders import awkward_batch

    files, _, _ = awkward_batch()
    return {name: data for name, data, _ in files if name in ("animated.gif", "grey.jpg", "sixteen-bit.png")}


@pytest.mark.parametrize("family", ["classical", "cnn"])
@pytest.mark.parametrize("prior", ["uniform", "natural", "batch"])
def test_the_count_shown_is_the_most_probable_count_of_the_probabilities_shown(counters, family, prior):
    counter = counters[family].with_prior(prior)
    photos = odd_photos()
    assert len(photos) == 3
    for result in [*map(counter.count, photos.values()), *counter.count_batch(list(photos.values()))]:
        assert isinstance(result, CountResult)
        assert result.count == int(np.argmax(result.probs)) and result.confidence == max(result.probs)
        assert sum(result.prior) == pytest.approx(1, abs=1e-4)
    if prior != "batch":  # a fixed prior: the same photo shows the same, alone or in a batch
        alone = [counter.count(data).probs for data in photos.values()]
        together = [r.probs for r in counter.count_batch(list(photos.values()))]
        np.testing.assert_allclose(alone, together, atol=1e-5)


def test_the_stated_prior_only_reweighs_the_same_likelihoods(counters):
    counter = counters["cnn"]
    photo = jpeg(bin_photo(3, seed=21))
    uniform, natural = counter.count(photo), counter.with_prior("natural").count(photo)
    likelihood = np.array(uniform.probs)
    expected = likelihood * natural.prior / (likelihood * natural.prior).sum()
    np.testing.assert_allclose(natural.probs, expected, atol=1e-4)
    assert uniform.prior == pytest.approx([1 / 6] * 6, abs=1e-6)
    with pytest.raises(ValueError, match="unknown prior"):
        counter.with_prior("optimistic")


def test_stored_predictions_show_the_most_probable_count(counters, trained_store):
    store = Store(trained_store)
    for counter in counters.values():
        preds = store.predictions(counter.exp_id)
        assert not preds.empty
        assert (preds["pred_count"] == preds["probs"].map(np.argmax)).all()


def test_count_cli_prints_the_most_probable_count_of_the_probabilities_it_prints(counters, trained_store, tmp_path):
    paths = []
    for name, data in odd_photos().items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    model = counters["cnn"].exp_id
    for prior in ("uniform", "natural", "batch"):
        run = run_cli("count", *paths, "--model", model, "--prior", prior, store=trained_store)
        assert run.returncode == 0, run.stderr
        assert f"under the {prior} prior" in run.stderr
        assert ("Every count alike: 3 photos are too few to estimate their mix" in run.stderr) == (prior == "batch")
        lines = run.stdout.strip().splitlines()
        assert len(lines) == 3
        counter = counters["cnn"].with_prior(prior)
        for path, line in zip(paths, lines, strict=True):
            shown = int(line.split(": ", 1)[1].split(" items")[0])
            probs = [float(part.split(": ")[1].rstrip("%)")) for part in line.split("; ", 1)[1].split(", ")]
            assert probs[shown] == max(probs) and shown == counter.count(Path(path)).count, line  # (ties: as printed)


def test_loading_a_model_writes_nothing(counters, trained_store):
    before = (trained_store / "experiments.sqlite").read_bytes()
    load_counter("best", Store(trained_store))
    assert (trained_store / "experiments.sqlite").read_bytes() == before


def test_evaluate_cli_scores_only_the_test_split_of_the_models_own_collection(trained_store):
    data = trained_store.parent / "data"
    run = run_cli("evaluate", "--model", "best", "--data", str(data), store=trained_store)
    assert run.returncode == 0, run.stderr
    assert "best = highest validation balanced accuracy" in run.stderr
    report = json.loads(run.stdout)
    store = Store(trained_store)
    split = store.split(report["model"])
    assert report["scope"] == "test split" and report["n"] == (split["split"] == "test").sum() < 36
    assert len(report["per_class_accuracy"]) == 6 and np.array(report["confusion_matrix"]).sum() == report["n"]
    for key in ("accuracy", "balanced_accuracy", "rmse"):
        lo, hi = report["intervals"][key]
        assert isinstance(report[key], float) and lo <= report[key] <= hi
    assert report["accuracy"] == pytest.approx(store.experiment(report["model"]).metrics.accuracy)
    stored_task = store.experiment(report["model"]).metrics.paper_task  # stored with the run
    assert report["paper_task"]["accuracy"] == pytest.approx(stored_task.accuracy)
    assert report["paper_task"]["n"] == stored_task.n


def test_evaluate_cli_scores_every_photo_of_another_collection(trained_store, tmp_path):
    other = write_manifest_collection(tmp_path / "other", per_class=2)
    for count in range(6):  # one photo of each count as the natural-mix source keeps them: 224 x 224 px
        photo = other / "images" / f"c{count}_0.jpg"
        Image.open(photo).resize((224, 224)).save(photo, quality=90)
    run = run_cli("evaluate", "--model", "best", "--data", str(other), store=trained_store,
               ABID_DATA=str(trained_store.parent / "data"))  # the data in use: where the models were trained
    assert run.returncode == 0, run.stderr
    assert f"among finished models on {trained_store.parent / 'data'}" in run.stderr
    report = json.loads(run.stdout)
    assert report["scope"] == "all photos" and report["n"] == 12 and report["prior"] == "uniform"
    # the paper's task beside the product's answer (a 0..5 model: the same photos and answers)
    task = report["paper_task"]
    assert task["n"] == 12 and task["accuracy"] == pytest.approx(report["accuracy"])
    assert all(lo <= task[k] <= hi for k, (lo, hi) in task["intervals"].items())
    # per source: the 224 px photos and the originals, each with its figures, its paper's task and ECE per prior
    sources = report["by_source"]
    assert set(sources) == {"224 px natural mix", "originals"}
    assert sources["224 px natural mix"]["photos"] == sources["originals"]["photos"] == 6
    for figures in (report, *sources.values()):
        assert set(figures["ece_by_prior"]) == {"uniform", "natural", "batch"}
        assert figures["ece_by_prior"]["uniform"] == pytest.approx(figures["ece"], abs=1e-4)
        assert figures["paper_task"]["n"] == figures["n"] and "intervals" in figures
    natural = run_cli("evaluate", "--model", "best", "--data", str(other), "--prior", "natural", store=trained_store,
                      ABID_DATA=str(trained_store.parent / "data"))
    assert natural.returncode == 0, natural.stderr
    report_natural = json.loads(natural.stdout)
    assert report_natural["prior"] == "natural"
    assert report_natural["ece"] == pytest.approx(report["ece_by_prior"]["natural"], abs=1e-4)
    assert "batch_mix" not in report_natural
    batch = run_cli("evaluate", "--model", "best", "--data", str(other), "--prior", "batch", store=trained_store,
                    ABID_DATA=str(trained_store.parent / "data"))
    assert batch.returncode == 0, batch.stderr
    assert "Every count alike: 12 photos are too few to estimate their mix" in batch.stderr  # said, with why
    report_batch = json.loads(batch.stdout)
    assert report_batch["batch_mix"]["photos"] == 12 and report_batch["batch_mix"]["fallback"]
    assert report_batch["batch_mix"]["mix"] == pytest.approx([1 / 6] * 6)


def test_cli_without_models_says_how_to_train(tmp_path):
    run = run_cli("evaluate", "--data", str(tmp_path), store=tmp_path / "empty")
    assert run.returncode != 0 and "train.py suite" in run.stderr
