"""The dashboard's tables, as pure functions over what `core.store.database.Store` returns."""
from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from core.evaluation.metrics import PairedDifference, SplitFigures, headline_text, largest_confusion, paper_task
from core.store.records import Experiment


def labels(experiments: Sequence[Experiment]) -> dict[str, str]:
    """A short, unique label per experiment id: its name, plus its start time when names repeat."""
    names = Counter(e.name for e in experiments)
    out = {}
    for e in experiments:
        label = e.name
        if names[label] > 1:
            label += time.strftime(" (%m-%d %H:%M:%S)", time.localtime(e.started_at))
        out[e.id] = label
    return out


def model_text(exp: Experiment) -> str:
    """What a run is, in a few words: its model, or an ensemble's members with their weights."""
    return f"ensemble of {exp.recipe_notes}" if exp.family == "ensemble" else exp.model


def members_caption(exp: Experiment) -> str | None:
    """For an ensemble (`core.training.ensemble`), what it is and how it was chosen; None for one model."""
    if exp.family != "ensemble":
        return None
    return (f"**{exp.name}** serves {len(exp.members)} models as one: {exp.recipe_notes} (xN: chosen N times, "
            "weighing N). They were chosen greedily on the validation photos and their mean recalibrated there; "
            "its validation figures are cross-fitted (chosen on one half of those photos, scored on the other).")


def is_scored(exp: Experiment) -> bool:
    """A finished model with test metrics (LR-finder sweeps finish too, but count nothing)."""
    return exp.is_model and exp.metrics is not None and exp.metrics.balanced_accuracy is not None


def _per_class_columns(values: Sequence[float | None] | None, prefix: str) -> dict[str, float]:
    return {f"{prefix} {k}": (np.nan if v is None else v) for k, v in enumerate(values or [])}


def leaderboard(experiments: Sequence[Experiment]) -> pd.DataFrame:
    """Scored experiments, best validation (or out-of-fold) balanced accuracy first: the figure models
    are chosen on, beside the test figures, each with its 95% interval, per-count accuracy and costs."""
    names = labels(experiments)
    rows = []
    for e in experiments:
        if not is_scored(e):
            continue
        m, sel = e.metrics or SplitFigures(), e.selection_metrics or SplitFigures()
        accuracy_ci, balanced_ci, rmse_ci = headline_text(m)
        rows.append({
            "experiment": names[e.id], "family": e.family, "model": model_text(e),
            "chosen on": e.selection_source, "selection balanced accuracy": sel.balanced_accuracy,
            "selection (95% CI)": headline_text(sel)[1],
            "accuracy": m.accuracy, "balanced accuracy": m.balanced_accuracy, "RMSE": m.rmse,
            "balanced accuracy (95% CI)": balanced_ci, "accuracy (95% CI)": accuracy_ci, "RMSE (95% CI)": rmse_ci,
            "ECE": m.ece,
            **_per_class_columns(m.per_class_accuracy, "acc"),
            "test photos": m.n, "recounted photos": e.recounted_photos, "models": e.folds or 1,
            "train time (s)": e.train_seconds,
            "device": e.device, "weights": e.weights, "id": e.id,
        })
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.sort_values("selection balanced accuracy", ascending=False, na_position="last",
                             kind="stable").reset_index(drop=True)  # ties: in the order `best` breaks them


def paper_task_figures(exp: Experiment, predictions: pd.DataFrame) -> SplitFigures | None:
    """The paper's task on the test split (`core.evaluation.metrics.paper_task`): stored with the run, or, for
    a run of an older binsight, from its stored test predictions; None when neither is there."""
    if exp.metrics is not None and exp.metrics.paper_task is not None:
        return exp.metrics.paper_task
    if predictions.empty or not exp.num_classes:
        return None
    return paper_task(predictions["true_count"].to_numpy(dtype=int), np.array(predictions["probs"].tolist()),
                      exp.num_classes, exp.open_top)


def answers_table(experiments: Sequence[Experiment], predictions: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The product's answer (0..5 or "more than 5") beside the paper's task (the answer among 0..5),
    both on the test bins of 0..5 items, each with its 95% interval: two rows per experiment."""
    names = labels(experiments)
    rows = []
    for e in experiments:
        if not is_scored(e):
            continue
        top = (e.num_classes or 0) - 1 - int(e.open_top)
        for answer, m in ((f"the product's (0..{top}{' or more' if e.open_top else ''})", e.metrics),
                          (f"the paper's task (among 0..{top})", paper_task_figures(e, predictions[e.id]))):
            accuracy_ci, balanced_ci, rmse_ci = headline_text(m)
            rows.append({"experiment": names[e.id], "answer": answer, "accuracy (95% CI)": accuracy_ci,
                         "balanced accuracy (95% CI)": balanced_ci, "RMSE (95% CI)": rmse_ci,
                         "bins": None if m is None else m.n})
    return pd.DataFrame(rows)


def comparison_table(comparison: Mapping[str, PairedDifference]) -> pd.DataFrame:
    """One row per metric: A minus B, its 95% interval, and how often A came out better."""
    return pd.DataFrame([{"metric": k.replace("_", " "), "A minus B": v.difference, "95% low": v.low,
                          "95% high": v.high, "resamples where A is better": v.a_better_share}
                         for k, v in comparison.items()])


def per_class_table(metrics: SplitFigures) -> pd.DataFrame:
    """The paper's Tables I and II for one experiment: photos, accuracy and RMSE per true count."""
    matrix = np.asarray(metrics.confusion_matrix, dtype=int)
    accuracy, rmse = metrics.per_class_accuracy, metrics.per_class_rmse
    n = max(len(accuracy), len(rmse), len(matrix))
    frame = pd.DataFrame({
        "items in the bin": range(n),
        "test photos": matrix.sum(axis=1) if len(matrix) else [0] * n,
        "accuracy": [np.nan if v is None else v for v in accuracy] or [np.nan] * n,
        "accuracy 95% CI": [f"{ci[0]:.0%}–{ci[1]:.0%}" if ci else "" for ci in
                            (metrics.per_class_intervals or [None] * n)],
        "RMSE": [np.nan if v is None else v for v in rmse] or [np.nan] * n,
    })
    return frame


def running(experiments: Sequence[Experiment]) -> list[Experiment]:
    return [e for e in experiments if e.status == "running"]


def others(experiments: Sequence[Experiment]) -> pd.DataFrame:
    """Experiments that are not finished (running, interrupted, failed), newest first."""
    rows = [{"experiment": e.name, "status": e.status, "family": e.family, "model": e.model,
             "started": pd.to_datetime(e.started_at, unit="s"), "error": (e.error or "").split("\n")[0],
             "id": e.id}
            for e in experiments if e.status != "finished"]
    return pd.DataFrame(rows)


def misclassified(predictions: pd.DataFrame, true_counts: Iterable[int] | None = None,
                  predicted_counts: Iterable[int] | None = None, most_confident_first: bool = True) -> pd.DataFrame:
    """Wrong test predictions, optionally only some true / predicted counts, sorted by confidence."""
    wrong = predictions[predictions["true_count"] != predictions["pred_count"]]
    if true_counts is not None:
        wrong = wrong[wrong["true_count"].isin(list(true_counts))]
    if predicted_counts is not None:
        wrong = wrong[wrong["pred_count"].isin(list(predicted_counts))]
    return (wrong.sort_values(["confidence", "image_id"], ascending=[not most_confident_first, True])
            .reset_index(drop=True))


def cell(predictions: pd.DataFrame, true_count: int, predicted_count: int) -> pd.DataFrame:
    """The photos of one confusion-matrix cell, most confident first."""
    chosen = predictions[(predictions["true_count"] == true_count) & (predictions["pred_count"] == predicted_count)]
    return chosen.sort_values(["confidence", "image_id"], ascending=[False, True]).reset_index(drop=True)


def item_names(items_json: str) -> list[str]:
    """Item names from a collection's `items` column (ABID metadata as JSON); [] when unknown."""
    if not items_json:
        return []
    try:
        items = json.loads(items_json)
    except (TypeError, ValueError):
        return []
    names = []
    for item in items if isinstance(items, list) else []:
        name = (item.get("name") or item.get("asin") or "").strip() if isinstance(item, dict) else ""
        quantity = item.get("quantity") if isinstance(item, dict) else None
        if name:
            names.append(f"{quantity} × {name}" if isinstance(quantity, int) and quantity > 1 else name)
    return names


# ---- batches and recounts ----------------------------------------------------------------------
def when(at: float | None) -> str:
    """A moment as people read it (UTC)."""
    return "" if at is None or pd.isna(at) else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(at)))


def outcome_text(outcome: str | None, count: int | None) -> str:
    """A photo's current outcome in words, or "open"."""
    from core.reconcile.review import describe

    return "open" if outcome is None else describe(outcome, count)


def review_history(entries: pd.DataFrame) -> pd.DataFrame:
    """Review entries (`core.reconcile.review.history`) as a table: newest first, the outcome in words."""
    from core.reconcile.review import describe

    rows = [{"when": when(float(e["at"])), "who": e["who"],
             "outcome": describe(str(e["outcome"]), None if pd.isna(e["count"]) else int(e["count"])),
             "note": e["note"], "recorded via": e["source"]} for e in entries.to_dict("records")]
    return pd.DataFrame(rows[::-1], columns=["when", "who", "outcome", "note", "recorded via"])


def batches_table(batches: Sequence, recounted: dict[str, int] | None = None) -> pd.DataFrame:
    """One row per reconciliation batch (`core.reconcile.batches.Batch`), newest first."""
    recounted = recounted or {}
    return pd.DataFrame([{
        "batch": b.id, "created": when(b.created_at), "model": b.model_name, "bins": b.totals and b.totals.given,
        "checked": b.totals and b.totals.checked, "flagged": b.totals and b.totals.flagged,
        "errors": b.totals and b.totals.errors,
        "outcomes recorded": recounted.get(b.id, 0), "prior share of wrong records": b.settings.get("prior_wrong"),
        "rule": b.settings.get("rule", ""),
    } for b in batches], columns=["batch", "created", "model", "bins", "checked", "flagged", "errors",
                                  "outcomes recorded", "prior share of wrong records", "rule"])


def confusion_line(exp: Experiment, figures: SplitFigures | None) -> str | None:
    """The model's most frequent mistake on a split, in words (None where it makes none)."""
    cell = largest_confusion(figures.confusion_matrix) if figures else None
    if cell is None:
        return None
    held = "item" if exp.count_label(cell.true) == "1" else "items"
    return (f"most frequent mistake: bins of {exp.count_label(cell.true)} {held} counted as "
            f"{exp.count_label(cell.predicted)}, {cell.photos:,} of {cell.of:,} ({cell.share:.0%})")
