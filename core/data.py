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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from core.config import MAX_COUNT

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
COLUMNS = ["image_id", "path", "count", "items", "group"]
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

    def fingerprint(self) -> str:
        """Changes whenever a file, a label or the set of images changes."""
        digest = hashlib.sha256()
        for row in self.table.sort_values("image_id").itertuples():
            stat = Path(row.path).stat()
            digest.update(f"{row.image_id}|{row.count}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]


def parse_count(value: object) -> int:
    """A bin count: a non-negative integer (\"3\", 3 and 3.0 are fine; \"3.5\", -1 and \"\" are not)."""
    if isinstance(value, bool):
        raise ValueError(f"not a count: {value!r}")
    if isinstance(value, str):
        value = value.strip()
    number = float(value)  # raises ValueError on text
    if not number.is_integer() or number < 0:
        raise ValueError(f"count must be a non-negative integer, got {value!r}")
    return int(number)


def read_metadata(path: Path) -> tuple[int, str]:
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


def _rows_manifest(root: Path):
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"file", "count"} <= set(reader.fieldnames):
            raise DataError("manifest.csv needs at least the columns file,count")
        for line, rec in enumerate(reader, start=2):
            where = f"manifest.csv line {line}"
            try:
                path = _inside(root, rec["file"])
                count = parse_count(rec["count"])
            except (ValueError, TypeError) as err:
                yield None, (f"{where}: {rec.get('file')}", str(err))
                continue
            items = ""
            if rec.get("metadata"):
                try:
                    _, items = read_metadata(_inside(root, rec["metadata"]))
                except (OSError, ValueError):
                    items = ""  # the label comes from the manifest; metadata only adds item names
            yield (path.stem, path, count, items, _manifest_group(rec)), None


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


def content_group(path: str | Path) -> str:
    """The group of a photo with no known ABID id: the sha256 of its bytes (exact duplicates land together)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _rows_abid(root: Path):
    for path in sorted((root / "bin-images").iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        meta = root / "metadata" / f"{path.stem}.json"
        try:
            count, items = read_metadata(meta)
        except FileNotFoundError:
            yield None, (str(path), "no metadata JSON")
            continue
        except (OSError, ValueError) as err:
            yield None, (str(path), f"invalid metadata JSON: {err}")
            continue
        yield (path.stem, path, count, items, abid_group(path.stem)), None


def _rows_folders(root: Path):
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            count = parse_count(folder.name)
        except ValueError:
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                yield (f"{folder.name}/{path.stem}", path, count, "", None), None


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


def _check_header(path: Path) -> str | None:
    """Cheap check that a file is an image (header only; full decoding happens in the cache)."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as img:
            img.size
    except FileNotFoundError:
        return "file not found"
    except (UnidentifiedImageError, OSError) as err:
        return f"not an image ({err.__class__.__name__})"
    return None


def load_collection(root: str | Path, max_count: int = MAX_COUNT) -> Collection:
    """Read a labelled collection; images with counts above `max_count` are left out and counted."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    layout = detect_layout(root)
    rows_of = {"manifest": _rows_manifest, "abid": _rows_abid, "folders": _rows_folders}[layout]
    rows, skipped, out_of_range, seen = [], [], 0, set()
    for row, problem in rows_of(root):
        if problem:
            skipped.append(problem)
            continue
        image_id, path, count, items, group = row
        if image_id in seen:
            skipped.append((str(path), f"duplicate image id {image_id}"))
            continue
        if (reason := _check_header(path)) is not None:
            skipped.append((str(path), reason))
            continue
        seen.add(image_id)
        if count > max_count:
            out_of_range += 1
            continue
        rows.append((image_id, str(path), count, items, group or content_group(path)))
    if not rows:
        raise DataError(f"no usable image with a count of 0..{max_count} in {root} ({len(skipped)} skipped)")
    table = pd.DataFrame(rows, columns=COLUMNS)
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
