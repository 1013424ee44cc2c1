"""Reconciliation batches kept in the store: a batch (model, settings, totals) and one row per bin.

A batch is written in chunks, so a long reconcile can stream over its bins and resume:

    batch = open_batch(store, model=..., model_name=..., settings=...)
    done = done_bins(store, batch)                 # the bins already stored (resume)
    append_bins(store, batch, report_chunk, ...)   # one transaction per chunk
    finish_batch(store, batch)                     # flags under a budget, totals

`train.py reconcile` streams into a batch this way (`BatchSink`, resuming the `unfinished_batch`
of the same settings) and writes its report from it a chunk at a time (`write_batch_report`).
Reopening a batch reads its report back (`batch_report`) without counting again. Uploaded photos
are kept as content-addressed copies under the store (`store_photo`), so a batch outlives the
upload; photos of a data folder are kept by path and content hash.

The model-side modules (`core.reconcile.inventory`, and through it torch) are imported only where they are
used, so the commands that only read or write outcomes (`train.py recount`, `store backup`) start
at once.
"""
from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.reconcile.inventory import ReportTotals
from core.store import layout
from core.store.database import Store
from core.store.files import atomic_path, content_hash

if TYPE_CHECKING:
    from core.counting.service import BinCounter
    from core.reconcile.stream import JudgedChunk

BIN_COLUMNS = ["image", "image_id", "path", "content_hash", "stored_copy", "recorded", "predicted", "expected",
               "confidence", "probs", "p_recorded", "p_mismatch", "flagged", "note", "error"]
TO_REPORT = {"recorded": "recorded_quantity", "predicted": "predicted_count", "expected": "expected_count",
             "flagged": "mismatch"}


@dataclass
class Batch:
    """One reconciliation run as the store keeps it."""

    id: str
    created_at: float
    model: str  # experiment id
    model_name: str
    data_root: str
    settings: dict[str, Any]  # prior_wrong, threshold, budget, rule, class_prior (reconcile_prior), open_top, K
    # (`train.py reconcile`'s also precision and records: `core.reconcile.stream.records_digest`)
    totals: ReportTotals | None = None  # None until finished
    finished_at: float | None = None
    updated_at: float | None = None

    @property
    def prior_wrong(self) -> float:
        return float(self.settings["prior_wrong"])


def store_photo(store: Store, name: str, data: bytes) -> tuple[str, str]:
    """Keep an uploaded photo in the store by its content hash; (hash, path relative to the store)."""
    digest = content_hash(data)
    target = layout.stored_photo(store.root, digest, PurePosixPath(name).suffix.lower() or ".jpg")
    if not target.is_file():
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
    return digest, target.relative_to(store.root).as_posix()


def batch_settings(counter: BinCounter, prior_wrong: float, threshold: float, budget: str | int | None) -> dict:
    """What a batch keeps of how its bins were judged (`Batch.settings`)."""
    from core.reconcile.inventory import flag_rule, reconcile_prior

    return {"prior_wrong": prior_wrong, "threshold": None if budget is not None else threshold, "budget": budget,
            "rule": flag_rule(prior_wrong, threshold, budget), "num_classes": counter.num_classes,
            "open_top": counter.exp.open_top, "class_prior": [round(float(x), 4) for x in reconcile_prior(counter.exp)]}


def save_uploaded_batch(store: Store, report: pd.DataFrame, photos: Mapping[str, bytes], counter: BinCounter,
                        settings: Mapping[str, Any]) -> str:
    """Keep a report of uploaded photos as a batch, each photo as a stored copy."""
    sources = {}
    for image in report["image"]:
        if image in photos:
            digest, copy = store_photo(store, image, photos[image])
            sources[image] = (PurePosixPath(image).stem, "", digest, copy)
    return save_report(store, report, model=counter.exp_id, model_name=counter.name, settings=settings,
                       sources=sources)


def open_batch(store: Store, *, model: str, model_name: str, settings: Mapping[str, Any], data_root: str = "") -> str:
    """A new, empty batch; its id (time-ordered, unique)."""
    now = time.time()
    batch_id = f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{secrets.token_hex(3)}"
    with store.transaction() as db:
        db.execute("INSERT INTO batches (id, created_at, model, model_name, data_root, settings, updated_at)"
                   " VALUES (?,?,?,?,?,?,?)",
                   (batch_id, now, model, model_name, data_root, json.dumps(dict(settings)), now))
    return batch_id


def _value(x: Any) -> Any:
    """A report cell as SQLite stores it (NaN and NA -> NULL, numpy scalars -> Python)."""
    if x is None or (not isinstance(x, (list, str)) and pd.isna(x)):
        return None
    return x.item() if isinstance(x, np.generic) else x


def append_bins(store: Store, batch_id: str, report: pd.DataFrame,
                sources: Mapping[str, tuple[str, str, str, str]] | None = None) -> int:
    """Store a chunk of report rows (`core.reconcile.inventory.reconcile`'s columns) in one transaction; rows of
    bins already stored are left as they are (a resumed run may hand them again). `sources` maps
    a bin's image to (image_id, path, content_hash, stored_copy). Returns how many rows were new."""
    sources = sources or {}
    rows = []
    for rec in report.to_dict("records"):
        image = str(rec["image"])
        image_id, path, digest, copy = sources.get(image, (PurePosixPath(image).stem, "", "", ""))
        probs = rec.get("probs")
        rows.append((batch_id, image, image_id, path, digest, copy, _value(rec["recorded_quantity"]),
                     _value(rec["predicted_count"]), _value(rec["expected_count"]), _value(rec["confidence"]),
                     json.dumps([float(p) for p in probs]) if isinstance(probs, (list, np.ndarray)) else None,
                     _value(rec["p_recorded"]), _value(rec["p_mismatch"]), int(bool(rec["mismatch"])),
                     rec.get("note") or "", rec.get("error") or ""))
    with store.transaction() as db:
        if db.execute("SELECT 1 FROM batches WHERE id = ?", (batch_id,)).fetchone() is None:
            raise KeyError(f"no batch {batch_id!r} in {store.path}")
        before = db.total_changes
        db.executemany(f"INSERT OR IGNORE INTO batch_bins (batch, {', '.join(BIN_COLUMNS)})"
                       f" VALUES ({', '.join('?' * (len(BIN_COLUMNS) + 1))})", rows)
        added = db.total_changes - before
        db.execute("UPDATE batches SET updated_at = ? WHERE id = ?", (time.time(), batch_id))
    return added


def done_bins(store: Store, batch_id: str) -> set[str]:
    """The bins (images) of the batch already stored: what a resumed run skips."""
    with store.reading() as db:
        return {r[0] for r in db.execute("SELECT image FROM batch_bins WHERE batch = ?", (batch_id,))}


def finish_batch(store: Store, batch_id: str) -> ReportTotals:
    """Close a batch: with an audit budget, flag exactly its riskiest N bins (the budget needs all
    bins); store and return the totals."""
    from core.reconcile.inventory import flags

    batch = get_batch(store, batch_id)
    budget = batch.settings.get("budget")
    with store.transaction() as db:
        if budget is not None:
            bins = db.execute("SELECT image, p_mismatch FROM batch_bins WHERE batch = ? ORDER BY p_mismatch DESC,"
                              " rowid", (batch_id,)).fetchall()
            flagged = flags([np.nan if r[1] is None else r[1] for r in bins], budget=budget)
            db.executemany("UPDATE batch_bins SET flagged = ? WHERE batch = ? AND image = ?",
                           [(int(f), batch_id, r[0]) for f, r in zip(flagged, bins, strict=True)])
        given, checked, flagged_n, errors = db.execute(
            "SELECT COUNT(*), COUNT(p_mismatch), COALESCE(SUM(flagged), 0), COALESCE(SUM(error != ''), 0)"
            " FROM batch_bins WHERE batch = ?", (batch_id,)).fetchone()
        totals = ReportTotals.of(given, checked, flagged_n, errors)
        now = time.time()
        db.execute("UPDATE batches SET totals = ?, finished_at = ?, updated_at = ? WHERE id = ?",
                   (json.dumps(totals.to_dict()), now, now, batch_id))
    return totals


def save_report(store: Store, report: pd.DataFrame, *, model: str, model_name: str, settings: Mapping[str, Any],
                data_root: str = "", sources: Mapping[str, tuple[str, str, str, str]] | None = None) -> str:
    """A whole report as one finished batch (the dashboard's and the CLI's reconcile); its id."""
    batch_id = open_batch(store, model=model, model_name=model_name, settings=settings, data_root=data_root)
    append_bins(store, batch_id, report, sources)
    finish_batch(store, batch_id)
    return batch_id


def unfinished_batch(store: Store, *, model: str, data_root: str, settings: Mapping[str, Any]) -> str | None:
    """The newest batch of `model` on `data_root` with these settings that never finished: what an
    interrupted run left to resume; None if there is none."""
    wanted = json.loads(json.dumps(dict(settings)))  # as the store keeps them (tuples as lists)
    return next((b.id for b in list_batches(store) if b.finished_at is None and b.model == model
                 and b.data_root == data_root and b.settings == wanted), None)


def resume_or_open(store: Store, *, model: str, model_name: str, settings: Mapping[str, Any],
                   data_root: str = "") -> tuple[str, set[str]]:
    """The batch a streamed run writes into and the bins it holds already: the `unfinished_batch`
    of the same settings an interrupted run left, else a new, empty one."""
    batch_id = unfinished_batch(store, model=model, data_root=data_root, settings=settings)
    if batch_id is None:
        return open_batch(store, model=model, model_name=model_name, settings=settings, data_root=data_root), set()
    return batch_id, done_bins(store, batch_id)


class BatchSink:
    """A `core.reconcile.stream.ChunkSink` into a batch of a data folder's photos (`images`: bin ->
    path): each chunk's rows flagged by the batch's threshold (under a budget `finish_batch` flags),
    each photo kept by path and the content hash of the bytes it was counted from."""

    def __init__(self, store: Store, batch_id: str, images: Mapping[str, Path]):
        self.store, self.batch_id, self.images = store, batch_id, images
        self.threshold: float | None = get_batch(store, batch_id).settings.get("threshold")

    def write(self, chunk: JudgedChunk) -> None:
        from core.reconcile.inventory import flags

        rows = chunk.rows
        if self.threshold is not None:
            rows = rows.assign(mismatch=flags(rows["p_mismatch"], self.threshold))
        sources = {image: (PurePosixPath(image).stem, str(self.images[image].resolve()), digest, "")
                   for image, digest in chunk.hashes.items()}
        append_bins(self.store, self.batch_id, rows, sources)


def _decode(row) -> Batch:
    return Batch(row["id"], row["created_at"], row["model"], row["model_name"], row["data_root"] or "",
                 json.loads(row["settings"]), ReportTotals(**json.loads(row["totals"])) if row["totals"] else None,
                 row["finished_at"], row["updated_at"])


def get_batch(store: Store, batch_id: str) -> Batch:
    with store.reading() as db:
        row = db.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
    if row is None:
        raise KeyError(f"no batch {batch_id!r} in {store.path}")
    return _decode(row)


def list_batches(store: Store) -> list[Batch]:
    """Every batch, newest first."""
    with store.reading() as db:
        return [_decode(r) for r in db.execute("SELECT * FROM batches ORDER BY created_at DESC, id DESC")]


def delete_batch(store: Store, batch_id: str) -> None:
    """Remove a batch and its bins. The outcomes people recorded on it stay in the review log (the
    audit trail: who recorded what, when), and so do stored photo copies (other batches may hold
    the same photo)."""
    with store.transaction() as db:
        if db.execute("DELETE FROM batches WHERE id = ?", (batch_id,)).rowcount == 0:
            raise KeyError(f"no batch {batch_id!r} in {store.path}")
        db.execute("DELETE FROM batch_bins WHERE batch = ?", (batch_id,))


_BINS_IN_REPORT_ORDER = (f"SELECT {', '.join(BIN_COLUMNS)} FROM batch_bins WHERE batch = ? ORDER BY"
                         " (p_mismatch IS NULL), (error = ''), p_mismatch DESC, rowid")
REPORT_CHUNK = 1024  # rows read from the store at a time to write a report


def _bins_frame(rows: list) -> pd.DataFrame:
    """Stored bin rows as a frame of `BIN_COLUMNS`, probs decoded."""
    frame = pd.DataFrame([dict(r) for r in rows], columns=BIN_COLUMNS)
    frame["probs"] = [json.loads(p) if isinstance(p, str) else None for p in frame["probs"]]
    frame["flagged"] = frame["flagged"].astype(bool)
    frame["p_mismatch"] = frame["p_mismatch"].astype(float)
    for column in ("recorded", "predicted"):
        frame[column] = frame[column].astype("Int64")
    return frame


def batch_bins(store: Store, batch_id: str) -> pd.DataFrame:
    """The batch's bins as stored (`BIN_COLUMNS`, probs decoded), in the report's order: checked
    bins riskiest first, then error rows, then bins the model could not check."""
    with store.reading() as db:
        return _bins_frame(db.execute(_BINS_IN_REPORT_ORDER, (batch_id,)).fetchall())


def iter_bins(store: Store, batch_id: str, chunk_size: int = REPORT_CHUNK) -> Iterator[pd.DataFrame]:
    """`batch_bins` a chunk of `chunk_size` rows at a time, for batches too big to hold at once."""
    with store.reading() as db:
        cursor = db.execute(_BINS_IN_REPORT_ORDER, (batch_id,))
        while rows := cursor.fetchmany(chunk_size):
            yield _bins_frame(rows)


def to_report(bins: pd.DataFrame) -> pd.DataFrame:
    """Stored bins (`batch_bins`) as report rows (`core.reconcile.inventory.REPORT_COLUMNS`)."""
    from core.reconcile.inventory import REPORT_COLUMNS

    return bins.rename(columns=TO_REPORT)[REPORT_COLUMNS]


def batch_report(store: Store, batch_id: str) -> pd.DataFrame:
    """The batch's variance report as `core.reconcile.inventory.reconcile` gave it, read back from the store."""
    return to_report(batch_bins(store, batch_id))


def write_batch_report(store: Store, batch_id: str, out: str | Path, settings: Mapping | None = None,
                       chunk_size: int = REPORT_CHUNK) -> None:
    """Write a finished batch's report to `out` in `core.reconcile.inventory.write_report`'s format, read from
    the store `chunk_size` rows at a time: memory stays flat however many bins it holds."""
    from core.reconcile.inventory import write_report_chunks

    totals = get_batch(store, batch_id).totals
    if totals is None:
        raise ValueError(f"batch {batch_id} is not finished: finish it before writing its report")
    write_report_chunks(map(to_report, iter_bins(store, batch_id, chunk_size)), totals, out, settings)


def photo_source(store: Store, batch: Batch, row: Mapping[str, Any]) -> Path | None:
    """Where a bin's photo is: its stored copy, else its path (relative paths under the batch's data)."""
    if row.get("stored_copy"):
        return store.root / str(row["stored_copy"])
    if row.get("path"):
        path = Path(str(row["path"]))
        return path if path.is_absolute() or not batch.data_root else Path(batch.data_root) / path
    return None
