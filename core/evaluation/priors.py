"""The prior a shown probability is under: likelihoods in, posteriors under a stated prior out.

A calibrated model gives, for each photo, a likelihood of each count (`core.evaluation.calibration`: its
probabilities with the prior it was trained and calibrated under taken out). What is shown is
the posterior under a stated prior, P(c | photo) proportional to likelihood(c) * prior(c), and
the count shown is its most probable count (`core.evaluation.calibration.decide`). The stated prior is one of:

- "uniform": every count alike (the default: the counts are the model's own, balanced answer);
- "natural": ABID's natural count mix (`NATURAL_MIX`), what a warehouse's bins hold;
- "batch": the mix of the photos being counted, estimated from them (`batch_mix`).

The batch's mix is estimated by EM (Saerens, Latinne and Decaestecker 2002, "Adjusting the outputs
of a classifier to new a priori probabilities") with a Dirichlet prior of `MIX_PULL` photos in
ABID's natural mix: the MAP estimate. Plain EM trusts every photo's likelihood fully; a weak
classifier's likelihoods are nearly flat, the maximum-likelihood mix is then barely determined, and
a small miscalibration sends it to a few counts. On 2,500 real natural-mix photos, with a model of
balanced accuracy 0.40, it put the mix on counts 0 and 3 and the ECE rose from 0.046 to 0.389
(issue #27). With the pull, the photos move the estimate as far as their likelihoods say: a good
classifier's sharp likelihoods outweigh a few hundred pseudo-photos, a weak one's flat ones do not.
How sure the estimate is comes from a bootstrap of the photos, and how much of it is ABID's mix
rather than the photos' from swapping the anchor (`BatchMix`); where the batch is too small or the
estimate is unsteady, the photos are shown under the uniform prior, and `BatchMix` says why.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

PRIORS = ("uniform", "natural", "batch")
DEFAULT_PRIOR = "uniform"
# ABID's natural count mix: photos per item count among the 6,499 natural-mix photos of the shared
# sample (source NubZoro/bin_validator, ABID ids 1-9999), counts above 20 folded into 20.
NATURAL_MIX = (120, 512, 934, 1125, 973, 763, 500, 438, 288, 224, 143, 108, 87, 61, 44, 28, 28, 23, 23, 18, 59)
MIX_PULL = 200.0  # pseudo-photos in ABID's natural mix added to a batch's photos (the Dirichlet prior's weight)
MIN_BATCH = 50  # photos: fewer are shown under the uniform prior, their mix not estimated
MAX_SPREAD = 0.10  # the estimate is used only if 9 in 10 resamples of the photos move it less (total variation)
BOOTSTRAP_ROUNDS = 40
SPREAD_QUANTILE = 0.9
EM_ITERATIONS = 2000
EM_TOL = 1e-5
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


def total_variation(p: np.ndarray | Sequence[float], q: np.ndarray | Sequence[float]) -> np.ndarray:
    """Total variation distance between mixes (along the last axis): half the summed absolute difference."""
    return 0.5 * np.abs(np.asarray(p, dtype=float) - np.asarray(q, dtype=float)).sum(axis=-1)


def map_mix(likelihood: np.ndarray, anchor: np.ndarray, pull: float, start: np.ndarray | None = None,
            iterations: int = EM_ITERATIONS, tol: float = EM_TOL) -> np.ndarray:
    """The mix maximising log Dirichlet(mix; pull * anchor + 1) + sum over photos of log(likelihood . mix).

    EM: each step counts the photos' posteriors under the current mix and adds `pull` photos
    spread as `anchor`. The objective is concave, so the answer does not depend on `start` (a
    resample starts from the full batch's estimate, which saves iterations)."""
    n = len(likelihood)
    mix = np.asarray(anchor if start is None else start, dtype=float)
    for _ in range(iterations):
        updated = (with_prior(likelihood, mix).sum(axis=0) + pull * anchor) / (n + pull)
        if np.abs(updated - mix).max() < tol:
            return updated
        mix = updated
    return mix


@dataclass(frozen=True)
class BatchMix:
    """A batch's estimated count mix, how sure it is, and the prior its photos are shown under.

    `low` and `high` bound each count's share between the 5th and 95th percentiles of the
    estimates of `BOOTSTRAP_ROUNDS` resamples of the photos; `spread` is the 90th percentile of
    the total variation between a resample's estimate and `estimate`. Both measure how much the
    photos at hand move the estimate, not how far ABID's mix pulls it: `anchor_share` says that,
    how far the estimate follows when ABID's mix is swapped for the uniform one, as a share of the
    distance between the two (about pull / (pull + photos) for a sharp classifier; near 1 for one
    whose likelihoods say little, which then shows mostly ABID's mix, right or not for this batch)."""

    mix: tuple[float, ...]  # the prior the photos are shown under: `estimate`, or uniform where it fell back
    estimate: tuple[float, ...]  # MAP-EM's mix; empty where the photos were too few to estimate it
    low: tuple[float, ...]
    high: tuple[float, ...]
    spread: float | None  # None where not estimated
    photos: int
    pull: float  # pseudo-photos in ABID's natural mix (`MIX_PULL`)
    anchor_share: float | None  # how much of `estimate` is ABID's mix, not the photos' (0..1); None: not estimated
    fallback: str = ""  # why the uniform prior is used instead; empty where the estimate is used

    @property
    def fell_back(self) -> bool:
        return bool(self.fallback)

    def summary(self, label: Callable[[int], str] = str) -> str:
        """One line for a page or the command line: the mix with each count's interval and the spread,
        or the uniform prior and why."""
        if self.fell_back:
            return f"Every count alike: {self.fallback}."
        shares = ", ".join(f"{label(k)}: {m:.0%} ({lo:.0%}-{hi:.0%})"
                           for k, (m, lo, hi) in enumerate(zip(self.mix, self.low, self.high, strict=True)))
        return (f"Estimated mix of these {self.photos} photos: {shares}; resamples of the photos move it by at most "
                f"{self.spread:.2f} (total variation, 9 in 10); ABID's usual mix, weighing as {self.pull:.0f} photos, "
                f"makes up {self.anchor_share:.0%} of it.")

    def to_dict(self) -> dict[str, object]:
        """The JSON `train.py evaluate` prints."""
        return {"mix": list(self.mix), "estimate": list(self.estimate), "low": list(self.low),
                "high": list(self.high), "spread": self.spread, "photos": self.photos, "pull": self.pull,
                "anchor_share": self.anchor_share, "fallback": self.fallback}


def _floats(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def batch_mix(likelihood: np.ndarray, open_top: bool, pull: float = MIX_PULL, min_photos: int = MIN_BATCH,
              max_spread: float = MAX_SPREAD, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> BatchMix:
    """The count mix of a batch of photos from their likelihoods (N, K): MAP-EM pulled toward ABID's
    natural mix on the model's classes (`natural_prior`) by `pull` photos, checked by a bootstrap of
    the photos (seeded: the same batch gets the same answer). The uniform prior is used instead
    where there are fewer than `min_photos` photos, or where the spread exceeds `max_spread`."""
    likelihood = np.atleast_2d(np.asarray(likelihood, dtype=float))
    n, k = likelihood.shape
    even = uniform_prior(k)
    if n < min_photos:
        few = f"{n} photo{' is' if n == 1 else 's are'} too few to estimate their mix (at least {min_photos})"
        return BatchMix(_floats(even), (), (), (), None, n, pull, None, few)
    anchor = natural_prior(k, open_top)
    estimate = map_mix(likelihood, anchor, pull)
    share = total_variation(estimate, map_mix(likelihood, even, pull)) / max(float(total_variation(anchor, even)), EPS)
    draws = np.random.default_rng(seed).integers(0, n, (rounds, n))
    resampled = np.array([map_mix(likelihood[rows], anchor, pull, start=estimate) for rows in draws])
    low, high = np.quantile(resampled, [0.05, 0.95], axis=0)
    spread = round(float(np.quantile(total_variation(resampled, estimate), SPREAD_QUANTILE)), 4)
    fallback = "" if spread <= max_spread else \
        f"the estimated mix is unsteady (resamples of the photos move it by {spread:.2f}, more than {max_spread:.2f})"
    return BatchMix(_floats(even if fallback else estimate), _floats(estimate), _floats(low), _floats(high),
                    spread, n, pull, round(min(float(share), 1.0), 4), fallback)


def stated_prior(name: str, num_classes: int, open_top: bool, likelihood: np.ndarray | None = None) -> np.ndarray:
    """The prior called `name` (see `PRIORS`); "batch" needs the batch's likelihoods."""
    if name == "uniform":
        return uniform_prior(num_classes)
    if name == "natural":
        return natural_prior(num_classes, open_top)
    if name == "batch":
        if likelihood is None or not len(likelihood):
            raise ValueError("the batch prior is estimated from the photos being counted: none were given")
        return np.asarray(batch_mix(likelihood, open_top).mix)
    raise ValueError(f"unknown prior {name!r}: one of {', '.join(PRIORS)}")


def describe(name: str) -> str:
    """The prior in words, shown beside the probabilities it is under (`PRIORS`, or "fit": see
    `core.evaluation.calibration.Calibration.shown_prior`)."""
    return {"uniform": "every count equally likely before the photo is seen",
            "natural": "ABID's natural count mix (what a warehouse's bins hold)",
            "batch": "the count mix of the photos counted together, estimated from them (EM pulled toward "
                     "ABID's mix; every count alike where too few photos or an unsteady estimate)",
            "fit": "the count mix of the photos the calibration was fitted on (a model trained by an older "
                   "binsight, whose shown count was its uncalibrated choice)"}[name]
