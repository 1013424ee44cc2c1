"""The incremental collection index: what was learnt about each file, kept until the file changes.

Reading a collection means, per photo, opening its image header, reading its metadata JSON and
(for photos without an ABID id) hashing its bytes: minutes at ABID scale. The index keeps those
results in one small SQLite file per collection, keyed by path and by the size and mtime of the
image and of its metadata file, so a rescan only stats files and re-reads what is new or changed.
"""
from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import NamedTuple

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, bytes INTEGER, mtime_ns INTEGER, meta_bytes INTEGER, meta_mtime_ns INTEGER,
    problem TEXT, count INTEGER, items TEXT, digest TEXT
)"""


class Stamp(NamedTuple):  # named tuples, not dataclasses: 100k of them are made on every load
    """When a file was last seen changed: its size and mtime, and its metadata file's (-1 if none)."""

    bytes: int
    mtime_ns: int
    meta_bytes: int = -1
    meta_mtime_ns: int = -1


class Probe(NamedTuple):
    """What reading a file taught: why it is unusable (or None), the metadata's count and items, its hash."""

    problem: str | None
    count: int | None = None  # type: ignore[assignment]  # a field named count shadows tuple.count, on purpose
    items: str = ""
    digest: str | None = None


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=60)
    db.execute(SCHEMA)
    return db


def read_index(path: Path) -> dict[str, tuple[tuple, Probe]]:
    """Every file the index knows, by path: (its stamp as a plain tuple, which equals a `Stamp`, and
    its probe); empty when there is no index yet."""
    if not path.is_file():
        return {}
    with closing(_connect(path)) as db:
        rows = db.execute("SELECT * FROM files").fetchall()
    return {r[0]: (r[1:5], Probe._make(r[5:])) for r in rows}


def update_index(path: Path, changed: dict[str, tuple[Stamp, Probe]], removed: list[str]) -> None:
    """Record re-read files and forget removed ones, in one transaction (a crash leaves the old index)."""
    if not changed and not removed and path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(_connect(path)) as db, db:
        db.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in removed])
        db.executemany(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(p, s.bytes, s.mtime_ns, s.meta_bytes, s.meta_mtime_ns, r.problem, r.count, r.items, r.digest)
             for p, (s, r) in changed.items()],
        )
