"""Labelled bin-photo collections: read any supported layout into one table.

Three layouts are understood:
- ABID's own: `bin-images/<id>.jpg` with `metadata/<id>.json` (label = `EXPECTED_QUANTITY`);
- a `manifest.csv` with at least `file,count` (optionally `metadata`), like the shared sample;
- count-named folders: `<root>/<count>/<name>.jpg`.
Bad input is skipped and reported, never a crash. A layout lists its photos and says how to
read one photo's files (`_probe`); the incremental scan over them (`core.data.index.scan`) reads only
what is new or changed. Splitting the table is `core.data.dataset`'s job.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from core.config import MAX_COUNT
from core.data.images import check_header
from core.data.index import ITEMS, LISTING, Probe, release_memory, scan

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


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


def inside_root(root: Path, relative: str) -> Path:
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


def _listing(entries: list[Entry]) -> pa.Table:
    """Entries as columns (`LISTING`)."""
    return pa.table({"image_id": [e.image_id for e in entries], "path": [e.path for e in entries],
                     "count": [-1 if e.count is None else e.count for e in entries],
                     "group": [e.group for e in entries], "meta": [e.meta for e in entries]}, schema=LISTING)


def _entry(row: dict) -> Entry:
    """The Entry of one row of a listing."""
    return Entry(row["image_id"], row["path"], None if row["count"] < 0 else row["count"], row["group"], row["meta"])


def _manifest_group(rec: dict) -> str | None:
    """The ABID id (`original_id`) where the manifest has it, else its `sha256`, else None (hash the file)."""
    if (rec.get("original_id") or "").strip():
        return abid_group(rec["original_id"].strip())
    if (rec.get("sha256") or "").strip():
        return f"{CONTENT_GROUP}{rec['sha256'].strip().lower()}"
    return None


def abid_group(abid_id: str) -> str:
    """The group of an ABID bin: its id as written (ABID ids are zero-pad sensitive: 121 != 00121)."""
    return f"abid:{abid_id}"


# The group of a photo with no known ABID id: the sha256 of its bytes (exact duplicates land together).
CONTENT_GROUP = "sha256:"


def _entries_manifest(root: Path) -> Listing:
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"file", "count"} <= set(reader.fieldnames):
            raise DataError("manifest.csv needs at least the columns file,count")
        for line, rec in enumerate(reader, start=2):
            try:
                path = inside_root(root, rec["file"])
                count = parse_count(rec["count"])
                meta = inside_root(root, rec["metadata"]) if rec.get("metadata") else None
            except (ValueError, TypeError) as err:
                yield None, (f"manifest.csv line {line}: {rec.get('file')}", str(err))
                continue
            yield Entry(path.stem, str(path), count, _manifest_group(rec), str(meta) if meta else None), None


def _listing_abid(root: Path) -> pa.Table:
    """The ABID layout's photos (`LISTING`), built in Arrow: no Python object per photo is kept."""
    images, metadata = f"{root}/bin-images/", f"{root}/metadata/"
    names = pa.array(os.listdir(images), pa.string())
    suffixes = "|".join(s.lstrip(".") for s in sorted(IMAGE_SUFFIXES))
    names = names.filter(pc.match_substring_regex(names, rf".\.({suffixes})$", ignore_case=True))
    names = names.take(pc.sort_indices(names))
    stems = pc.replace_substring_regex(names, r"\.[^.]*$", "", max_replacements=1)
    join = pc.binary_join_element_wise
    return pa.table({"image_id": stems, "path": join(images, names, ""), "count": np.full(len(names), -1),
                     "group": join(abid_group(""), stems, ""), "meta": join(metadata, stems, ".json", "")},
                    schema=LISTING)


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


def _probe_row(row: dict) -> Probe:
    """`_probe` of one row of a listing: how `core.data.index.scan` reads a new or changed photo."""
    return _probe(_entry(row))


def load_collection(root: str | Path, max_count: int = MAX_COUNT, index: Path | None = None,
                    progress: bool = False, items: bool = True, open_top: bool = False,
                    recheck: bool = False) -> Collection:
    """Read a labelled collection; images with counts above `max_count` are left out and counted,
    or, with `open_top`, kept with the label `max_count + 1`: the open class "more than max_count".

    With `index` (a file, see `core.data.index`), only files that are new or changed since the last
    load are read; the rest is taken from the index, bad files included (still reported). Files in
    directories unchanged since the index was written are not even stat'ed (see `core.data.index`), so
    a file rewritten in place, without a rename, is only seen with `recheck`, which stats every file.
    `items=False` leaves out the `items` column (item lists from the metadata), which only the
    dashboard reads: at ABID scale it is the largest thing a collection holds.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    layout = detect_layout(root)
    skipped: list[tuple[str, str]] = []
    if layout == "abid":
        listing = _listing_abid(root)
    else:
        entries: list[Entry] = []
        for entry, problem in {"manifest": _entries_manifest, "folders": _entries_folders}[layout](root):
            if problem:
                skipped.append(problem)
            else:
                assert entry is not None  # a listing yields an entry or a problem
                entries.append(entry)
        listing = _listing(entries)
    if pc.count_distinct(listing["image_id"]).as_py() < len(listing):
        ids = listing["image_id"].to_pylist()
        twice = pd.Series(ids).duplicated().to_numpy()
        skipped += [(p, f"duplicate image id {i}")
                    for p, i, t in zip(listing["path"].to_pylist(), ids, twice, strict=True) if t]
        listing = listing.filter(~twice)
    release_memory()
    facts, rows = scan(listing, index, _probe_row, progress, items, recheck)
    reason = np.full(len(listing), "file not found", dtype=object)
    reason[rows] = facts["problem"].to_numpy(zero_copy_only=False)
    bad = pd.notna(reason)
    skipped += [(listing["path"][int(i)].as_py(), reason[i]) for i in np.flatnonzero(bad)]
    counts = np.where(listing["count"].to_numpy()[rows] >= 0, listing["count"].to_numpy()[rows],
                      facts["count"].to_numpy(zero_copy_only=False))
    usable = ~bad[rows]
    if open_top:  # more than max_count items: the open class max_count + 1
        counts = np.where(usable & (counts > max_count), max_count + 1, counts)
    keep = usable & (counts <= max_count + int(open_top))
    if not keep.any():
        raise DataError(f"no usable image with a count of 0..{max_count} in {root} ({len(skipped)} skipped)")
    listed, facts = listing.take(rows[keep]), facts.filter(keep)
    groups = pc.coalesce(listed["group"], pc.binary_join_element_wise(CONTENT_GROUP, facts["digest"], ""))
    table = pa.table({"image_id": listed["image_id"], "path": listed["path"], "count": counts[keep].astype(np.int64),
                      **({"items": facts[ITEMS]} if items else {}), "group": groups,
                      "bytes": facts["bytes"], "mtime_ns": facts["mtime_ns"]})
    return Collection(root, layout, table.to_pandas(), pd.DataFrame(skipped, columns=["path", "reason"]),
                      int(usable.sum() - keep.sum()))
