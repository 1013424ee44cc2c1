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

import pandas as pd

from core.reconcile.batches import list_batches, photo_source
from core.reconcile.recounts import with_outcomes
from core.store import layout
from core.store.database import Store
from core.store.files import atomic_path, file_hash

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
