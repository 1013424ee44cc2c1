"""binsight command line: get data, train and cache models, count and reconcile bins.

    python train.py download --n 500 --out data/abid
    python train.py prepare --data ../shared/abid-sample
    python train.py --help
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.config import DOWNLOAD_HINT, MAX_COUNT, find_data_dir


def data_dir(arg: str | None) -> Path:
    """The --data folder, else the default one; a clear exit if there is none."""
    found = Path(arg) if arg else find_data_dir()
    if found is None:
        sys.exit(f"No data folder found. Set ABID_DATA, pass --data DIR, or download some photos:\n  {DOWNLOAD_HINT}")
    return found


def cmd_download(args: argparse.Namespace) -> None:
    from core.download import download, first_ids

    ids = args.ids or first_ids(args.n, start=args.start)
    report = download(ids, Path(args.out), base_url=args.base_url, workers=args.workers)
    print(f"downloaded {len(report.downloaded)}, already present {len(report.skipped)}, failed {len(report.failed)}")
    for image_id, reason in list(report.failed.items())[:20]:
        print(f"  {image_id}: {reason}")
    if report.failed:
        sys.exit(1)


def cmd_prepare(args: argparse.Namespace) -> None:
    from core.dataset import prepare_dataset

    dataset = prepare_dataset(data_dir(args.data), image_size=args.size, max_count=args.max_count)
    print(json.dumps(dataset.summary(), indent=2))
    for row in dataset.collection.skipped.head(20).itertuples():
        print(f"skipped {row.path}: {row.reason}")


def load_model(name: str):
    """A counter for --model, or a clear exit (no finished experiment, unknown name)."""
    from core.predict import ModelNotFound, load_counter

    try:
        return load_counter(name)
    except ModelNotFound as err:
        sys.exit(str(err))


def cmd_count(args: argparse.Namespace) -> None:
    counter = load_model(args.model)
    for path, result in zip(args.images, counter.count_batch(args.images)):
        if isinstance(result, Exception):
            print(f"{path}: cannot count: {result}")
        else:
            print(f"{path}: {result.count} items (confidence {result.confidence:.0%}, expected {result.expected:.2f})")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from core.predict import evaluate_folder

    print(json.dumps(evaluate_folder(load_model(args.model), data_dir(args.data)), indent=2))


def cmd_reconcile(args: argparse.Namespace) -> None:
    from core.reconcile import reconcile, records_from_folder, write_report

    counter = load_model(args.model)
    records, images = records_from_folder(data_dir(args.data), args.records)
    report = reconcile(counter, records, images, threshold=args.threshold, progress=True)
    write_report(report, args.out)
    flagged = int(report["mismatch"].fillna(False).astype(bool).sum())
    print(f"{len(report)} bins checked with {counter.name}: {flagged} flagged as likely mismatches "
          f"(P(mismatch) >= {args.threshold}), {int((report['error'] != '').sum())} with errors -> {args.out}")


def build_parser() -> argparse.ArgumentParser:
    from core.download import DEFAULT_BASE_URL

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", help="fetch photos and metadata from ABID's public bucket")
    p.add_argument("--n", type=int, default=100, help="how many bins, counting up from --start")
    p.add_argument("--start", type=int, default=1)
    p.add_argument("--ids", nargs="*", help="explicit ABID ids instead of --n")
    p.add_argument("--out", default="data/abid")
    p.add_argument("--base-url", default=DEFAULT_BASE_URL)
    p.add_argument("--workers", type=int, default=8)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("prepare", help="load a collection, build its image cache and split")
    p.add_argument("--data", help="data folder (default: ABID_DATA, data/abid, ../shared/abid-sample)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--max-count", type=int, default=MAX_COUNT)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("count", help="count the items in photos")
    p.add_argument("images", nargs="+")
    p.add_argument("--model", default="best", help="experiment id or name, or 'best'")
    p.set_defaults(func=cmd_count)

    p = sub.add_parser("evaluate", help="score a model on a labelled collection (prints JSON)")
    p.add_argument("--model", default="best")
    p.add_argument("--data", help="collection folder in any supported layout")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("reconcile", help="flag bins whose photo disagrees with the recorded quantity")
    p.add_argument("--model", default="best")
    p.add_argument("--data", help="folder of photos (its own labels are the recorded quantities unless --records)")
    p.add_argument("--records", help="CSV with columns image,recorded_quantity (image = file name in --data)")
    p.add_argument("--out", default="report.csv", help=".csv or .json")
    p.add_argument("--threshold", type=float, default=0.5, help="flag bins with P(mismatch) at or above this")
    p.set_defaults(func=cmd_reconcile)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
