"""Labelled bin-photo collections: read any supported layout into one table, split it.

Three layouts are understood:
- ABID's own: `bin-images/<id>.jpg` with `metadata/<id>.json` (label = `EXPECTED_QUANTITY`);
- a `manifest.csv` with at least `file,count` (optionally `metadata`), like the shared sample;
- count-named folders: `<root>/<count>/<name>.jpg`.
Bad input is skipped and reported, never a crash.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import sqlite3
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from core.config import MAX_COUNT
from core.images import check_header
from core.index import Probe, Stamp, read_index, update_index

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
COLUMNS = ["image_id", "path", "count", "items", "group", "bytes", "mtime_ns"]  # bytes, mtime: the file's version
SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """A collection that cannot be used at all (no usable image, unknown layout)."""


@dataclass
class Collection:
    """The usable images of a folder (`table`), what was skipped and why, and what was left out."""

    root: Path
    layout: str
    table: pd.DataFrame
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "reason"]))
    out_of_range: int = 0  # counts above max_count: valid, but not part of the task


def parse_count(value: str | float) -> int:
    """A bin count: a non-negative integer (\"3\", 3 and 3.0 are fine; \"3.5\", -1 and \"\" are not)."""
    if isinstance(value, bool):
        raise ValueError(f"not a count: {value!r}")
    if isinstance(value, str):
        value = value.strip()
    number = float(value)  # raises ValueError on text
    if not number.is_integer() or number < 0:
        raise ValueError(f"count must be a non-negative integer, got {value!r}")
    return int(number)


def read_metadata(path: str | Path) -> tuple[int, str]:
    """ABID metadata JSON -> (EXPECTED_QUANTITY, items as JSON list of {asin, name, quantity})."""
    with open(path, encoding="utf-8") as fh:
        meta = json.load(fh)
    if not isinstance(meta, dict) or "EXPECTED_QUANTITY" not in meta:
        raise ValueError("metadata has no EXPECTED_QUANTITY")
    count = parse_count(meta["EXPECTED_QUANTITY"])
    skus = meta.get("BIN_FCSKU_DATA") or {}
    items = [
        {"asin": sku.get("asin", key), "name": sku.get("name", ""), "quantity": sku.get("quantity")}
        for key, sku in skus.items()
        if isinstance(sku, dict)
    ]
    return count, json.dumps(items)


def _inside(root: Path, relative: str) -> Path:
    """Resolve a manifest path, refusing anything that points outside the data root."""
    if not relative or Path(relative).is_absolute():
        raise ValueError(f"path must be relative to the data root: {relative!r}")
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"path points outside the data root: {relative!r}")
    return path


class Entry(NamedTuple):  # a named tuple, not a dataclass: 100k are made on every load
    """A photo a layout lists, before its files are read.

    `count` None: the label is `meta`'s EXPECTED_QUANTITY (ABID layout); otherwise `meta`, if any,
    only adds item names. `group` None: the photo is grouped by the hash of its bytes.
    """

    image_id: str
    path: str
    count: int | None  # type: ignore[assignment]  # a field named count shadows tuple.count, on purpose
    group: str | None
    meta: str | None = None


Listing = Iterator[tuple[Entry | None, tuple[str, str] | None]]  # (entry, None) or (None, (where, why))


def _manifest_group(rec: dict) -> str | None:
    """The ABID id (`original_id`) where the manifest has it, else its `sha256`, else None (hash the file)."""
    if (rec.get("original_id") or "").strip():
        return abid_group(rec["original_id"].strip())
    if (rec.get("sha256") or "").strip():
        return f"sha256:{rec['sha256'].strip().lower()}"
    return None


def abid_group(abid_id: str) -> str:
    """The group of an ABID bin: its id as written (ABID ids are zero-pad sensitive: 121 != 00121)."""
    return f"abid:{abid_id}"


def content_group(digest: str) -> str:
    """The group of a photo with no known ABID id: the sha256 of its bytes (exact duplicates land together)."""
    return f"sha256:{digest}"


def _entries_manifest(root: Path) -> Listing:
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"file", "count"} <= set(reader.fieldnames):
            raise DataError("manifest.csv needs at least the columns file,count")
        for line, rec in enumerate(reader, start=2):
            try:
                path = _inside(root, rec["file"])
                count = parse_count(rec["count"])
                meta = _inside(root, rec["metadata"]) if rec.get("metadata") else None
            except (ValueError, TypeError) as err:
                yield None, (f"manifest.csv line {line}: {rec.get('file')}", str(err))
                continue
            yield Entry(path.stem, str(path), count, _manifest_group(rec), str(meta) if meta else None), None


def _entries_abid(root: Path) -> Listing:
    images, metadata = f"{root}/bin-images/", f"{root}/metadata/"  # strings: pathlib costs seconds at 100k
    for name in sorted(os.listdir(images)):
        stem, suffix = os.path.splitext(name)
        if suffix.lower() in IMAGE_SUFFIXES:
            yield Entry(stem, images + name, None, abid_group(stem), f"{metadata}{stem}.json"), None


def _entries_folders(root: Path) -> Listing:
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            count = parse_count(folder.name)
        except ValueError:
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                yield Entry(f"{folder.name}/{path.stem}", str(path), count, None), None


def detect_layout(root: Path) -> str:
    if (root / "manifest.csv").is_file():
        return "manifest"
    if (root / "bin-images").is_dir():
        return "abid"
    if any(p.is_dir() and p.name.isdigit() for p in root.iterdir()):
        return "folders"
    raise DataError(
        f"{root} is not a bin-photo collection: expected manifest.csv, bin-images/ with metadata/, "
        "or count-named folders (0/, 1/, ...)"
    )


def _stamp(entry: Entry) -> Stamp | None:
    """The entry's files' sizes and mtimes; None when the image itself is missing."""
    try:
        image = os.stat(entry.path)
    except OSError:
        return None
    try:
        meta = os.stat(entry.meta) if entry.meta else None
    except OSError:
        meta = None
    if meta is None:
        return Stamp(image.st_size, image.st_mtime_ns)
    return Stamp(image.st_size, image.st_mtime_ns, meta.st_size, meta.st_mtime_ns)


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _probe(entry: Entry) -> Probe:
    """Read what the entry's files say: the label (ABID layout), item names, header problems, the hash."""
    count, items = None, ""
    if entry.meta is not None:
        try:
            count, items = read_metadata(entry.meta)
        except FileNotFoundError:
            if entry.count is None:
                return Probe("no metadata JSON")
        except (OSError, ValueError) as err:
            if entry.count is None:
                return Probe(f"invalid metadata JSON: {err}")
    if (problem := check_header(entry.path)) is not None:
        return Probe(problem)
    try:
        digest = _file_digest(entry.path) if entry.group is None else None
    except OSError as err:
        return Probe(f"unreadable file ({err.__class__.__name__})")
    return Probe(None, count, items, digest)


def _probe_all(entries: list[Entry], index: Path | None, progress: bool) -> dict[str, tuple[tuple, Probe] | None]:
    """Stamp every entry and probe the new or changed ones, keeping the index up to date."""
    known = read_index(index) if index else {}
    found: dict[str, tuple[tuple, Probe] | None] = {}
    changed: dict[str, tuple[Stamp, Probe]] = {}
    stale: list[tuple[Entry, Stamp]] = []
    for entry in entries:
        stamp = _stamp(entry)
        if stamp is None:
            found[entry.path] = None
            continue
        old = known.get(entry.path)
        if old is not None and old[0] == stamp:
            found[entry.path] = old
        else:
            stale.append((entry, stamp))
    for entry, stamp in tqdm(stale, desc="reading new or changed photos", unit="img",
                             disable=not progress or len(stale) < 1000):
        found[entry.path] = changed[entry.path] = (stamp, _probe(entry))
    if index:
        removed = [p for p in known if found.get(p) is None]  # gone from the listing, or from the disk
        try:
            update_index(index, changed, removed)
        except (OSError, sqlite3.Error) as err:  # a read-only store: work on, but say why it is slow
            warnings.warn(f"collection index {index} not updated ({err}); the next load reads every file again",
                          stacklevel=3)  # point at the caller of load_collection
    return found


def load_collection(root: str | Path, max_count: int = MAX_COUNT, index: Path | None = None,
                    progress: bool = False, open_top: bool = False) -> Collection:
    """Read a labelled collection; images with counts above `max_count` are left out and counted,
    or, with `open_top`, kept with the label `max_count + 1`: the open class "more than max_count".

    With `index` (a file, see `core.index`), only files that are new or changed since the last
    load are read; the rest is taken from the index, bad files included (still reported).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    layout = detect_layout(root)
    listing = {"manifest": _entries_manifest, "abid": _entries_abid, "folders": _entries_folders}[layout]
    entries: list[Entry] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for entry, problem in listing(root):
        if problem:
            skipped.append(problem)
            continue
        assert entry is not None  # a listing yields an entry or a problem
        if entry.image_id in seen:
            skipped.append((entry.path, f"duplicate image id {entry.image_id}"))
        else:
            seen.add(entry.image_id)
            entries.append(entry)
    found = _probe_all(entries, index, progress)
    rows, out_of_range = [], 0
    for entry in entries:
        if (result := found[entry.path]) is None:
            skipped.append((entry.path, "file not found"))
            continue
        stamp, probe = result
        if probe.problem is not None:
            skipped.append((entry.path, probe.problem))
            continue
        count = entry.count if entry.count is not None else probe.count
        assert count is not None  # an entry without a count has its metadata's, or a problem
        if count > max_count:
            if not open_top:
                out_of_range += 1
                continue
            count = max_count + 1
        group = entry.group or content_group(probe.digest)  # type: ignore[arg-type]  # digest is set when group is None
        rows.append((entry.image_id, entry.path, count, probe.items, group, stamp[0], stamp[1]))  # bytes, mtime_ns
    if not rows:
        raise DataError(f"no usable image with a count of 0..{max_count} in {root} ({len(skipped)} skipped)")
    table = pd.DataFrame(dict(zip(COLUMNS, zip(*rows, strict=True), strict=True)), columns=COLUMNS)
    return Collection(root, layout, table, pd.DataFrame(skipped, columns=["path", "reason"]), out_of_range)


def assign_splits(groups: pd.Series | list[str], fractions: tuple[float, float, float] = (0.7, 0.2, 0.1),
                  seed: int = 0) -> np.ndarray:
    """The split of each photo, a pure function of (group, seed, fractions).

    The first 8 bytes of sha256(f"{seed}:{group}") are read as a uniform number in [0, 1) and
    placed against the cumulative fractions. So adding photos never moves old ones, and photos
    of one group (the same ABID bin, or the same bytes) always land in the same split.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be three non-negative numbers adding to 1, got {fractions}")
    draws = np.array([
        int.from_bytes(hashlib.sha256(f"{seed}:{group}".encode()).digest()[:8], "big") / 2**64 for group in groups
    ])
    edges = np.cumsum(fractions[:2])
    return np.array(SPLITS, dtype=object)[np.searchsorted(edges, draws, side="right")]
