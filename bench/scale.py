"""`python -m bench scale --n N`: the data layer on a synthetic ABID-layout collection of N photos.

    .venv/bin/python -m bench scale --n 10000 --root /tmp/binsight-scale
    .venv/bin/python -m bench scale --reconcile      # reconciling 10,000 and 100,000 bins
    .venv/bin/python -m bench scale --abid --n 20000 --sizes 224 160 --gpus 8
                                                     # all of ABID on one machine, from N photos

Generates (or reuses) N small JPEGs (64-96 px, 0-8 boxes) with ABID metadata JSON under
`--root`, then times each step in a fresh subprocess and reads that process's peak RSS
(`resource.getrusage`, the step's own process; decoding workers are reported apart): first and
repeated collection load, cache build, cache growth after adding 1% new photos (only those are
decoded), one streamed pass over the train split, one training epoch of the `quick` network on
a fixed number of batches, and counting the whole test split streamed from the cache. Steps are
the functions in STEPS: (root, store, size) -> a note.

With `--reconcile`: a collection of 100,000 bins and records files naming its first 10,000 and
all 100,000 bins; a small counting model (the `quick` network, RECONCILE_EPOCHS at
IMAGE_SIZE px on a separate collection of RECONCILE_TRAIN bins drawn the same way); then
`train.py reconcile` (streamed, resumable, the service's engine) on both, and today's in-memory
path (`core.reconcile.inventory.reconcile` in PyTorch fp32 with decoding in line, as before ONNX Runtime and
the decoding pool) on the 10,000, each in a fresh process with its photos/s and peak RSS.

With `--abid`: N photos of ABID's originals' size (`ABID_PHOTO`) and layout, and at each of `--sizes`
the image cache built, read in training batches (`_read`: shuffled straight after the file is dropped
from the page cache, shuffled again from memory, and in order), a few training steps and some photos
counted; then all of ABID (`ABID_BINS` photos) worked out from those figures (`full_abid`): disk, RAM,
build time, and minutes per epoch at the read rate measured and at issue 26's GPU rates, on one GPU
and on `--gpus`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np

from bench.common import print_table
from core.data.synthetic import bin_photo

IMAGE_SIZE = 64  # cache resolution for the scale runs
TRAIN_BATCHES, VAL_PHOTOS = 20, 320  # the training step's fixed amount of work, whatever N
EVAL_BATCH = 256


def _bin(i: int) -> tuple[np.random.Generator, int, int]:
    """Bin `i`'s random source, its item count and its photo's width."""
    rng = np.random.default_rng(i)
    return rng, int(rng.integers(0, 9)), int(rng.integers(64, 97))


def _write_bins(root: str, ids: list[int], photo: tuple[int, int] | None = None) -> None:
    """Bins `ids` (`core.data.synthetic.bin_photo`, one bright box per item) with their metadata; photos
    of `photo` (width, height) px, by default of `_bin`'s width at 4:3."""
    for i in ids:
        _, count, side = _bin(i)
        bin_photo(count, seed=i, size=photo or (side, side * 3 // 4)).save(f"{root}/bin-images/{i}.jpg", quality=85)
        skus = {f"B{i}_{k}": {"asin": f"B{i}_{k}", "name": f"item {k}", "quantity": 1} for k in range(count)}
        Path(f"{root}/metadata/{i}.json").write_text(json.dumps({"EXPECTED_QUANTITY": count, "BIN_FCSKU_DATA": skus}))


def generate(root: Path, first: int, n: int, workers: int = 2, photo: tuple[int, int] | None = None) -> None:
    """Bins `first`..`first + n - 1` in ABID's layout (photos of `photo` px, see `_write_bins`); those
    already written are kept."""
    for sub in ("bin-images", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(first, first + n) if not (root / "metadata" / f"{i}.json").exists()]
    chunks = [todo[k:k + 500] for k in range(0, len(todo), 500)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(partial(_write_bins, str(root), photo=photo), chunks))


def _settle() -> None:
    """Wait until the collection's directories are older than the index's racy-timestamp margin, as
    they are in real use: a directory changed in the last seconds is not trusted, so the load right
    after a change stats every file (see `core.data.index`), and the next one would measure that too."""
    from core.data.index import TRUST_MARGIN_NS

    time.sleep(TRUST_MARGIN_NS / 1e9)


def _load(root: Path, store: Path, size: int) -> str:
    from core.data.collection import load_collection
    from core.store.layout import collection_folder, index_file

    col = load_collection(root, max_count=5, index=index_file(collection_folder(root, store)), progress=False,
                          items=False)
    return f"{len(col.table)} photos of 0-5 items, {col.out_of_range} above"


def _decoded(store: Path, root: Path, size: int) -> int:
    from core.store.layout import cache_db, collection_folder

    path = cache_db(collection_folder(root, store))
    if not path.is_file():
        return 0
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT COUNT(*) FROM decoded WHERE size = ?", (size,)).fetchone()[0]


def _prepare(root: Path, store: Path, size: int, open_top: bool = False) -> tuple[str, dict[str, float]]:
    """Load the collection and grow its cache at `size` (with `open_top`, bins of more than 5 items too,
    as the CNN recipes train); the note, and how many photos were decoded and the cache's rows."""
    from core.data.dataset import prepare_dataset

    before = _decoded(store, root, size)
    dataset = prepare_dataset(root, image_size=size, store_root=store, progress=False, open_top=open_top)
    array = dataset.images(size)
    decoded = _decoded(store, root, size) - before
    return f"{decoded} decoded, cache {array.nbytes / 1e9:.2f} GB", {"decoded": decoded, "rows": len(array)}


def _stream(root: Path, store: Path, size: int) -> str:
    from core.data.dataset import prepare_dataset

    dataset = prepare_dataset(root, image_size=size, store_root=store, progress=False)
    seen = sum(len(x) for x, _ in dataset.batches("train", size, batch_size=256))
    return f"{seen} train photos in batches of 256"


def _train(root: Path, store: Path, size: int, batches: int = TRAIN_BATCHES, val_photos: int = VAL_PHOTOS) -> str:
    """One epoch of the `quick` recipe's network, loss and optimiser on `batches` batches of its
    batch size (the first photos of the train split) at `size` px, validated on `val_photos` photos,
    through the real `Trainer` (checkpoints and all)."""
    from core.cnn.backbones import build_model
    from core.cnn.loop import Split, Trainer, TrainingData
    from core.cnn.recipes import get_recipe
    from core.cnn.runtime import local_runtime
    from core.data.dataset import prepare_dataset

    dataset = prepare_dataset(root, image_size=size, store_root=store, progress=False)
    runtime = local_runtime()
    recipe = get_recipe("quick", {"phases": [{"epochs": 1, "image_size": size, "train_body": True, "lr": 1e-3}]})
    recipe = recipe.resolved(runtime.device.type)  # the device's batch
    assert recipe.batch_size is not None
    train = dataset.split("train").head(batches * recipe.batch_size)
    val = dataset.split("val").head(val_photos)
    data = TrainingData(dataset.images, Split(train["row"].to_numpy(), train["count"].to_numpy()),
                        Split(val["row"].to_numpy(), val["count"].to_numpy()), dataset.num_classes)
    model, _ = build_model(recipe.backbone, dataset.num_classes, pretrained=recipe.pretrained)
    seconds = []
    started = time.perf_counter()
    folder = store / f"bench-train-{size}"
    shutil.rmtree(folder, ignore_errors=True)  # a checkpoint left there would resume, with nothing left to train
    Trainer(runtime.prepare(model), recipe, data, runtime, folder, progress=False).fit(
        on_epoch=lambda epoch, values: seconds.append(time.perf_counter() - started))
    return (f"{recipe.backbone}: {len(train)} photos "
            f"({len(train) // recipe.batch_size} batches of {recipe.batch_size}) + "
            f"{len(val)} validated in {seconds[0]:.1f} s, {len(train) / seconds[0]:.0f} img/s ({runtime.describe()})")


def _evaluate(root: Path, store: Path, size: int, limit: int | None = None) -> str:
    """Count the whole test split (its first `limit` photos) with the `quick` network, streamed from the
    cache in batches."""
    import torch

    from core.cnn.backbones import build_model, input_normalization
    from core.cnn.inputs import network_probabilities
    from core.cnn.recipes import get_recipe
    from core.cnn.runtime import local_runtime
    from core.data.dataset import prepare_dataset
    from core.evaluation.metrics import count_report

    dataset = prepare_dataset(root, image_size=size, store_root=store, progress=False)
    recipe, runtime = get_recipe("quick"), local_runtime()
    model, _ = build_model(recipe.backbone, dataset.num_classes, pretrained=recipe.pretrained)
    model = runtime.prepare(model).eval()
    normalization = input_normalization(recipe.backbone)
    started = time.perf_counter()
    predicted, truth = [], []
    batches = dataset.batches("test", size, batch_size=EVAL_BATCH)
    for images, counts in islice(batches, None if limit is None else -(-limit // EVAL_BATCH)):
        probs = network_probabilities(model, torch.from_numpy(images).to(runtime.device), normalization, recipe.tta,
                                      runtime.counting_autocast())
        predicted.append(probs.argmax(dim=1).cpu().numpy())
        truth.append(counts)
    seconds = time.perf_counter() - started
    report = count_report(np.concatenate(truth), np.concatenate(predicted), dataset.num_classes)
    n = report.n or 0
    return (f"{n} test photos counted in {seconds:.1f} s, {n / seconds:.0f} img/s "
            f"(TTA {recipe.tta}, untrained head: accuracy {report.accuracy:.2f} is not a result)")


# a step's note, and figures for the arithmetic where it has some
Step = Callable[[Path, Path, int], str | tuple[str, dict[str, float]]]
STEPS: dict[str, Step] = {
    "first load": _load, "repeated load": _load, "cache build": _prepare, "cache growth (+1%)": _prepare,
    "stream train split": _stream, "train 1 epoch (quick)": _train, "evaluate test split": _evaluate,
}


RECONCILE_BINS = (10_000, 100_000)
RECONCILE_TRAIN, RECONCILE_EPOCHS = 2_000, 2


def write_records(path: Path, bins: int) -> Path:
    """A records file naming bins 1..`bins` with their true quantities."""
    with open(path, "w") as fh:
        fh.write("image,recorded_quantity\n")
        fh.writelines(f"bin-images/{i}.jpg,{_bin(i)[1]}\n" for i in range(1, bins + 1))
    return path


def _train_counter(root: Path, store: Path, size: int) -> str:
    """The small counting model the reconciliation steps use; its experiment id is the note."""
    from core.cnn import train_cnn
    from core.store.database import Store

    phases = [{"epochs": 1, "image_size": size, "train_body": False, "lr": 3e-3},
              {"epochs": RECONCILE_EPOCHS - 1, "image_size": size, "differential": True, "lr": 1e-3}]
    return train_cnn(root, "quick", Store(store), {"phases": phases}, progress=False)


def _reconcile_streamed(root: Path, store: Path, size: int) -> str:
    """`train.py reconcile` as a user runs it (records file, JSON report); `size` is the bins."""
    from train import main

    out = store / f"report-{size}.json"
    out.unlink(missing_ok=True)
    main(["reconcile", "--data", str(root), "--records", str(store / f"records-{size}.csv"), "--out", str(out),
          "--store", str(store), "--model", "quick"])
    return f"{size} bins, report {out.stat().st_size / 1e6:.1f} MB"


def _reconcile_today(root: Path, store: Path, size: int) -> str:
    """Today's in-memory path on the same bins: PyTorch fp32, decoding in line, the report built whole."""
    from core.counting.service import load_counter
    from core.reconcile.inventory import reconcile, records_from_folder, write_report
    from core.store.database import Store

    counter = load_counter("quick", Store(store), precision="fp32", engine="torch")
    records, images = records_from_folder(root, store / f"records-{size}.csv")
    report = reconcile(counter, records, images, workers=0)
    write_report(report, store / f"report-{size}-today.json")
    return f"{size} bins"


TRAIN, STREAMED, TODAY = "train counting model", "reconcile streamed", "reconcile today's path"
RECONCILE_STEPS: dict[str, Step] = {
    TRAIN: _train_counter, STREAMED: _reconcile_streamed, TODAY: _reconcile_today}


def run_step(name: str, root: Path, store: Path, size: int) -> dict:
    """Run one step in a fresh interpreter: its wall time, its peak RSS and its note."""
    out = subprocess.run([sys.executable, "-m", "bench.scale", "--step", name, "--root", str(root),
                          "--store", str(store), "--size", str(size)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"step {name!r} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from
    the forking parent across exec, so a step started by a big parent would report the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process's resident memory now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(name: str, root: Path, store: Path, size: int) -> None:
    import core.data.dataset  # noqa: F401 - imports are not part of the step's time

    before = rss_mb()
    started = time.perf_counter()
    result = {**STEPS, **RECONCILE_STEPS, **ABID_STEPS}[name](root, store, size)
    seconds = time.perf_counter() - started
    note, figures = result if isinstance(result, tuple) else (result, {})
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rss_mb": peak_rss_mb(), "rss_before_mb": before, "worker_rss_mb": workers,
                      "note": note, "figures": figures}))


def reconcile_rows(root: Path, size: int) -> None:
    """Reconciliation at 10,000 and 100,000 bins: photos/s and peak RSS of each run."""
    data, train_data = root / f"abid-{RECONCILE_BINS[-1]}", root / f"abid-{RECONCILE_TRAIN}"
    store = root / "store-reconcile"
    started = time.perf_counter()
    generate(data, 1, RECONCILE_BINS[-1])
    generate(train_data, 1, RECONCILE_TRAIN)
    _settle()
    print(f"collections ready in {time.perf_counter() - started:.0f} s: {data}, {train_data}", flush=True)
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    trained = run_step(TRAIN, train_data, store, size)
    print(f"counting model {trained['note']} trained in {trained['seconds']:.0f} s", flush=True)
    rows, runs = [], {}
    for bins in RECONCILE_BINS:
        write_records(store / f"records-{bins}.csv", bins)
        for name in [TODAY, STREAMED] if bins == RECONCILE_BINS[0] else [STREAMED]:
            result = runs[name, bins] = run_step(name, data, store, bins)
            rows.append((f"{name}, {bins} bins", f"{result['seconds']:.0f} s", f"{bins / result['seconds']:.0f}",
                         f"{result['rss_mb']:.0f} MB", result["note"]))
            print(f"  {rows[-1]}", flush=True)
    print_table(rows, header=("step", "wall time", "photos/s", "peak RSS", f"what ({size} px model)"))
    small, large = RECONCILE_BINS
    print(f"streamed against today's path at {small} bins: "
          f"{runs[TODAY, small]['seconds'] / runs[STREAMED, small]['seconds']:.2f}x photos/s; streamed peak RSS "
          f"{runs[STREAMED, large]['rss_mb'] / runs[STREAMED, small]['rss_mb']:.2f}x from {small} to {large} bins")


# ---- all of ABID on one machine (--abid) ----
ABID_BINS = 536_000  # photos in all of ABID (issue 26; the bucket's ids run to 535,234, with gaps)
PAPER_PHOTOS, PAPER_EPOCHS = 324_000, 20  # the paper's training photos, and the epochs of its full experiment
ABID_PHOTO = (480, 360)  # ABID's originals are about this size (the shared sample's: 300-900 px wide, median ~480)
ABID_JPEG = 57_000  # bytes: the shared sample's original ABID photos average 57 KB
READ_BATCH = 256  # a GPU's training batch
FEW_BATCHES, FEW_VAL, COUNTED = 5, 64, 512  # the training and counting steps' work, whatever N
# training img/s on one H200 (issue 26): binsight then, the goal, the plain GPU-resident loop
GPU_RATES = {"binsight (Dec 2026)": 317, "goal": 4_500, "plain loop": 6_000}
INDEX, BUILD, READ, FEW, COUNT = "index (first load)", "cache build", "read in batches", "train a few steps", "count"


def _read(root: Path, store: Path, size: int) -> tuple[str, dict[str, float]]:
    """Every photo of the cache at `size` read once per pass in batches of READ_BATCH rows (each batch's
    rows in order, with `core.data.cache.read_rows`): in a shuffled order straight after asking the
    kernel to drop the file from its page cache (a first epoch, or a cache larger than RAM), in the
    same order again from memory, and in the cache's order."""
    from core.data.cache import read_rows
    from core.data.dataset import prepare_dataset
    from core.store.layout import cache_file

    dataset = prepare_dataset(root, image_size=size, store_root=store, progress=False, open_top=True)
    rows = dataset.table["row"].to_numpy()
    shuffled = np.random.default_rng(0).permutation(rows)
    fd = os.open(cache_file(dataset.cache_folder, size), os.O_RDONLY)
    try:
        os.fsync(fd)  # written pages must reach the disk before the kernel lets them go
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)

    def one_pass(order: np.ndarray) -> float:
        started = time.perf_counter()
        for i in range(0, len(order), READ_BATCH):
            read_rows(dataset.cache_folder, size, np.sort(order[i:i + READ_BATCH]))
        return len(order) / (time.perf_counter() - started)

    rates = {"cold": one_pass(shuffled), "warm": one_pass(shuffled), "in order": one_pass(np.sort(rows))}
    mb = size * size * 3 / 1e6
    note = ", ".join(f"{what} {rate:.0f} img/s ({rate * mb:.0f} MB/s)" for what, rate in rates.items())
    return f"{len(rows)} photos in batches of {READ_BATCH}: {note}", rates


ABID_STEPS: dict[str, Step] = {
    INDEX: _load, BUILD: partial(_prepare, open_top=True), READ: _read,
    FEW: partial(_train, batches=FEW_BATCHES, val_photos=FEW_VAL), COUNT: partial(_evaluate, limit=COUNTED)}


@dataclass(frozen=True)
class Indexed:
    """The first load of N photos (the index built), and of a smaller part of them: the slope is
    what each photo costs."""

    n: int
    seconds: float
    rss_mb: float
    index_bytes: int
    part: int
    part_seconds: float
    part_rss_mb: float

    def at(self, photos: int, value: float, part_value: float) -> float:
        """`value` (at n) carried on to `photos` along the line through (part, part_value)."""
        return value + (value - part_value) / (self.n - self.part) * (photos - self.n)


@dataclass(frozen=True)
class AtSize:
    """What one cache size measured on N photos."""

    size: int
    build_rate: float  # photos decoded into the cache per second, all cores
    cache_bytes: float  # per photo, on disk
    read: dict[str, float]  # img/s of `_read`'s passes


def full_abid(indexed: Indexed, cores: int, photo_bytes: float, sizes: list[AtSize], gpus: int) -> list[str]:
    """All of ABID (ABID_BINS photos) worked out from figures measured on fewer: the lines to print."""
    n, gb = indexed.n, ABID_BINS / 1e9
    ram = indexed.at(ABID_BINS, indexed.rss_mb, indexed.part_rss_mb) / 1e3
    load = indexed.at(ABID_BINS, indexed.seconds, indexed.part_seconds) / 60
    lines = [f"all of ABID ({ABID_BINS:,} photos) from the figures on {n:,} (this machine: {cores} cores):",
             f"  photos as downloaded: ~{ABID_JPEG * gb:.0f} GB (the sample's ABID originals average "
             f"{ABID_JPEG / 1e3:.0f} KB; these synthetic ones {photo_bytes / 1e3:.0f} KB)",
             f"  index: {indexed.index_bytes / n * gb * 1e3:.0f} MB; first load ~{load:.0f} min here, peak RSS "
             f"~{ram:.1f} GB (from {indexed.part_seconds:.1f} s and {indexed.part_rss_mb:.0f} MB at {indexed.part:,}, "
             f"{indexed.seconds:.1f} s and {indexed.rss_mb:.0f} MB at {n:,}, carried on in a line)"]
    for at in sizes:
        disk = at.cache_bytes * gb
        lines.append(f"  @{at.size}px: image cache {disk:.1f} GB on disk ({at.cache_bytes / 1e3:.1f} KB a photo), "
                     f"the RAM or GPU memory to hold it whole; built in {ABID_BINS / at.build_rate / 3600:.1f} h here "
                     f"({at.build_rate:.0f} img/s), ~{ABID_BINS / (at.build_rate / cores * 16) / 60:.0f} min on 16 "
                     f"cores if decoding scales with them")
        reads = ", ".join(f"{what} {ABID_BINS / rate / 60:.1f} min ({rate:.0f} img/s)"
                          for what, rate in at.read.items())
        lines.append(f"    one pass over the cache in batches of {READ_BATCH}, at the rates read here: {reads}")
    for name, rate in GPU_RATES.items():
        epoch, paper = ABID_BINS / rate / 60, PAPER_PHOTOS * PAPER_EPOCHS / rate / 60
        lines.append(f"  training at {rate:,} img/s a GPU ({name}): an epoch of all ABID {epoch:.1f} min on 1 GPU, "
                     f"{epoch / gpus:.1f} on {gpus}; the paper's {PAPER_EPOCHS} epochs of {PAPER_PHOTOS:,} photos "
                     f"{paper:.0f} min on 1, {paper / gpus:.0f} on {gpus} (if GPUs scale in a line)")
    fastest = max(GPU_RATES.values())
    feeds = "; ".join(f"{at.size} px: {at.read['cold'] / fastest:.1f} cold, {at.read['warm'] / fastest:.1f} from RAM"
                      for at in sizes)
    lines.append(f"  GPUs at the plain loop's {fastest:,} img/s that one reading process keeps fed: {feeds}")
    return lines


def _linked(data: Path, part: int) -> Path:
    """Bins 1..`part` of the collection `data`, hard-linked into a collection of their own."""
    folder = data.with_name(f"{data.name}-first-{part}")
    for sub in ("bin-images", "metadata"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(1, part + 1):
        for rel in (f"bin-images/{i}.jpg", f"metadata/{i}.json"):
            if not (folder / rel).exists():
                os.link(data / rel, folder / rel)
    return folder


def abid_rows(root: Path, n: int, sizes: list[int], gpus: int) -> None:
    """`--abid`: N generated photos of ABID's size and layout; their first load (and that of a quarter
    of them); at each size the cache built and read, a few training steps and COUNTED photos counted,
    each step in a fresh process; then `full_abid`."""
    from core.store.layout import cache_file, collection_folder, index_file

    data, store = root / f"abid-{n}-{ABID_PHOTO[0]}x{ABID_PHOTO[1]}", root / f"store-abid-{n}"
    started = time.perf_counter()
    generate(data, 1, n, photo=ABID_PHOTO)
    part = _linked(data, n // 4)
    _settle()
    photo_bytes = sum(p.stat().st_size for p in (data / "bin-images").iterdir()) / n
    print(f"{n} photos of {ABID_PHOTO[0]}x{ABID_PHOTO[1]} px ({photo_bytes / 1e3:.0f} KB) ready in "
          f"{time.perf_counter() - started:.0f} s: {data}", flush=True)
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    rows: list[tuple[str, ...]] = []

    def step(name: str, folder: Path, size: int, label: str) -> dict:
        result = run_step(name, folder, store, size)
        workers = f" (workers {result['worker_rss_mb']:.0f} MB)" if result["worker_rss_mb"] else ""
        rows.append((label, f"{result['seconds']:.1f} s", f"{result['rss_mb']:.0f} MB{workers}", result["note"]))
        print(f"  {rows[-1]}", flush=True)
        return result

    small = step(INDEX, part, sizes[0], f"{INDEX}, {n // 4} photos")
    whole = step(INDEX, data, sizes[0], f"{INDEX}, {n} photos")
    indexed = Indexed(n, whole["seconds"], whole["rss_mb"], index_file(collection_folder(data, store)).stat().st_size,
                      n // 4, small["seconds"], small["rss_mb"])
    measured = []
    for size in sizes:
        built = step(BUILD, data, size, f"{BUILD} @{size}px")
        read = step(READ, data, size, f"{READ} @{size}px")
        for name in (FEW, COUNT):
            step(name, data, size, f"{name} @{size}px")
        disk = cache_file(collection_folder(data, store), size).stat().st_blocks * 512  # on disk, not its length
        measured.append(AtSize(size, built["figures"]["decoded"] / built["seconds"], disk / built["figures"]["rows"],
                               read["figures"]))
    print_table(rows, header=("step", "wall time", "peak RSS", f"what ({n} photos)"))
    for line in full_abid(indexed, len(os.sched_getaffinity(0)), photo_bytes, measured, gpus):
        print(line)

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="photos in the synthetic collection")
    parser.add_argument("--root", type=Path, default=Path("/tmp/binsight-scale"), help="where collections are kept")
    parser.add_argument("--size", type=int, default=IMAGE_SIZE, help="cache resolution")
    parser.add_argument("--reconcile", action="store_true",
                        help=f"time train.py reconcile on {' and '.join(map(str, RECONCILE_BINS))} bins instead")
    parser.add_argument("--abid", action="store_true",
                        help=f"all of ABID ({ABID_BINS:,} photos) worked out from --n photos of its size at --sizes")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 160], help="cache sizes of --abid")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs of --abid's arithmetic, beside one")
    parser.add_argument("--step", choices=[*STEPS, *RECONCILE_STEPS, *ABID_STEPS], help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        return _child(args.step, args.root, args.store, args.size)
    if args.reconcile:
        return reconcile_rows(args.root, args.size)
    if args.abid:
        return abid_rows(args.root, args.n, args.sizes, args.gpus)

    data, store = args.root / f"abid-{args.n}", args.root / f"store-{args.n}"
    started = time.perf_counter()
    generate(data, 1, args.n)
    shutil.rmtree(store, ignore_errors=True)  # every run measures a first load and a first build
    for extra in sorted((data / "bin-images").glob("*.jpg"), key=lambda p: int(p.stem))[args.n:]:
        extra.unlink()  # the 1% added by an earlier run
        (data / "metadata" / f"{extra.stem}.json").unlink()
    _settle()
    print(f"collection of {args.n} photos ready in {time.perf_counter() - started:.0f} s: {data}")
    rows = []
    for name in STEPS:
        if name == "cache growth (+1%)":
            generate(data, args.n + 1, max(1, args.n // 100))
            _settle()
        result = run_step(name, data, store, args.size)
        rows.append((name, f"{result['seconds']:.2f} s",
                     f"{result['rss_mb']:.0f} MB" + (f" (workers {result['worker_rss_mb']:.0f} MB)"
                                                    if result["worker_rss_mb"] else ""), result["note"]))
    print_table(rows, header=("step", "wall time", "peak RSS", f"what ({args.n} photos, {args.size} px cache)"))
    disk = sum(p.stat().st_blocks * 512 for p in store.rglob("*") if p.is_file())
    photos = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    print(f"store on disk: {disk / 1e6:.1f} MB (index and cache); photos and metadata: {photos / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
