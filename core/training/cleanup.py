"""`train.py gc`: remove the image caches and derived data no experiment uses, and say what it frees.

A collection's folder in the store (see `core.store.layout`) holds its index, one image cache per
size and, per version of the data, derived files. A cache is in use when an experiment on that
collection root reads that image size; a version folder when an experiment was trained on that
version. A collection with a running experiment keeps every cache (a CNN reads several sizes
while it trains). Folders of the older per-fingerprint layout are removed.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from core.cnn.recipes import phase_sizes
from core.data.cache import cached_sizes, forget_size
from core.store.database import Store
from core.store.layout import cache_file, collection_folders, collection_root, version_dirs


@dataclass(frozen=True)
class Use:
    """What one experiment needs kept: its collection root, data version and the image sizes it reads."""

    root: str
    fingerprint: str
    sizes: frozenset[int]
    running: bool


@dataclass(frozen=True)
class Unused:
    """Something `gc` removes: a folder, or the cache of one size in a collection folder."""

    path: Path
    cache_size: int | None = None  # set for an image cache, which its owner forgets (core.data.cache.forget_size)


def experiment_uses(store: Store) -> list[Use]:
    """What every experiment reads: its final image size and, for CNN recipes, every phase's size."""
    uses = []
    for e in store.experiments():
        sizes = phase_sizes(e.params)
        if e.image_size:
            sizes.add(e.image_size)
        uses.append(Use(str(Path(e.data_root).resolve()) if e.data_root else "", e.dataset, frozenset(sizes),
                        e.status == "running"))
    return uses


def disk_bytes(path: Path) -> int:
    """Bytes a file or folder really occupies (caches are sparse files)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_blocks * 512 for p in files)


def unused(store_root: Path, uses: list[Use]) -> list[Unused]:
    """Cache files and folders of the store's collections that no use in `uses` needs."""
    found: list[Unused] = []
    for folder in collection_folders(store_root):
        root = collection_root(folder)
        mine = [u for u in uses if u.root == root] if root is not None else []
        if not mine:
            found.append(Unused(folder))  # no experiment reads it, or of the older per-fingerprint layout
            continue
        sizes = set().union(*(u.sizes for u in mine))
        if not any(u.running for u in mine) and all(u.sizes for u in mine):
            found += [Unused(cache_file(folder, s), s) for s in cached_sizes(folder) if s not in sizes]
        versions = {u.fingerprint for u in mine}
        found += [Unused(path) for name, path in version_dirs(folder).items() if name not in versions]
    return found


def collect_garbage(store: Store, dry_run: bool = False) -> list[tuple[Path, int]]:
    """Remove (unless `dry_run`) what no experiment in `store` uses; returns each path and the bytes it held."""
    report = []
    for item in unused(store.root, experiment_uses(store)):
        report.append((item.path, disk_bytes(item.path)))
        if dry_run:
            continue
        if item.cache_size is not None:
            forget_size(item.path.parent, item.cache_size)
        elif item.path.is_dir():
            shutil.rmtree(item.path)
        else:
            item.path.unlink()
    return report
