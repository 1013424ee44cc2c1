"""The store's folder layout: every path under the experiment store, and every file name read back.

Nothing else joins names under the store or parses them; each function below is the one place
for its path. What the files hold belongs to their owners (`core.store.database`, `core.data.cache`,
`core.data.index`, the trainers); this module only says where they are.

    <store>/
        experiments.sqlite (+ -wal, -shm)  the experiment table (core.store.database)
        locks/journal.lock                 taken to switch a new database to WAL
        locks/<config key>.lock            claims one training configuration
        datasets.lock                      the first process alone builds the image caches
        <experiment id>/                   one run's model files (fold-<k>/ per fold of a CV run; a CNN's
                                           model.onnx once served, core.cnn.predictor)
            run.lock                       held while the run lives
        datasets/<sha256 of the root>/     everything kept about one collection root
            collection.json                {"root": the resolved collection root}
            index.arrow                    the incremental index (core.data.index)
            cache.sqlite, cache.lock       the image caches' row table and its lock (core.data.cache)
            images_<size>.u8               one image cache per size
            versions/<fingerprint>/        files derived from one version of the data
                features/<size>px/         classical feature blocks
            frozen-features/               a CNN's frozen lower stages' outputs by image-cache row
                <stages key>-<size>px-<rows>rows.npy, .done.npy, .lock   (core.cnn.feature_cache)

        photos/<sha256[:2]>/<sha256>.<ext> uploaded photos of batches (core.reconcile.batches)
        recounts/                          the recounts collection, manifest layout (core.reconcile.recount_labels)
        curation/<sha256 of the root>.csv  label decisions of one collection (core.reconcile.suspects)

A folder under `datasets/` without `collection.json` is of the older per-fingerprint layout.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from core.config import store_dir
from core.store.files import atomic_path

DATABASE = "experiments.sqlite"
RUN_LOCK = "run.lock"
_CACHE_NAME = re.compile(r"images_(\d+)\.u8")


# ---- the experiment table and the runs ------------------------------------------------------
def database(store: Path) -> Path:
    return store / DATABASE


def database_files(store: Path) -> list[Path]:
    """The database and its write-ahead log: what changes whenever the store is written."""
    return [database(store), store / f"{DATABASE}-wal"]


def journal_lock(store: Path) -> Path:
    return store / "locks" / "journal.lock"


def claim_lock(store: Path, config_key: str) -> Path:
    return store / "locks" / f"{config_key}.lock"


def datasets_lock(store: Path) -> Path:
    return store / "datasets.lock"


def artifact_dir(store: Path, exp_id: str) -> Path:
    """One experiment's model files."""
    return store / exp_id


def run_lock(store: Path, exp_id: str) -> Path:
    return artifact_dir(store, exp_id) / RUN_LOCK


def fold_dir(artifact: Path, fold: int) -> Path:
    """The model files of fold `fold` of a cross-validated run, inside its artifact folder."""
    return artifact / f"fold-{fold}"


# ---- recounts and reviews ------------------------------------------------------------------
def stored_photo(store: Path, digest: str, suffix: str) -> Path:
    """The kept copy of an uploaded photo, by its content hash."""
    return store / "photos" / digest[:2] / f"{digest}{suffix}"


def recounts_dir(store: Path) -> Path:
    """The recounts collection (manifest layout)."""
    return store / "recounts"


def curation_file(store: Path, data_root: str | Path) -> Path:
    """The label decisions about the collection at `data_root`."""
    resolved = str(Path(data_root).resolve())
    return store / "curation" / f"{hashlib.sha256(resolved.encode()).hexdigest()[:16]}.csv"


# ---- collections ----------------------------------------------------------------------------
def datasets_dir(store: Path) -> Path:
    return store / "datasets"


def collection_folder(data_root: str | Path, store: Path | None = None) -> Path:
    """The store's folder for everything kept about the collection at `data_root` (keyed by its
    resolved path). Only computes the path: `record_collection_root` marks the folder as used."""
    resolved = str(Path(data_root).resolve())
    return datasets_dir(store or store_dir()) / hashlib.sha256(resolved.encode()).hexdigest()[:16]


def collection_folders(store: Path) -> list[Path]:
    """Every collection folder of the store (of either layout), sorted."""
    datasets = datasets_dir(store)
    return sorted(p for p in datasets.iterdir() if p.is_dir()) if datasets.is_dir() else []


def _collection_meta(folder: Path) -> Path:
    return folder / "collection.json"


def record_collection_root(folder: Path, data_root: str | Path) -> None:
    """Write which collection root `folder` belongs to (once; `collection_root` reads it back)."""
    meta = _collection_meta(folder)
    if not meta.is_file():
        with atomic_path(meta) as tmp:
            tmp.write_text(json.dumps({"root": str(Path(data_root).resolve())}))


def collection_root(folder: Path) -> str | None:
    """The resolved collection root `folder` belongs to; None for a folder of the older layout."""
    meta = _collection_meta(folder)
    return json.loads(meta.read_text())["root"] if meta.is_file() else None


def index_file(folder: Path) -> Path:
    return folder / "index.arrow"


def cache_db(folder: Path) -> Path:
    return folder / "cache.sqlite"


def cache_lock(folder: Path) -> Path:
    return folder / "cache.lock"


def cache_file(folder: Path, size: int) -> Path:
    """The image cache at `size` px of a collection folder."""
    return folder / f"images_{size}.u8"


def cache_files(folder: Path) -> dict[int, Path]:
    """Every image cache in a collection folder, by size."""
    found = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = _CACHE_NAME.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def version_dir(folder: Path, fingerprint: str) -> Path:
    """The folder of files derived from one version of the data (`Dataset.fingerprint`)."""
    return folder / "versions" / fingerprint


def version_dirs(folder: Path) -> dict[str, Path]:
    """Every version folder of a collection folder, by fingerprint."""
    versions = folder / "versions"
    return {p.name: p for p in sorted(versions.iterdir())} if versions.is_dir() else {}


def features_dir(version: Path, size: int) -> Path:
    """Where the classical feature blocks of photos cached at `size` px are kept."""
    return version / "features" / f"{size}px"


def frozen_features_dir(folder: Path) -> Path:
    """A collection's cached outputs of frozen lower CNN stages (indexed by image-cache row, like its photos)."""
    return folder / "frozen-features"


def frozen_features_files(directory: Path, key: str, size: int, rows: int) -> tuple[Path, Path, Path]:
    """(features, done mask, lock) of one frozen-stage cache: stages and weights `key`, `size` px photos."""
    name = f"{key}-{size}px-{rows}rows"
    return directory / f"{name}.npy", directory / f"{name}.done.npy", directory / f"{name}.lock"
