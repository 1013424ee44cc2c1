"""A batch's count mix that holds (issue #27): MAP-EM pulled toward ABID's natural mix, checked by a
bootstrap of the photos, the uniform prior where the batch is too small or the estimate unsteady;
on generated likelihoods and on the shared sample's natural-mix test split."""
from __future__ import annotations

import numpy as np
import pytest

from core.evaluation.metrics import expected_calibration_error
from core.evaluation.priors import (
    MIN_BATCH,
    batch_mix,
    describe,
    natural_prior,
    stated_prior,
    total_variation,
    uniform_prior,
    with_prior,
)
from tests.builders import requires_sample, weak_sample_classifier

K = 7  # 0..5 items and "more than 5", as `make run`'s models count
NATURAL = natural_prior(K, open_top=True)


def scored(n: int, seed: int, mix, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Photos of counts drawn with `mix`, and the likelihoods of a calibrated classifier that reads
    each count with Gaussian `noise` on a line: neighbouring counts are what it confuses, the more
    so the larger `noise` (1.6: a balanced accuracy near 0.3, like the weak models of issue #27)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(K, n, p=mix)
    score = y + rng.normal(0, noise, n)
    likelihood = np.exp(-0.5 * ((score[:, None] - np.arange(K)) / noise) ** 2)
    return likelihood / likelihood.sum(axis=1, keepdims=True), y


def shares(y: np.ndarray) -> np.ndarray:
    return np.bincount(y, minlength=K) / len(y)


def test_a_weak_confusable_classifier_does_not_collapse_the_batch_mix():
    """Without the pull (plain EM) the mix of 2,500 photos swings with the photos drawn: the bootstrap
    check finds it unsteady and the uniform prior is used. With it, the mix is within 0.10 of the
    truth, every count keeps at least half its share, and the probabilities shown are calibrated
    at least as well as under the uniform prior (ECE, + 0.02)."""
    likelihood, y = scored(2500, 0, NATURAL, noise=1.6)
    true = shares(y)
    plain = batch_mix(likelihood, open_top=True, pull=0, rounds=10)  # plain EM creeps: 10 resamples tell
    assert plain.fell_back and "unsteady" in plain.fallback and plain.spread is not None and plain.spread > 0.10
    assert plain.mix == pytest.approx(uniform_prior(K))
    assert "unsteady" in plain.summary()

    held = batch_mix(likelihood, open_top=True)
    mix = np.array(held.mix)
    assert not held.fell_back and held.mix == held.estimate and held.photos == 2500
    assert total_variation(mix, true) <= 0.10
    assert (mix >= true / 2).all()
    assert held.spread is not None and held.spread <= 0.05
    assert held.anchor_share is not None and held.anchor_share > 0.4  # it says it leans on ABID's mix
    assert (np.array(held.low) <= mix).all() and (mix <= np.array(held.high)).all()
    ece = {name: expected_calibration_error(with_prior(likelihood, prior), y)
           for name, prior in (("uniform", uniform_prior(K)), ("batch", mix))}
    assert ece["batch"] <= ece["uniform"] + 0.02, ece


def test_a_small_batch_falls_back_to_the_uniform_prior_and_says_why():
    likelihood, _ = scored(MIN_BATCH - 1, 1, NATURAL, noise=0.3)
    small = batch_mix(likelihood, open_top=True)
    assert small.fell_back and small.mix == pytest.approx(uniform_prior(K)) and small.estimate == ()
    assert small.summary() == f"Every count alike: {MIN_BATCH - 1} photos are too few to estimate their mix " \
                              f"(at least {MIN_BATCH})."
    assert "1 photo is too few" in batch_mix(likelihood[:1], open_top=True).fallback
    np.testing.assert_allclose(stated_prior("batch", K, True, likelihood), uniform_prior(K))
    assert "every count alike where too few photos" in describe("batch")
    with pytest.raises(ValueError, match="batch"):
        stated_prior("batch", K, True)


def test_a_clearly_shifted_batch_is_recovered_by_a_good_classifier():
    """2,000 photos mostly of 0..2 items (0.55 from ABID's mix): a good classifier's sharp likelihoods
    outweigh ABID's 200 pseudo-photos, the mix is recovered within 0.10 and ABID's mix makes up
    little of it; the same batch's estimate is the same each time (the bootstrap is seeded)."""
    shifted = np.array([0.3, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02])
    likelihood, y = scored(2000, 2, shifted, noise=0.35)
    estimated = batch_mix(likelihood, open_top=True)
    assert total_variation(NATURAL, shares(y)) > 0.5
    assert not estimated.fell_back and total_variation(np.array(estimated.mix), shares(y)) <= 0.10
    assert estimated.anchor_share is not None and estimated.anchor_share < 0.2
    assert batch_mix(likelihood, open_top=True) == estimated
    line = estimated.summary(lambda k: "more than 5" if k == 6 else str(k))
    assert line.startswith(f"Estimated mix of these 2000 photos: 0: {estimated.mix[0]:.0%} ({estimated.low[0]:.0%}-")
    assert f"more than 5: {estimated.mix[6]:.0%}" in line
    assert f"move it by at most {estimated.spread:.2f}" in line
    assert line.endswith(f"ABID's usual mix, weighing as 200 photos, makes up {estimated.anchor_share:.0%} of it.")


@requires_sample
def test_the_batch_mix_of_the_samples_natural_mix_test_split_holds():
    """Issue #27's bar on real photos: the shared sample's natural-mix photos (source
    NubZoro/bin_validator, 224 px, ABID's natural count mix), split as training splits them. A weak
    classifier, cheaply: ImageNet EfficientNet-Lite0's pooled features at 96 px, a balanced logistic
    regression fitted on 1,200 photos of the training split, the project's calibration fitted on
    600 of the validation split. The batch is the whole test split (638 photos, 0..5 and "more than 5").
    ABID's mix, which the estimate leans on, was counted on this source's 6,499 photos, these among
    them: here the pull points at the truth (the generated tests above hold the other cases).

    - the estimated mix is within 0.10 of the true mix (total variation);
    - the ECE of the probabilities shown under it is at most the uniform prior's + 0.02.

    The issue's third goal, balanced accuracy no lower than under the uniform prior, does NOT hold
    here and cannot for any prior near this batch's true mix: the count shown is the most probable
    under the prior, and balanced accuracy is highest under the uniform one. Under the true mix itself
    it falls from ~0.33 to ~0.25 (the rare empty bins are rarely named). What is held instead: the
    estimate costs no more than 0.05 of balanced accuracy beyond what knowing the true mix costs.
    """
    import pandas as pd

    from core.config import SHARED_SAMPLE
    from core.evaluation.calibration import decide, fit_calibration
    from core.evaluation.metrics import count_report

    manifest = pd.read_csv(SHARED_SAMPLE / "manifest.csv")
    natural = {name.rsplit("/", 1)[-1] for name in manifest.loc[manifest["source_repo"] == "NubZoro/bin_validator",
                                                                  "file"]}
    scored = weak_sample_classifier(lambda table: np.array([p.rsplit("/", 1)[-1] in natural for p in table["path"]]),
                                    train=1200, val=600)
    calibration = fit_calibration(*scored["val"][:2])
    likelihood, y = calibration.likelihood(scored["test"][0]), scored["test"][1]

    estimated = batch_mix(likelihood, open_top=True)
    priors = {"uniform": uniform_prior(K), "batch": np.array(estimated.mix), "true mix": shares(y)}
    shown = {name: with_prior(likelihood, prior) for name, prior in priors.items()}
    ece = {name: expected_calibration_error(probs, y) for name, probs in shown.items()}
    balanced = {name: count_report(y, decide(probs), K).balanced_accuracy for name, probs in shown.items()}
    figures = f"{len(y)} photos; {estimated.summary()}; ECE {ece}; balanced accuracy {balanced}"
    assert len(y) > 600 and not estimated.fell_back, figures
    assert total_variation(priors["batch"], priors["true mix"]) <= 0.10, figures
    assert ece["batch"] <= ece["uniform"] + 0.02, figures
    assert balanced["batch"] >= balanced["true mix"] - 0.05, figures
