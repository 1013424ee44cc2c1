"""The incremental collection index: what was learnt about each file, kept until the file changes.

Reading a collection means, per photo, opening its image header, reading its metadata JSON and
(for photos without an ABID id) hashing its bytes: minutes at ABID scale. The index keeps those
results in one Arrow file per collection (`index.arrow`), one row per image path, beside the size and mtime of
the image and of its metadata file (its stamp), so a rescan only stats files and re-reads what is
new or changed. The file is columnar and memory-mapped, so a rescan reads it in one vectorised
pass without a Python object per photo, and the item lists (the largest column, read only by the
dashboard) stay on disk unless asked for.

`scan` is the incremental scan, the one walk over a collection's files: a layout
(`core.data.collection`) lists its photos (`LISTING`) and says how to read one (`probe`); `scan`
stats what it must, probes only new or changed files and rewrites the index.

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
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc  # noqa: F401 - pa.ipc
from tqdm import tqdm

from core.store.files import atomic_path

STAMP = ["bytes", "mtime_ns", "meta_bytes", "meta_mtime_ns"]  # -1 where the file (or its metadata) is missing
PROBE = ["problem", "count", "digest"]  # why it is unusable (null if usable), the metadata's count (-1: none), hash
ITEMS = "items"  # the metadata's items as a JSON list ("" if none)
SCHEMA = pa.schema([("path", pa.string()), *[(c, pa.int64()) for c in STAMP], ("problem", pa.string()),
                    ("count", pa.int64()), ("digest", pa.string()), (ITEMS, pa.string())])
STAT_CHUNK = 4096  # paths stat'ed per thread task
DIRS, STARTED = b"binsight.dirs", b"binsight.scan_started_ns"  # schema metadata: directory stamps, scan start
TRUST_MARGIN_NS = 2_000_000_000  # a directory is trusted only if its mtime is this much older than the scan
SCAN_CHUNK = 8192  # photos read, or index rows rewritten, per batch: bounds the memory of a first load
# What a collection's layout lists, one row per photo, before its files are read (count -1: from the metadata).
LISTING = pa.schema([("image_id", pa.string()), ("path", pa.string()), ("count", pa.int64()),
                     ("group", pa.string()), ("meta", pa.string())])


class Probe(NamedTuple):
    """What reading a file taught: why it is unusable (or None), the metadata's count and items, its hash."""

    problem: str | None
    count: int | None = None  # type: ignore[assignment]  # a field named count shadows tuple.count, on purpose
    items: str = ""
    digest: str | None = None


Prober = Callable[[dict], Probe]  # a listed row (a `LISTING` row as a dict) -> what its files say


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


def _parents(paths: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """The directory of each path (null stays null)."""
    return pc.replace_substring_regex(paths, r"/[^/]*$", "", max_replacements=1)


def _dirs(paths: pa.ChunkedArray) -> list[str]:
    """The directories holding `paths` (nulls left out), found a chunk at a time."""
    dirs: dict[str, None] = {}
    for start in range(0, len(paths), SCAN_CHUNK):
        chunk = paths.slice(start, SCAN_CHUNK).drop_null()
        dirs.update(dict.fromkeys(pc.unique(_parents(chunk)).to_pylist()))
    return list(dirs)


def _dir_stamps(listing: pa.Table) -> dict[str, list[int]]:
    """The stamp of every directory holding an image or metadata file `listing` names."""
    return {d: dir_stamp(d) for d in dict.fromkeys(_dirs(listing["path"]) + _dirs(listing["meta"]))}


def _reusable(listing: pa.Table, at: np.ndarray, trusted: dict[str, bool]) -> np.ndarray:
    """Which rows of `listing` are in the index with both files in trusted directories: their
    recorded stamps hold without a stat (see `core.data.index.trusted_dirs`)."""
    if trusted and all(trusted.values()):  # the index's rows all lie in its recorded directories
        return at >= 0
    if not any(trusted.values()):
        return np.zeros(len(at), bool)
    ok = pa.array([d for d, yes in trusted.items() if yes], pa.string())

    def inside(column: str) -> np.ndarray:  # no file (null) is inside
        dirs = _parents(listing[column])
        return pc.or_(pc.is_null(dirs), pc.is_in(dirs, value_set=ok)).to_numpy(zero_copy_only=False)

    return (at >= 0) & inside("path") & inside("meta")


def _stamps(listing: pa.Table, recorded: np.ndarray, at: np.ndarray, reuse: np.ndarray) -> np.ndarray:
    """`STAMP` of every listed photo: `recorded` (the index's, by index row) where `reuse`, stat'ed otherwise."""
    stamps = np.empty((len(listing), 4), np.int64)
    stamps[reuse] = recorded[at[reuse]]
    stat = np.flatnonzero(~reuse)
    if len(stat):
        paths = listing.select(["path", "meta"]).take(stat)
        stamps[stat] = np.hstack([stat_files(paths["path"]), stat_files(paths["meta"])])
    return stamps


def _probed(listing: pa.Table, stamps: np.ndarray, chunk: np.ndarray, probe: Prober) -> pa.Table:
    """The index rows (`SCHEMA`) of `listing`'s rows `chunk`, read from their files."""
    probes = [probe(row) for row in listing.take(chunk).to_pylist()]
    return pa.table({"path": listing["path"].take(chunk), **dict(zip(STAMP, stamps[chunk].T, strict=True)),
                     "problem": [p.problem for p in probes], "count": [p.count for p in probes],
                     "digest": [p.digest for p in probes], ITEMS: [p.items for p in probes]}, schema=SCHEMA)


class _Match(NamedTuple):
    """How each photo of a listing stands against the index, by listing position."""

    at: np.ndarray  # its row in the index, -1 if it is not there
    stamps: np.ndarray  # its `STAMP` now: the recorded one where trusted, else stat'ed
    stale: np.ndarray  # whether its files must be read (not in the index, or its stamp changed)
    rows: np.ndarray  # the listing positions of photos whose image exists

    def unchanged(self, indexed: int) -> bool:
        """Whether the index (of `indexed` rows) holds exactly these photos, unchanged, in this order."""
        return (not self.stale[self.rows].any() and len(self.rows) == indexed
                and np.array_equal(self.at[self.rows], np.arange(indexed)))


def _match(listing: pa.Table, known: pa.Table, trusted: dict[str, bool], recheck: bool) -> _Match:
    """Find each listed photo in the index `known` and stamp it, stat'ing only what is not trusted."""
    at = pc.index_in(listing["path"], value_set=known["path"]).to_numpy(zero_copy_only=False)
    at = np.nan_to_num(at, nan=-1).astype(np.int64)  # -1: not in the index
    recorded = np.column_stack([known[c].to_numpy() for c in STAMP]) if len(known) else np.empty((0, 4), np.int64)
    reuse = np.zeros(len(at), bool) if recheck else _reusable(listing, at, trusted)
    stamps = _stamps(listing, recorded, at, reuse)
    same = np.zeros(len(listing), bool)
    same[at >= 0] = (recorded[at[at >= 0]] == stamps[at >= 0]).all(axis=1)
    return _Match(at, stamps, ~same, np.flatnonzero(stamps[:, 0] >= 0))


def _in_order(listing: pa.Table, known: pa.Table, match: _Match, probe: Prober, bar: tqdm) -> Iterator[pa.Table]:
    """The index rows of the listed photos whose image exists, in listing order, a window at a
    time: taken from `known` where unchanged, read from the files where stale. Python objects and
    item lists exist for one window at a time, never for the whole collection, and a window of
    unchanged rows in index order is a slice of the memory-mapped index, not a copy."""
    at, stale = match.at, match.stale
    for start in range(0, len(match.rows), SCAN_CHUNK):
        window = match.rows[start:start + SCAN_CHUNK]
        old, new = window[~stale[window]], window[stale[window]]
        if not len(new) and np.array_equal(at[old], np.arange(at[old[0]], at[old[0]] + len(old))):
            yield known.slice(at[old[0]], len(old))
            continue
        lo, hi = (int(at[old].min()), int(at[old].max()) + 1) if len(old) else (0, 0)
        read = _probed(listing, match.stamps, new, probe)
        # a take on a slice: a take on the whole table would first copy every batch of the mapped index into one
        part = pa.concat_tables([known.slice(lo, hi - lo).take(at[old] - lo), read])
        bar.update(len(new))
        yield part.take(np.argsort(np.concatenate([old, new]), kind="stable")) if len(old) and len(new) else part


def release_memory() -> None:
    """Hand back the memory Arrow has freed: its allocator keeps freed pages for reuse, so one phase's
    hash tables and copies would otherwise stay resident under the next phase's peak."""
    pa.default_memory_pool().release_unused()


def scan(listing: pa.Table, index: Path | None, probe: Prober, progress: bool = False, items: bool = True,
         recheck: bool = False) -> tuple[pa.Table, np.ndarray]:
    """What the files of `listing`'s photos say (the index's columns, `items` if asked) for those whose
    image exists, in listing order, and their rows in `listing`. Only new or changed files are read;
    the index is brought up to date. Files in directories the index trusts are not even stat'ed
    unless `recheck`: an unchanged rescan costs a few directory stats.

    `listing` has the columns of `LISTING`; `probe` reads what one listed row's files say (the
    layout's job, see `core.data.collection`) and is called only for new or changed files. Without
    `index` every file is probed and nothing is kept."""
    started = time.time_ns()  # before any stat: what the index will trust is judged against it
    known = read_index(index, items=True) if index else SCHEMA.empty_table()
    trusted = trusted_dirs(known)
    match = _match(listing, known, trusted, recheck)
    release_memory()
    lean = known.column_names if items else [c for c in known.column_names if c != ITEMS]
    if match.unchanged(len(known)):
        if index and not (trusted and all(trusted.values())):  # record today's directory stamps for the next load
            with IndexWriter(index, _dir_stamps(listing), started) as writer:
                for start in range(0, len(known), SCAN_CHUNK):
                    writer.write(known.slice(start, SCAN_CHUNK))
        return known.select(lean), match.rows  # the usual rescan: nothing changed
    kept = [known.select(lean).slice(0, 0)]
    todo = int(match.stale[match.rows].sum())
    with (tqdm(total=todo, desc="reading new or changed photos", unit="img",
               disable=not progress or todo < 1000) as bar,
          IndexWriter(index, _dir_stamps(listing), started) if index else nullcontext() as writer):
        for part in _in_order(listing, known, match, probe, bar):
            if writer is not None:
                writer.write(part)
            kept.append(part.select(lean))
    return pa.concat_tables(kept).combine_chunks(), match.rows  # a copy, so the mapped index (paged in whole) is let go
