"""Confidence that means something: temperature scaling and the accuracy-coverage curve.

A model's raw probabilities are often over- or under-confident. One temperature, fitted on the
validation split, rescales them so that "80% sure" is right about 80% of the time; the
accuracy-coverage curve then tells a manager how many bins can be trusted without a recount.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from core.metrics import accuracy_coverage, expected_calibration_error

EPS = 1e-7


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale probabilities as softmax(log(p) / T): T > 1 softens, T < 1 sharpens."""
    logits = np.log(np.clip(np.asarray(probs, dtype=float), EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, y_true) -> float:
    """The temperature minimising the negative log-likelihood of `y_true` (searched in log space)."""
    y_true = np.asarray(y_true, dtype=int)

    def nll(log_t: float) -> float:
        scaled = apply_temperature(probs, float(np.exp(log_t)))
        return -float(np.mean(np.log(np.clip(scaled[np.arange(len(y_true)), y_true], EPS, 1.0))))

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def calibration_summary(val_probs: np.ndarray, val_true, test_probs: np.ndarray, test_true,
                        points: int = 50) -> dict:
    """Fit on validation, report ECE before/after on both splits, and the test accuracy-coverage curve.

    A temperature that makes validation ECE worse (it minimises log-loss, which a handful of
    validation photos can mislead) is not used: the model then keeps temperature 1.
    """
    temperature = fit_temperature(val_probs, val_true)
    ece_before = expected_calibration_error(val_probs, val_true)
    if expected_calibration_error(apply_temperature(val_probs, temperature), val_true) > ece_before:
        temperature = 1.0
    test_scaled = apply_temperature(test_probs, temperature)
    coverage, accuracy = accuracy_coverage(test_scaled.max(axis=1), test_scaled.argmax(axis=1) == np.asarray(test_true))
    keep = np.unique(np.linspace(0, len(coverage) - 1, min(points, len(coverage))).round().astype(int))
    return {
        "temperature": temperature,
        "ece_val_before": ece_before,
        "ece_val_after": expected_calibration_error(apply_temperature(val_probs, temperature), val_true),
        "ece_test_before": expected_calibration_error(test_probs, test_true),
        "ece_test_after": expected_calibration_error(test_scaled, test_true),
        "coverage": coverage[keep].round(4).tolist(),
        "coverage_accuracy": accuracy[keep].round(4).tolist(),
    }


def calibrated_predictions(predictions: pd.DataFrame, exp: dict) -> pd.DataFrame:
    """Stored test predictions with the experiment's temperature applied, so every page shows the
    same confidence the counting service gives (the predicted counts do not change)."""
    temperature = (exp["details"].get("calibration") or {}).get("temperature")
    if not temperature or predictions.empty:
        return predictions
    probs = apply_temperature(np.array(predictions["probs"].tolist()), temperature)
    out = predictions.copy()
    out["probs"] = [row.round(5).tolist() for row in probs]
    out["confidence"] = probs.max(axis=1)
    return out
