"""What more photos buy: a preset trained on nested shares of the training split, scored on the same
validation photos, and accuracy fitted against log(training photos) and carried out to ABID's size.

Each point is one single run of the preset with `train_share` (and `train_source`: every photo, the
224 px natural-mix photos only, or the originals only) set, stored and reused like any run; the
share-1 point of `make run`'s preset is `make run`'s own model. Every point is scored by
`core.analysis.screening.screen` on the whole validation split (the paper's task and the product's
answer, per source, with intervals), and consecutive shares are compared paired on those photos.

The fit, accuracy = a + b * ln(photos), is made on the paper's task (bins of 0..5 items) per training
and scoring source. Its interval comes from resampling the validation photos, every point with the
same resample: it says how sure the line is given these photos and runs, not given other seeds
(`seeds` repeats a point). A straight line in log(photos) is an assumption; the anchors, trained on
100-300 times more photos, show where it is likely to bend.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.analysis.screening import ScreenedRun, screen
from core.cnn.recipes import NEWER_DEFAULTS
from core.data.sources import NATURAL_224, ORIGINALS, TRAIN_SOURCES, photo_sources
from core.evaluation.metrics import PairedDifference, with_interval
from core.store.database import Store, same_root
from core.store.records import Experiment

SHARES = (0.125, 0.25, 0.5, 1.0)
EXTRAPOLATE_TO = (20_000, 50_000, 150_000, 324_000)
EVAL_SOURCES = ("all", NATURAL_224, ORIGINALS)
BOOTSTRAP_ROUNDS = 1000
CURVE_FIELDS = ("train_share", "train_source", "seed")  # what may differ between a curve's points


@dataclass(frozen=True)
class Anchor:
    """A published result on ABID's paper task: its photos and accuracy."""

    label: str
    photos: int
    accuracy: float


ANCHORS = (
    Anchor("ResNet18 fine-tuned", 48_000, 0.486),
    Anchor("the paper (ResNet34 + Adam)", 324_000, 0.562),
    Anchor("Park", 481_000, 0.557),
)


@dataclass(frozen=True)
class CurvePoint:
    """One run of the curve and its validation figures (overall and per source)."""

    experiment: Experiment
    train_source: str
    share: float
    seed: int
    photos: int  # training photos it was trained on
    screened: ScreenedRun

    def accuracy(self, source: str = "all") -> float | None:
        """Accuracy on the paper's task (bins of 0..5 items) on the validation photos of `source`."""
        figures = self.screened.overall if source == "all" else self.screened.by_source.get(source)
        task = figures.paper_task if figures else None
        return task.accuracy if task else None


@dataclass(frozen=True)
class Step:
    """A share against the next smaller one (same source and seed), paired on the same photos."""

    train_source: str
    seed: int
    smaller: float
    larger: float
    differences: dict[str, PairedDifference]
    verdict: str
    photos: int


@dataclass(frozen=True)
class Projection:
    photos: int
    accuracy: float
    low: float
    high: float


@dataclass(frozen=True)
class LogFit:
    """accuracy = intercept + slope * ln(photos), on the paper's task, for runs trained on
    `train_source` and scored on the validation photos of `eval_source`."""

    train_source: str
    eval_source: str
    intercept: float
    slope: float  # accuracy per e-fold of photos; per doubling: slope * ln 2
    slope_low: float
    slope_high: float
    points: int
    photos: int  # the most training photos of the fitted runs
    projections: tuple[Projection, ...]

    def at(self, photos: float) -> float:
        return float(self.intercept + self.slope * np.log(photos))

    @property
    def per_doubling(self) -> float:
        return float(self.slope * np.log(2))

    def photos_for(self, gain: float, start: float | None = None) -> float:
        """Training photos at which the line is `gain` above where it is at `start` (the most photos
        fitted); infinite where the line does not rise."""
        start = self.photos if start is None else start
        return float(start * np.exp(gain / self.slope)) if self.slope > 0 else float("inf")


@dataclass(frozen=True)
class LearningCurve:
    preset: str
    points: tuple[CurvePoint, ...]
    steps: tuple[Step, ...]
    fits: tuple[LogFit, ...]
    with_recounts: tuple[CurvePoint, ...] = ()  # runs of the preset trained with people's recounts added

    def fit(self, train_source: str = "all", eval_source: str = NATURAL_224) -> LogFit | None:
        return next((f for f in self.fits if (f.train_source, f.eval_source) == (train_source, eval_source)), None)

    def table(self) -> pd.DataFrame:
        """One row per point: what it trained on and its validation figures with intervals."""
        rows = []
        for p in self.points:
            row: dict[str, object] = {"trained on": p.train_source, "share": p.share, "seed": p.seed,
                                      "training photos": p.photos}
            for source in EVAL_SOURCES:
                figures = p.screened.overall if source == "all" else p.screened.by_source.get(source)
                task = figures.paper_task if figures else None
                ci = task.intervals if task else None
                name = "all" if source == "all" else source
                row[f"{name}: accuracy, paper's task"] = (with_interval(task.accuracy, ci.accuracy if ci else None)
                                                          if task else "")
                row[f"{name}: balanced accuracy, product"] = (
                    with_interval(figures.balanced_accuracy, figures.intervals.balanced_accuracy
                                  if figures.intervals else None) if figures else "")
            rows.append(row)
        return pd.DataFrame(rows)


def curve_overrides(share: float, source: str, seed: int) -> dict:
    """The recipe overrides of one point (defaults left out, so share 1 of every photo is the preset itself)."""
    wanted = {"train_share": share, "train_source": source}
    return {**{k: v for k, v in wanted.items() if v != NEWER_DEFAULTS[k]}, **({"seed": seed} if seed else {})}


def train_learning_curve(data_root: str | Path, preset: str, store: Store, shares: Sequence[float] = SHARES,
                         seeds: Sequence[int] = (0,), sources: Sequence[str] = ("all",),
                         recounts: Path | None = None, overrides: dict | None = None,
                         progress: bool = True) -> list[str]:
    """Train (or reuse) every point of the curve: each source x share x seed (with the preset's other
    `overrides`, if any); their experiment ids."""
    from core.cnn import train_cnn

    unknown = [s for s in sources if s not in TRAIN_SOURCES]
    if unknown:
        raise ValueError(f"unknown training source {unknown}: one of {tuple(TRAIN_SOURCES)}")
    return [train_cnn(data_root, preset, store, overrides={**(overrides or {}), **curve_overrides(share, source, seed)},
                      progress=progress, recounts=recounts)
            for source in sources for share in sorted(shares) for seed in seeds]


def _curve_params(exp: Experiment) -> tuple[str, float, int]:
    p = exp.params
    return str(p.get("train_source", "all")), float(p.get("train_share", 1.0)), int(p.get("seed", 0))


def _base(exp: Experiment) -> dict:
    return {k: v for k, v in exp.params.items() if k not in CURVE_FIELDS}


def curve_runs(store: Store, reference: Experiment, recounted: bool = False) -> list[Experiment]:
    """The finished single runs of the same recipe as `reference` on its data that differ from it only
    in share, source and seed, trained on the data alone (or, `recounted`, with people's recounts)."""
    return [e for e in store.experiments("finished")
            if e.preset == reference.preset and e.is_model and not e.folds
            and bool(e.recounted_photos) == recounted and same_root(e.data_root, reference.data_root)
            and _base(e) == _base(reference)]


def learning_curve(store: Store, reference: Experiment, rounds: int = BOOTSTRAP_ROUNDS,
                   seed: int = 0) -> LearningCurve:
    """The curve of `reference`'s recipe from the runs in the store (`curve_runs`): each point's
    validation figures, the paired steps between shares and the log fits with their projections."""
    points, recounted = (tuple(CurvePoint(e, *_curve_params(e), int(e.split_counts.get("train", 0)),
                                          screen(store, [e], "val", _label(e)))
                               for e in sorted(curve_runs(store, reference, with_recounts), key=_curve_params))
                         for with_recounts in (False, True))
    return LearningCurve(reference.preset, points, tuple(_steps(points)), tuple(_fits(store, points, rounds, seed)),
                         recounted)


def _label(exp: Experiment) -> str:
    """A point in words, e.g. "1/8 of the natural-mix photos" (as the paired verdicts name it)."""
    source, share, seed = _curve_params(exp)
    part = "all" if share == 1 else f"1/{round(1 / share)}" if (1 / share).is_integer() else f"{share:g}"
    photos = {"all": "training photos", "natural": "natural-mix training photos",
              "originals": "original training photos"}[source]
    return f"{part} of the {photos}" + (f" (seed {seed})" if seed else "") + \
        (f" + {exp.recounted_photos:,} recounted" if exp.recounted_photos else "")


def _steps(points: Sequence[CurvePoint]) -> Iterable[Step]:
    by_line: dict[tuple[str, int], list[CurvePoint]] = {}
    for p in points:
        by_line.setdefault((p.train_source, p.seed), []).append(p)
    for (source, seed), line in by_line.items():
        line.sort(key=lambda p: p.share)
        for small, large in zip(line, line[1:], strict=False):
            differences, verdict, photos = large.screened.versus(small.screened)
            yield Step(source, seed, small.share, large.share, differences, verdict, photos)


def _paper_correct(store: Store, points: Sequence[CurvePoint]) -> tuple[np.ndarray, np.ndarray]:
    """Whether each point counted each shared validation photo of 0..5 items right on the paper's task
    (the most probable of 0..5), and each photo's source."""
    frames = [store.predictions(p.experiment.id, "val").set_index("image_id") for p in points]
    shared = frames[0].index
    for frame in frames[1:]:
        shared = shared.intersection(frame.index)
    shared = shared.sort_values()
    exp = points[0].experiment
    closed = (exp.num_classes or 0) - int(exp.open_top)
    truth = frames[0].loc[shared, "true_count"].to_numpy()
    kept = truth < closed
    correct = np.stack([np.stack(f.loc[shared, "probs"].to_list())[kept, :closed].argmax(axis=1) == truth[kept]
                        for f in frames])
    sources = np.array(photo_sources(frames[0].loc[shared, "path"].to_list()))[kept]
    return correct, sources


def _fits(store: Store, points: Sequence[CurvePoint], rounds: int, seed: int) -> Iterable[LogFit]:
    """A log fit per training source (with at least two shares) and scoring source, its interval from
    `rounds` resamples of the validation photos shared by all points."""
    if not points:
        return
    correct, sources = _paper_correct(store, points)
    rng = np.random.default_rng(seed)
    for train_source in sorted({p.train_source for p in points}):
        on = np.array([p.train_source == train_source for p in points])
        photos = np.array([p.photos for p in points])[on]
        if len(set(photos)) < 2:
            continue
        x = np.log(photos)
        for eval_source in EVAL_SOURCES:
            cols = np.flatnonzero(sources == eval_source) if eval_source != "all" else np.arange(len(sources))
            if not len(cols):
                continue
            hits = correct[on][:, cols]
            intercept, slope = _line(x, hits.mean(axis=1)[None])
            idx = rng.integers(0, len(cols), size=(rounds, len(cols)))
            a, b = _line(x, hits[:, idx].mean(axis=2).T)
            projections = tuple(
                Projection(n, float(intercept[0] + slope[0] * np.log(n)),
                           *(float(q) for q in np.percentile(a + b * np.log(n), [2.5, 97.5])))
                for n in EXTRAPOLATE_TO)
            low, high = np.percentile(b, [2.5, 97.5])
            yield LogFit(train_source, eval_source, float(intercept[0]), float(slope[0]), float(low), float(high),
                         len(photos), int(photos.max()), projections)


def _line(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares intercepts and slopes of each row of `y` (rounds, points) against `x` (points)."""
    dx = x - x.mean()
    slope = (y - y.mean(axis=1, keepdims=True)) @ dx / (dx @ dx)
    return y.mean(axis=1) - slope * x.mean(), slope


def fits_table(curve: LearningCurve) -> pd.DataFrame:
    """Each fit's slope per doubling and its projections with intervals, beside the anchors."""
    rows = []
    for fit in curve.fits:
        row: dict[str, object] = {"trained on": fit.train_source, "scored on": fit.eval_source,
                                  "per doubling": f"{fit.per_doubling:+.3f} ({fit.slope_low * np.log(2):+.3f}"
                                                  f"–{fit.slope_high * np.log(2):+.3f})"}
        for p in fit.projections:
            row[f"at {p.photos:,}"] = f"{p.accuracy:.3f} ({p.low:.3f}–{p.high:.3f})"
        row["+0.05 at"] = f"{fit.photos_for(0.05):,.0f} photos"
        rows.append(row)
    return pd.DataFrame(rows)
