"""Reconciliation of a collection of any size: records judged a chunk at a time, written as they go.

`judge_chunks` counts the photos as one stream (decoding beside the network, see
`BinCounter.iter_counts`) and yields the judged report rows (`core.reconcile.inventory.report_row`) a chunk
at a time, with each row's position in the records as its index, leaving out the positions a
resume source says are done. Each photo is read once: the bytes read for counting are also
hashed (sha256, `core.store.files.content_hash`), so the store can keep a photo by path and content
without reading it again. `reconcile_into` hands every chunk to a sink, which keeps it before the
next is counted: memory stays flat however many bins there are, and an interrupted run loses at
most the chunk in flight. Flags under a budget need every row, so they come when the sink is
done (`core.reconcile.inventory.finish_report`, `core.reconcile.batches.finish_batch`).

The command line's sink and resume source is a batch in the store (`core.reconcile.batches.BatchSink`):
its settings include `records_digest`, so a run resumes only a batch of the same model, data,
records and settings (`core.reconcile.batches.unfinished_batch`) instead of mixing rows.
"""
from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from tqdm import tqdm

from core.counting.service import BinCounter
from core.reconcile.inventory import PRIOR_WRONG, REPORT_COLUMNS, countable, record_errors, report_row
from core.store.files import content_hash

CHUNK_BINS = 1024  # records judged per chunk (one sink write)


@dataclass(frozen=True)
class JudgedChunk:
    """A chunk of judged, unflagged report rows (REPORT_COLUMNS, indexed by the records' positions)
    and the content hash of each photo read to count them, by image (photos not read are absent)."""

    rows: pd.DataFrame
    hashes: dict[str, str]


class ChunkSink(Protocol):
    """Where judged chunks go: `write` keeps each before returning, so a later run can resume after it."""

    def write(self, chunk: JudgedChunk) -> None: ...


def read_photo(source: bytes | Path) -> tuple[bytes | Path, str]:
    """A photo as bytes, with their content hash: one read serves counting and hashing. A file that
    cannot be read is handed on by path, with no hash, so the decoder says why as it would have."""
    if isinstance(source, Path):
        try:
            source = source.read_bytes()
        except OSError:
            return source, ""
    return source, content_hash(source)


class _HashedPhotos:
    """The photos to count as a stream of bytes (`read_photo`), keeping the hash of each photo read
    until its count is taken: the counter reads at most a batch or two ahead of its results."""

    def __init__(self, sources: Iterator[bytes | Path]):
        self._sources = sources
        self._hashes: deque[str] = deque()

    def __iter__(self) -> Iterator[bytes | Path]:
        for source in self._sources:
            data, digest = read_photo(source)
            self._hashes.append(digest)
            yield data

    def next_hash(self) -> str:
        """The hash of the oldest photo whose count has not been taken yet."""
        return self._hashes.popleft()


def judge_chunks(counter: BinCounter, records: pd.DataFrame, images: Mapping[str, bytes | Path],
                 done: Container[int] = (), prior_wrong: float = PRIOR_WRONG, chunk_size: int = CHUNK_BINS,
                 workers: int | None = None, progress: bool = False) -> Iterator[JudgedChunk]:
    """The judged, unflagged report rows of every record whose position is not in `done`, in the
    records' order, `chunk_size` at a time, with their photos' hashes; the progress bar counts
    bins (photos/s, time left)."""
    names = records["image"].tolist()
    quantities = records["recorded_quantity"]
    errors = record_errors(records)
    todo = np.array([i not in done for i in range(len(names))], dtype=bool)
    counted = np.array([todo[i] and countable(names[i], errors[i], images) for i in range(len(names))], dtype=bool)
    photos = _HashedPhotos(images[names[i]] for i in np.flatnonzero(counted))
    results = counter.iter_counts(photos, workers=workers)
    positions = np.flatnonzero(todo)
    with tqdm(total=len(positions), desc="reconciling", unit="photo", disable=not progress, smoothing=0.05) as bar:
        for start in range(0, len(positions), chunk_size):
            chunk = positions[start:start + chunk_size]
            rows, hashes = [], {}
            for i in chunk:
                result = next(results) if counted[i] else None
                if counted[i] and (digest := photos.next_hash()):
                    hashes[names[i]] = digest
                rows.append(report_row(counter, names[i], quantities.iloc[i], errors[i], result, prior_wrong))
            bar.update(len(chunk))
            yield JudgedChunk(pd.DataFrame(rows, columns=REPORT_COLUMNS, index=pd.Index(chunk, name="record")), hashes)


def reconcile_into(sink: ChunkSink, counter: BinCounter, records: pd.DataFrame, images: Mapping[str, bytes | Path],
                   done: Container[int] = (), prior_wrong: float = PRIOR_WRONG, chunk_size: int = CHUNK_BINS,
                   workers: int | None = None, progress: bool = False) -> int:
    """Judge every record not `done` into `sink`, chunk by chunk; returns how many rows were written."""
    written = 0
    for chunk in judge_chunks(counter, records, images, done, prior_wrong, chunk_size, workers, progress):
        sink.write(chunk)
        written += len(chunk.rows)
    return written


def records_digest(records: pd.DataFrame) -> str:
    """A short fingerprint of the records (names, quantities, errors), so a resumed run reads the same ones."""
    digest = hashlib.sha256()
    for column in ("image", "recorded_quantity", "error"):
        if column in records:
            digest.update(pd.util.hash_pandas_object(records[column].astype(str), index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def skipped_records(records: pd.DataFrame, stored: Container[str]) -> set[int]:
    """Positions of the records a run into a batch leaves out: those whose bin the batch holds
    already (resume), and those naming a bin an earlier record names (a batch keeps one row per
    bin, the first)."""
    repeated = records["image"].duplicated().to_numpy()
    return {i for i, name in enumerate(records["image"]) if repeated[i] or name in stored}
