"""Every figure binsight reports is computed here, so all pages and tables agree.

Counts are unbalanced (half the sample holds one item), so balanced accuracy always stands
beside accuracy; RMSE treats the count as a number, as the paper does.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix

from core.evaluation.priors import PRIORS, stated_prior, with_prior


class Interval(NamedTuple):
    """A 95% bootstrap interval (stored as the JSON list `[low, high]`)."""

    low: float
    high: float


@dataclass(frozen=True)
class Intervals:
    """95% bootstrap intervals of the headline figures."""

    accuracy: Interval
    balanced_accuracy: Interval
    rmse: Interval

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Intervals:
        return cls(*(Interval(*data[name]) for name in INTERVAL_METRICS))


@dataclass(frozen=True)
class Headline:
    """Accuracy, balanced accuracy and RMSE of one way of naming the count, with their intervals."""

    accuracy: float
    balanced_accuracy: float
    rmse: float
    intervals: Intervals | None = None


@dataclass(frozen=True)
class OpenClass:
    """How the open top class ("more than K-2" items) did: its photos, its recall and that recall's interval."""

    n: int
    recall: float | None
    interval: Interval | None


@dataclass(frozen=True)
class SplitFigures:
    """A split's figures (`count_report`, or the fuller `split_figures`).

    Every field has a default because records of older releases hold only some of them (the
    first release's CNN runs kept accuracy, balanced accuracy and RMSE of their validation split).
    Per-class lists are indexed by count; None where the split has no photo of that count.
    """

    n: int | None = None
    accuracy: float | None = None
    balanced_accuracy: float | None = None
    rmse: float | None = None
    per_class_accuracy: list[float | None] = dataclasses.field(default_factory=list)
    per_class_rmse: list[float | None] = dataclasses.field(default_factory=list)
    confusion_matrix: list[list[int]] = dataclasses.field(default_factory=list)
    ece: float | None = None
    intervals: Intervals | None = None
    per_class_intervals: list[Interval | None] = dataclasses.field(default_factory=list)
    rounded_expected: Headline | None = None  # the headline figures had the rounded expected count been shown
    open_class: OpenClass | None = None  # models with an open top class only
    paper_task: SplitFigures | None = None  # the paper's task on the same split (`paper_task`)

    def to_dict(self) -> dict[str, Any]:
        """The stored (JSON) form: the same keys earlier releases wrote; absent figures left out."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SplitFigures:
        """From the stored form; keys this release does not know (older code) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)} & set(data)
        values = {k: data[k] for k in known}
        if values.get("intervals") is not None:
            values["intervals"] = Intervals.from_dict(values["intervals"])
        values["per_class_intervals"] = [None if ci is None else Interval(*ci)
                                         for ci in values.get("per_class_intervals") or []]
        if (headline := values.get("rounded_expected")) is not None:
            values["rounded_expected"] = Headline(
                headline["accuracy"], headline["balanced_accuracy"], headline["rmse"],
                Intervals.from_dict(headline["intervals"]) if headline.get("intervals") else None)
        if (open_class := values.get("open_class")) is not None:
            interval = open_class.get("interval")
            values["open_class"] = OpenClass(open_class["n"], open_class.get("recall"),
                                             None if interval is None else Interval(*interval))
        if (task := values.get("paper_task")) is not None:
            values["paper_task"] = cls.from_dict(task)
        return cls(**values)

    @property
    def headline(self) -> Headline | None:
        """Accuracy, balanced accuracy and RMSE with their intervals; None where they were not recorded."""
        if self.accuracy is None or self.balanced_accuracy is None or self.rmse is None:
            return None
        return Headline(self.accuracy, self.balanced_accuracy, self.rmse, self.intervals)


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    with warnings.catch_warnings():  # a split may lack a count the model predicts: that is fine here
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y_true, y_pred))


def count_report(y_true, y_pred, num_classes: int) -> SplitFigures:
    """n, accuracy, balanced accuracy, RMSE, per-class accuracy and RMSE, confusion matrix.

    Per-class values are None for classes absent from `y_true`.
    """
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    if len(y_true) == 0:
        raise ValueError("no samples to evaluate")
    errors = (y_pred - y_true).astype(float)
    per_class_acc, per_class_rmse = [], []
    for cls in range(num_classes):
        mask = y_true == cls
        per_class_acc.append(float(np.mean(y_pred[mask] == cls)) if mask.any() else None)
        per_class_rmse.append(float(np.sqrt(np.mean(errors[mask] ** 2))) if mask.any() else None)
    return SplitFigures(
        n=int(len(y_true)),
        accuracy=float(np.mean(y_true == y_pred)),
        balanced_accuracy=_balanced_accuracy(y_true, y_pred),
        rmse=float(np.sqrt(np.mean(errors**2))),
        per_class_accuracy=per_class_acc,
        per_class_rmse=per_class_rmse,
        confusion_matrix=confusion_matrix(y_true, y_pred, labels=list(range(num_classes))).tolist(),
    )


def expected_calibration_error(probs: np.ndarray, y_true, bins: int = 15) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width confidence bins."""
    probs = np.asarray(probs, dtype=float)
    y_true = np.asarray(y_true, dtype=int)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (confidence > lo) & (confidence <= hi)
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def accuracy_coverage(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy on the most-confident share of bins, for each coverage from 1/N to 1.

    Read it as: "if the model decides the `coverage` most certain bins and people recount the
    rest, it is right on `accuracy` of the ones it decides".
    """
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(correct[order])
    n = np.arange(1, len(order) + 1)
    return n / len(order), hits / n


BOOTSTRAP_ROUNDS = 1000
INTERVAL_METRICS = ("accuracy", "balanced_accuracy", "rmse")


def _stratified_resamples(y_true: np.ndarray, rounds: int, seed: int) -> np.ndarray:
    """(rounds, N) photo indices, each round resampling photos with replacement within each count,
    so every resample keeps the split's mix of counts (balanced accuracy stays defined)."""
    rng = np.random.default_rng(seed)
    out = np.empty((rounds, len(y_true)), dtype=np.int64)
    for cls in np.unique(y_true):
        where = np.flatnonzero(y_true == cls)
        out[:, where] = where[rng.integers(0, len(where), size=(rounds, len(where)))]
    return out


def _figures(y_true: np.ndarray, y_pred: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(rounds, 3): accuracy, balanced accuracy (mean recall over `classes`) and RMSE of each row."""
    correct = y_true == y_pred
    # stratified resampling keeps every photo position's count, so row 0 tells where each count is
    recalls = [correct[:, y_true[0] == cls].mean(axis=1) for cls in classes]
    return np.column_stack([correct.mean(axis=1), np.mean(recalls, axis=0),
                            np.sqrt(((y_pred - y_true) ** 2).mean(axis=1))])


def bootstrap_intervals(y_true, y_pred, level: float = 0.95, rounds: int = BOOTSTRAP_ROUNDS,
                        seed: int = 0) -> Intervals:
    """95% percentile-bootstrap intervals of accuracy, balanced accuracy and RMSE, resampling
    photos stratified by count."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    if len(y_true) == 0:
        raise ValueError("no samples to evaluate")
    idx = _stratified_resamples(y_true, rounds, seed)
    figures = _figures(y_true[idx], y_pred[idx], np.unique(y_true))
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(figures, [tail, 100 - tail], axis=0)
    # rounded outwards, so an interval always holds the figure it brackets
    return Intervals(*(Interval(float(np.floor(a * 1e4) / 1e4), float(np.ceil(b * 1e4) / 1e4))
                       for a, b in zip(lo, hi, strict=True)))


def per_class_intervals(y_true, y_pred, num_classes: int, level: float = 0.95, rounds: int = BOOTSTRAP_ROUNDS,
                        seed: int = 0) -> list[Interval | None]:
    """95% bootstrap interval of each count's accuracy (resampling that count's photos); None where absent."""
    y_true = np.asarray(y_true, dtype=int)
    correct = np.asarray(y_pred, dtype=int) == y_true
    rng = np.random.default_rng(seed)
    tail = (1 - level) / 2 * 100
    out: list[Interval | None] = []
    for cls in range(num_classes):
        hits = correct[y_true == cls]
        if not len(hits):
            out.append(None)
            continue
        means = hits[rng.integers(0, len(hits), size=(rounds, len(hits)))].mean(axis=1)
        lo, hi = np.percentile(means, [tail, 100 - tail])
        out.append(Interval(float(np.floor(lo * 1e4) / 1e4), float(np.ceil(hi * 1e4) / 1e4)))
    return out


@dataclass(frozen=True)
class PairedDifference:
    """One metric of a paired comparison: A minus B, its interval, and the share of resamples in
    which A came out better."""

    difference: float
    low: float
    high: float
    a_better_share: float


def paired_bootstrap(y_true, pred_a, pred_b, level: float = 0.95, rounds: int = BOOTSTRAP_ROUNDS,
                     seed: int = 0) -> dict[str, PairedDifference]:
    """A minus B on the same photos, resampled together (stratified by count): per metric the
    observed difference, its interval, and the share of resamples in which A is better."""
    y_true = np.asarray(y_true, dtype=int)
    pred_a, pred_b = np.asarray(pred_a, dtype=int), np.asarray(pred_b, dtype=int)
    if len(y_true) == 0:
        raise ValueError("no photos that both models scored")
    classes = np.unique(y_true)
    idx = _stratified_resamples(y_true, rounds, seed)
    diff = _figures(y_true[idx], pred_a[idx], classes) - _figures(y_true[idx], pred_b[idx], classes)
    observed = _figures(y_true[None], pred_a[None], classes)[0] - _figures(y_true[None], pred_b[None], classes)[0]
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(diff, [tail, 100 - tail], axis=0)
    out = {}
    for k, name in enumerate(INTERVAL_METRICS):
        better = diff[:, k] < 0 if name == "rmse" else diff[:, k] > 0
        out[name] = PairedDifference(round(float(observed[k]), 4), round(float(lo[k]), 4), round(float(hi[k]), 4),
                                     round(float(better.mean()), 4))
    return out


def with_interval(value: float | None, interval: Interval | None, percent: bool = False, digits: int = 3) -> str:
    """`0.561 (0.500–0.620)`: a figure and its 95% bootstrap interval, where one was computed;
    "" for a figure not recorded. RMSE reads best with `digits=2`."""
    if value is None:
        return ""
    fmt = (lambda x: f"{x:.1%}") if percent else (lambda x: f"{x:.{digits}f}")
    return f"{fmt(value)} ({fmt(interval.low)}–{fmt(interval.high)})" if interval else fmt(value)


def headline_text(figures: SplitFigures | None, percent: bool = False) -> tuple[str, str, str]:
    """Accuracy, balanced accuracy and RMSE, each with its interval (`with_interval`); "" where not recorded."""
    if figures is None:
        return "", "", ""
    ci = figures.intervals
    return (with_interval(figures.accuracy, None if ci is None else ci.accuracy, percent),
            with_interval(figures.balanced_accuracy, None if ci is None else ci.balanced_accuracy, percent),
            with_interval(figures.rmse, None if ci is None else ci.rmse, digits=2))


def verdict(comparison: Mapping[str, PairedDifference], name_a: str, name_b: str,
            metric: str = "balanced_accuracy") -> str:
    """One sentence on a paired comparison: who is better on `metric`, or that it is within noise."""
    row = comparison[metric]
    label = metric.replace("_", " ")
    span = f"difference {row.difference:+.3f}, 95% interval {row.low:+.3f} to {row.high:+.3f}"
    if row.low > 0 or row.high < 0:
        lower_is_better = metric == "rmse"
        a_wins = (row.high < 0) if lower_is_better else (row.low > 0)
        winner, loser = (name_a, name_b) if a_wins else (name_b, name_a)
        return f"{winner} beats {loser} on {label} ({span})."
    return f"{name_a} and {name_b} are within noise of each other on {label} ({span})."


def expected_count(probs: np.ndarray) -> np.ndarray:
    """The probability-weighted mean count of each row of `probs` (or of one probability vector);
    the open top class counts as K-1 items, as in RMSE."""
    probs = np.asarray(probs, dtype=float)
    return probs @ np.arange(probs.shape[-1])


def rounded_expected_count(probs: np.ndarray) -> np.ndarray:
    """The expected count under `probs`, rounded: the other candidate for "the count". It trades
    accuracy for a lower RMSE."""
    return np.rint(expected_count(probs)).astype(int)


def _headline(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> Headline:
    """Accuracy, balanced accuracy and RMSE of `y_pred`, with their intervals."""
    headline = count_report(y_true, y_pred, num_classes).headline
    assert headline is not None  # count_report fills all three
    return dataclasses.replace(headline, intervals=bootstrap_intervals(y_true, y_pred))


def paper_task(y_true, probs: np.ndarray, num_classes: int, open_top: bool = False) -> SplitFigures | None:
    """The paper's task (and Park's): bins of 0..K-2 items (0..5) with the answer restricted to
    those counts, the argmax of `probs` over them; n, accuracy, balanced accuracy, RMSE, their
    intervals and per-count accuracy. For a closed model (no "more than" class) it is every photo
    and the plain argmax. None when no photo holds 0..K-2 items."""
    probs = np.asarray(probs, dtype=float)
    y_true = np.asarray(y_true, dtype=int)
    closed_classes = num_classes - int(open_top)
    kept = y_true < closed_classes
    if not kept.any():
        return None
    answer = probs[kept, :closed_classes].argmax(axis=1)
    report = count_report(y_true[kept], answer, closed_classes)
    return SplitFigures(n=report.n, accuracy=report.accuracy, balanced_accuracy=report.balanced_accuracy,
                        rmse=report.rmse, per_class_accuracy=report.per_class_accuracy,
                        intervals=bootstrap_intervals(y_true[kept], answer))


def ece_by_prior(likelihood: np.ndarray, y_true, num_classes: int, open_top: bool = False) -> dict[str, float]:
    """ECE of the probabilities shown under each stated prior (`core.evaluation.priors.PRIORS`; "batch": the
    mix of these photos as `core.evaluation.priors.batch_mix` estimates it), from the photos' likelihoods: which
    prior these photos' shown probabilities are calibrated under."""
    likelihood = np.asarray(likelihood, dtype=float)
    return {name: round(expected_calibration_error(
        with_prior(likelihood, stated_prior(name, num_classes, open_top, likelihood)), y_true), 5) for name in PRIORS}


def split_figures(y_true, probs: np.ndarray, num_classes: int, open_top: bool = False,
                  y_pred=None) -> SplitFigures:
    """A split's figures: `count_report` of the shown counts (`y_pred`, default the most probable),
    ECE of the probabilities, bootstrap intervals.

    With an open top class ("more than K-2" items), accuracy, balanced accuracy, RMSE and their
    intervals are on the paper's bins, the photos of 0..K-2 items, with the product's answer (a
    photo called "more than" counts as wrong, at K-1 items); the open class's own recall stands
    beside them (`open_class`, and the last entry of `per_class_accuracy`), and the confusion
    matrix holds every photo.
    `rounded_expected` holds the headline figures had the rounded expected count been shown, and
    `paper_task` those of the paper's task (`paper_task`: the answer restricted to 0..K-2).
    """
    probs = np.asarray(probs, dtype=float)
    y_true = np.asarray(y_true, dtype=int)
    y_pred = probs.argmax(axis=1) if y_pred is None else np.asarray(y_pred, dtype=int)
    closed = y_true < num_classes - 1 if open_top else np.ones(len(y_true), dtype=bool)
    report = count_report(y_true[closed], y_pred[closed], num_classes)
    class_intervals = per_class_intervals(y_true, y_pred, num_classes)
    report = dataclasses.replace(
        report, ece=expected_calibration_error(probs, y_true),
        intervals=bootstrap_intervals(y_true[closed], y_pred[closed]), per_class_intervals=class_intervals,
        rounded_expected=_headline(y_true[closed], rounded_expected_count(probs)[closed], num_classes),
        paper_task=paper_task(y_true, probs, num_classes, open_top))
    if open_top:
        top = num_classes - 1
        hits = y_pred[y_true == top] == top
        recall = float(hits.mean()) if len(hits) else None
        report = dataclasses.replace(
            report, per_class_accuracy=[*report.per_class_accuracy[:top], recall],
            confusion_matrix=confusion_matrix(y_true, y_pred, labels=list(range(num_classes))).tolist(),
            open_class=OpenClass(int(len(hits)), recall, class_intervals[top]))
    return report


@dataclasses.dataclass(frozen=True)
class Confusion:
    """One cell of a confusion matrix: `photos` of the `of` photos holding `true` items were counted as `predicted`."""

    true: int
    predicted: int
    photos: int
    of: int

    @property
    def share(self) -> float:
        return self.photos / self.of if self.of else 0.0


def largest_confusion(matrix: Sequence[Sequence[int]]) -> Confusion | None:
    """The most frequent mistake of a confusion matrix (rows: true count), None where there is none."""
    cells = np.asarray(matrix, dtype=int)
    if cells.size == 0:
        return None
    off = cells.copy()
    np.fill_diagonal(off, 0)
    if not off.any():
        return None
    true, predicted = np.unravel_index(int(off.argmax()), off.shape)
    return Confusion(int(true), int(predicted), int(off[true, predicted]), int(cells[true].sum()))
