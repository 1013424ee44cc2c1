"""The counting service on real (tiny) trained models: every awkward photo, calibration,
accuracy-coverage, and the evaluate command line (reconciliation: tests/test_reconcile.py)."""
from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.calibration import apply_temperature, calibrated_predictions, calibration_summary, fit_temperature
from core.config import PROJECT_ROOT
from core.images import ImageError
from core.metrics import expected_calibration_error
from core.predict import CountResult, ModelNotFound, load_counter, resolve_experiment
from core.store import Store
from tests.conftest import bin_photo
from tests.dashboard_fixtures import trained_store  # noqa: F401  (session fixture: real tiny runs)


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
        if exp["family"] in ("classical", "cnn") and exp["family"] not in by_family:
            by_family[exp["family"]] = load_counter(exp["id"], store)
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
    sixteen = Image.fromarray((np.asarray(photo.convert("L"), dtype=np.uint16) * 257))
    frames = [photo, bin_photo(4, seed=4)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 8
    sources = {
        "png with alpha": png(rgba), "16-bit png": png(sixteen), "cmyk jpeg": jpeg(photo.convert("CMYK")),
        "grayscale": jpeg(photo.convert("L")), "animated gif": gif.getvalue(),
        "exif-rotated": jpeg(photo.rotate(-90, expand=True), exif=exif),
    }
    for name, data in sources.items():
        assert isinstance(counter.count(data), CountResult), name
    # The EXIF-rotated photo is counted exactly as the upright one.
    upright = counter.count(png(photo))
    rotated = counter.count(png(photo.rotate(-90, expand=True).rotate(90, expand=True)))
    assert upright.count == rotated.count


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
    folder = store.artifact_dir(exp["id"])
    original = (folder / "model.pt").read_bytes()

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    try:
        (folder / "model.pt").write_bytes(pickle.dumps(Evil()))
        with pytest.raises(pickle.UnpicklingError):
            load_counter(exp["id"], store)
        assert not (tmp_path / "pwned").exists()
    finally:
        (folder / "model.pt").write_bytes(original)


def test_unknown_model_is_a_clear_error(trained_store, tmp_path):
    with pytest.raises(ModelNotFound, match="choose one of"):
        resolve_experiment(Store(trained_store), "no-such-model")
    with pytest.raises(ModelNotFound, match="python train.py suite"):
        resolve_experiment(Store(tmp_path / "empty"), "best")


def test_calibration_is_stored_with_the_model(counters, trained_store):
    exp = Store(trained_store).experiment(counters["cnn"].exp_id)
    calibration = exp["details"]["calibration"]
    assert calibration["temperature"] == counters["cnn"].temperature > 0
    assert calibration["ece_val_after"] <= calibration["ece_val_before"] + 1e-9
    coverage, accuracy = calibration["coverage"], calibration["coverage_accuracy"]
    assert coverage == sorted(coverage) and coverage[-1] == 1.0
    assert accuracy[-1] == pytest.approx(exp["metrics"]["accuracy"], abs=1e-3)


def test_temperature_scaling_does_not_worsen_held_out_ece():
    """An overconfident model (true accuracy ~60%, stated ~95%): scaling fitted on one half helps the other."""
    rng = np.random.default_rng(0)

    def sample(n):
        y = rng.integers(0, 6, n)
        logits = rng.normal(0, 1, (n, 6))
        right = rng.random(n) < 0.6
        pred = np.where(right, y, (y + rng.integers(1, 6, n)) % 6)
        logits[np.arange(n), pred] += 4.0
        return np.exp(logits) / np.exp(logits).sum(1, keepdims=True), y

    (val_p, val_y), (test_p, test_y) = sample(800), sample(800)
    summary = calibration_summary(val_p, val_y, test_p, test_y)
    assert summary["temperature"] > 1  # overconfident -> softened
    assert summary["ece_val_after"] < summary["ece_val_before"]
    assert summary["ece_test_after"] < summary["ece_test_before"] / 2
    scaled = apply_temperature(test_p, summary["temperature"])
    assert expected_calibration_error(scaled, test_y) == pytest.approx(summary["ece_test_after"])
    assert (scaled.argmax(1) == test_p.argmax(1)).all()  # scaling never changes the count


def _cli(*args: str, store: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          env={"BINSIGHT_STORE": str(store), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_evaluate_cli_prints_one_json_object(trained_store):
    data = trained_store.parent / "data"
    run = _cli("evaluate", "--model", "best", "--data", str(data), store=trained_store)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["n"] == 36 and len(report["per_class_accuracy"]) == 6
    assert np.array(report["confusion_matrix"]).sum() == 36
    for key in ("accuracy", "balanced_accuracy", "rmse"):
        assert isinstance(report[key], float)


def test_cli_without_models_says_how_to_train(tmp_path):
    run = _cli("evaluate", "--data", str(tmp_path), store=tmp_path / "empty")
    assert run.returncode != 0 and "train.py suite" in run.stderr


def test_a_temperature_that_worsens_validation_ece_is_not_used():
    """Five validation photos: the log-loss optimum (T ~ 3.8) would raise ECE from 0.18 to 0.27,
    so the model keeps temperature 1."""
    probs = np.array([[0.485, 0.01, 0.505], [0.03, 0.29, 0.68], [0.49, 0.17, 0.34],
                      [0.03, 0.495, 0.475], [0.01, 0.91, 0.08]])
    y = np.array([1, 2, 0, 2, 1])
    fitted = fit_temperature(probs, y)
    assert fitted > 3 and expected_calibration_error(apply_temperature(probs, fitted), y) > \
        expected_calibration_error(probs, y)
    summary = calibration_summary(probs, y, probs, y)
    assert summary["temperature"] == 1.0
    assert summary["ece_val_after"] == pytest.approx(summary["ece_val_before"])


def test_pages_show_calibrated_test_predictions(counters, trained_store):
    """The dashboard's per-photo confidences match what the counting service would say."""
    store = Store(trained_store)
    exp = store.experiment(counters["cnn"].exp_id)
    raw = store.predictions(exp["id"])
    shown = calibrated_predictions(raw, exp)
    expected = apply_temperature(np.array(raw["probs"].tolist()), counters["cnn"].temperature)
    assert np.allclose(np.array(shown["probs"].tolist()), expected, atol=1e-5)
    assert (np.array(shown["probs"].tolist()).argmax(1) == shown["pred_count"]).all()
    assert np.allclose(shown["confidence"], expected.max(1))
    assert calibrated_predictions(raw, {**exp, "details": {}}) is raw  # never calibrated: shown as stored
