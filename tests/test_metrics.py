"""Every reported figure: the count report, ECE, accuracy-coverage, bootstrap intervals, the
paired verdict, and how a figure and its interval read."""
from __future__ import annotations

import numpy as np
import pytest

from core.evaluation.metrics import (
    INTERVAL_METRICS,
    Interval,
    Intervals,
    SplitFigures,
    accuracy_coverage,
    bootstrap_intervals,
    count_report,
    expected_calibration_error,
    headline_text,
    paired_bootstrap,
    rounded_expected_count,
    split_figures,
    verdict,
    with_interval,
)


def test_count_report_figures():
    y_true = [0, 1, 1, 2, 2, 2]
    y_pred = [0, 1, 2, 2, 2, 0]
    r = count_report(y_true, y_pred, num_classes=4)
    assert r.n == 6 and r.accuracy == pytest.approx(4 / 6)
    assert r.balanced_accuracy == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert r.rmse == pytest.approx(np.sqrt((1 + 4) / 6))
    assert r.per_class_accuracy == [1.0, 0.5, pytest.approx(2 / 3), None]
    assert r.per_class_rmse[2] == pytest.approx(np.sqrt(4 / 3))
    assert r.confusion_matrix[2] == [1, 0, 2, 0]
    with pytest.raises(ValueError):
        count_report([], [], 3)


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident():
    probs = np.array([[0.5, 0.5]] * 4)
    assert expected_calibration_error(probs, [0, 0, 1, 1]) == pytest.approx(0.0)
    sure = np.array([[0.99, 0.01]] * 4)
    assert expected_calibration_error(sure, [1, 1, 1, 1]) == pytest.approx(0.99)


def test_accuracy_coverage_orders_by_confidence():
    coverage, acc = accuracy_coverage([0.9, 0.2, 0.8, 0.4], [1, 0, 1, 0])
    assert list(coverage) == [0.25, 0.5, 0.75, 1.0]
    assert list(acc) == [1.0, 1.0, pytest.approx(2 / 3), 0.5]


def _noisy(n: int, right: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 6, n)
    return y, np.where(rng.random(n) < right, y, rng.integers(0, 6, n))


def test_intervals_hold_the_figure_and_narrow_with_more_photos():
    y, pred = _noisy(265, 0.5, 0)
    small = bootstrap_intervals(y, pred)
    report = count_report(y, pred, 6)
    for key in ("accuracy", "balanced_accuracy", "rmse"):
        lo, hi = getattr(small, key)
        assert lo <= getattr(report, key) <= hi and lo < hi
    y_big, pred_big = _noisy(2650, 0.5, 0)
    big = bootstrap_intervals(y_big, pred_big)
    width = {k: getattr(small, k).high - getattr(small, k).low for k in INTERVAL_METRICS}
    assert all(getattr(big, k).high - getattr(big, k).low < width[k] * 0.6 for k in INTERVAL_METRICS)  # ~1/sqrt(10)


def test_intervals_are_stratified_by_count():
    """Every resample keeps each count's photos, so a count seen twice never vanishes from one."""
    y = np.array([0, 0] + [1] * 50)
    pred = np.array([0, 1] + [1] * 50)
    lo, hi = bootstrap_intervals(y, pred).balanced_accuracy
    assert 0.5 <= lo <= hi <= 1.0  # count 0's recall is 0, 0.5 or 1; count 1's is always 1


def test_paired_bootstrap_tells_a_real_difference_from_noise():
    y, good = _noisy(500, 0.7, 1)
    _, bad = _noisy(500, 0.3, 2)
    clear = paired_bootstrap(y, good, bad)
    assert clear["balanced_accuracy"].low > 0 and clear["rmse"].high < 0
    assert verdict(clear, "A", "B").startswith("A beats B")
    assert verdict(paired_bootstrap(y, bad, good), "A", "B").startswith("B beats A")
    rng = np.random.default_rng(3)
    twin = np.where(rng.random(500) < 0.7, y, rng.integers(0, 6, 500))  # another model just as good
    assert "within noise" in verdict(paired_bootstrap(y, good, twin), "A", "B")


def test_split_figures_score_the_most_probable_count_with_ece_and_intervals():
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    figures = split_figures([0, 1, 1, 1], probs, 2)
    assert figures.accuracy == pytest.approx(0.75)
    assert figures.ece == pytest.approx(expected_calibration_error(probs, [0, 1, 1, 1]))
    assert isinstance(figures.intervals, Intervals)


def test_split_figures_also_score_the_rounded_expected_count():
    """A photo torn between 1 and 3 items is called 1 (or 3) by its most probable count, 2 by its
    expected count: lower RMSE on such photos, at the price of accuracy elsewhere."""
    probs = np.array([[0, 0.5, 0, 0.5], [0, 0.45, 0.1, 0.45], [0.6, 0, 0, 0.4], [0, 0, 0, 1.0]])
    assert list(rounded_expected_count(probs)) == [2, 2, 1, 3]
    figures = split_figures([2, 2, 0, 3], probs, 4)
    assert figures.accuracy == pytest.approx(0.5) and figures.rmse == pytest.approx(np.sqrt(2 / 4))
    expected = figures.rounded_expected
    assert expected.accuracy == pytest.approx(0.75) and expected.rmse == pytest.approx(0.5)
    assert isinstance(expected.intervals, Intervals)


def test_with_interval_formats_a_figure_and_its_interval():
    assert with_interval(0.5612, Interval(0.5, 0.62)) == "0.561 (0.500–0.620)"
    assert with_interval(0.5612, Interval(0.5, 0.62), percent=True) == "56.1% (50.0%–62.0%)"
    assert with_interval(1.234, Interval(1.1, 1.4), digits=2) == "1.23 (1.10–1.40)"
    assert with_interval(0.5, None) == "0.500" and with_interval(None, None) == ""
    m = SplitFigures(accuracy=0.5612, balanced_accuracy=0.4, rmse=1.234,
                     intervals=Intervals(Interval(0.5, 0.62), Interval(0.3, 0.5), Interval(1.1, 1.4)))
    assert headline_text(m) == ("0.561 (0.500–0.620)", "0.400 (0.300–0.500)", "1.23 (1.10–1.40)")
    assert headline_text(SplitFigures(accuracy=0.5)) == ("0.500", "", "") and headline_text(None) == ("", "", "")


def test_split_figures_read_back_from_their_stored_form():
    """A record written by the current release (JSON) reads back as the same figures."""
    import json

    y = np.array([0, 1, 2, 5, 6, 6, 6, 6])
    probs = np.eye(7)[[0, 1, 6, 5, 6, 6, 5, 6]] * 0.9 + 0.1 / 7
    figures = split_figures(y, probs, 7, open_top=True)
    stored = json.loads(json.dumps(figures.to_dict()))
    assert set(stored) == {"n", "accuracy", "balanced_accuracy", "rmse", "per_class_accuracy", "per_class_rmse",
                           "confusion_matrix", "ece", "intervals", "per_class_intervals", "rounded_expected",
                           "open_class", "paper_task"}
    assert stored["intervals"]["accuracy"] == list(figures.intervals.accuracy)
    assert SplitFigures.from_dict(stored) == figures


def test_the_papers_task_restricts_the_answer_to_zero_to_five_on_bins_of_zero_to_five():
    """A bin of 3 whose most probable answer is "more than 5" is wrong for the product and right for
    the paper's task when 3 is its most probable count among 0..5; bins of more are left out."""
    from core.evaluation.metrics import paper_task

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(7), 20)
    probs = rng.dirichlet(np.ones(7) * 0.3, len(y))
    probs[y == 3] = [0.02, 0.03, 0.05, 0.3, 0.1, 0.05, 0.45]  # "more than 5" first, 3 second
    figures = split_figures(y, probs, 7, open_top=True)
    task = figures.paper_task
    assert task.n == 120 and figures.per_class_accuracy[3] == 0.0 and task.per_class_accuracy[3] == 1.0
    answer = probs[y < 6, :6].argmax(1)
    assert task.accuracy == pytest.approx(np.mean(answer == y[y < 6]))
    assert task.rmse == pytest.approx(np.sqrt(np.mean((answer - y[y < 6]) ** 2)))
    for key in ("accuracy", "balanced_accuracy", "rmse"):
        lo, hi = getattr(task.intervals, key)
        assert lo <= getattr(task, key) <= hi
    closed = paper_task(y[y < 6], probs[y < 6, :6], 6, open_top=False)  # a 0..5 model: the plain argmax
    assert closed.accuracy == pytest.approx(np.mean(answer == y[y < 6]))
    assert paper_task([6, 6], probs[:2], 7, open_top=True) is None


def test_ece_by_prior_scores_the_shown_probabilities_under_each_prior():
    from core.evaluation.metrics import ece_by_prior

    rng = np.random.default_rng(1)
    y = rng.choice(6, 3000, p=[0.02, 0.08, 0.15, 0.2, 0.25, 0.3])
    likelihood = np.full((3000, 6), 0.1)
    likelihood[np.arange(3000), y] = 0.5  # as sure of every photo; only the prior tells the mix
    by_prior = ece_by_prior(likelihood, y, 6)
    assert set(by_prior) == {"uniform", "natural", "batch"}
    assert by_prior["batch"] < by_prior["uniform"]  # the batch's own mix fits the batch
