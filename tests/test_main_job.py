"""`make run`'s data-and-training part: the default suite trains once, then is served from the store."""
from __future__ import annotations

import json
import subprocess
import sys

from core.config import PROJECT_ROOT
from core.data.synthetic import write_manifest_collection
from core.store.database import Store

CNN_SMALL = {"batch_size": 8, "lr_finder_steps": 8,
             "phases": [{"epochs": 1, "image_size": 32, "train_body": False}, {"epochs": 1, "image_size": 32}]}
CLASSICAL_SMALL = {"image_size": 32, "feature_params": {"size": 32}, "folds": 3, "n_jobs": 1}


def suite(data, store):
    return subprocess.run(
        [sys.executable, "train.py", "suite", "--data", str(data), "--cnn-overrides", json.dumps(CNN_SMALL),
         "--classical-overrides", json.dumps(CLASSICAL_SMALL)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
        env={"BINSIGHT_STORE": str(store), "PATH": "/usr/bin:/bin"})


def test_default_suite_trains_once_then_retrains_nothing(tmp_path):
    data = write_manifest_collection(tmp_path / "data", per_class=5)
    store = tmp_path / "store"
    first = suite(data, store)
    assert first.returncode == 0, first.stderr[-3000:]
    finished = Store(store).experiments("finished")
    mixes = [e for e in finished if e.family == "ensemble"]  # recorded only where a mix holds on validation
    trained = [e for e in finished if e.family != "ensemble"]
    assert {e.family for e in trained} == {"classical", "cnn", "lr_finder"} and len(trained) == 4 and len(mixes) <= 1
    assert all(e.calibration.fitted for e in finished if e.is_model)  # calibrated when they were trained
    assert Store(store).lr_curves(next(e.id for e in finished if e.family == "lr_finder"))  # the LR page has a curve
    assert first.stdout.count("trained in") == 4 + len(mixes)
    assert first.stdout.splitlines()[-1].startswith("ensemble")  # the suite ends by saying whether a mix was kept
    cnn = next(e for e in finished if e.family == "cnn")
    assert cnn.params["frozen_stages"] and list((store / "datasets").glob("*/frozen-features/*.npy"))  # from the cache

    second = suite(data, store)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("already in the store") == 4 + len(mixes) and "trained in" not in second.stdout
    assert len(Store(store).experiments()) == 4


def test_suite_without_data_tells_how_to_download(tmp_path):
    run = subprocess.run([sys.executable, "train.py", "suite", "--data", str(tmp_path / "nowhere")],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                         env={"BINSIGHT_STORE": str(tmp_path / "store"), "PATH": "/usr/bin:/bin"})
    assert run.returncode != 0 and "data folder not found" in run.stderr
    assert "python train.py download" in run.stderr and "Traceback" not in run.stderr
