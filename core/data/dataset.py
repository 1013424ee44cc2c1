"""A prepared data set: one collection, its split, and its image cache.

Every model (classical or CNN) and every evaluation reads photos through `prepare_dataset`, so
experiments on the same data are trained and tested on the same images. Everything kept about a
collection lives in one folder of the store per collection root (`core.store.layout`): the
incremental index (`core.data.index`), the growing image caches (`core.data.cache`) and, per version of
the data (`Dataset.fingerprint`), derived files such as classical features.
"""
from __future__ import annotations

import dataclasses
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
from core.data.sources import TRAIN_SOURCES, photo_sources
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
    # what of the train split is trained on (`Dataset.training_subset`): one source's photos, then a share of them
    train_source: str = "all"
    train_share: float = 1.0
    subset_seed: int = 0

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
        """The photos of one split. The train split is as curated (`core.reconcile.suspects`: relabelled
        photos with their new count, excluded ones left out) and as subset (`training_subset`). Every
        other split keeps every photo, with its original label."""
        part = self.table[self.table["split"] == name]
        if name != "train":
            return part
        if self.curation:
            curated = part["image_id"].map(self.curation)
            listed = part["image_id"].isin(list(self.curation))
            part = part[~(listed & curated.isna())].copy()
            relabel = part["image_id"].isin([i for i, c in self.curation.items() if c is not None])
            part.loc[relabel, "count"] = part.loc[relabel, "image_id"].map(self.curation).astype(int)
        if self.train_source != "all":
            part = part[np.array(photo_sources(part["path"].tolist())) == TRAIN_SOURCES[self.train_source]]
        return nested_share(part, self.train_share, self.subset_seed)

    def training_subset(self, source: str = "all", share: float = 1.0, seed: int = 0) -> Dataset:
        """This data set, training on the train split's photos of `source` only (`TRAIN_SOURCES`), and of
        those on a nested share (`nested_share`): the points of a learning curve. Validation and test
        stay whole, so every point is scored on the same photos."""
        if source not in TRAIN_SOURCES:
            raise ValueError(f"train_source must be one of {tuple(TRAIN_SOURCES)}, got {source!r}")
        return dataclasses.replace(self, train_source=source, train_share=share, subset_seed=seed)

    def split_counts(self) -> dict[str, int]:
        """Photos per split, the train split as trained on."""
        return {name: len(self.split(name)) for name in SPLITS}

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


def unit_draws(groups: pd.Series | list[str], salt: str) -> np.ndarray:
    """A uniform number in [0, 1) per group: the first 8 bytes of sha256(f"{salt}:{group}"), so a
    group draws the same number wherever it is."""
    return np.array([int.from_bytes(hashlib.sha256(f"{salt}:{group}".encode()).digest()[:8], "big") / 2**64
                     for group in groups])


def nested_share(part: pd.DataFrame, share: float, seed: int = 0) -> pd.DataFrame:
    """`share` of the photos of `part` (a table with count, group and image_id), per count, whole
    groups at a time, in the order of their draw (`unit_draws`): the photos kept at a smaller share
    are kept at every larger one (same seed), so a learning curve's points are nested."""
    if not 0 < share <= 1:
        raise ValueError(f"train_share must be in (0, 1], got {share}")
    if share == 1 or part.empty:
        return part
    draws = unit_draws(part["group"], f"share:{seed}")
    keep = np.zeros(len(part), dtype=bool)
    ids = part["image_id"].to_numpy()
    for count in np.unique(part["count"].to_numpy()):
        rows = np.flatnonzero(part["count"].to_numpy() == count)
        ordered = rows[np.lexsort((ids[rows], draws[rows]))]  # a group's photos side by side
        kept = max(1, round(share * len(ordered)))
        taken = np.arange(len(ordered)) < kept
        taken |= draws[ordered] == draws[ordered[kept - 1]]  # the whole group of the last photo kept
        keep[ordered[taken]] = True
    return part[keep]


def assign_splits(groups: pd.Series | list[str], fractions: tuple[float, float, float] = (0.7, 0.2, 0.1),
                  seed: int = 0) -> np.ndarray:
    """The split of each photo, a pure function of (group, seed, fractions).

    The first 8 bytes of sha256(f"{seed}:{group}") are read as a uniform number in [0, 1) and
    placed against the cumulative fractions. So adding photos never moves old ones, and photos
    of one group (the same ABID bin, or the same bytes) always land in the same split.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be three non-negative numbers adding to 1, got {fractions}")
    draws = unit_draws(groups, str(seed))
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
