"""Confidence that means something: calibration maps and the accuracy-coverage curve.

A model's raw probabilities are often over- or under-confident, and class weights or soft
ordinal targets also shift which counts it favours, which one temperature cannot undo. Three
maps are tried on held-out predictions (the validation split, or the out-of-fold predictions of
a cross-validated run):

- "none": the probabilities as they are;
- "temperature": softmax(log p / T);
- "temperature+bias": softmax(log p / T + b), a per-count bias that corrects the class priors
  (L2-penalised, so a count with a handful of photos cannot run away).

The map is chosen by 2-fold cross-fitting on the held-out predictions (fit on one half, score
the other), so the choice is not judged on the photos it was fitted on, then refitted on all of
them. It is scored by the negative log-likelihood, a proper scoring rule: reconciliation reads
the probability of the recorded count, not only of the most likely one, which is all that ECE
looks at. ECE is reported beside it.

The count shown stays the model's own (`decide`): calibration changes what the probabilities
mean, not which count is named. The mean calibrated probability of each count over the fitting
photos is kept as `class_prior`, the prior the calibrated probabilities imply (the photos' own
count shares for a well-calibrated map); it stays in the experiment's record, and reconciliation
deliberately does not use it (see `core.predict.class_prior`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize
from sklearn.model_selection import StratifiedKFold

from core.metrics import accuracy_coverage, expected_calibration_error

EPS = 1e-7
METHODS = ("none", "temperature", "temperature+bias")
BIAS_PENALTY = 1.0  # L2 weight on the per-count biases (a Gaussian prior of variance 1/2), over all photos


def _log(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=float), EPS, 1.0))


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def apply_calibration(probs: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """Calibrated probabilities: softmax(log p / T + b); an empty calibration changes nothing."""
    probs = np.asarray(probs, dtype=float)
    if not calibration or calibration.get("method", "temperature") == "none":
        return probs
    temperature = float(calibration.get("temperature", 1.0))
    bias = np.asarray(calibration.get("bias") or np.zeros(probs.shape[1]), dtype=float)
    return _softmax(_log(probs) / temperature + bias)


def fit_map(probs: np.ndarray, y_true: np.ndarray, method: str) -> dict[str, Any]:
    """The map's parameters minimising the negative log-likelihood of `y_true`."""
    k = probs.shape[1]
    if method == "none":
        return {"method": "none", "temperature": 1.0, "bias": [0.0] * k}
    logp, rows = _log(probs), np.arange(len(y_true))
    with_bias = method == "temperature+bias"

    def loss(theta: np.ndarray) -> float:
        bias = theta[1:] if with_bias else 0.0
        logits = logp / np.exp(theta[0]) + bias
        logits = logits - logits.max(axis=1, keepdims=True)
        nll = -(logits[rows, y_true] - np.log(np.exp(logits).sum(axis=1))).mean()
        return float(nll + BIAS_PENALTY * np.sum(theta[1:] ** 2) / len(y_true))

    theta0 = np.zeros(1 + (k if with_bias else 0))
    bounds = [(np.log(0.05), np.log(20.0))] + [(-5.0, 5.0)] * (k if with_bias else 0)
    theta = minimize(loss, theta0, method="L-BFGS-B", bounds=bounds).x
    bias = theta[1:] - theta[1:].mean() if with_bias else np.zeros(k)
    return {"method": method, "temperature": float(np.exp(theta[0])), "bias": [round(float(b), 5) for b in bias]}


def _cross_fitted(probs: np.ndarray, y_true: np.ndarray, method: str, seed: int) -> np.ndarray:
    """Each half calibrated by the map fitted on the other half (stratified by count; a count
    with a single photo is stratified with the rest)."""
    counts = np.bincount(y_true)
    labels = np.where(counts[y_true] >= 2, y_true, -1)
    if len(y_true) < 4 or np.bincount(labels + 1).min() < 2:
        return apply_calibration(probs, fit_map(probs, y_true, method))
    out = np.empty_like(probs)
    for fit_idx, apply_idx in StratifiedKFold(2, shuffle=True, random_state=seed).split(probs, labels):
        out[apply_idx] = apply_calibration(probs[apply_idx], fit_map(probs[fit_idx], y_true[fit_idx], method))
    return out


def _nll(probs: np.ndarray, y_true: np.ndarray) -> float:
    return float(-_log(probs[np.arange(len(y_true)), y_true]).mean())


def fit_calibration(probs: np.ndarray, y_true, seed: int = 0) -> dict[str, Any]:
    """Choose and fit the calibration map on held-out predictions (see the module docstring).

    Returns method, temperature, bias, class_prior, the cross-fitted log-loss and ECE of every
    method (`nll_by_method`, `ece_by_method`) and `ece_fit_before` / `ece_fit_after` (cross-fitted).
    """
    probs = np.asarray(probs, dtype=float)
    y_true = np.asarray(y_true, dtype=int)
    crossed = {m: _cross_fitted(probs, y_true, m, seed) for m in METHODS}
    nll = {m: _nll(p, y_true) for m, p in crossed.items()}
    ece = {m: expected_calibration_error(p, y_true) for m, p in crossed.items()}
    method = min(METHODS, key=lambda m: (round(nll[m], 3), METHODS.index(m)))  # ties: the simpler map
    fitted = fit_map(probs, y_true, method)
    prior = apply_calibration(probs, fitted).mean(axis=0)
    return {**fitted, "class_prior": [float(p) for p in prior], "n_fit": int(len(y_true)),
            "nll_by_method": {m: round(v, 5) for m, v in nll.items()},
            "ece_by_method": {m: round(v, 5) for m, v in ece.items()},
            "ece_fit_before": round(ece["none"], 5), "ece_fit_after": round(ece[method], 5)}


def decide(probs: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """The count shown for each photo: the model's own choice, as trained.

    Calibration fixes what the probabilities mean; it does not change the count. A per-count bias
    that moves the probabilities to the photos' own count shares would otherwise make the shown
    count the most common plausible one (on the sample, counts 2-4 were then almost never named),
    undoing the balanced class weights the model was trained with. The bias is taken back out,
    which leaves the argmax of the uncalibrated probabilities.
    """
    bias = np.asarray(calibration.get("bias") or np.zeros(np.shape(probs)[1]), dtype=float)
    return np.asarray((_log(probs) - bias).argmax(axis=1))


def coverage_curve(probs: np.ndarray, y_true, calibration: dict[str, Any],
                   points: int = 50) -> dict[str, list[float]]:
    """The accuracy-coverage curve of the shown counts (confidence = calibrated probability of the
    shown count), thinned to about `points` points."""
    probs = np.asarray(probs, dtype=float)
    shown = decide(probs, calibration)
    confidence = probs[np.arange(len(shown)), shown]
    coverage, accuracy = accuracy_coverage(confidence, shown == np.asarray(y_true))
    keep = np.unique(np.linspace(0, len(coverage) - 1, min(points, len(coverage))).round().astype(int))
    return {"coverage": coverage[keep].round(4).tolist(), "coverage_accuracy": accuracy[keep].round(4).tolist()}


def summary_on_test(raw_probs: np.ndarray, calibrated: np.ndarray, test_true, calibration: dict[str, Any]) -> dict:
    """What calibration did on the test split: ECE before (`raw_probs`) and after (`calibrated`),
    and the accuracy-coverage curve of the calibrated probabilities."""
    return {"ece_test_before": round(expected_calibration_error(raw_probs, test_true), 5),
            "ece_test_after": round(expected_calibration_error(calibrated, test_true), 5),
            **coverage_curve(calibrated, test_true, calibration)}
