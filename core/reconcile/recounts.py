"""What recounts say, and recounts in and out: the queue's order, the figures recounts give
(realised precision of the flags, share of wrong records, model accuracy, each with a 95% interval
beside what the model expected), the adjustments file for the warehouse system, and the import of
outcomes recorded elsewhere (every row validated; each refused row reported with its reason).
"""
from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from core.reconcile.batches import batch_bins, get_batch, list_batches
from core.reconcile.review import Review, found_count, latest, record_reviews
from core.store.database import Store

EXPORT_COLUMNS = ["batch", "image", "recorded", "recounted", "adjustment", "who", "when"]
IMPORT_REQUIRED = ("batch", "image", "recounted")
MIN_RECOUNTS_FOR_PRIOR = 30  # recounted bins before a prior share of wrong records is suggested
QUEUE_MODES = {
    "riskiest first": "the bins most likely to hold a different quantity than recorded: recount these to "
                      "correct the stock",
    "least sure first": "the bins whose count the model is least sure of (highest entropy): their recounts "
                        "teach the model most",
}


# ---- the queue --------------------------------------------------------------------------------
def entropy(probs: Sequence[float] | None) -> float:
    """The entropy (nats) of a count's probabilities; NaN where there are none."""
    if probs is None:
        return float("nan")
    p = np.clip(np.asarray(probs, dtype=float), 1e-12, 1.0)
    return float(-(p * np.log(p)).sum())


def queue(bins: pd.DataFrame, mode: str = "riskiest first", size: int | None = None) -> pd.DataFrame:
    """The bins to recount, in order. "riskiest first": the flagged bins (or, with `size`, the `size`
    highest P(mismatch)); "least sure first": the `size` (default: as many as are flagged) checked
    bins of highest entropy."""
    if mode not in QUEUE_MODES:
        raise ValueError(f"unknown queue mode {mode!r}; one of {list(QUEUE_MODES)}")
    checked = bins[bins["p_mismatch"].notna()].copy()
    checked["entropy"] = checked["probs"].map(entropy)
    if mode == "riskiest first":
        ordered = checked.sort_values("p_mismatch", ascending=False, kind="stable")
        chosen = ordered[ordered["flagged"]] if size is None else ordered.head(size)
    else:
        ordered = checked.sort_values("entropy", ascending=False, kind="stable")
        chosen = ordered.head(int(checked["flagged"].sum()) if size is None else size)
    return chosen.reset_index(drop=True)


def with_outcomes(store: Store, batch_id: str, bins: pd.DataFrame | None = None) -> pd.DataFrame:
    """The batch's bins with their current outcome (latest entry): outcome, count, who, at, note,
    entries, and `true_count` (the count a person established, where one did)."""
    bins = batch_bins(store, batch_id) if bins is None else bins
    current = latest(store, "recount", batch_id)[["image", "outcome", "count", "who", "at", "note", "entries"]]
    merged = bins.merge(current.rename(columns={"note": "review_note"}), on="image", how="left")
    merged["true_count"] = pd.array([found_count(o, None if pd.isna(c) else int(c), None if pd.isna(r) else int(r))
                                     if isinstance(o, str) else None
                                     for o, c, r in zip(merged["outcome"], merged["count"], merged["recorded"],
                                                        strict=True)], dtype="Int64")
    return merged


@dataclass(frozen=True)
class QueueBin:
    """One bin of a queue as the queue page shows it: the batch's row and its current outcome."""

    image: str
    path: str
    stored_copy: str
    recorded: int
    predicted: int
    p_mismatch: float
    probs: list[float]
    outcome: str | None  # the latest entry's outcome; None while the bin is open
    count: int | None
    who: str
    at: float | None

    @property
    def done(self) -> bool:
        return self.outcome is not None


def queue_bins(frame: pd.DataFrame) -> list[QueueBin]:
    """`queue`'s rows as records."""
    def text(value: object) -> str:
        return value if isinstance(value, str) else ""

    return [QueueBin(str(r["image"]), text(r["path"]), text(r["stored_copy"]), int(r["recorded"]), int(r["predicted"]),
                     float(r["p_mismatch"]), [float(p) for p in r["probs"]],
                     r["outcome"] if isinstance(r["outcome"], str) else None,
                     None if pd.isna(r["count"]) else int(r["count"]), text(r["who"]),
                     None if pd.isna(r["at"]) else float(r["at"]))
            for r in frame.to_dict("records")]


def progress_line(done: int, total: int) -> str:
    return f"{done} of {total} done"


# ---- what the recounts say -----------------------------------------------------------------------
@dataclass
class Figure:
    """A share measured on recounted bins, its 95% interval, and what the model expected."""

    name: str
    hits: int
    n: int
    expected: float | None  # the model's own estimate of the same share, over the same bins
    expected_means: str = ""

    @property
    def value(self) -> float:
        return self.hits / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        """Wilson 95% interval (NaN without bins)."""
        if not self.n:
            return float("nan"), float("nan")
        ci = binomtest(self.hits, self.n).proportion_ci(0.95, method="wilson")
        return float(ci.low), float(ci.high)


@dataclass
class RecountSummary:
    precision: Figure  # of the flags: share of recounted flagged bins whose record was wrong
    wrong_share: Figure  # share of wrong records among the recounted bins
    accuracy: Figure  # the model's count right on the recounted bins
    recounted: int
    prior_used: list[float] = field(default_factory=list)
    suggested_prior: tuple[float, float, float] | None = None  # value, 95% low, high


def _implied_prior(probs: np.ndarray, judged: np.ndarray, class_prior: np.ndarray, share: float) -> float:
    """The prior share of wrong records under which the model's mean P(mismatch) over these bins
    equals `share` (bisection: the mean rises with the prior)."""
    from core.reconcile.inventory import mismatch_probability

    low, high = 1e-4, 1 - 1e-4
    for _ in range(60):
        mid = (low + high) / 2
        if mismatch_probability(probs, judged, mid, class_prior).mean() < share:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def summarise(bins: pd.DataFrame, settings: Sequence[dict]) -> RecountSummary:
    """The recount figures over bins with outcomes (`with_outcomes` of one or more batches of one
    model; `settings` are those batches' settings: the model's classes and class prior come from
    the first, the priors used from all)."""
    from core.reconcile.inventory import judged_class  # the class the model should have said for a bin's count

    done = bins[bins["true_count"].notna() & bins["recorded"].notna()]
    wrong = (done["true_count"] != done["recorded"]).to_numpy(dtype=bool)
    checked = done["p_mismatch"].notna().to_numpy()
    flagged = done["flagged"].to_numpy(dtype=bool) & checked
    p = done["p_mismatch"].to_numpy(dtype=float)
    precision = Figure("realised precision of the flags", int(wrong[flagged].sum()), int(flagged.sum()),
                       float(p[flagged].mean()) if flagged.any() else None, "mean P(mismatch) of these flagged bins")
    wrong_share = Figure("wrong records among the recounted bins", int(wrong[checked].sum()), int(checked.sum()),
                         float(p[checked].mean()) if checked.any() else None, "mean P(mismatch) of these bins")
    setting = settings[0] if settings else {}
    k, open_top = int(setting.get("num_classes") or 0), bool(setting.get("open_top"))
    counted = done[done["predicted"].notna()]
    right = [judged_class(int(t), k, open_top) == int(c) for t, c in zip(counted["true_count"], counted["predicted"],
                                                                        strict=True)]
    accuracy = Figure("model accuracy on the recounted bins", int(sum(right)), len(right),
                      float(counted["confidence"].mean()) if len(counted) else None, "mean confidence of its counts")
    suggested = None
    if checked.sum() >= MIN_RECOUNTS_FOR_PRIOR and setting.get("class_prior"):
        rows = done[checked]
        probs = np.array(rows["probs"].tolist(), dtype=float)
        judged = np.array([judged_class(int(r), k, open_top) for r in rows["recorded"]])
        prior = np.asarray(setting["class_prior"], dtype=float)
        low, high = wrong_share.interval
        suggested = tuple(_implied_prior(probs, judged, prior, min(max(s, 1e-3), 1 - 1e-3))
                          for s in (wrong_share.value, low, high))
    return RecountSummary(precision, wrong_share, accuracy, len(done),
                          sorted({float(s["prior_wrong"]) for s in settings}), suggested)  # type: ignore[arg-type]


def batch_summary(store: Store, batch_id: str) -> RecountSummary:
    return summarise(with_outcomes(store, batch_id), [get_batch(store, batch_id).settings])


def model_summary(store: Store, model: str) -> RecountSummary:
    """Over all batches of one model (experiment id)."""
    batches = [b for b in list_batches(store) if b.model == model]
    frames = [with_outcomes(store, b.id) for b in batches]
    bins = pd.concat(frames, ignore_index=True) if frames else with_outcomes(store, "")
    return summarise(bins, [b.settings for b in batches])


def summary_table(summary: RecountSummary) -> pd.DataFrame:
    """One row per figure: measured share, its 95% interval, bins, what the model expected."""
    rows = []
    for fig in (summary.precision, summary.wrong_share, summary.accuracy):
        low, high = fig.interval
        rows.append({"figure": fig.name, "measured": fig.value, "95% low": low, "95% high": high,
                     "bins": fig.n, "model expected": fig.expected, "expected is": fig.expected_means})
    return pd.DataFrame(rows)


def suggestion_line(summary: RecountSummary) -> str:
    used = ", ".join(f"{p:.0%}" for p in summary.prior_used) or "-"
    if summary.suggested_prior is None:
        return (f"{summary.recounted} bins recounted; a prior share of wrong records is suggested from "
                f"{MIN_RECOUNTS_FOR_PRIOR} recounted bins on (used: {used}).")
    value, low, high = summary.suggested_prior
    return (f"The recount outcomes imply a prior share of wrong records of {value:.1%} (95% {low:.1%}-{high:.1%}), "
            f"from {summary.wrong_share.n} recounted bins; the batches used {used}.")


# ---- adjustments out ------------------------------------------------------------------------------
def adjustments(store: Store, batch_id: str) -> pd.DataFrame:
    """The bins whose established count differs from the record: `EXPORT_COLUMNS`."""
    bins = with_outcomes(store, batch_id)
    changed = bins[bins["true_count"].notna() & bins["recorded"].notna() & (bins["true_count"] != bins["recorded"])]
    return pd.DataFrame({
        "batch": batch_id, "image": changed["image"], "recorded": changed["recorded"].astype(int),
        "recounted": changed["true_count"].astype(int),
        "adjustment": (changed["true_count"] - changed["recorded"]).astype(int), "who": changed["who"],
        "when": [time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) for t in changed["at"]],
    }, columns=EXPORT_COLUMNS).reset_index(drop=True)


# ---- outcomes in --------------------------------------------------------------------------------
@dataclass
class ImportReport:
    recorded: int
    refused: list[tuple[int, str]]  # (line of the file, why)

    def lines(self, name: str) -> list[str]:
        return [f"{name} line {line}: refused: {why}" for line, why in self.refused] + [
            f"{self.recorded} recounts recorded, {len(self.refused)} rows refused"]


def _whole_number(text: str) -> tuple[int | None, str]:
    value = text.strip()
    if not value:
        return None, "no recounted count"
    try:
        number = float(value)
    except ValueError:
        return None, f"recounted {value!r} is not a number"
    if number < 0:
        return None, f"negative count {value}"
    if not number.is_integer() or not value.lstrip("+").isdigit():
        return None, f"recounted {value!r} is not a whole number"
    return int(number), ""


def import_recounts(store: Store, source: str | Path | bytes, who: str, name: str = "") -> ImportReport:
    """Record the recounts of a CSV (`batch,image,recounted`, optional `note`, `who`): every row is
    checked (unknown batch or bin, a count that is not a whole number >= 0, a row repeating an
    earlier one of the file); the good rows are recorded in one transaction, each refused row is
    reported with its reason, none is dropped silently."""
    text = source.decode("utf-8-sig") if isinstance(source, bytes) else Path(source).read_text(encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in IMPORT_REQUIRED if c not in columns]
    if missing:
        raise ValueError(f"the CSV needs the columns {','.join(IMPORT_REQUIRED)} (missing: {', '.join(missing)})")
    reader.fieldnames = columns
    known: dict[str, set[str]] = {}
    seen: dict[tuple[str, str], int] = {}
    good: list[Review] = []
    refused: list[tuple[int, str]] = []
    source_name = f"import {name or (source if not isinstance(source, bytes) else 'upload')}"
    for line, row in enumerate(reader, start=2):
        batch, image = (row.get("batch") or "").strip(), (row.get("image") or "").strip()
        if batch not in known:
            try:
                get_batch(store, batch)
                known[batch] = set(batch_bins(store, batch)["image"])
            except KeyError:
                known[batch] = set()
        count, why = _whole_number(row.get("recounted") or "")
        if not known[batch]:
            why = f"unknown batch {batch!r}"
        elif image not in known[batch]:
            why = f"unknown bin {image!r} in batch {batch}"
        elif (batch, image) in seen:
            why = f"duplicate row: bin {image!r} of batch {batch} is already on line {seen[(batch, image)]}"
        if why:
            refused.append((line, why))
            continue
        seen[(batch, image)] = line
        good.append(Review("recount", batch, image, "recounted", (row.get("who") or "").strip() or who, count,
                           note=(row.get("note") or "").strip(), source=source_name))
    if good:
        record_reviews(store, good)
    return ImportReport(len(good), refused)


def intervals_text(fig: Figure) -> str:
    low, high = fig.interval
    if math.isnan(fig.value):
        return "no recounted bins yet"
    return f"{fig.value:.0%} (95% {low:.0%}-{high:.0%}, n = {fig.n})"
