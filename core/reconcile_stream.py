"""Reconciliation of a collection of any size: records judged a chunk at a time, written as they go.

`judge_chunks` counts the photos as one stream (decoding beside the network, see
`BinCounter.iter_counts`) and yields the judged report rows (`core.reconcile.report_row`) a chunk
at a time, with each row's position in the records as its index, leaving out the positions a
resume source says are done. `reconcile_into` hands every chunk to a sink, which keeps it before
the next is counted: memory stays flat however many bins there are, and an interrupted run loses
at most the chunk in flight. Flags and order need every row, so they come at the end
(`core.reconcile.finish_report`) from what the sink kept.

`PartialReport` is the command line's sink and resume source: JSON lines beside the report's
path, with the settings the rows depend on (the model, the records, the prior share of wrong
records); a run with other settings starts again instead of mixing rows.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Container, Iterator, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from tqdm import tqdm

from core.predict import BinCounter
from core.reconcile import PRIOR_WRONG, REPORT_COLUMNS, countable, record_errors, report_row

CHUNK_BINS = 1024  # records judged per chunk (one sink write)


class ChunkSink(Protocol):
    """Where judged rows go: `write` gets each chunk (REPORT_COLUMNS, indexed by the records'
    positions) and keeps it before returning, so a later run can resume after it."""

    def write(self, rows: pd.DataFrame) -> None: ...


def judge_chunks(counter: BinCounter, records: pd.DataFrame, images: Mapping[str, bytes | Path],
                 done: Container[int] = (), prior_wrong: float = PRIOR_WRONG, chunk_size: int = CHUNK_BINS,
                 workers: int | None = None, progress: bool = False) -> Iterator[pd.DataFrame]:
    """The judged, unflagged report rows of every record whose position is not in `done`, in the
    records' order, `chunk_size` at a time; the progress bar counts bins (photos/s, time left)."""
    names = records["image"].tolist()
    quantities = records["recorded_quantity"]
    errors = record_errors(records)
    todo = np.array([i not in done for i in range(len(names))], dtype=bool)
    counted = np.array([todo[i] and countable(names[i], errors[i], images) for i in range(len(names))], dtype=bool)
    results = counter.iter_counts((images[names[i]] for i in np.flatnonzero(counted)), workers=workers)
    positions = np.flatnonzero(todo)
    with tqdm(total=len(positions), desc="reconciling", unit="photo", disable=not progress, smoothing=0.05) as bar:
        for start in range(0, len(positions), chunk_size):
            chunk = positions[start:start + chunk_size]
            rows = [report_row(counter, names[i], quantities.iloc[i], errors[i],
                               next(results) if counted[i] else None, prior_wrong) for i in chunk]
            bar.update(len(chunk))
            yield pd.DataFrame(rows, columns=REPORT_COLUMNS, index=pd.Index(chunk, name="record"))


def reconcile_into(sink: ChunkSink, counter: BinCounter, records: pd.DataFrame, images: Mapping[str, bytes | Path],
                   done: Container[int] = (), prior_wrong: float = PRIOR_WRONG, chunk_size: int = CHUNK_BINS,
                   workers: int | None = None, progress: bool = False) -> int:
    """Judge every record not `done` into `sink`, chunk by chunk; returns how many rows were written."""
    written = 0
    for rows in judge_chunks(counter, records, images, done, prior_wrong, chunk_size, workers, progress):
        sink.write(rows)
        written += len(rows)
    return written


def records_digest(records: pd.DataFrame) -> str:
    """A short fingerprint of the records (names, quantities, errors), so a resumed run reads the same ones."""
    digest = hashlib.sha256()
    for column in ("image", "recorded_quantity", "error"):
        if column in records:
            digest.update(pd.util.hash_pandas_object(records[column].astype(str), index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


class PartialReport:
    """The judged rows of one run so far, as JSON lines at `<report>.partial.jsonl` (a header line
    with `settings`, then one row a line with its record position): a `ChunkSink` and the resume
    source (`done`) of `reconcile_into`."""

    def __init__(self, report: str | Path, settings: Mapping):
        report = Path(report)
        self.path = report.with_name(report.name + ".partial.jsonl")
        self.settings = dict(settings)
        self.resumed = False
        self._done: set[int] = set()
        if self.path.is_file():
            self._open_existing()
        if not self.resumed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append(json.dumps({"settings": self.settings}) + "\n", truncate=True)

    def _open_existing(self) -> None:
        """Keep the rows of a run with the same settings (up to the last whole line); else start again."""
        with open(self.path, "rb") as fh:
            data = fh.read()
        whole = data[:data.rfind(b"\n") + 1]
        lines = whole.splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        if header.get("settings") != self.settings:
            return
        if len(whole) < len(data):  # a line cut off by the interruption
            with open(self.path, "r+b") as fh:
                fh.truncate(len(whole))
        self._done = {json.loads(line)["record"] for line in lines[1:]}
        self.resumed = True

    def _append(self, text: str, truncate: bool = False) -> None:
        with open(self.path, "w" if truncate else "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    def done(self) -> set[int]:
        """Positions of the records already judged."""
        return set(self._done)

    def write(self, rows: pd.DataFrame) -> None:
        self._append(rows.reset_index().to_json(orient="records", lines=True).rstrip("\n") + "\n")
        self._done.update(int(i) for i in rows.index)

    def rows(self) -> pd.DataFrame:
        """Every row kept, in the records' order."""
        with open(self.path, encoding="utf-8") as fh:
            fh.readline()  # the settings
            frame = pd.read_json(fh, lines=True, dtype=False) if self._done else pd.DataFrame(columns=["record"])
        frame = frame.set_index("record").sort_index()
        frame = frame.reindex(columns=REPORT_COLUMNS)
        for column in ("note", "error"):
            frame[column] = frame[column].fillna("").astype(str)
        return frame

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
