"""The incremental collection index: what was learnt about each file, kept until the file changes.

Reading a collection means, per photo, opening its image header, reading its metadata JSON and
(for photos without an ABID id) hashing its bytes: minutes at ABID scale. The index keeps those
results in one Arrow file per collection (`index.arrow`), one row per image path, beside the size and mtime of
the image and of its metadata file (its stamp), so a rescan only stats files and re-reads what is
new or changed. The file is columnar and memory-mapped, so a rescan reads it in one vectorised
pass without a Python object per photo, and the item lists (the largest column, read only by the
dashboard) stay on disk unless asked for.

Like git's untracked cache, the file's schema metadata also records the stamp of every directory
holding indexed files and when the scan that wrote it started. A directory whose stamp is unchanged,
and was already at least `TRUST_MARGIN_NS` older than that scan, has had no file added, removed or
renamed since, so its files' recorded stamps are reused without stat'ing them (`trusted_dirs`). The
margin is git's "racily clean" rule: a change made in the same timestamp tick as the scan would not
move the directory's mtime visibly. A file rewritten in place (same name, no rename) does not change
its directory, so only a full re-check sees it (`load_collection(recheck=True)`, `--recheck`).
An index written before directory stamps existed reads as having none: every file is stat'ed.
"""
from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

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
DIRS, STARTED = b"binsight.dirs", b"binsight.scan_started_ns"  # schema metadata: directory stamps, scan start
TRUST_MARGIN_NS = 2_000_000_000  # a directory is trusted only if its mtime is this much older than the scan


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


def dir_stamp(path: str) -> list[int]:
    """A directory's (mtime_ns, inode, size), all -1 if it is missing: any file added, removed or
    renamed in it changes the mtime, a directory put in its place changes the inode."""
    try:
        st = os.stat(path)
    except OSError:
        return [-1, -1, -1]
    return [st.st_mtime_ns, st.st_ino, st.st_size]


def trusted_dirs(index: pa.Table) -> dict[str, bool]:
    """Each directory `index` (from `read_index`) recorded, and whether its files' recorded stamps
    still hold without stat'ing them: its stamp is unchanged and was older than the recording scan
    by `TRUST_MARGIN_NS`. Empty for an index without directory stamps (an older layout)."""
    meta = index.schema.metadata or {}
    if DIRS not in meta or STARTED not in meta:
        return {}
    started, dirs = int(meta[STARTED]), json.loads(meta[DIRS])
    return {d: stamp[0] < started - TRUST_MARGIN_NS and dir_stamp(d) == stamp for d, stamp in dirs.items()}


class IndexWriter:
    """Writes a new index a part at a time (tables with `SCHEMA`'s columns, rows in listing order);
    it replaces the old file in one atomic step when the block ends without error (`atomic_path`),
    so a reader or a crash sees the old file or the new one. `dirs` (directory -> `dir_stamp`) and
    `started` (when the scan began, ns) go into the schema metadata. A store that cannot be written
    (read-only, full) is warned about once; loading works on, and the next load reads every file again."""

    def __init__(self, path: Path, dirs: dict[str, list[int]], started: int) -> None:
        self.path = path
        self.schema = SCHEMA.with_metadata({DIRS: json.dumps(dirs), STARTED: str(started)})
        self.files = ExitStack()  # the temporary file, its sink and the Arrow writer, closed in reverse
        self.writer: pa.ipc.RecordBatchFileWriter | None = None

    def __enter__(self) -> IndexWriter:
        try:
            tmp = self.files.enter_context(atomic_path(self.path))
            sink = self.files.enter_context(pa.OSFile(str(tmp), "wb"))
            self.writer = self.files.enter_context(pa.ipc.new_file(sink, self.schema))
        except OSError as err:
            self._fail(err)
        return self

    def write(self, part: pa.Table) -> None:
        if self.writer is not None:
            try:
                self.writer.write_table(part.select(SCHEMA.names).cast(SCHEMA))
            except OSError as err:
                self._fail(err)

    def __exit__(self, *exc: Any) -> None:
        try:
            self.files.__exit__(*exc)  # on an error the temporary file is dropped, the old index kept
        except OSError as err:
            self._fail(err)

    def _fail(self, err: OSError) -> None:
        warnings.warn(f"collection index {self.path} not updated ({err}); the next load reads every file again",
                      stacklevel=4)
        self.writer = None
        self.files.__exit__(type(err), err, err.__traceback__)  # abandon the half-written file


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
