"""The experiment store: one SQLite file (WAL, so the dashboard reads while training writes)
plus one folder of model files per experiment.

An experiment is `running` until it finishes or fails; one whose process died without saying
so is reported as `interrupted`, never as finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
import traceback
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import store_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, family TEXT NOT NULL, model TEXT NOT NULL,
    params TEXT NOT NULL, config_key TEXT NOT NULL, dataset TEXT NOT NULL, data_root TEXT,
    split TEXT, status TEXT NOT NULL, started_at REAL NOT NULL, ended_at REAL, heartbeat REAL,
    host TEXT, pid INTEGER, device TEXT, weights TEXT, metrics TEXT, details TEXT, error TEXT
);
CREATE INDEX IF NOT EXISTS experiments_key ON experiments(config_key, status);
CREATE TABLE IF NOT EXISTS epochs (
    experiment TEXT NOT NULL, epoch INTEGER NOT NULL, values_json TEXT NOT NULL, logged_at REAL,
    PRIMARY KEY (experiment, epoch)
);
CREATE TABLE IF NOT EXISTS lr_curves (
    experiment TEXT NOT NULL, name TEXT NOT NULL, lrs TEXT NOT NULL, losses TEXT NOT NULL,
    suggested REAL, PRIMARY KEY (experiment, name)
);
CREATE TABLE IF NOT EXISTS predictions (
    experiment TEXT NOT NULL, image_id TEXT NOT NULL, path TEXT, true_count INTEGER,
    pred_count INTEGER, probs TEXT, PRIMARY KEY (experiment, image_id)
);
"""
STALE_AFTER_S = 15 * 60  # a run on another host with no heartbeat for this long is interrupted


def config_key(family: str, model: str, params: dict, dataset: str) -> str:
    """The identity of a training configuration on a data set: equal keys -> reuse the model."""
    blob = json.dumps({"family": family, "model": model, "params": params, "dataset": dataset}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else store_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "experiments.sqlite"
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.row_factory = sqlite3.Row
            with db:  # commit on success, roll back on error
                yield db

    # ---- writing -------------------------------------------------------------------------
    def start(self, name: str, family: str, model: str, params: dict, dataset: str,
              data_root: str = "", split: str = "", device: str = "cpu", weights: str = "") -> str:
        key = config_key(family, model, params, dataset)
        now = time.time()
        exp_id = f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{name}-{key[:6]}"
        with self._connect() as db:
            db.execute(
                "INSERT INTO experiments (id, name, family, model, params, config_key, dataset, data_root, split,"
                " status, started_at, heartbeat, host, pid, device, weights) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (exp_id, name, family, model, json.dumps(params, sort_keys=True), key, dataset, data_root, split,
                 "running", now, now, socket.gethostname(), os.getpid(), device, weights),
            )
        self.artifact_dir(exp_id).mkdir(parents=True, exist_ok=True)
        return exp_id

    def update(self, exp_id: str, **fields) -> None:
        """Set columns (device, weights, details, ...); dicts are stored as JSON. Also a heartbeat."""
        fields = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in fields.items()}
        fields["heartbeat"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._connect() as db:
            db.execute(f"UPDATE experiments SET {cols} WHERE id = ?", (*fields.values(), exp_id))

    def log_epoch(self, exp_id: str, epoch: int, **values: float) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO epochs VALUES (?,?,?,?)",
                       (exp_id, epoch, json.dumps(values), time.time()))
            db.execute("UPDATE experiments SET heartbeat = ? WHERE id = ?", (time.time(), exp_id))

    def log_lr_curve(self, exp_id: str, lrs, losses, suggested: float | None, name: str = "lr_finder") -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO lr_curves VALUES (?,?,?,?,?)",
                       (exp_id, name, json.dumps([float(x) for x in lrs]),
                        json.dumps([float(x) for x in losses]), suggested))

    def log_predictions(self, exp_id: str, image_ids, paths, true_counts, probs: np.ndarray) -> None:
        """Per-image test predictions; the predicted count is the most probable class."""
        probs = np.asarray(probs, dtype=float)
        rows = [
            (exp_id, str(i), str(p), int(t), int(np.argmax(pr)), json.dumps([round(float(x), 5) for x in pr]))
            for i, p, t, pr in zip(image_ids, paths, true_counts, probs)
        ]
        with self._connect() as db:
            db.execute("DELETE FROM predictions WHERE experiment = ?", (exp_id,))
            db.executemany("INSERT INTO predictions VALUES (?,?,?,?,?,?)", rows)

    def finish(self, exp_id: str, metrics: dict, **fields) -> None:
        self.update(exp_id, metrics=metrics, status="finished", ended_at=time.time(), **fields)

    def fail(self, exp_id: str, error: str) -> None:
        self.update(exp_id, status="failed", ended_at=time.time(), error=error)

    @contextmanager
    def failing_on_error(self, exp_id: str) -> Iterator[None]:
        """Mark the experiment failed (with the traceback) if the block raises, Ctrl-C included."""
        try:
            yield
        except BaseException as err:
            self.fail(exp_id, f"{err.__class__.__name__}: {err}\n{traceback.format_exc(limit=5)}")
            raise

    # ---- reading -------------------------------------------------------------------------
    def artifact_dir(self, exp_id: str) -> Path:
        return self.root / exp_id

    def _effective_status(self, row: sqlite3.Row) -> str:
        if row["status"] != "running":
            return row["status"]
        if row["host"] == socket.gethostname():
            return "running" if row["pid"] and _pid_alive(row["pid"]) else "interrupted"
        return "running" if time.time() - (row["heartbeat"] or 0) < STALE_AFTER_S else "interrupted"

    def _decode(self, row: sqlite3.Row) -> dict:
        exp = dict(row)
        exp["status"] = self._effective_status(row)
        for col in ("params", "metrics", "details"):
            exp[col] = json.loads(exp[col]) if exp[col] else {}
        return exp

    def experiment(self, exp_id: str) -> dict:
        with self._connect() as db:
            row = db.execute("SELECT * FROM experiments WHERE id = ?", (exp_id,)).fetchone()
        if row is None:
            raise KeyError(f"no experiment {exp_id!r} in {self.path}")
        return self._decode(row)

    def experiments(self, status: str | None = None) -> list[dict]:
        """All experiments, newest first (optionally only those with this effective status)."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM experiments ORDER BY started_at DESC").fetchall()
        exps = [self._decode(r) for r in rows]
        return [e for e in exps if status is None or e["status"] == status]

    def find_finished(self, family: str, model: str, params: dict, dataset: str) -> str | None:
        """The newest finished experiment with exactly this configuration on this data, if any."""
        key = config_key(family, model, params, dataset)
        with self._connect() as db:
            row = db.execute("SELECT id FROM experiments WHERE config_key = ? AND status = 'finished'"
                             " ORDER BY started_at DESC LIMIT 1", (key,)).fetchone()
        return row["id"] if row else None

    def best(self, metric: str = "balanced_accuracy") -> str | None:
        """The finished experiment with the highest test `metric`."""
        finished = self.experiments("finished")
        scored = [e for e in finished if e["metrics"].get(metric) is not None]
        return max(scored, key=lambda e: e["metrics"][metric])["id"] if scored else None

    def epochs(self, exp_id: str) -> pd.DataFrame:
        with self._connect() as db:
            rows = db.execute("SELECT epoch, values_json FROM epochs WHERE experiment = ? ORDER BY epoch",
                              (exp_id,)).fetchall()
        return pd.DataFrame([{"epoch": r["epoch"], **json.loads(r["values_json"])} for r in rows])

    def lr_curves(self, exp_id: str) -> list[dict]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM lr_curves WHERE experiment = ?", (exp_id,)).fetchall()
        return [{"name": r["name"], "lrs": json.loads(r["lrs"]), "losses": json.loads(r["losses"]),
                 "suggested": r["suggested"]} for r in rows]

    def predictions(self, exp_id: str) -> pd.DataFrame:
        with self._connect() as db:
            rows = db.execute("SELECT image_id, path, true_count, pred_count, probs FROM predictions"
                              " WHERE experiment = ?", (exp_id,)).fetchall()
        frame = pd.DataFrame([dict(r) for r in rows], columns=["image_id", "path", "true_count", "pred_count", "probs"])
        frame["probs"] = frame["probs"].map(json.loads)
        frame["confidence"] = frame["probs"].map(max)
        return frame
