"""The incremental collection index: what was learnt about each file, kept until the file changes.

Reading a collection means, per photo, opening its image header, reading its metadata JSON and
(for photos without an ABID id) hashing its bytes: minutes at ABID scale. The index keeps those
results in one Arrow file per collection (`index.arrow`), one row per image path, beside the size and mtime of
the image and of its metadata file (its stamp), so a rescan only stats files and re-reads what is
new or changed. The file is columnar and memory-mapped, so a rescan reads it in one vectorised
pass without a Python object per photo, and the item lists (the largest column, read only by the
dashboard) stay on disk unless asked for.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc  # noqa: F401 - pa.ipc

from core.files import atomic_path

STAMP = ["bytes", "mtime_ns", "meta_bytes", "meta_mtime_ns"]  # -1 where the file (or its metadata) is missing
PROBE = ["problem", "count", "digest"]  # why it is unusable (null if usable), the metadata's count (-1: none), hash
ITEMS = "items"  # the metadata's items as a JSON list ("" if none)
SCHEMA = pa.schema([("path", pa.string()), *[(c, pa.int64()) for c in STAMP], ("problem", pa.string()),
                    ("count", pa.int64()), ("digest", pa.string()), (ITEMS, pa.string())])
STAT_CHUNK = 4096  # paths stat'ed per thread task


def read_index(path: Path, items: bool = False) -> pa.Table:
    """Every file the index knows: path, its stamp, its probe (and `items` if asked); empty when
    there is no index yet or it cannot be read (then every file is read again, and it is rewritten)."""
    schema = SCHEMA if items else SCHEMA.remove(SCHEMA.get_field_index(ITEMS))
    if path.is_file():
        try:
            with pa.memory_map(str(path)) as source:  # zero-copy: columns not used are never read
                table = pa.ipc.open_file(source).read_all()
            if table.schema.equals(SCHEMA):
                return table.select(schema.names)
            warnings.warn(f"collection index {path} has another layout; every file is read again", stacklevel=3)
        except (OSError, ValueError, pa.ArrowException) as err:
            warnings.warn(f"collection index {path} unreadable ({err}); every file is read again", stacklevel=3)
    return schema.empty_table()


def write_index(path: Path, parts: Iterable[pa.Table]) -> None:
    """Replace the index with the rows of `parts` (tables with `SCHEMA`'s columns), written one part
    at a time, in one atomic step: a reader or a crash sees the old file or the new one."""
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
        for part in parts:
            writer.write_table(part.select(SCHEMA.names).cast(SCHEMA))


def _stat_chunk(paths: pa.Array) -> np.ndarray:
    paths = paths.to_pylist()  # Python strings for one chunk at a time, not for the whole collection
    out = np.full((len(paths), 2), -1, dtype=np.int64)
    stat = os.stat
    for i, path in enumerate(paths):
        if path is None:
            continue
        try:
            st = stat(path)
        except OSError:
            continue
        out[i] = st.st_size, st.st_mtime_ns
    return out


def stat_files(paths: pa.Array | pa.ChunkedArray, workers: int | None = None) -> np.ndarray:
    """(size, mtime_ns) of each path as an (n, 2) int64 array, -1 for a missing file or a null path.

    On threads: os.stat releases the GIL, and at ABID scale (two files per photo) stat'ing is most
    of what an unchanged rescan does.
    """
    chunks = [paths.slice(i, STAT_CHUNK) for i in range(0, len(paths), STAT_CHUNK)]
    if len(chunks) < 2:
        return _stat_chunk(paths)
    with ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
        return np.concatenate(list(pool.map(_stat_chunk, chunks)))
