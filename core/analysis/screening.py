"""Screening levers: runs' figures on one split, overall and per source, side by side.

Levers are chosen on the validation split (or out of fold, for cross-validated runs); the test
split is for reporting the chosen one, once. The figures are computed again from the predictions
each run stored (the probabilities it shows, `core.runs.lifecycle`), by `core.evaluation.metrics.split_figures`, so
every row is scored by the same rule as the run's own record. A mixed ensemble (the paper's third
future-work item) is the mean of several runs' calibrated likelihoods over the photos they share
(`core.training.ensemble.held_out`), decided like one run, without the recalibration
`train.py ensemble` adds.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.data.sources import photo_sources
from core.evaluation.calibration import decide
from core.evaluation.metrics import (
    PairedDifference,
    SplitFigures,
    paired_bootstrap,
    split_figures,
    verdict,
    with_interval,
)
from core.store.database import Store
from core.store.records import Experiment
from core.training.ensemble import held_out

SPLITS = ("val", "oof", "test")


@dataclass(frozen=True)
class ScreenedRun:
    """One lever's figures: a run, or the ensemble of several (`experiments`), on `split`."""

    label: str
    experiments: tuple[Experiment, ...]
    split: str
    overall: SplitFigures
    by_source: dict[str, SplitFigures]
    shown: pd.DataFrame = field(repr=False)  # image_id, true_count, pred_count: the counts shown, per photo

    def versus(self, other: ScreenedRun) -> tuple[dict[str, PairedDifference], str, int]:
        """This lever against `other`, paired on the photos both scored (`paired_comparison`, on the
        bins of 0..5 items)."""
        top = self.experiments[0].num_classes
        open_class = top - 1 if top is not None and self.experiments[0].open_top else None
        return paired_comparison(self.shown, other.shown, self.label, other.label, open_class)

    @property
    def minutes(self) -> float | None:
        """Training minutes of the run (of all its members, for an ensemble)."""
        seconds = [e.train_seconds for e in self.experiments]
        return None if None in seconds else sum(s for s in seconds if s is not None) / 60


def screen(store: Store, experiments: Sequence[Experiment], split: str = "val",
           label: str | None = None) -> ScreenedRun:
    """The figures of a run, or of the mean of several runs' probabilities, on `split`, overall
    and per source (`core.data.sources`)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not experiments:
        raise ValueError("screen at least one run")
    shapes = {(e.num_classes, e.open_top) for e in experiments}
    if len(shapes) > 1:
        raise ValueError(f"an ensemble needs runs with the same classes; got {sorted(shapes, key=str)}")
    ((num_classes, open_top),) = shapes
    if num_classes is None:
        raise ValueError(f"{experiments[0].name} did not record its classes (not a model run)")
    rows = held_out(store, experiments, split)
    probs, truth = rows.mean(), rows.counts
    sources = np.array(photo_sources(rows.paths.tolist()))
    scored = truth < num_classes - 1 if open_top else np.ones(len(truth), dtype=bool)  # bins of 0..5 items
    by_source = {name: split_figures(truth[sources == name], probs[sources == name], num_classes, open_top)
                 for name in sorted(set(sources)) if (scored & (sources == name)).any()}
    shown = pd.DataFrame({"image_id": rows.image_ids, "true_count": truth, "pred_count": decide(probs)})
    return ScreenedRun(label or " + ".join(e.name for e in experiments), tuple(experiments), split,
                       split_figures(truth, probs, num_classes, open_top), by_source, shown)


def _columns(figures: SplitFigures, prefix: str) -> dict[str, object]:
    task = figures.paper_task or SplitFigures()
    ci, task_ci = figures.intervals, task.intervals
    return {
        f"{prefix}n (0-5)": task.n,
        f"{prefix}accuracy, paper's task": with_interval(task.accuracy, task_ci.accuracy if task_ci else None),
        f"{prefix}balanced accuracy, product": with_interval(figures.balanced_accuracy,
                                                             ci.balanced_accuracy if ci else None),
        f"{prefix}RMSE, paper's task": with_interval(task.rmse, task_ci.rmse if task_ci else None, digits=2),
        f"{prefix}ECE": None if figures.ece is None else round(figures.ece, 3),
    }


def paired_comparison(a: pd.DataFrame, b: pd.DataFrame, name_a: str, name_b: str,
                      open_class: int | None = None) -> tuple[dict[str, PairedDifference], str, int]:
    """Paired bootstrap of two models' stored predictions on the photos both scored (those of the
    open class `open_class` left out, as the paper's figures leave them out): (per-metric
    differences with intervals, the verdict in words, how many photos)."""
    both = a.merge(b, on="image_id", suffixes=("_a", "_b"))
    if open_class is not None:
        both = both[both["true_count_a"] != open_class]
    if both.empty:
        return {}, f"{name_a} and {name_b} scored no photo in common: they cannot be compared head to head.", 0
    comparison = paired_bootstrap(both["true_count_a"], both["pred_count_a"], both["pred_count_b"])
    return comparison, verdict(comparison, name_a, name_b), len(both)


def parse_run(text: str, store: Store) -> tuple[str | None, list[Experiment]]:
    """`[LABEL=]RUN[+RUN...]` (a run is an experiment id or name, `core.counting.service.resolve_experiment`):
    the label, if given, and the runs, several for a mixed ensemble."""
    from core.counting.service import resolve_experiment

    label, _, runs = text.rpartition("=")
    return label or None, [resolve_experiment(store, run.strip()) for run in runs.split("+")]


def screening_table(runs: Sequence[ScreenedRun], per_source: bool = True) -> pd.DataFrame:
    """One row per lever: the paper's task and the product's answer with 95% intervals, ECE, the
    "more than 5" recall, per-count accuracy of the product's answer, the same per source, minutes."""
    rows = []
    for run in runs:
        row: dict[str, object] = {"lever": run.label, "split": run.split, **_columns(run.overall, "")}
        top = run.overall.open_class
        row["more than 5 recall"] = with_interval(top.recall, top.interval) if top and top.recall is not None else ""
        row["per count 0..5"] = " / ".join("–" if a is None else f"{a:.2f}"
                                           for a in run.overall.per_class_accuracy[:6])
        if per_source:
            for name, figures in run.by_source.items():
                row.update(_columns(figures, f"{name}: "))
        row["minutes"] = None if run.minutes is None else round(run.minutes, 1)
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    """The table as GitHub markdown (empty cells for missing figures)."""
    cells = table.astype(object).where(table.notna(), "")
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)
