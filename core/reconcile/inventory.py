"""Inventory reconciliation: compare each bin's photo with its recorded quantity.

Most records are right, so a bin is flagged only when its photo is real evidence against the
record. A photo is judged by its posteriors p under the reconciliation prior pi
(`reconcile_prior`: every count alike); the photo's likelihood of count c is proportional to
p(c) / pi(c). A counter showing posteriors under another prior (`core.evaluation.priors`) has them moved
to pi first (`judged_probabilities`), so the judgement does not depend on what is shown. Two
hypotheses:
- the record is right (prior 1 - eps): the bin holds r items;
- the record is wrong (prior eps): the true count is drawn from pi restricted to c != r.
Bayes' rule then gives, with p_r = P(r | photo):

    P(wrong | photo) = A / (A + B),  A = eps * (1 - p_r) / (1 - pi_r),  B = (1 - eps) * p_r / pi_r

eps is `PRIOR_WRONG`, the share of records assumed wrong before looking at any photo.

Every input bin is a row of the report: counted and judged, an error row saying why it could
not be (unreadable photo, invalid quantity, photo not found, path outside the data folder), or,
for a quantity above what the model counts, a row that says the exact count cannot be checked.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from core.counting.service import BinCounter, CountResult, scope_of
from core.data.collection import inside_root, load_collection, parse_count
from core.data.images import ImageError
from core.evaluation.priors import stated_prior, with_prior
from core.store.database import Store
from core.store.files import atomic_path
from core.store.records import Experiment

# Chosen on simulations on the validation split (never the test split) of the default HOG+SVM and
# PCA+SVM models on the shared ABID sample (530 photos, 10 seeds): with a fifth of the records moved
# by 1 or 2, eps 0.2 and threshold 0.5 flag 14% / 12% of the bins, 83% of them wrong records (60% /
# 53% of the wrong records caught); with 5% moved, 5% flagged at precision 0.47. eps 0.1 flagged
# 3% / 0% (too few to be useful), eps 0.3 flagged 24% / 15% at precision 0.55 / 0.75.
PRIOR_WRONG = 0.2  # share of records assumed wrong before the photo is seen
MISMATCH_THRESHOLD = 0.5  # flag a bin when it more likely than not differs from its record
# the prior reconciliation judges against (`reconcile_prior`), a name of core.evaluation.priors
RECONCILE_PRIOR = "uniform"
PRIOR_FLOOR = 1e-3  # no count is deemed impossible (or certain) by the class prior
SIMULATED_ERROR_RATE = 0.2  # audit-value curves: a fifth of the records moved by 1 or 2
AUDIT_SHARES = (0.1, 0.2, 0.3, 0.5)  # recount budgets the audit-value table reports
REPORT_COLUMNS = ["image", "recorded_quantity", "predicted_count", "expected_count", "confidence",
                  "p_recorded", "p_mismatch", "mismatch", "note", "error", "probs"]
NUMBER_COLUMNS = ["recorded_quantity", "predicted_count", "expected_count", "confidence", "p_recorded", "p_mismatch"]


# ---- the mismatch rule ----------------------------------------------------------------------
def reconcile_prior(exp: Experiment) -> np.ndarray:
    """The prior pi reconciliation judges against: `RECONCILE_PRIOR`, every count alike over the
    experiment's classes.

    It is both the prior the judged posteriors are under and the one a wrong record's true count is
    drawn from. Chosen on the validation photos of the default models on the shared sample (496
    photos, a fifth of the records moved by 1 or 2 items, 10 seeds): ranking bins with a uniform
    prior gave ROC AUC 0.85-0.86 and, at the default settings, flagged 12-15% of the bins, 74-77%
    of them wrong records; with the fitting photos' count shares AUC fell to 0.60-0.75 and almost
    nothing was flagged. A wrong record is usually a neighbour of the true count, not a draw from
    the count shares, so weighing records of common counts as more likely wrong hurts.
    """
    return stated_prior(RECONCILE_PRIOR, exp.num_classes or 1, exp.open_top)


def judged_probabilities(counter: BinCounter, result: CountResult) -> np.ndarray:
    """The photo's posteriors under `reconcile_prior`: its shown probabilities with the counter's
    prior taken out (likelihoods) and the reconciliation prior put in."""
    likelihood = np.asarray(result.probs, dtype=float) / np.clip(np.asarray(result.prior, dtype=float), 1e-12, None)
    return with_prior(likelihood, reconcile_prior(counter.exp))


def _floored(class_prior) -> np.ndarray:
    """The class prior with every share at least PRIOR_FLOOR, renormalised (guards pi_r in {0, 1})."""
    prior = np.clip(np.asarray(class_prior, dtype=float), PRIOR_FLOOR, None)
    return prior / prior.sum()


def mismatch_probability(probs, recorded, prior_wrong: float, class_prior) -> np.ndarray:
    """P(the record is wrong | photo) for each bin: `probs` (N, K) calibrated posteriors under
    `class_prior` (K,), which is also the prior a wrong record's true count is drawn from
    (`reconcile_prior` for every caller in binsight), `recorded` (N,) class indices 0..K-1 (see
    `judged_class`). See the module docstring for the derivation."""
    if not 0 < prior_wrong < 1:
        raise ValueError(f"the prior share of wrong records must be in (0, 1), got {prior_wrong}")
    probs = np.atleast_2d(np.asarray(probs, dtype=float))
    recorded = np.asarray(recorded, dtype=int)
    prior = _floored(class_prior)
    if prior.shape != (probs.shape[1],):
        raise ValueError(f"class prior has {prior.size} shares for {probs.shape[1]} classes")
    if recorded.shape != (len(probs),) or recorded.min(initial=0) < 0 or recorded.max(initial=0) >= probs.shape[1]:
        raise ValueError(f"recorded must be {len(probs)} class indices in 0..{probs.shape[1] - 1}")
    p_r = np.clip(probs[np.arange(len(probs)), recorded], 0.0, 1.0)
    pi_r = prior[recorded]
    wrong = prior_wrong * (1 - p_r) / (1 - pi_r)
    right = (1 - prior_wrong) * p_r / pi_r
    return wrong / (wrong + right)  # never 0/0: eps in (0, 1) and p_r in [0, 1]


def judged_class(recorded: int, num_classes: int, open_top: bool = False) -> int | None:
    """The class whose probability judges a record of `recorded` items; None where the model
    cannot check it. A model whose top class K-1 means "more than K-2" (`open_top`) judges every
    record above K-2 by P(top class); a closed 0..K-1 model cannot check a record above K-1."""
    if recorded < num_classes - int(open_top):
        return recorded
    return num_classes - 1 if open_top else None


def judge(counter: BinCounter, result: CountResult, recorded: int,
          prior_wrong: float = PRIOR_WRONG) -> tuple[float | None, float | None, str]:
    """One bin: (the photo's probability of the recorded quantity under `reconcile_prior`, P(mismatch),
    a note); the probabilities are None where the model cannot check the record (the note says why)."""
    top = counter.num_classes - 1
    open_top = counter.exp.open_top  # set by models with a "more than" class
    cls = judged_class(recorded, counter.num_classes, open_top)
    if cls is None:
        return None, None, f"recorded above what the model counts (0..{top}): not checked"
    probs = judged_probabilities(counter, result)
    p_mismatch = float(mismatch_probability([probs], [cls], prior_wrong, reconcile_prior(counter.exp))[0])
    note = (f"judged by P(more than {top - 1}); the exact count cannot be checked"
            if open_top and recorded >= top else "")
    return float(probs[cls]), p_mismatch, note


def is_mismatch(p_mismatch: float, threshold: float = MISMATCH_THRESHOLD) -> bool:
    """The threshold rule, shared by the report, the upload page's verdict and its charts."""
    return p_mismatch >= threshold


def budget_size(budget: str | int, checked: int) -> int:
    """How many bins an audit budget recounts: `50` bins, or `"10%"` of the checked bins (rounded up)."""
    text = str(budget).strip()
    try:
        if text.endswith("%"):
            share = float(text[:-1])
            if not 0 <= share <= 100:
                raise ValueError
            return min(checked, math.ceil(share / 100 * checked - 1e-9))
        size = int(text)
        if size < 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"an audit budget is a number of bins (50) or a share of them (10%), got {budget!r}") from None
    return min(checked, size)


def flags(p_mismatch, threshold: float = MISMATCH_THRESHOLD, budget: str | int | None = None) -> np.ndarray:
    """Which bins to recount: P(mismatch) >= threshold, or with a budget exactly the riskiest N
    (ties in the given order). NaN (not checked) is never flagged."""
    p = np.asarray(p_mismatch, dtype=float)
    checked = ~np.isnan(p)
    if budget is None:
        return checked & (p >= threshold)
    order = np.argsort(-np.where(checked, p, -np.inf), kind="stable")
    out = np.zeros(len(p), dtype=bool)
    out[order[:budget_size(budget, int(checked.sum()))]] = True
    return out


def flag_rule(prior_wrong: float = PRIOR_WRONG, threshold: float = MISMATCH_THRESHOLD,
              budget: str | int | None = None) -> str:
    """The flagging settings in words, shown wherever flags are shown."""
    rule = f"the {budget} riskiest bins" if budget is not None else f"P(mismatch) >= {threshold:.2f}"
    return f"flagged: {rule}; prior share of wrong records {prior_wrong:.0%}"


# ---- records ----------------------------------------------------------------------------------
def read_records(source: str | Path | bytes) -> pd.DataFrame:
    """A CSV with columns `image,recorded_quantity` -> image, recorded_quantity, error (one row per
    line: an invalid or missing quantity is an error row, not a refusal). A ValueError only when
    the file is not such a CSV at all."""
    try:
        frame = pd.read_csv(io.BytesIO(source) if isinstance(source, bytes) else source, dtype=str,
                            keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"not a readable CSV file: {err}") from err
    frame.columns = [c.strip() for c in frame.columns]
    missing = {"image", "recorded_quantity"} - set(frame.columns)
    if missing:
        raise ValueError(f"the CSV needs the columns image,recorded_quantity (missing: {', '.join(sorted(missing))})")
    quantities, errors = [], []
    for image, value in zip(frame["image"].str.strip(), frame["recorded_quantity"].str.strip(), strict=True):
        quantity, error = None, ""
        if not image:
            error = "no image named"
        elif not value:
            error = "missing recorded quantity"
        else:
            try:
                quantity = parse_count(value)
            except ValueError:
                error = f"invalid recorded quantity {value!r} (a whole number >= 0)"
        quantities.append(quantity)
        errors.append(error)
    return pd.DataFrame({"image": frame["image"].str.strip(),
                         "recorded_quantity": pd.array(quantities, dtype="Int64"), "error": errors})


def _key(root: Path, path: str | Path) -> str:
    """A photo's key: its path relative to the data folder (so `1/a.jpg` and `3/a.jpg` never collide)."""
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)  # a description such as "manifest.csv line 7: a.jpg"


def records_from_folder(root: str | Path,
                        records_csv: str | Path | None = None) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Records and photo paths from a data folder, keyed by path relative to it.

    With `records_csv`, its rows (paths outside the folder become error rows). Without it, the
    folder's own labels (ABID metadata, manifest or count folders) are the recorded quantities,
    and every file the collection skips (unreadable photo, invalid quantity) is an error row.
    """
    root = Path(root)
    if records_csv:
        records = read_records(records_csv)
        images = {}
        for i, name in enumerate(records["image"]):
            if records.at[i, "error"]:
                continue
            try:
                images[name] = inside_root(root, name)
            except ValueError:
                records.at[i, "error"] = "path outside the data folder"
        return records, images
    collection = load_collection(root, max_count=10**6)
    keys = [_key(root, p) for p in collection.table["path"]]
    skipped = collection.skipped
    records = pd.DataFrame({
        "image": keys + [_key(root, p) for p in skipped["path"]],
        "recorded_quantity": pd.array([*collection.table["count"], *[None] * len(skipped)], dtype="Int64"),
        "error": [""] * len(keys) + list(skipped["reason"]),
    })
    return records, dict(zip(keys, map(Path, collection.table["path"]), strict=True))


# ---- the report ---------------------------------------------------------------------------------
def report_row(counter: BinCounter, name: str, recorded, error: str,
               result: CountResult | ImageError | None, prior_wrong: float = PRIOR_WRONG) -> dict:
    """One record's report row, judged but not yet flagged (`finish_report` flags and orders them):
    `result` is its photo's count, the `ImageError` that stopped it, or None where the record
    already carries an `error` (None without one: the photo was not found)."""
    row = dict.fromkeys(REPORT_COLUMNS)
    row.update(image=name, recorded_quantity=None if pd.isna(recorded) else int(recorded),
               mismatch=False, note="", error=error)
    if result is None and not error:
        result = ImageError("photo not found")
    if isinstance(result, ImageError):
        row["error"] = str(result)
    elif result is not None:
        p_recorded, p_mismatch, note = judge(counter, result, int(recorded), prior_wrong)
        if counter.exp.open_top and result.count == counter.num_classes - 1 and not note:
            note = f"the photo looks like {counter.exp.count_label(result.count)} items"
        row.update(predicted_count=result.count, expected_count=round(result.expected, 3),
                   confidence=round(result.confidence, 4), note=note, probs=result.probs,
                   p_recorded=None if p_recorded is None else round(p_recorded, 4),
                   p_mismatch=None if p_mismatch is None else round(p_mismatch, 4))
    return row


def record_errors(records: pd.DataFrame) -> list[str]:
    """Each record's own error ("" for none): the one it came with, or a missing quantity."""
    given = records["error"] if "error" in records else [""] * len(records)
    return [error or ("missing recorded quantity" if pd.isna(q) else "") for error, q in
            zip(given, records["recorded_quantity"], strict=True)]


def countable(name: str, error: str, images: Mapping[str, bytes | Path]) -> bool:
    """Whether a record's photo is there to count: no error of its own, and a photo (a file that exists)."""
    return not error and name in images and (not isinstance(source := images[name], Path) or source.is_file())


def check_threshold(threshold: float) -> None:
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")


def finish_report(rows: pd.DataFrame, threshold: float = MISMATCH_THRESHOLD,
                  budget: str | int | None = None) -> pd.DataFrame:
    """Judged rows (`report_row`) as the variance report: flagged (`flags`), checked bins riskiest
    first, then error rows, then bins whose recorded quantity the model cannot check."""
    check_threshold(threshold)
    report = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    for column in NUMBER_COLUMNS:  # rows gathered in chunks may hold None where one frame holds NaN
        report[column] = pd.to_numeric(report[column])
    report["probs"] = pd.Series([list(p) if isinstance(p, list | tuple) else None for p in report["probs"]],
                                index=report.index, dtype=object)  # no NaN for a bin not counted, read back or not
    report["p_mismatch"] = report["p_mismatch"].astype(float)
    report["mismatch"] = flags(report["p_mismatch"], threshold, budget)
    group = np.where(report["p_mismatch"].notna(), 0, np.where(report["error"] != "", 1, 2))
    order = np.lexsort((-report["p_mismatch"].fillna(0).to_numpy(), group))  # stable within ties
    return report.iloc[order].reset_index(drop=True)


def reconcile(counter: BinCounter, records: pd.DataFrame, images: Mapping[str, bytes | Path],
              threshold: float = MISMATCH_THRESHOLD, prior_wrong: float = PRIOR_WRONG,
              budget: str | int | None = None, progress: bool = False, workers: int | None = None) -> pd.DataFrame:
    """The variance report, one row per record, built in memory (`core.reconcile.stream` streams
    a collection of any size into a store batch instead). `workers`: decoding threads (`BinCounter.iter_counts`)."""
    check_threshold(threshold)
    names = list(records["image"])
    errors = record_errors(records)
    todo = [i for i, (name, error) in enumerate(zip(names, errors, strict=True)) if countable(name, error, images)]
    results = dict(zip(todo, counter.count_batch([images[names[i]] for i in todo], progress=progress,
                                                 workers=workers), strict=True))
    rows = [report_row(counter, name, recorded, errors[i], results.get(i), prior_wrong)
            for i, (name, recorded) in enumerate(zip(names, records["recorded_quantity"], strict=True))]
    return finish_report(pd.DataFrame(rows, columns=REPORT_COLUMNS), threshold, budget)


@dataclass(frozen=True)
class ReportTotals:
    """Bins given = checked + not checkable (recorded above the model's counts) + errors; flagged <= checked."""

    given: int
    checked: int
    flagged: int
    not_checkable: int
    errors: int

    @classmethod
    def of(cls, given: int, checked: int, flagged: int, errors: int) -> ReportTotals:
        return cls(int(given), int(checked), int(flagged), int(given - checked - errors), int(errors))

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def report_totals(report: pd.DataFrame) -> ReportTotals:
    """The totals of a variance report (`ReportTotals`)."""
    return ReportTotals.of(len(report), int(report["p_mismatch"].notna().sum()), int(report["mismatch"].sum()),
                           int((report["error"] != "").sum()))


def totals_line(totals: ReportTotals) -> str:
    return (f"{totals.given} bins given: {totals.checked} checked ({totals.flagged} flagged), "
            f"{totals.not_checkable} recorded above what the model counts, {totals.errors} with errors")


def write_report(report: pd.DataFrame, out: str | Path, settings: Mapping | None = None) -> None:
    """CSV (the rows), or JSON with the settings, the totals and the rows; chosen by the file suffix."""
    write_report_chunks([report], report_totals(report), out, settings)


def write_report_chunks(chunks: Iterable[pd.DataFrame], totals: ReportTotals, out: str | Path,
                        settings: Mapping | None = None) -> None:
    """`write_report` of a report handed over a chunk of rows at a time, in order, so it is never
    whole in memory (`core.reconcile.batches.write_batch_report`); `out` appears, whole, once all are written
    (its temporary file is named, so it is made with the usual permissions and a killed write's
    leftover is overwritten by the next)."""
    out = Path(out)
    with atomic_path(out, temp_name=f".{out.name}.tmp") as tmp, open(tmp, "w", encoding="utf-8") as fh:
        if out.suffix.lower() == ".json":
            _write_json_report(fh, chunks, totals, settings or {})
        else:
            _write_csv_report(fh, chunks)


def _write_csv_report(fh: TextIO, chunks: Iterable[pd.DataFrame]) -> None:
    header = True
    for chunk in chunks:
        chunk.to_csv(fh, index=False, header=header)
        header = False
    if header:  # no rows: the header alone
        pd.DataFrame(columns=REPORT_COLUMNS).to_csv(fh, index=False)


def _write_json_report(fh: TextIO, chunks: Iterable[pd.DataFrame], totals: ReportTotals, settings: Mapping) -> None:
    """The text `json.dumps({"settings", "totals", "bins"}, indent=2)` gives, written a row at a time."""
    head = json.dumps({"settings": dict(settings), "totals": totals.to_dict()}, indent=2)
    fh.write(head.removesuffix("\n}") + ',\n  "bins": [')
    first = True
    for chunk in chunks:
        if chunk.empty:
            continue
        rows = json.dumps(json.loads(chunk.to_json(orient="records")), indent=2)  # "[\n  {...},\n  {...}\n]"
        fh.write(("\n" if first else ",\n") + textwrap.indent(rows[2:-2], "  "))
        first = False
    fh.write("]\n}" if first else "\n  ]\n}")


# ---- what a recount budget buys -----------------------------------------------------------------
def simulate_errors(true_classes, num_classes: int, error_rate: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Recorded quantities with simulated errors: each record is wrong with probability
    `error_rate`, moved by -2, -1, +1 or +2 (uniform); a move that would leave 0..K-1 goes the
    other way instead (reflected), so every simulated error is a real one the model could catch.
    Returns (recorded, wrong)."""
    if not 0 <= error_rate <= 1:
        raise ValueError(f"error rate must be in [0, 1], got {error_rate}")
    rng = np.random.default_rng(seed)
    true = np.asarray(true_classes, dtype=int)
    wrong = rng.random(len(true)) < error_rate
    step = rng.choice([-2, -1, 1, 2], size=len(true))
    moved = true + step
    moved = np.where((moved < 0) | (moved >= num_classes), true - step, moved)
    return np.where(wrong, moved, true), wrong


@dataclass(frozen=True)
class AuditCurve:
    """What recounting the riskiest bins buys, on labelled photos with simulated record errors."""

    n: int  # bins (labelled photos) ranked
    wrong: int  # records the simulation moved
    error_rate: float  # share of records asked to be moved
    prior_wrong: float
    seed: int
    recounted: np.ndarray  # share of bins recounted, 0..1 (N + 1 points) ...
    caught: np.ndarray  # ... against the share of wrong records found by then
    roc_auc: float  # NaN when every record (or none) is wrong
    average_precision: float
    threshold: float
    flagged: int  # bins at P(mismatch) >= threshold
    flagged_precision: float  # share of the flagged bins that are wrong records (NaN if none flagged)
    flagged_recall: float  # share of the wrong records that are flagged


def audit_curve(probs, true_counts, class_prior, error_rate: float, prior_wrong: float = PRIOR_WRONG,
                seed: int = 0, threshold: float = MISMATCH_THRESHOLD) -> AuditCurve:
    """Simulate record errors on labelled photos (`simulate_errors`; `probs` posteriors under
    `class_prior`, as in `mismatch_probability`), rank the bins by P(mismatch) and measure what
    recounting the riskiest share buys (see `AuditCurve`)."""
    probs = np.asarray(probs, dtype=float)
    recorded, wrong = simulate_errors(true_counts, probs.shape[1], error_rate, seed)
    p = mismatch_probability(probs, recorded, prior_wrong, class_prior)
    order = np.argsort(-p, kind="stable")
    caught = np.concatenate([[0.0], np.cumsum(wrong[order]) / max(int(wrong.sum()), 1)])
    recounted = np.arange(len(p) + 1) / max(len(p), 1)
    flagged = p >= threshold
    both = 0 < wrong.sum() < len(wrong)
    return AuditCurve(
        n=len(p), wrong=int(wrong.sum()), error_rate=error_rate, prior_wrong=prior_wrong, seed=seed,
        recounted=recounted, caught=caught,
        roc_auc=float(roc_auc_score(wrong, p)) if both else float("nan"),
        average_precision=float(average_precision_score(wrong, p)) if both else float("nan"),
        threshold=threshold, flagged=int(flagged.sum()),
        flagged_precision=float(wrong[flagged].mean()) if flagged.any() else float("nan"),
        flagged_recall=float(wrong[flagged].sum() / max(int(wrong.sum()), 1)),
    )


def caught_at(curve: AuditCurve, share: float) -> float:
    """Share of wrong records caught when recounting the riskiest `share` of the bins."""
    return float(np.interp(share, curve.recounted, curve.caught))


def audit_table(curve: AuditCurve, shares=AUDIT_SHARES) -> pd.DataFrame:
    """recount 10/20/30/50% -> share of wrong records caught."""
    return pd.DataFrame({"recount": [f"{s:.0%}" for s in shares],
                         "bins": [math.ceil(s * curve.n - 1e-9) for s in shares],
                         "wrong records caught": [caught_at(curve, s) for s in shares]})


@dataclass(frozen=True)
class FolderAudit:
    """`audit_curve` of a counter on a labelled folder (`audit_folder`)."""

    curve: AuditCurve
    scope: str  # "test split" (the model's own collection) or "all photos", as `core.counting.service.scope_of` decides
    left_out: int  # photos in scope that were not ranked: unreadable, or a count the model cannot check


def audit_folder(counter: BinCounter, root: str | Path, store: Store, error_rate: float,
                 prior_wrong: float = PRIOR_WRONG, seed: int = 0, threshold: float = MISMATCH_THRESHOLD,
                 progress: bool = True) -> FolderAudit:
    """What a recount budget buys on a labelled folder: its labels are the true counts, `error_rate`
    of them are moved (`simulate_errors`). On the model's own collection only its test split is
    scored, as `core.counting.service.evaluate_folder` does, since the rest trained, calibrated or selected it."""
    root = Path(root)
    collection = load_collection(root, max_count=10**6)
    table, scope = scope_of(counter.exp, collection.table, root, store)
    unreadable = len(collection.skipped) if scope == "all photos" else 0  # skipped files belong to no split
    results = counter.count_batch(table["path"].tolist(), progress=progress)
    pairs = [(judged_probabilities(counter, r), cls) for r, true in zip(results, table["count"], strict=True)
             if isinstance(r, CountResult)
             and (cls := judged_class(int(true), counter.num_classes, counter.exp.open_top)) is not None]
    if not pairs:
        raise ValueError(f"no photo in {root} ({scope}) has a count the model can check (0..{counter.num_classes - 1})")
    probs, true = np.array([p for p, _ in pairs]), np.array([c for _, c in pairs])
    curve = audit_curve(probs, true, reconcile_prior(counter.exp), error_rate, prior_wrong, seed, threshold)
    return FolderAudit(curve, scope, len(table) + unreadable - curve.n)
