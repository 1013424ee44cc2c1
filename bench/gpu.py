"""Helpers of `bench/gpu.sh`: a tiny generated collection for its smoke run, and the report of a run.

    python -m bench.gpu tiny DIR                 # 48 generated bins (0..5 items) with a manifest
    python -m bench.gpu report STORE --processes N [--cuda]
                                                 # figures and img/s of the newest CNN run in STORE;
                                                 # exits 1 unless it finished as N processes (on CUDA)
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.records import Experiment
from core.store import Store

PER_COUNT = 8


def write_tiny_collection(root: Path, per_count: int = PER_COUNT, size: int = 48) -> Path:
    """Generated bins (`count` light boxes on a dark, noisy floor) in the shared sample's manifest layout."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for count in range(6):
        for k in range(per_count):
            rng = np.random.default_rng(count * 1000 + k)
            photo = Image.fromarray(rng.integers(30, 70, size=(size, size, 3), dtype=np.uint8))
            draw = ImageDraw.Draw(photo)
            for _ in range(count):
                x, y = (int(v) for v in rng.integers(0, size - 10, size=2))
                draw.rectangle([x, y, x + 8, y + 8], fill=tuple(int(c) for c in rng.integers(150, 255, size=3)))
            name = f"images/c{count}_{k}.jpg"
            photo.save(root / name, quality=90)
            rows.append({"file": name, "count": count, "metadata": ""})
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "count", "metadata"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def images_per_second(exp: Experiment, epochs: int) -> float:
    """Training throughput of all processes together: photos trained on per epoch x epochs / training time
    (the time includes each epoch's validation)."""
    counts = exp.split_counts
    photos = counts.get("train", 0) if not exp.folds else \
        (counts.get("train", 0) + counts.get("val", 0)) * (exp.folds - 1) / exp.folds
    return photos * epochs / exp.train_seconds if exp.train_seconds else float("nan")


def report(store_root: Path, processes: int, cuda: bool) -> int:
    """Print the newest CNN experiment of the store; 0 if it finished as expected, else 1."""
    from train import print_figures  # the command line's figures, the same lines `train.py cnn` prints

    store = Store(store_root)
    runs = [e for e in store.experiments() if e.family == "cnn"]
    if not runs:
        print(f"no CNN experiment in {store_root}")
        return 1
    exp = max(runs, key=lambda e: e.started_at)
    epochs = len(store.epochs(exp.id))
    print(f"{exp.name} ({exp.id}): {exp.status} on {exp.device}, {exp.weights}")
    print(f"  {epochs} epochs{f' over {exp.folds} folds' if exp.folds else ''}, {exp.train_seconds or 0:.0f} s "
          f"training, {images_per_second(exp, epochs):.1f} img/s (all processes, validation included)")
    if exp.status == "finished":
        print_figures(exp)
    problems = []
    if exp.status != "finished":
        problems.append(f"status {exp.status}: {exp.error}")
    if processes > 1 and f"x {processes} processes (DDP)" not in exp.device:
        problems.append(f"expected {processes} DDP processes, ran on {exp.device!r}")
    if cuda and "bf16" not in exp.device:
        problems.append(f"expected CUDA with bf16 autocast, ran on {exp.device!r}")
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny")
    tiny.add_argument("root", type=Path)
    rep = sub.add_parser("report")
    rep.add_argument("store", type=Path)
    rep.add_argument("--processes", type=int, default=1)
    rep.add_argument("--cuda", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "tiny":
        write_tiny_collection(args.root)
        return 0
    return report(args.store, args.processes, args.cuda)


if __name__ == "__main__":
    sys.exit(main())
