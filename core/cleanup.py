"""`train.py gc`: remove the image caches and derived data no experiment uses, and say what it frees.

A collection's folder in the store (see `core.dataset.collection_folder`) holds its index, one
image cache per size and, per version of the data, derived files. A cache is in use when an
experiment on that collection root reads that image size; a version folder when an experiment
was trained on that version. A collection with a running experiment keeps every cache (a CNN
reads several sizes while it trains). Folders of the older per-fingerprint layout are removed.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from core.cache import cache_file
from core.store import Store


@dataclass(frozen=True)
class Use:
    """What one experiment needs kept: its collection root, data version and the image sizes it reads."""

    root: str
    fingerprint: str
    sizes: frozenset[int]
    running: bool


def experiment_uses(store: Store) -> list[Use]:
    """What every experiment reads: its final image size and, for CNN recipes, every phase's size."""
    uses = []
    for e in store.experiments():
        sizes = {p["image_size"] for p in e.params.get("phases", []) if isinstance(p, dict) and "image_size" in p}
        if e.image_size:
            sizes.add(e.image_size)
        uses.append(Use(str(Path(e.data_root).resolve()) if e.data_root else "", e.dataset, frozenset(sizes),
                        e.status == "running"))
    return uses


def disk_bytes(path: Path) -> int:
    """Bytes a file or folder really occupies (caches are sparse files)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_blocks * 512 for p in files)


def unused(datasets: Path, uses: list[Use]) -> list[Path]:
    """Cache files and folders under `datasets` that no use in `uses` needs."""
    found: list[Path] = []
    for folder in sorted(p for p in datasets.iterdir() if p.is_dir()) if datasets.is_dir() else []:
        meta = folder / "collection.json"
        if not meta.is_file():
            found.append(folder)  # the per-fingerprint layout of older versions
            continue
        mine = [u for u in uses if u.root == json.loads(meta.read_text())["root"]]
        if not mine:
            found.append(folder)
            continue
        sizes = set().union(*(u.sizes for u in mine))
        if not any(u.running for u in mine) and all(u.sizes for u in mine):
            found += [f for f in sorted(folder.glob("images_*.u8")) if int(f.stem.split("_")[1]) not in sizes]
        versions = {u.fingerprint for u in mine}
        found += [v for v in sorted((folder / "versions").glob("*")) if v.name not in versions]
    return found


def collect_garbage(store: Store, dry_run: bool = False) -> list[tuple[Path, int]]:
    """Remove (unless `dry_run`) what no experiment in `store` uses; returns each path and the bytes it held."""
    report = []
    for path in unused(store.root / "datasets", experiment_uses(store)):
        report.append((path, disk_bytes(path)))
        if dry_run:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            _forget_size(path)
    return report


def _forget_size(cache: Path) -> None:
    """Delete one size's cache file and its decoded marks, so a later use decodes it afresh."""
    size = int(cache.stem.split("_")[1])
    with closing(sqlite3.connect(cache.parent / "cache.sqlite", timeout=60)) as db, db:
        db.execute("DELETE FROM decoded WHERE size = ?", (size,))
    cache_file(cache.parent, size).unlink()
