"""Recounts become labels: every photo a person counted is a labelled photo of the store's
"recounts" collection (manifest layout), which training can add to its data.

The collection is derived from the store (the batches and their latest outcomes), so it never
disagrees with what people recorded: `write_recounts_collection` brings the folder up to date.
A photo keeps its id (the ABID id where known, e.g. `1234` for `bin-images/1234.jpg`), and its
group is its content hash, so the same photo stays on one side of a split. Where a photo is both
in the training data and recounted, the recount overrides the data's label, because a person
counted it (`overlay_recounts`); the photo keeps its place (split, cache row) in the data.
"""
from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from core import layout
from core.batches import file_hash, list_batches, photo_source
from core.collection import CONTENT_GROUP, load_collection
from core.files import atomic_path
from core.recounts import with_outcomes
from core.store import Store

MANIFEST_COLUMNS = ["file", "count", "metadata", "original_id", "sha256"]


def recounted_photos(store: Store) -> pd.DataFrame:
    """One row per recounted photo (by content hash; the latest outcome wins where a photo was
    recounted in several batches): image_id, source (where the photo is), sha256, count, batch, at."""
    rows = []
    for batch in list_batches(store):
        bins = with_outcomes(store, batch.id)
        for rec in bins[bins["true_count"].notna()].to_dict("records"):
            source = photo_source(store, batch, {str(k): v for k, v in rec.items()})
            if source is None or not source.is_file():
                continue
            digest = rec["content_hash"] or file_hash(source)
            rows.append({"image_id": rec["image_id"] or PurePosixPath(rec["image"]).stem, "source": str(source),
                         "sha256": digest, "count": int(rec["true_count"]), "batch": batch.id, "at": rec["at"]})
    frame = pd.DataFrame(rows, columns=["image_id", "source", "sha256", "count", "batch", "at"])
    return frame.sort_values("at", kind="stable").drop_duplicates("sha256", keep="last").reset_index(drop=True)


def write_recounts_collection(store: Store) -> Path | None:
    """Bring `<store>/recounts` (manifest.csv and images/) up to date with the recounts; its folder,
    or None when nothing was recounted to a number yet."""
    photos = recounted_photos(store)
    if photos.empty:
        return None
    folder = layout.recounts_dir(store.root)
    names: set[str] = set()
    lines = io.StringIO()
    writer = csv.DictWriter(lines, fieldnames=MANIFEST_COLUMNS)
    writer.writeheader()
    for image_id, source, digest, count in photos[["image_id", "source", "sha256", "count"]].itertuples(index=False):
        stem = str(image_id) if image_id not in names else str(digest)
        names.add(stem)
        name = f"images/{stem}{Path(str(source)).suffix.lower() or '.jpg'}"
        target = folder / name
        if not target.is_file() or file_hash(target) != digest:
            with atomic_path(target) as tmp:
                shutil.copyfile(str(source), tmp)
        writer.writerow({"file": name, "count": int(count), "metadata": "", "original_id": "", "sha256": digest})
    with atomic_path(folder / "manifest.csv") as tmp:
        tmp.write_text(lines.getvalue())
    return folder


def overlay_recounts(table: pd.DataFrame, recounts: str | Path, max_count: int,
                     open_top: bool = False) -> tuple[pd.DataFrame, int]:
    """The collection `table` (`core.collection.load_collection`'s) with the recounts collection at
    `recounts` laid over it: a photo in both (same bytes) takes the recounted count; a recounted
    photo the data lacks is added. Returns the table and how many of its photos carry a recount.
    A recount above `max_count` makes the photo "more than max_count" with `open_top`, else takes
    it out of the task (as the collection leaves such photos out)."""
    extra = load_collection(recounts, max_count=10**6, items=False).table
    if extra.empty:
        return table, 0
    table = table.copy()
    digests = extra["group"].str.removeprefix(CONTENT_GROUP)
    by_size: dict[int, list[int]] = {}
    for i, size in enumerate(table["bytes"].to_numpy()):
        by_size.setdefault(int(size), []).append(i)
    drop, added, recounted = [], [], 0
    for rec, digest in zip(extra.to_dict("records"), digests, strict=True):
        count = int(rec["count"])
        in_task = count <= max_count or open_top
        count = min(count, max_count + 1)
        same_size = by_size.get(int(rec["bytes"]), [])
        match = next((i for i in same_size if file_hash(str(table.at[i, "path"])) == digest), None)
        if match is not None:
            if in_task:
                table.at[match, "count"] = count
                recounted += 1
            else:
                drop.append(match)
        elif in_task:
            added.append({**{k: rec[k] for k in table.columns if k in rec}, "count": count})
            recounted += 1
    table = table.drop(index=drop)
    if added:
        table = pd.concat([table, pd.DataFrame(added, columns=table.columns)], ignore_index=True)
    table["count"] = table["count"].to_numpy(dtype=np.int64)
    return table.reset_index(drop=True), recounted
