"""Confidence that means something: calibration maps, the decision rule, the accuracy-coverage curve.

A model's raw probabilities are often over- or under-confident, and class weights or soft
ordinal targets also shift which counts it favours, which one temperature cannot undo. A map
turns them into a likelihood of each count, softmax(log p / T + b); the posterior under a prior
pi is proportional to likelihood * pi (`core.evaluation.priors`). The map is fitted so that the posterior
under the uniform prior, what binsight shows by default, predicts the labels of the fitting photos
with every count weighing alike (a photo weighs 1 / (K x its count's share): `count_weights`), so
the likelihood carries neither the mix the network was trained on nor that of the fitting photos,
and is right where it is shown. Fitted under the fitting photos' own mix instead (binsight before
issue #27), the map was judged where an empty bin is 1 photo in 80 and shown where it is 1 in 7:
its over-estimate of "empty" for one-item bins cost almost nothing in the fit, and under the
uniform prior it called 36% of the one-item originals of the test split empty.
Three maps are tried on held-out predictions (the validation split, or the out-of-fold
predictions of a cross-validated run):

- "none": T = 1, b = 0: the raw probabilities are taken as the likelihood;
- "temperature": b = 0;
- "temperature+bias": a per-count bias b that takes out the prior the network learnt
  (L2-penalised towards none, so a count with a handful of photos cannot run away).

The map is chosen by 2-fold cross-fitting on the held-out predictions (fit on one half, score
the other), so the choice is not judged on the photos it was fitted on, then refitted on all of
them. It is scored by the negative log-likelihood, a proper scoring rule: reconciliation reads
the probability of the recorded count, not only of the most likely one, which is all that ECE
looks at. ECE is reported beside it.

One decision rule everywhere (`decide`): the count shown is the most probable count of the
probabilities shown, whatever prior they are under.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize
from sklearn.model_selection import StratifiedKFold

from core.evaluation.metrics import accuracy_coverage, expected_calibration_error
from core.evaluation.priors import DEFAULT_PRIOR, with_prior

EPS = 1e-7
METHODS = ("none", "temperature", "temperature+bias")
BIAS_PENALTY = 1.0  # L2 weight on the per-count biases (a Gaussian prior of variance 1/2), over all photos
FIT_PRIOR_PSEUDO_COUNT = 1.0  # photos added to each count's share of the fitting photos (none is impossible)
OLDER_RELEASE_PRIOR = "fit"  # figures of runs trained before the prior was explicit: under the fitting photos' mix


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration map and what it did (see the module docstring).

    `shown_prior` names the prior the run's stored figures and predictions are under: a name of
    `core.evaluation.priors.PRIORS`, or "fit" for runs of an older binsight, whose probabilities were the
    posteriors under `fit_prior` and whose shown count was the uncalibrated argmax.
    """

    method: str = "none"
    temperature: float = 1.0
    bias: tuple[float, ...] = ()  # per count, added to log p / T; empty: none
    fit_prior: tuple[float, ...] = ()  # count shares of the photos the map was fitted on; empty: not known
    n_fit: int = 0  # photos it was fitted on; 0: not fitted (a model of a release before calibration)
    counts_alike: bool = False  # fitted with every count weighing alike (`count_weights`); False: an older binsight
    shown_prior: str = DEFAULT_PRIOR
    nll_by_method: Mapping[str, float] = field(default_factory=dict)  # cross-fitted
    ece_by_method: Mapping[str, float] = field(default_factory=dict)  # cross-fitted, under fit_prior
    ece_fit_before: float | None = None
    ece_fit_after: float | None = None
    ece_test_before: float | None = None  # of the raw probabilities
    ece_test_after: float | None = None  # of the probabilities shown (under `shown_prior`)
    coverage: tuple[float, ...] = ()  # accuracy-coverage curve of the shown counts on the test split
    coverage_accuracy: tuple[float, ...] = ()

    @property
    def fitted(self) -> bool:
        return self.n_fit > 0 or self.method != "none"

    def likelihood(self, probs: np.ndarray) -> np.ndarray:
        """softmax(log p / T + b): the likelihood of each count, normalised to sum to 1 (the
        posterior under a uniform prior); without a map, the probabilities themselves."""
        logits = _log(probs) / self.temperature
        return _softmax(logits + np.asarray(self.bias, dtype=float) if self.bias else logits)

    def to_dict(self) -> dict[str, Any]:
        """The JSON the store keeps (`from_dict` reads it back)."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v
                for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Calibration:
        """From the store's JSON, including an older release's: there, `class_prior` (the mean
        calibrated probability over the fitting photos) was the prior its posteriors implied and
        `bias` included it; it becomes `fit_prior`, and is taken out of the bias, so the posterior
        under `fit_prior` is the older release's calibrated probabilities exactly."""
        data = dict(data or {})
        if not data:
            return cls()
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if "fit_prior" not in data:  # written before the prior was explicit
            values["shown_prior"] = OLDER_RELEASE_PRIOR
            values.setdefault("method", "temperature")
            implied = data.get("class_prior")
            if implied:
                bias = np.asarray(data.get("bias") or np.zeros(len(implied)), dtype=float) - _log(implied)
                values["bias"] = (bias - bias.mean()).round(5).tolist()
                values["fit_prior"] = implied
        for key in ("bias", "fit_prior", "coverage", "coverage_accuracy"):
            values[key] = tuple(float(x) for x in values.get(key) or ())
        values["temperature"] = float(values.get("temperature", 1.0))
        return cls(**values)


def _log(probs) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=float), EPS, 1.0))


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=-1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=-1, keepdims=True)


def decide(probs: np.ndarray) -> np.ndarray:
    """The count shown for each photo: the most probable count of the probabilities shown (the
    one decision rule of binsight: pages, reconciliation, the CLI and the stored figures)."""
    return np.asarray(np.argmax(np.asarray(probs, dtype=float), axis=-1))


def label_shares(y_true, num_classes: int) -> np.ndarray:
    """The count shares of labelled photos, with `FIT_PRIOR_PSEUDO_COUNT` photos added to each count."""
    counts = np.bincount(np.asarray(y_true, dtype=int), minlength=num_classes)[:num_classes]
    return (counts + FIT_PRIOR_PSEUDO_COUNT) / (counts.sum() + num_classes * FIT_PRIOR_PSEUDO_COUNT)


def count_weights(y_true, num_classes: int) -> np.ndarray:
    """Each photo's weight in a fit where every count weighs alike: 1 / (K x its count's share,
    `label_shares`), normalised to sum to 1."""
    y_true = np.asarray(y_true, dtype=int)
    weights = 1.0 / (num_classes * label_shares(y_true, num_classes)[y_true])
    return weights / weights.sum()


def fit_map(probs: np.ndarray, y_true: np.ndarray, method: str) -> Calibration:
    """The map's parameters minimising the negative log-likelihood of `y_true` under the posterior
    with the uniform prior (the likelihood itself), every count weighing alike (`count_weights`)."""
    probs, y_true = np.asarray(probs, dtype=float), np.asarray(y_true, dtype=int)
    k = probs.shape[1]
    fit_prior = tuple(round(float(p), 6) for p in label_shares(y_true, k))
    if method == "none":
        return Calibration("none", 1.0, (0.0,) * k, fit_prior, int(len(y_true)), counts_alike=True)
    logp, weights, rows = _log(probs), count_weights(y_true, k), np.arange(len(y_true))
    with_bias = method == "temperature+bias"

    def loss(theta: np.ndarray) -> float:
        bias = theta[1:] if with_bias else 0.0
        logits = logp / np.exp(theta[0]) + bias
        logits = logits - logits.max(axis=1, keepdims=True)
        nll = -(weights * (logits[rows, y_true] - np.log(np.exp(logits).sum(axis=1)))).sum()
        return float(nll + BIAS_PENALTY * np.sum(theta[1:] ** 2) / len(y_true))

    theta0 = np.zeros(1 + (k if with_bias else 0))
    bounds = [(np.log(0.05), np.log(20.0))] + [(-5.0, 5.0)] * (k if with_bias else 0)
    theta = minimize(loss, theta0, method="L-BFGS-B", bounds=bounds).x
    bias = theta[1:] - theta[1:].mean() if with_bias else np.zeros(k)
    return Calibration(method, float(np.exp(theta[0])), tuple(round(float(b), 5) for b in bias), fit_prior,
                       int(len(y_true)), counts_alike=True)


def _cross_fitted(probs: np.ndarray, y_true: np.ndarray, method: str, seed: int) -> np.ndarray:
    """Each half's likelihoods by the map fitted on the other half (stratified by count; a count
    with a single photo is stratified with the rest)."""
    counts = np.bincount(y_true)
    labels = np.where(counts[y_true] >= 2, y_true, -1)
    if len(y_true) < 4 or np.bincount(labels + 1).min() < 2:
        return fit_map(probs, y_true, method).likelihood(probs)
    out = np.empty_like(probs)
    for fit_idx, apply_idx in StratifiedKFold(2, shuffle=True, random_state=seed).split(probs, labels):
        out[apply_idx] = fit_map(probs[fit_idx], y_true[fit_idx], method).likelihood(probs[apply_idx])
    return out


def _nll(likelihood: np.ndarray, y_true: np.ndarray) -> float:
    """The negative log-likelihood of the labels, every count weighing alike (what `fit_map` minimises)."""
    weights = count_weights(y_true, likelihood.shape[1])
    return float(-(weights * _log(likelihood[np.arange(len(y_true)), y_true])).sum())


def fit_calibration(probs: np.ndarray, y_true, seed: int = 0) -> Calibration:
    """Choose and fit the calibration map on held-out predictions (see the module docstring), with
    the cross-fitted log-loss and ECE (of the posterior under the fitting photos' mix) of every method
    and the chosen one's ECE before and after."""
    probs = np.asarray(probs, dtype=float)
    y_true = np.asarray(y_true, dtype=int)
    shares = label_shares(y_true, probs.shape[1])
    crossed = {m: _cross_fitted(probs, y_true, m, seed) for m in METHODS}
    nll = {m: _nll(p, y_true) for m, p in crossed.items()}
    ece = {m: expected_calibration_error(with_prior(p, shares), y_true) for m, p in crossed.items()}
    method = min(METHODS, key=lambda m: (round(nll[m], 3), METHODS.index(m)))  # ties: the simpler map
    return dataclasses.replace(
        fit_map(probs, y_true, method),
        nll_by_method={m: round(v, 5) for m, v in nll.items()}, ece_by_method={m: round(v, 5) for m, v in ece.items()},
        ece_fit_before=round(expected_calibration_error(probs, y_true), 5), ece_fit_after=round(ece[method], 5))


def coverage_curve(probs: np.ndarray, y_true, points: int = 50) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The accuracy-coverage curve of the shown counts (confidence = the shown probability of the
    shown count), thinned to about `points` points."""
    probs = np.asarray(probs, dtype=float)
    shown = decide(probs)
    confidence = probs[np.arange(len(shown)), shown]
    coverage, accuracy = accuracy_coverage(confidence, shown == np.asarray(y_true))
    keep = np.unique(np.linspace(0, len(coverage) - 1, min(points, len(coverage))).round().astype(int))
    return tuple(coverage[keep].round(4).tolist()), tuple(accuracy[keep].round(4).tolist())


def summary_on_test(raw_probs: np.ndarray, shown: np.ndarray, test_true, calibration: Calibration) -> Calibration:
    """`calibration` with what it did on the test split: ECE of the raw probabilities and of the
    ones shown, and the accuracy-coverage curve of the shown counts."""
    coverage, accuracy = coverage_curve(shown, test_true)
    return dataclasses.replace(calibration, ece_test_before=round(expected_calibration_error(raw_probs, test_true), 5),
                               ece_test_after=round(expected_calibration_error(shown, test_true), 5),
                               coverage=coverage, coverage_accuracy=accuracy)
