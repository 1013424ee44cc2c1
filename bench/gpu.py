"""Helpers of `bench/gpu.sh`: a tiny generated collection for its smoke run, and the report of a run.

    python -m bench.gpu tiny DIR                 # 48 generated bins (0..5 items) with a manifest
    python -m bench.gpu report STORE --processes N [--cuda]
                                                 # figures and img/s of the newest CNN run in STORE;
                                                 # exits 1 unless it finished as N processes (on CUDA)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.data.synthetic import write_manifest_collection
from core.store.database import Store
from core.store.records import Experiment

PER_COUNT = 8


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
        write_manifest_collection(args.root, per_class=PER_COUNT)  # the tests' generated bins
        return 0
    return report(args.store, args.processes, args.cuda)


if __name__ == "__main__":
    sys.exit(main())
