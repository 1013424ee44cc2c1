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

from core.images import ImageError, open_image
from core.predict import CountResult, ModelNotFound, load_counter, resolve_experiment
from core.store import Store
from tests.builders import bin_photo, run_cli, write_manifest_collection


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
    assert calibration["method"] in ("none", "temperature", "temperature+bias") and calibration["temperature"] > 0
    assert counters["cnn"].calibration == calibration  # loading only reads it
    nll = calibration["nll_by_method"]  # chosen on held-out halves of the validation photos
    assert nll[calibration["method"]] <= min(nll.values()) + 1e-3
    assert calibration["n_fit"] == exp.val_metrics.n
    assert sum(calibration["class_prior"]) == pytest.approx(1, abs=1e-4)
    coverage, accuracy = calibration["coverage"], calibration["coverage_accuracy"]
    assert coverage == sorted(coverage) and coverage[-1] == 1.0
    assert accuracy[-1] == pytest.approx(exp.metrics.accuracy, abs=1e-3)


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


def test_evaluate_cli_scores_every_photo_of_another_collection(trained_store, tmp_path):
    other = write_manifest_collection(tmp_path / "other", per_class=2)
    run = run_cli("evaluate", "--model", "best", "--data", str(other), store=trained_store,
               ABID_DATA=str(trained_store.parent / "data"))  # the data in use: where the models were trained
    assert run.returncode == 0, run.stderr
    assert f"among finished models on {trained_store.parent / 'data'}" in run.stderr
    report = json.loads(run.stdout)
    assert report["scope"] == "all photos" and report["n"] == 12


def test_cli_without_models_says_how_to_train(tmp_path):
    run = run_cli("evaluate", "--data", str(tmp_path), store=tmp_path / "empty")
    assert run.returncode != 0 and "train.py suite" in run.stderr
