"""Decode and resize each photo once per resolution into a uint8 file on disk that only grows.

CPU training reads the same photos for many epochs and several models; decoding JPEGs each
time would dominate. Each collection has one cache per image size: a raw (rows x size x size x 3)
uint8 file, memory-mapped on read. Every version of a file (path, size, mtime) gets a row number
once (`assign_rows`), the same at every size; photos added or modified later get new rows at the
end, and only rows never decoded at a size are decoded (`cached_images`), on all cores, with JPEG
draft decoding. A row is marked decoded only after its pixels are flushed, so an interrupted build
is resumed, never trusted half-written. Rows are never rewritten, so readers can map the file
while another process grows it.
"""
from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from tqdm import tqdm

from core.data.images import ImageError, load_rgb
from core.store.layout import cache_db, cache_file, cache_files, cache_lock
from core.store.locks import exclusive_lock

CHUNK = 64
SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (row INTEGER PRIMARY KEY, path TEXT, bytes INTEGER, mtime_ns INTEGER,
                                 UNIQUE (path, bytes, mtime_ns));
CREATE TABLE IF NOT EXISTS decoded (size INTEGER, row INTEGER, error TEXT, PRIMARY KEY (size, row));
"""


@contextmanager
def _locked(folder: Path) -> Iterator[sqlite3.Connection]:
    """The cache's row table, with the folder locked against other processes growing it at once."""
    with exclusive_lock(cache_lock(folder)):
        with closing(sqlite3.connect(cache_db(folder), timeout=60)) as db:
            db.executescript(SCHEMA)
            yield db


def assign_rows(folder: Path, files: pd.DataFrame) -> np.ndarray:
    """The cache row of each file version (`files`: path, bytes, mtime_ns); new versions get new rows.

    Matched inside SQLite (a temporary table joined on the unique key), so only row numbers come
    back into Python, not a tuple per known file.
    """
    with _locked(folder) as db, db:
        db.execute("CREATE TEMP TABLE wanted (i INTEGER PRIMARY KEY, path TEXT, bytes INTEGER, mtime_ns INTEGER)")
        db.executemany("INSERT INTO wanted VALUES (?, ?, ?, ?)", zip(
            range(len(files)), files["path"], files["bytes"].astype(int).tolist(),
            files["mtime_ns"].astype(int).tolist(), strict=True))
        db.execute("""INSERT INTO rows (row, path, bytes, mtime_ns)
                      SELECT (SELECT COALESCE(MAX(row), -1) FROM rows) + ROW_NUMBER() OVER (ORDER BY MIN(i)),
                             path, bytes, mtime_ns FROM wanted w
                      WHERE NOT EXISTS (SELECT 1 FROM rows r WHERE r.path = w.path AND r.bytes = w.bytes
                                        AND r.mtime_ns = w.mtime_ns)
                      GROUP BY path, bytes, mtime_ns""")  # new versions numbered on, in `files` order
        rows = np.fromiter((r for (r,) in db.execute(
            "SELECT r.row FROM wanted w JOIN rows r USING (path, bytes, mtime_ns) ORDER BY w.i")), np.int64)
        db.execute("DROP TABLE wanted")
    return rows


def _open(folder: Path, size: int, rows: int, mode: Literal["r", "r+"] = "r") -> np.memmap:
    return np.memmap(cache_file(folder, size), dtype=np.uint8, mode=mode, shape=(rows, size, size, 3))


def _fill(folder: str, size: int, rows: int, jobs: list[tuple[int, str]]) -> dict[int, str | None]:
    """Worker: decode each (row, path) into the memory-mapped cache; {row: None or why it failed}."""
    array = _open(Path(folder), size, rows, "r+")
    done: dict[int, str | None] = {}
    for row, path in jobs:
        try:
            array[row] = load_rgb(path, size)
            done[row] = None
        except (ImageError, OSError) as err:
            done[row] = str(err)
    array.flush()
    return done


def _decode(folder: Path, size: int, rows: int, jobs: list[tuple[int, str]], workers: int,
            progress: bool, db: sqlite3.Connection) -> None:
    """Decode `jobs` on `workers` processes, recording each finished chunk as it lands."""
    chunks = [jobs[i:i + CHUNK] for i in range(0, len(jobs), CHUNK)]
    bar = tqdm(total=len(jobs), desc=f"caching images at {size}px", unit="img", disable=not progress)

    def record(done: dict[int, str | None]) -> None:
        with db:
            db.executemany("INSERT OR REPLACE INTO decoded VALUES (?, ?, ?)", [(size, r, e) for r, e in done.items()])
        bar.update(len(done))

    with bar:
        if workers == 1 or len(chunks) == 1:
            for chunk in chunks:
                record(_fill(str(folder), size, rows, chunk))
            return
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(_fill, str(folder), size, rows, chunk) for chunk in chunks]
            for future in as_completed(futures):
                record(future.result())


def cached_images(folder: Path, size: int, rows: np.ndarray, paths: Sequence[str] | pd.Series,
                  workers: int | None = None,
                  progress: bool = True) -> tuple[np.memmap, dict[int, str]]:
    """The cache at `size` (memory-mapped, read-only) after decoding any of `rows` (files `paths`) it lacks,
    and {row: reason} for those of `rows` that failed to decode."""
    rows = np.asarray(rows, dtype=np.int64)
    with _locked(folder) as db:
        total = db.execute("SELECT COALESCE(MAX(row), -1) + 1 FROM rows").fetchone()[0]
        done = np.fromiter((r for (r,) in db.execute("SELECT row FROM decoded WHERE size = ?", (size,))), np.int64)
        todo = np.flatnonzero(~np.isin(rows, done))
        todo_rows, first = np.unique(rows[todo], return_index=True)  # each row once (a row is one file version)
        todo_paths = (paths if isinstance(paths, pd.Series) else pd.Series(paths)).iloc[todo[first]]
        jobs = list(zip(todo_rows.tolist(), map(str, todo_paths), strict=True))  # only these become Python objects
        target = cache_file(folder, size)
        if not target.exists() or target.stat().st_size < total * size * size * 3:
            with open(target, "ab") as fh:  # grow (sparsely); never shrink what others may be reading
                fh.truncate(total * size * size * 3)
        if jobs:
            _decode(folder, size, total, jobs, workers or os.cpu_count() or 1, progress, db)
        failed = dict(db.execute("SELECT row, error FROM decoded WHERE size = ? AND error IS NOT NULL", (size,)))
    asked = set(rows.tolist()) if failed else set()
    errors = {r: e for r, e in failed.items() if r in asked}
    return _open(folder, size, total), errors


def read_rows(folder: Path, size: int, rows: np.ndarray) -> np.ndarray:
    """Rows of the cache at `size` as a new array, read with pread rather than through a mapping, so a
    process streaming a whole split holds one batch, not every page of the split it has touched."""
    out = np.empty((len(rows), size, size, 3), np.uint8)
    row_bytes = size * size * 3
    with open(cache_file(folder, size), "rb") as fh:
        for i, row in enumerate(rows):
            if os.preadv(fh.fileno(), [memoryview(out[i]).cast("B")], int(row) * row_bytes) != row_bytes:
                raise ValueError(f"cache {cache_file(folder, size)} has no row {row}: rebuild it (train.py gc)")
    return out


def build_cache(paths: list[str], size: int, folder: Path, workers: int | None = None,
               progress: bool = True) -> tuple[np.memmap, dict[int, str]]:
    """Cache `paths` (as they are now) in `folder`: the array and {position in paths: reason} for failures."""
    frame = pd.DataFrame({"path": paths})
    stats = [os.stat(p) if os.path.exists(p) else None for p in paths]
    frame["bytes"] = [s.st_size if s else -1 for s in stats]
    frame["mtime_ns"] = [s.st_mtime_ns if s else -1 for s in stats]
    rows = assign_rows(folder, frame)
    array, errors = cached_images(folder, size, rows, paths, workers, progress)
    position = {row: i for i, row in enumerate(rows)}
    return array, {position[row]: reason for row, reason in errors.items()}


def cached_sizes(folder: Path) -> list[int]:
    """The image sizes `folder` holds a cache at."""
    return sorted(cache_files(folder))


def forget_size(folder: Path, size: int) -> None:
    """Delete the cache at `size` and its decoded marks, so a later use decodes it afresh."""
    with _locked(folder) as db, db:
        db.execute("DELETE FROM decoded WHERE size = ?", (size,))
        cache_file(folder, size).unlink(missing_ok=True)
