"""Calibration maps chosen by cross-fitting: overconfidence softened, shifted class priors corrected,
nothing forced on probabilities that are already right."""
from __future__ import annotations

import numpy as np
import pytest

from core.calibration import apply_calibration, decide, fit_calibration, fit_map, summary_on_test
from core.metrics import expected_calibration_error


def overconfident(n: int, seed: int, prior=None) -> tuple[np.ndarray, np.ndarray]:
    """True accuracy ~60%, stated ~95%; with `prior`, also biased towards some counts."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 6, n)
    logits = rng.normal(0, 1, (n, 6))
    right = rng.random(n) < 0.6
    pred = np.where(right, y, (y + rng.integers(1, 6, n)) % 6)
    logits[np.arange(n), pred] += 4.0
    if prior is not None:
        logits += np.log(prior)
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True), y


def test_overconfidence_is_softened_and_held_out_ece_falls():
    (val_p, val_y), (test_p, test_y) = overconfident(800, 0), overconfident(800, 1)
    fitted = fit_calibration(val_p, val_y)
    summary = {**fitted, **summary_on_test(test_p, apply_calibration(test_p, fitted), test_y, fitted)}
    assert summary["method"] != "none" and summary["temperature"] > 1  # overconfident -> softened
    assert summary["ece_fit_after"] < summary["ece_fit_before"]
    assert summary["ece_test_after"] < summary["ece_test_before"] / 2
    scaled = apply_calibration(test_p, summary)
    assert expected_calibration_error(scaled, test_y) == pytest.approx(summary["ece_test_after"], abs=1e-5)


def test_a_shifted_class_prior_is_corrected_by_the_bias():
    """Class weights made the model favour counts 0 and 3; one temperature cannot undo that."""
    prior = np.array([6.0, 1, 1, 6, 1, 1])
    (val_p, val_y), (test_p, test_y) = overconfident(1500, 2, prior), overconfident(1500, 3, prior)
    fitted = fit_calibration(val_p, val_y)
    assert fitted["method"] == "temperature+bias"
    assert fitted["nll_by_method"]["temperature+bias"] < fitted["nll_by_method"]["temperature"]
    bias = np.array(fitted["bias"])
    assert bias[[0, 3]].mean() < bias[[1, 2, 4, 5]].mean()  # the favoured counts are pushed down

    def held_out(calibration):
        probs = apply_calibration(test_p, calibration)
        return -np.log(probs[np.arange(len(test_y)), test_y]).mean(), (probs.argmax(1) == test_y).mean()

    temperature_only = fit_map(val_p, val_y, "temperature")
    (nll_bias, acc_bias), (nll_t, acc_t) = held_out(fitted), held_out(temperature_only)
    assert nll_bias < nll_t and acc_bias > acc_t  # on photos it never saw


def test_probabilities_that_are_already_calibrated_are_left_nearly_alone():
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 1.5, (2000, 6))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(6, p=p) for p in probs])  # labels drawn from the stated probabilities
    fitted = fit_calibration(probs, y)
    assert fitted["ece_fit_after"] <= fitted["ece_fit_before"] + 0.01
    assert abs(fitted["temperature"] - 1) < 0.15
    assert np.abs(apply_calibration(probs, fitted) - probs).max() < 0.1


def test_the_class_prior_is_what_the_calibrated_probabilities_imply():
    """Calibrated on photos mostly of counts 1 and 2, the prior the calibrated probabilities imply
    (their mean) follows those photos' shares, not the shares the model was biased towards."""
    prior = np.array([6.0, 1, 1, 6, 1, 1])
    probs, y = overconfident(1500, 6, prior)
    keep = np.isin(y, [1, 2]) | (np.random.default_rng(0).random(1500) < 0.2)  # photos mostly of counts 1, 2
    fitted = fit_calibration(probs[keep], y[keep])
    shares = np.bincount(y[keep], minlength=6) / keep.sum()
    assert sum(fitted["class_prior"]) == pytest.approx(1)
    assert np.abs(np.array(fitted["class_prior"]) - shares).max() < 0.1
    assert np.array_equal(apply_calibration(probs, {}), probs)
    assert fit_calibration(probs[:3], y[:3])["n_fit"] == 3  # too few photos to cross-fit: still a map


def test_calibration_never_changes_the_count_shown():
    """A prior-correcting bias moves the most probable count to the common ones; the count shown
    stays the model's own (the argmax of its uncalibrated probabilities)."""
    prior = np.array([6.0, 1, 1, 6, 1, 1])
    probs, y = overconfident(1500, 8, prior)
    fitted = fit_map(probs, y, "temperature+bias")
    calibrated = apply_calibration(probs, fitted)
    assert (calibrated.argmax(1) != probs.argmax(1)).any()  # the bias alone would change some counts
    np.testing.assert_array_equal(decide(calibrated, fitted), probs.argmax(1))
    np.testing.assert_array_equal(decide(probs, {}), probs.argmax(1))
