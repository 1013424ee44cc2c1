"""Fault injection: training killed with SIGKILL at many points, two processes training one
configuration at once, and the dashboard reading while training writes.

A kill can land while the cache is built, mid-epoch, while a checkpoint or the store is written:
the kill points are spread over a whole run (seeded), and each is followed by the same checks:
the store opens, nothing is shown as finished that did not finish, and a rerun finishes.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.config import PROJECT_ROOT
from core.data.synthetic import write_abid_collection
from core.store.database import Store
from dashboard.pages import PAGES
from tests.builders import open_page

PHASES = json.dumps([{"epochs": 2, "image_size": 32, "train_body": False, "lr": 1e-3},
                     {"epochs": 2, "image_size": 48, "lr": 1e-3}])
CNN = ["cnn", "--preset", "quick", "--quiet", "--set", f"phases={PHASES}", "batch_size=8", "lr_finder_steps=4"]
CLASSICAL = ["classical", "--features", "hog", "--model", "svc", "--grid", '{"C": [1, 10]}', "--image-size", "32",
             "--feature-params", '{"size": 32}', "--folds", "2", "--jobs", "1", "--quiet"]


def _start(args: list[str], data: Path, store: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "train.py", *args, "--data", str(data), "--store", str(store)],
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"})


def _finish(args: list[str], data: Path, store: Path) -> subprocess.CompletedProcess:
    proc = _start(args, data, store)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _assert_consistent(store_root: Path) -> None:
    """The store opens; every finished run has its figures and model files; no run is still 'running'."""
    store = Store(store_root)
    for exp in store.experiments():
        assert exp.status in ("finished", "failed", "interrupted"), exp.status
        if exp.status == "finished":
            assert exp.metrics and exp.calibration.fitted
            assert (store.artifact_dir(exp.id) / exp.artifact).is_file()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_abid_collection(tmp_path_factory.mktemp("faults") / "data", [c for c in range(6) for _ in range(6)])


def _seconds_of_a_clean_run(args: list[str], data: Path, tmp: Path) -> float:
    started = time.perf_counter()
    run = _finish(args, data, tmp / "clean")
    assert run.returncode == 0, run.stderr[-2000:]
    return time.perf_counter() - started


@pytest.mark.parametrize("args", [CNN, CLASSICAL], ids=["cnn", "classical"])
def test_a_run_killed_anywhere_leaves_a_consistent_store_and_a_rerun_finishes(args, data, tmp_path):
    length = _seconds_of_a_clean_run(args, data, tmp_path)
    rng = random.Random(1234)
    kill_points = sorted(rng.uniform(0.05, 0.95) * length for _ in range(3))  # cache build ... store writes
    for i, delay in enumerate(kill_points):
        store = tmp_path / f"store-{i}"
        proc = _start(args, data, store)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        if store.exists():
            _assert_consistent(store)
        rerun = _finish(args, data, store)
        assert rerun.returncode == 0, f"killed at {delay:.1f} s: {rerun.stderr[-2000:]}"
        _assert_consistent(store)
        finished = Store(store).experiments("finished")
        assert len(finished) == 1, f"killed at {delay:.1f} s: {[e.status for e in Store(store).experiments()]}"
        # a CNN run that had checkpointed continues in the same experiment rather than starting another
        assert len(Store(store).experiments()) == 1 or "cnn" not in args


def test_two_processes_training_one_configuration_train_it_once(data, tmp_path):
    store = tmp_path / "store"
    procs = [_start(CLASSICAL, data, store) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1000:] for _, err in outs]
    experiments = Store(store).experiments()
    assert len(experiments) == 1 and experiments[0].status == "finished"
    assert all(experiments[0].id in out for out, _ in outs)  # the second one served the first one's model


def test_the_dashboard_renders_every_page_while_training_writes(data, tmp_path, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.setenv("BINSIGHT_STORE", str(store))
    assert _finish(CLASSICAL, data, store).returncode == 0  # a model to show while the CNN trains
    proc = _start(CNN, data, store)
    try:
        renders = 0
        while proc.poll() is None and renders < 40:
            for page in PAGES:
                open_page(page.name)  # fails on any exception the page shows
                renders += 1
        assert renders >= len(PAGES)
    finally:
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert os.path.isfile(store / "experiments.sqlite")
    assert {e.status for e in Store(store).experiments()} == {"finished"}
