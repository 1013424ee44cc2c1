"""`make bench`: every speed figure beside its naive baseline, measured in the same run.

    .venv/bin/python -m bench --data ../shared/abid-sample --images 2649 --size 224
    .venv/bin/python -m bench scale --n 10000      # the data layer at scale (bench/scale.py)
    .venv/bin/python -m bench scale --abid --n 20000   # all of ABID on one machine, from 20,000 photos
    bench/gpu.sh                                     # the GPU path, beside its yardsticks (bench/gpu.sh)
    make bench BENCH_ARGS="--steps 5 --batch 16"     # smaller; larger sizes scale to a GPU machine

Counting and dashboard rows need a trained store (`make train` first); they are skipped, with a
note, when the store has no CNN model.
"""
from __future__ import annotations

import argparse
import sys

from bench import cache_build, dashboard, inference, peak, training
from bench.common import print_table
from core.config import find_data_dir
from core.counting.service import ModelNotFound, load_counter
from core.data.dataset import prepare_dataset
from core.store.database import Store


def main() -> None:
    if sys.argv[1:2] == ["scale"]:
        from bench import scale

        return scale.main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=find_data_dir())
    parser.add_argument("--images", type=int, default=3000, help="images for the cache-build rows")
    parser.add_argument("--size", type=int, default=224, help="cache-build resolution")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--train-size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per loader")
    parser.add_argument("--photos", type=int, default=320, help="photos for the counting rows")
    parser.add_argument("--model", default="best", help="model for the counting rows")
    args = parser.parse_args()
    if args.data is None:
        sys.exit("no data folder: pass --data or set ABID_DATA")

    peaks = peak.peaks()  # measured in this run: what every counting row is a share of
    rows: list[tuple[str, ...]] = [(f"peak GEMM {peak.GEMM_SIZE}x{peak.GEMM_SIZE}, {name}", f"{gflops:.0f} GFLOP/s")
                                   for name, gflops in peaks.items()]
    rows += cache_build.run(args.data, args.images, args.size)
    dataset = prepare_dataset(args.data, image_size=args.train_size, progress=False)
    rows += training.run(dataset, args.backbone, args.train_size, args.batch, args.steps)
    store = Store()
    try:
        counter = load_counter(args.model, store)
    except ModelNotFound as err:
        print(f"(counting and dashboard rows skipped: {err})")
    else:
        if counter.exp.family == "cnn" and not counter.exp.folds:
            paths = dataset.split("test")["path"].head(args.photos).tolist()
            rows += inference.run(store, counter, paths, args.batch, peaks)
        rows += dashboard.run(store.root)
    print_table(rows)


if __name__ == "__main__":
    main()
