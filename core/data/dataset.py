"""A prepared data set: one collection, its split, and its image cache.

Every model (classical or CNN) and every evaluation reads photos through `prepare_dataset`, so
experiments on the same data are trained and tested on the same images. Everything kept about a
collection lives in one folder of the store per collection root (`core.store.layout`): the
incremental index (`core.data.index`), the growing image caches (`core.data.cache`) and, per version of
the data (`Dataset.fingerprint`), derived files such as classical features.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import MAX_COUNT
from core.data.cache import assign_rows, cached_images, read_rows
from core.data.collection import Collection, load_collection
from core.data.curation import read_curation
from core.data.recounted import overlay_recounts
from core.store.layout import collection_folder, features_dir, index_file, record_collection_root, version_dir

SPLITS = ("train", "val", "test")
DEFAULT_SPLIT = (0.7, 0.2, 0.1)
TABLE_COLUMNS = ["image_id", "path", "count", "group", "split", "row"]  # item lists: load_collection(items=True)


@dataclass
class Dataset:
    """`table` has image_id, path, count, group, split and `row` (the image's row in the cache).

    `cache_folder` holds the collection's caches (one per root); `folder` is this version of the
    data's own folder inside it, for files derived from exactly these photos.
    """

    collection: Collection
    fingerprint: str
    cache_folder: Path
    table: pd.DataFrame
    max_count: int
    progress: bool = True
    open_top: bool = False  # a last class for "more than max_count" items (see core.data.collection.load_collection)
    recounted: int = 0  # photos whose label is a person's recount (see core.reconcile.recount_labels)
    curation: dict[str, int | None] = field(default_factory=dict)  # image_id -> train label, None: excluded

    @property
    def folder(self) -> Path:
        return version_dir(self.cache_folder, self.fingerprint)

    def features_folder(self, size: int) -> Path:
        """Where classical features of this version's photos, cached at `size` px, are kept."""
        return features_dir(self.folder, size)

    @property
    def num_classes(self) -> int:
        return self.max_count + 1 + int(self.open_top)

    def images(self, size: int) -> np.ndarray:
        """The cache at `size` px, memory-mapped: (rows, size, size, 3) uint8, indexed by `table.row`.

        Decodes the photos of `table` that this size lacks (the first call at a size decodes all).
        """
        array, _ = cached_images(self.cache_folder, size, self.table["row"].to_numpy(), self.table["path"],
                                 progress=self.progress)
        return array

    def split(self, name: str) -> pd.DataFrame:
        """The photos of one split; the train split as curated (`core.reconcile.suspects`): relabelled photos with
        their new count, excluded ones left out. Every other split keeps every photo's original label."""
        part = self.table[self.table["split"] == name]
        if name != "train" or not self.curation:
            return part
        curated = part["image_id"].map(self.curation)
        listed = part["image_id"].isin(list(self.curation))
        part = part[~(listed & curated.isna())].copy()
        relabel = part["image_id"].isin([i for i, c in self.curation.items() if c is not None])
        part.loc[relabel, "count"] = part.loc[relabel, "image_id"].map(self.curation).astype(int)
        return part

    def rows(self, name: str) -> np.ndarray:
        """The cache rows of one split, in table order."""
        return self.split(name)["row"].to_numpy()

    def batches(self, name: str, size: int, batch_size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(uint8 images, counts) of one split in batches, read from the cache in table order: memory
        stays at one batch whatever the size of the split."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.images(size)  # decodes what this size lacks
        part = self.split(name)
        rows, counts = part["row"].to_numpy(), part["count"].to_numpy()
        for start in range(0, len(rows), batch_size):
            yield read_rows(self.cache_folder, size, rows[start:start + batch_size]), counts[start:start + batch_size]

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


def recheck_collection(root: str | Path, store_root: Path | None = None) -> None:
    """Stat every file of the collection at `root` and bring its index up to date, so later loads
    (which trust unchanged directories, see `core.data.index`) see files rewritten in place too."""
    folder = collection_folder(root, store_root)
    record_collection_root(folder, root)
    load_collection(root, max_count=10**6, index=index_file(folder), items=False, recheck=True)


def data_fingerprint(table: pd.DataFrame) -> str:
    """Identifies this version of the data: changes when a photo, its label or the set of photos changes."""
    ordered = table.sort_values("image_id")
    lines = "\n".join(f"{i}|{c}|{g}|{b}|{m}" for i, c, g, b, m in
                      ordered[["image_id", "count", "group", "bytes", "mtime_ns"]].itertuples(index=False))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


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


def prepare_dataset(
    root: str | Path,
    image_size: int = 224,
    max_count: int = MAX_COUNT,
    fractions: tuple[float, float, float] = DEFAULT_SPLIT,
    seed: int = 0,
    store_root: Path | None = None,
    progress: bool = True,
    open_top: bool = False,
    recheck: bool = False,
    recounts: Path | None = None,
    curation: Path | None = None,
) -> Dataset:
    """Load `root` (re-reading only changed files), grow its cache at `image_size`, and split it.

    Each photo's split is a pure function of its group and the seed (`assign_splits`), so
    adding photos never moves old ones and near-duplicates stay on one side.
    Images that fail to decode are dropped and added to `collection.skipped`. With `open_top`,
    bins of more than `max_count` items form one more class, if the collection has any.
    `recheck` stats every file, to see files rewritten in place (see `load_collection`).
    `recounts`, a recounts collection (`core.reconcile.recount_labels`), overrides the labels of the photos
    people recounted and adds the recounted photos the data lacks. `curation`, a curation file
    (`core.reconcile.suspects.write_curation`), changes the train split only (see `Dataset.split`).
    """
    folder = collection_folder(root, store_root)
    record_collection_root(folder, root)
    collection = load_collection(root, max_count, index=index_file(folder), progress=progress, items=False,
                                 open_top=open_top, recheck=recheck)
    table = collection.table.reset_index(drop=True).copy()
    recounted = 0
    if recounts is not None:
        table, recounted = overlay_recounts(table, recounts, max_count, open_top)
    table["row"] = assign_rows(folder, table)
    _, errors = cached_images(folder, image_size, table["row"].to_numpy(), table["path"], progress=progress)
    if errors:
        failed = table["row"].isin(list(errors))
        bad = pd.DataFrame({"path": table.loc[failed, "path"], "reason": table.loc[failed, "row"].map(errors)})
        collection.skipped = pd.concat([collection.skipped, bad], ignore_index=True)
        table = table[~failed]
    table["split"] = assign_splits(table["group"], fractions, seed)
    fingerprint = data_fingerprint(table)
    curated: dict[str, int | None] = {}
    if curation is not None:
        curated = read_curation(curation)
        if curated:  # what is trained on changed: another version of the data
            fingerprint = hashlib.sha256(f"{fingerprint}|{sorted(curated.items())}".encode()).hexdigest()[:16]
    open_top = open_top and bool((table["count"] > max_count).any())  # an open class needs photos to learn it from
    return Dataset(collection, fingerprint, folder, table[TABLE_COLUMNS].reset_index(drop=True), max_count, progress,
                   open_top, recounted, curated)
