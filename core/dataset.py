"""A prepared data set: one collection, its fixed split, and its image cache.

Every model (classical or CNN) and every evaluation reads photos through `prepare_dataset`, so
experiments on the same data are trained and tested on the same images.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.cache import cached_images
from core.config import MAX_COUNT, store_dir
from core.data import Collection, assign_splits, load_collection
from core.files import atomic_path

DEFAULT_SPLIT = (0.7, 0.2, 0.1)


@dataclass
class Dataset:
    """`table` has image_id, path, count, items, group, split and `row` (the image's row in the cache)."""

    collection: Collection
    fingerprint: str
    folder: Path
    table: pd.DataFrame
    max_count: int
    progress: bool = True

    @property
    def num_classes(self) -> int:
        return self.max_count + 1

    def images(self, size: int) -> np.ndarray:
        """All images at `size` px as an (N, size, size, 3) uint8 array, aligned with `table.row`."""
        array, _ = cached_images(self.collection.table["path"].tolist(), size, self.folder, self.progress)
        return array

    def split(self, name: str) -> pd.DataFrame:
        return self.table[self.table["split"] == name]

    def arrays(self, name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(images, counts) of one split, as in-memory arrays."""
        part = self.split(name)
        return np.asarray(self.images(size)[part["row"].to_numpy()]), part["count"].to_numpy()

    def summary(self) -> dict:
        return {
            "root": str(self.collection.root),
            "layout": self.collection.layout,
            "fingerprint": self.fingerprint,
            "images": len(self.table),
            "skipped": len(self.collection.skipped),
            "out_of_range": self.collection.out_of_range,
            "splits": self.table["split"].value_counts().to_dict(),
            "counts": self.table["count"].value_counts().sort_index().to_dict(),
        }


def prepare_dataset(
    root: str | Path,
    image_size: int = 224,
    max_count: int = MAX_COUNT,
    fractions: tuple[float, float, float] = DEFAULT_SPLIT,
    seed: int = 0,
    store: Path | None = None,
    progress: bool = True,
) -> Dataset:
    """Load `root`, decode it into the cache at `image_size`, and attach the stored split.

    Each photo's split is a pure function of its group and the seed (`assign_splits`), so
    adding photos never moves old ones and near-duplicates stay on one side.
    Images that fail to decode are dropped and added to `collection.skipped`.
    """
    collection = load_collection(root, max_count)
    fingerprint = collection.fingerprint()
    folder = (store or store_dir()) / "datasets" / fingerprint
    folder.mkdir(parents=True, exist_ok=True)
    table = collection.table.reset_index(drop=True).copy()
    table["row"] = np.arange(len(table))
    _, errors = cached_images(table["path"].tolist(), image_size, folder, progress)
    if errors:
        bad = pd.DataFrame({"path": table.loc[list(errors), "path"], "reason": list(errors.values())})
        collection.skipped = pd.concat([collection.skipped, bad], ignore_index=True)
        table = table.drop(index=list(errors))

    table["split"] = assign_splits(table["group"], fractions, seed)
    table = table[["image_id", "path", "count", "items", "group", "split", "row"]]
    with atomic_path(folder / "collection.json") as tmp:
        tmp.write_text(json.dumps({"root": str(Path(root).resolve()), "max_count": max_count}))
    return Dataset(collection, fingerprint, folder, table.reset_index(drop=True), max_count, progress)
