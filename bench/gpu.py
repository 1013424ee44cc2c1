"""Helpers of `bench/gpu.sh`: a tiny generated collection for its smoke run, the report of a trained run,
the counting service's rate beside the decode rate alone, and the side-by-side summary.

    python -m bench.gpu tiny DIR                 # 48 generated bins (0..5 items) with a manifest
    python -m bench.gpu report STORE --processes N [--cuda] [--json FILE]
                                                 # figures and img/s of the newest CNN run in STORE;
                                                 # exits 1 unless it finished as N processes (on CUDA)
    python -m bench.gpu counting STORE --data DIR [--photos N] [--batch B] [--json FILE]
                                                 # the newest CNN model of STORE counting DIR's photos,
                                                 # and the same photos decoded alone
    python -m bench.gpu summary FILE...          # the --json figures side by side, with the goals

Every rate is measured once warm: the first epoch, the first pass over the photos, the first steps
are timed apart and printed as the warm-up (cuDNN's autotuning took tens of seconds in each fresh
process on an H200), the steady state after it.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from core.data.synthetic import write_manifest_collection

if TYPE_CHECKING:  # the store, like the rest of core, is imported by the steps that use it: `tiny` and
    # `summary` start in a fraction of the time
    from core.store.database import Store
    from core.store.records import Experiment

PER_COUNT = 8
ALL_COUNTS = 10**6  # the counting rows count every photo, not only the 0..5 task
# The paper's full experiment (issue 26): its training photos and 20 epochs at 224 px, to finish in 30 minutes.
PAPER_PHOTOS, PAPER_EPOCHS, PAPER_MINUTES = 324_000, 20, 30
TRAINING_GOAL, COUNTING_GOAL, COUNTING_FLOOR = 0.8, 0.8, 5000  # shares of the yardsticks, img/s


def trained_photos(exp: Experiment) -> float:
    """Photos one epoch trains on: the train split, or (K-1)/K of train+val for each of K folds."""
    counts = exp.split_counts
    if not exp.folds:
        return counts.get("train", 0)
    return (counts.get("train", 0) + counts.get("val", 0)) * (exp.folds - 1) / exp.folds


def images_per_second(exp: Experiment, epochs: int) -> float:
    """Training throughput of all processes together: photos trained on per epoch x epochs / training time
    (the time includes each epoch's validation)."""
    return trained_photos(exp) * epochs / exp.train_seconds if exp.train_seconds else float("nan")


def epoch_seconds(epochs: pd.DataFrame) -> list[list[float]]:
    """Each epoch's wall time, per training run (a fold is a run of its own), from the store's epoch
    log, whose `seconds` is the run's time so far (validation and the phase's set-up included)."""
    runs = [epochs] if "fold" not in epochs else [group for _, group in epochs.groupby("fold", sort=True)]
    return [group.sort_values("epoch")["seconds"].diff().fillna(group["seconds"].iloc[0]).tolist()
            for group in runs if len(group)]


def steady_rate(exp: Experiment, epochs: pd.DataFrame) -> tuple[float, float]:
    """(seconds of the first epoch, img/s of all the later ones): the warm-up apart from the steady
    state. NaN where no run had a second epoch."""
    runs = epoch_seconds(epochs)
    later = [s for run in runs for s in run[1:]]
    first = runs[0][0] if runs else float("nan")
    return first, trained_photos(exp) * len(later) / sum(later) if later else float("nan")


def newest_cnn(store: Store) -> Experiment | None:
    runs = [e for e in store.experiments() if e.family == "cnn"]
    return max(runs, key=lambda e: e.started_at) if runs else None


def report(store_root: Path, processes: int, cuda: bool, out: Path | None = None) -> int:
    """Print the newest CNN experiment of the store; 0 if it finished as expected, else 1."""
    from core.store.database import Store
    from train import print_figures  # the command line's figures, the same lines `train.py cnn` prints

    store = Store(store_root)
    exp = newest_cnn(store)
    if exp is None:
        print(f"no CNN experiment in {store_root}")
        return 1
    log = store.epochs(exp.id)
    epochs = len(log)
    warmup, steady = steady_rate(exp, log)
    print(f"{exp.name} ({exp.id}): {exp.status} on {exp.device}, {exp.weights}")
    print(f"  {epochs} epochs{f' over {exp.folds} folds' if exp.folds else ''}, {exp.train_seconds or 0:.0f} s "
          f"training, {images_per_second(exp, epochs):.1f} img/s (all processes, validation included); "
          f"first epoch {warmup:.1f} s (warm-up), then {steady:.1f} img/s")
    if exp.status == "finished":
        print_figures(exp)
    if out:
        val = exp.val_metrics
        out.write_text(json.dumps({
            "name": exp.name, "id": exp.id, "device": exp.device, "processes": processes, "epochs": epochs,
            "image_size": exp.image_size, "batch": exp.params.get("batch_size"),
            "photos_per_epoch": trained_photos(exp), "warmup_seconds": warmup,
            "images_per_second": steady, "overall_images_per_second": images_per_second(exp, epochs),
            "val_accuracy": val.accuracy if val else None,
            "val_balanced_accuracy": val.balanced_accuracy if val else None,
        }))
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


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def counting(store_root: Path, data: Path, photos: int, batch: int | None, out: Path | None = None) -> int:
    """The newest CNN model of the store counting `photos` photos of `data` (its photos over and over)
    through the counting service, and the same photos decoded alone with the service's decoding
    pool: the most the service could count, whatever the network's speed."""
    from core.counting.service import load_counter
    from core.data.collection import load_collection
    from core.data.images import decoded_batches
    from core.store.database import Store

    store = Store(store_root)
    exp = newest_cnn(store)
    if exp is None or exp.status != "finished":
        print(f"no finished CNN model in {store_root}")
        return 1
    counter = load_counter(exp.id, store)
    batch = batch or counter.batch_size
    paths = load_collection(data, max_count=ALL_COUNTS).table["path"].tolist()[:photos]  # distinct photos
    stream = (paths * math.ceil(photos / len(paths)))[:photos]

    def decode(sources: list[str]) -> None:
        for _ in decoded_batches(sources, counter.image_size, batch, counter.workers):
            pass

    def count(sources: list[str]) -> None:
        counter.count_batch(sources, batch_size=batch)

    # warm-ups: decoding reads every file once (the page cache), counting warms the network and its kernels
    rows = {"decode": (_timed(lambda: decode(paths)), _timed(lambda: decode(stream))),
            "count": (_timed(lambda: count(paths)), _timed(lambda: count(stream)))}
    rates = {what: len(stream) / steady for what, (_, steady) in rows.items()}
    where = f"{counter.name} @{counter.image_size}px, {counter.served_by}, batches of {batch}, " \
            f"{counter.workers} decoding threads"
    print(f"counting {len(stream)} photos ({len(paths)} distinct, {data}); {where}")
    for what, label in (("count", "counting service"), ("decode", "decoding alone")):
        warmup, steady = rows[what]
        print(f"  {label}: warm-up pass of {len(paths)} photos {warmup:.1f} s, then {rates[what]:.0f} img/s")
    if out:
        out.write_text(json.dumps({"model": counter.name, "image_size": counter.image_size,
                                   "served_by": counter.served_by, "batch": batch, "workers": counter.workers,
                                   "photos": len(stream), "images_per_second": rates["count"],
                                   "decode_images_per_second": rates["decode"],
                                   "warmup_seconds": rows["count"][0], "decode_warmup_seconds": rows["decode"][0]}))
    return 0


def summary(files: list[Path]) -> int:
    """The product beside its yardsticks, from the --json files of report, gpu_baseline and counting."""
    from bench.common import print_table

    figures = {path.stem: json.loads(path.read_text()) for path in files if path.is_file()}
    product, loop, counted = figures.get("product"), figures.get("baseline"), figures.get("counting")
    rows: list[tuple[str, ...]] = []
    if product and loop:
        per_gpu = product["images_per_second"] / product["processes"]
        rows.append((f"training img/s, {product['name']} @{product['image_size']}px, batch {product['batch']} "
                     f"(per process of {product['processes']}; epochs after the first, validation included)",
                     f"{per_gpu:.0f}", f"{loop['images_per_second']:.0f} (plain loop @{loop['size']}px, "
                     f"batch {loop['batch']}, {loop['precision']})", f"{per_gpu / loop['images_per_second']:.2f}x",
                     f">= {TRAINING_GOAL}x"))
        minutes = PAPER_PHOTOS * PAPER_EPOCHS / product["images_per_second"] / 60
        rows.append((f"the paper's full experiment ({PAPER_PHOTOS:,} photos x {PAPER_EPOCHS} epochs) at the "
                     f"product's rate", f"{minutes:.0f} min", "", "", f"<= {PAPER_MINUTES} min"))
    if counted:
        rows.append((f"counting img/s, {counted['model']} @{counted['image_size']}px ({counted['served_by']}, "
                     f"batches of {counted['batch']})", f"{counted['images_per_second']:.0f}",
                     f"{counted['decode_images_per_second']:.0f} (decoding alone, {counted['workers']} threads)",
                     f"{counted['images_per_second'] / counted['decode_images_per_second']:.2f}x",
                     f">= {COUNTING_GOAL}x and >= {COUNTING_FLOOR} img/s"))
    warmups = ", ".join(f"{name} {figures[name]['warmup_seconds']:.1f} s"
                        for name in ("product", "baseline", "counting") if name in figures)
    print_table(rows, header=("rate (steady state, once warm)", "binsight", "yardstick", "ratio", "goal"))
    print(f"warm-up, timed apart: {warmups}")
    if product:
        figures = {key: "-" if product[key] is None else f"{product[key]:.3f}"
                   for key in ("val_accuracy", "val_balanced_accuracy")}
        print(f"validation figures of {product['name']}: accuracy {figures['val_accuracy']}, "
              f"balanced accuracy {figures['val_balanced_accuracy']} (all of them above, after its report)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny")
    tiny.add_argument("root", type=Path)
    rep = sub.add_parser("report")
    rep.add_argument("store", type=Path)
    rep.add_argument("--processes", type=int, default=1)
    rep.add_argument("--cuda", action="store_true")
    rep.add_argument("--json", type=Path)
    cnt = sub.add_parser("counting")
    cnt.add_argument("store", type=Path)
    cnt.add_argument("--data", type=Path, required=True)
    cnt.add_argument("--photos", type=int, default=50_000)
    cnt.add_argument("--batch", type=int, help="photos counted at once (default: the service's on this device)")
    cnt.add_argument("--json", type=Path)
    summ = sub.add_parser("summary")
    summ.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "tiny":
        write_manifest_collection(args.root, per_class=PER_COUNT)  # the tests' generated bins
        return 0
    if args.command == "counting":
        return counting(args.store, args.data, args.photos, args.batch, args.json)
    if args.command == "summary":
        return summary(args.files)
    return report(args.store, args.processes, args.cuda, args.json)


if __name__ == "__main__":
    sys.exit(main())
