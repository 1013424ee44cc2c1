"""Outcomes are people's work: a process recording them killed with SIGKILL at any moment loses at
most the outcome being written, and an import killed midway records all of its rows or none."""
from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pandas as pd

from core.config import PROJECT_ROOT
from core.reconcile.batches import append_bins, open_batch
from core.reconcile.inventory import REPORT_COLUMNS
from core.reconcile.review import history
from core.store.database import Store

BINS = 40
RECORDER = """
import sys
from core.reconcile.review import Review, record_review
from core.store.database import Store
store, batch = Store(sys.argv[1]), sys.argv[2]
k = 0
while True:
    entry = record_review(store, Review("recount", batch, f"bin-{k % 40:03d}.jpg", "recounted", "ann", k % 5,
                                        note=f"entry {k}"))
    print(entry, flush=True)
    k += 1
"""


def batch_of(store: Store) -> str:
    batch = open_batch(store, model="m", model_name="tiny", settings={"prior_wrong": 0.2, "budget": None})
    append_bins(store, batch, pd.DataFrame({
        "image": [f"bin-{k:03d}.jpg" for k in range(BINS)], "recorded_quantity": 1, "predicted_count": 2,
        "expected_count": 2.0, "confidence": 0.5, "p_recorded": 0.2, "p_mismatch": np.linspace(0.9, 0.1, BINS),
        "mismatch": True, "note": "", "error": "", "probs": [[0.1, 0.2, 0.5, 0.2]] * BINS}, columns=REPORT_COLUMNS))
    return batch


def test_recording_killed_at_any_moment_loses_at_most_the_outcome_being_written(tmp_path):
    rng = random.Random(19)
    store = Store(tmp_path / "store")
    batch = batch_of(store)
    for delay in sorted(rng.uniform(0.05, 1.0) for _ in range(4)):
        before = len(history(store, "recount", batch))
        proc = subprocess.Popen([sys.executable, "-c", RECORDER, str(store.root), batch], cwd=PROJECT_ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = proc.stdout.readline()  # recording is under way (however slowly the process started)
        assert first.strip(), proc.stderr.read()[-1000:]
        time.sleep(delay)  # then killed at some moment of the stream of writes
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        confirmed = [int(line) for line in (first + out).split()]
        with sqlite3.connect(store.path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        entries = history(Store(store.root), "recount", batch)
        ids = entries["id"].tolist()
        assert set(confirmed) <= set(ids)  # every outcome the writer was told is kept is there
        assert len(ids) - before - len(confirmed) in (0, 1)  # at most the one in flight, committed before its print
        assert ids == list(range(1, len(ids) + 1))  # no hole, no torn entry
        assert entries["note"].str.match(r"^entry \d+$").all() and entries["who"].eq("ann").all()


def test_an_import_killed_midway_records_all_of_its_rows_or_none(tmp_path):
    store = Store(tmp_path / "store")
    batch = batch_of(store)
    rows = "\n".join(f"{batch},bin-{k % BINS:03d}.jpg,{k % 5}" for k in range(BINS))
    (tmp_path / "recounts.csv").write_text("batch,image,recounted\n" + rows + "\n")
    totals = []
    for delay in (0.3, 4.0):
        proc = subprocess.Popen([sys.executable, "train.py", "recount", "import", str(tmp_path / "recounts.csv"),
                                 "--store", str(store.root)], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        totals.append(len(history(Store(store.root), "recount", batch)))
    assert all(total % BINS == 0 for total in totals), totals  # whole imports only
    assert totals[0] == 0 and totals == sorted(totals), totals  # the first kill lands before anything is written
    done = subprocess.run([sys.executable, "train.py", "recount", "import", str(tmp_path / "recounts.csv"),
                           "--store", str(store.root)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(history(store, "recount", batch)) == totals[-1] + BINS
