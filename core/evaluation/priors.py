"""The prior a shown probability is under: likelihoods in, posteriors under a stated prior out.

A calibrated model gives, for each photo, a likelihood of each count (`core.evaluation.calibration`: its
probabilities with the prior it was trained and calibrated under taken out). What is shown is
the posterior under a stated prior, P(c | photo) proportional to likelihood(c) * prior(c), and
the count shown is its most probable count (`core.evaluation.calibration.decide`). The stated prior is one of:

- "uniform": every count alike (the default: the counts are the model's own, balanced answer);
- "natural": ABID's natural count mix (`NATURAL_MIX`), what a warehouse's bins hold;
- "batch": the mix of the photos being counted, estimated from them by EM (Saerens, Latinne and
  Decaestecker 2002, "Adjusting the outputs of a classifier to new a priori probabilities").
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PRIORS = ("uniform", "natural", "batch")
DEFAULT_PRIOR = "uniform"
# ABID's natural count mix: photos per item count among the 6,499 natural-mix photos of the shared
# sample (source NubZoro/bin_validator, ABID ids 1-9999), counts above 20 folded into 20.
NATURAL_MIX = (120, 512, 934, 1125, 973, 763, 500, 438, 288, 224, 143, 108, 87, 61, 44, 28, 28, 23, 23, 18, 59)
EM_PSEUDO_COUNT = 1.0  # Dirichlet pseudo-photos per count: a small batch stays near uniform
EM_ITERATIONS = 200
EPS = 1e-12


def with_prior(likelihood: np.ndarray, prior: np.ndarray | Sequence[float]) -> np.ndarray:
    """Posteriors proportional to likelihood * prior, row by row (one vector or (N, K))."""
    joint = np.asarray(likelihood, dtype=float) * np.asarray(prior, dtype=float)
    return joint / np.clip(joint.sum(axis=-1, keepdims=True), EPS, None)


def uniform_prior(num_classes: int) -> np.ndarray:
    return np.full(num_classes, 1 / num_classes)


def natural_prior(num_classes: int, open_top: bool) -> np.ndarray:
    """`NATURAL_MIX` on the model's classes: 0..K-1, or 0..K-2 and "more than K-2" (the rest folded in)."""
    mix = np.asarray(NATURAL_MIX, dtype=float)
    if open_top:
        top = num_classes - 1
        shares = np.append(mix[:top], mix[top:].sum())
    else:
        shares = mix[:num_classes]
    shares = np.pad(shares, (0, num_classes - len(shares)), constant_values=1.0)  # beyond the table: rare
    return shares / shares.sum()


def batch_prior(likelihood: np.ndarray, pseudo_count: float = EM_PSEUDO_COUNT,
                iterations: int = EM_ITERATIONS, tol: float = 1e-8) -> np.ndarray:
    """The count mix of a batch of photos, by EM on their likelihoods (Saerens et al. 2002), with
    `pseudo_count` photos per count added (a MAP estimate), so a batch of a few photos is not
    declared to hold only one count."""
    likelihood = np.atleast_2d(np.asarray(likelihood, dtype=float))
    n, k = likelihood.shape
    prior = uniform_prior(k)
    for _ in range(iterations):
        updated = (with_prior(likelihood, prior).sum(axis=0) + pseudo_count) / (n + k * pseudo_count)
        if np.abs(updated - prior).max() < tol:
            return updated
        prior = updated
    return prior


def stated_prior(name: str, num_classes: int, open_top: bool, likelihood: np.ndarray | None = None) -> np.ndarray:
    """The prior called `name` (see `PRIORS`); "batch" needs the batch's likelihoods."""
    if name == "uniform":
        return uniform_prior(num_classes)
    if name == "natural":
        return natural_prior(num_classes, open_top)
    if name == "batch":
        if likelihood is None or not len(likelihood):
            raise ValueError("the batch prior is estimated from the photos being counted: none were given")
        return batch_prior(likelihood)
    raise ValueError(f"unknown prior {name!r}: one of {', '.join(PRIORS)}")


def describe(name: str) -> str:
    """The prior in words, shown beside the probabilities it is under (`PRIORS`, or "fit": see
    `core.evaluation.calibration.Calibration.shown_prior`)."""
    return {"uniform": "every count equally likely before the photo is seen",
            "natural": "ABID's natural count mix (what a warehouse's bins hold)",
            "batch": "the count mix of the photos counted together, estimated from them (EM)",
            "fit": "the count mix of the photos the calibration was fitted on (a model trained by an older "
                   "binsight, whose shown count was its uncalibrated choice)"}[name]
