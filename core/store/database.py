"""The experiment store: one SQLite file (WAL, so the dashboard reads while training writes)
plus one folder of model files per experiment.

An experiment is `running` while its process holds the run's lock file (an exclusive `flock`,
released by the kernel when the process dies, however it dies) and `interrupted` once the lock
is free without the run having said it finished or failed. A daemon thread refreshes the
heartbeat while the run lives; the heartbeat decides only where the lock file cannot be seen
(a run on another host without a shared artifact folder).

The schema carries `PRAGMA user_version`; `MIGRATIONS` bring an older store up to date.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.config import find_data_dir, store_dir
from core.evaluation.metrics import SplitFigures
from core.store import layout
from core.store.locks import exclusive_lock, lock_is_held
from core.store.records import COLUMN_FIELDS, Experiment, stored

SCHEMA_VERSION = 2
TABLES = """
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


def _migrate_to_1(db: sqlite3.Connection) -> None:
    """Schema 0 (the first release) -> 1: predictions per split, each run's split stored, typed details."""
    db.execute("ALTER TABLE predictions ADD COLUMN split TEXT NOT NULL DEFAULT 'test'")
    db.execute("CREATE TABLE IF NOT EXISTS experiment_images (experiment TEXT NOT NULL, image_id TEXT NOT NULL,"
               " split TEXT NOT NULL, PRIMARY KEY (experiment, image_id))")
    renamed = {"recipe": "recipe_notes", "images": "split_counts"}
    for exp_id, data_root, details in db.execute("SELECT id, data_root, details FROM experiments").fetchall():
        old = json.loads(details) if details else {}
        new = {renamed.get(k, k): v for k, v in old.items()}
        if isinstance(old.get("val"), dict):  # CNN runs kept their best epoch's "val_*" values
            new["val_metrics"] = {k.removeprefix("val_"): v for k, v in old["val"].items() if k.startswith("val_")}
        root = new.pop("root", None)
        db.execute("UPDATE experiments SET details = ?, data_root = ? WHERE id = ?",
                   (json.dumps(new), data_root or root or "", exp_id))


RECOUNT_TABLES = """
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, model TEXT NOT NULL, model_name TEXT NOT NULL,
    data_root TEXT, settings TEXT NOT NULL, totals TEXT, finished_at REAL, updated_at REAL
);
CREATE TABLE IF NOT EXISTS batch_bins (
    batch TEXT NOT NULL REFERENCES batches(id) ON DELETE CASCADE, image TEXT NOT NULL, image_id TEXT,
    path TEXT, content_hash TEXT, stored_copy TEXT, recorded INTEGER, predicted INTEGER, expected REAL,
    confidence REAL, probs TEXT, p_recorded REAL, p_mismatch REAL, flagged INTEGER NOT NULL DEFAULT 0,
    note TEXT NOT NULL DEFAULT '', error TEXT NOT NULL DEFAULT '', PRIMARY KEY (batch, image)
);
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, subject TEXT NOT NULL, image TEXT NOT NULL,
    outcome TEXT NOT NULL, count INTEGER, who TEXT NOT NULL, at REAL NOT NULL, note TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS reviews_subject ON reviews(kind, subject, image, id)
"""


def _migrate_to_2(db: sqlite3.Connection) -> None:
    """1 -> 2: reconciliation batches and their bins (`core.reconcile.batches`), and the append-only log of
    what people recorded about photos (`core.reconcile.review`)."""
    for statement in RECOUNT_TABLES.split(";"):
        if statement.strip():
            db.execute(statement)


MIGRATIONS = {1: _migrate_to_1, 2: _migrate_to_2}  # target version -> step from the version before
HEARTBEAT_S = 30.0
STALE_AFTER_S = 10 * HEARTBEAT_S  # no lock file to look at and no heartbeat for this long: interrupted


def config_key(family: str, model: str, params: dict, dataset: str, code_version: int, world_size: int = 1) -> str:
    """The identity of a training configuration on a data set: equal keys -> reuse the model.

    `code_version` is the family's training-code version (bumped when a change alters what a
    setting trains); `world_size` is the number of processes (a DDP run at the same per-process
    batch size trains with a different effective batch).
    """
    blob = json.dumps({"family": family, "model": model, "params": params, "dataset": dataset,
                       "code_version": code_version, "world_size": world_size}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class NoStoreError(FileNotFoundError):
    """`Store(root, create=False)` found no experiment store at `root`."""


class Store:
    def __init__(self, root: str | Path | None = None, *, create: bool = True):
        """Open the store at `root` (default `core.config.store_dir`), creating it if there is none.

        With `create` off (to read: the dashboard) nothing is created, neither by opening nor by
        any later call: no folder, no database file (`NoStoreError` if there is none, and every
        connection opens the file only if it exists) and no change of journal mode. A store of an older schema is
        still brought up to date, since the current code reads only that.
        """
        self.root = Path(root) if root else store_dir()
        self.path = layout.database(self.root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
            self._uri = str(self.path)  # not a "file:" URI: a plain file name, created if missing
            self._use_wal()
        elif not self.path.is_file():
            raise NoStoreError(f"no experiment store at {self.root} (no {self.path.name})")
        else:
            self._uri = f"{self.path.resolve().as_uri()}?mode=rw"  # never creates the file
        self._migrate()

    def _use_wal(self) -> None:
        """Put the database in write-ahead-log mode (persistent, so only a new store changes).

        Changing the journal mode needs an exclusive lock and SQLite does not wait for it, so two
        processes opening a new store at once could fail with "database is locked"; an flock
        around the change makes them take turns.
        """
        with closing(sqlite3.connect(self.path, timeout=30)) as db:
            if db.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
        with exclusive_lock(layout.journal_lock(self.root)):
            with closing(sqlite3.connect(self.path, timeout=30)) as db:
                db.execute("PRAGMA journal_mode=WAL")

    def _migrate(self) -> None:
        """Create or bring the schema up to date; a store already current is only read."""
        with self._connect() as db:
            if db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
                return
            db.execute("BEGIN IMMEDIATE")  # one process migrates; another opening at once waits, then sees it done
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} was written by a newer binsight (schema {version} > "
                                   f"{SCHEMA_VERSION}); upgrade binsight to read it")
            if version == SCHEMA_VERSION:
                return
            for statement in TABLES.split(";"):
                if statement.strip():
                    db.execute(statement)
            for target in range(version, SCHEMA_VERSION):  # a new store is an empty version-0 one
                MIGRATIONS[target + 1](db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self._uri, timeout=30, uri=True)) as db:
            db.row_factory = sqlite3.Row
            with db:  # commit on success, roll back on error
                yield db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (taken at once, so a read-check-write inside it is atomic)."""
        with self._connect() as db:
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("BEGIN IMMEDIATE")
            yield db

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads (rows as `sqlite3.Row`)."""
        with self._connect() as db:
            yield db

    def backup(self, target: str | Path) -> Path:
        """A consistent copy of the database while others write (SQLite's online backup API)."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self._uri, timeout=30, uri=True)) as source, \
                closing(sqlite3.connect(target)) as copy:
            source.backup(copy)
        return target

    # ---- runs ----------------------------------------------------------------------------
    def start(self, name: str, family: str, model: str, params: dict, dataset: str, *, code_version: int,
              world_size: int = 1, data_root: str = "", device: str = "cpu", weights: str = "",
              **details: Any) -> str:
        """A new `running` experiment; `details` are record fields (e.g. image_size=160)."""
        key = config_key(family, model, params, dataset, code_version, world_size)
        now = time.time()
        stem = f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{name}-{key[:6]}"
        row = (name, family, model, json.dumps(params, sort_keys=True), key, dataset, data_root, "running", now, now,
               socket.gethostname(), os.getpid(), device, weights, json.dumps(self._checked(details)))
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # the id check and the insert are one write
            taken = {r[0] for r in db.execute("SELECT id FROM experiments WHERE id = ? OR id LIKE ?",
                                               (stem, f"{stem}.%"))}
            # the same configuration started twice in one second (a retry, a second store user) gets a suffix
            exp_id = next(c for c in (stem, *(f"{stem}.{i}" for i in range(2, len(taken) + 2))) if c not in taken)
            db.execute(
                "INSERT INTO experiments (id, name, family, model, params, config_key, dataset, data_root,"
                " status, started_at, heartbeat, host, pid, device, weights, details)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", (exp_id, *row))
        self.artifact_dir(exp_id).mkdir(parents=True, exist_ok=True)
        return exp_id

    @contextmanager
    def running(self, exp_id: str) -> Iterator[None]:
        """Hold the run's lock and beat its heartbeat for the block; mark it failed if the block raises
        (Ctrl-C included). A process that dies releases the lock, so the run reads as interrupted."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                with self._connect() as db:
                    db.execute("UPDATE experiments SET heartbeat = ? WHERE id = ?", (time.time(), exp_id))

        with exclusive_lock(layout.run_lock(self.root, exp_id)):
            self._set_columns(exp_id, status="running", pid=os.getpid(), host=socket.gethostname(), error=None,
                              ended_at=None)
            thread = threading.Thread(target=beat, name=f"heartbeat {exp_id}", daemon=True)
            thread.start()
            try:
                yield
            except BaseException as err:
                self.fail(exp_id, f"{err.__class__.__name__}: {err}\n{traceback.format_exc(limit=5)}")
                raise
            finally:
                stop.set()
                thread.join()

    @contextmanager
    def claim(self, config: str) -> Iterator[None]:
        """Serialise training of one configuration across processes: the second waits for the first,
        then finds its finished result instead of training the same thing again."""
        with exclusive_lock(layout.claim_lock(self.root, config)):
            yield

    # ---- writing -------------------------------------------------------------------------
    @staticmethod
    def _checked(details: dict[str, Any]) -> dict[str, Any]:
        unknown = set(details) - set(Experiment.detail_fields())
        if unknown:
            raise TypeError(f"not fields of an experiment record: {sorted(unknown)}")
        return details

    def _set_columns(self, exp_id: str, **columns: Any) -> None:
        columns = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in columns.items()}
        columns["heartbeat"] = time.time()
        assignments = ", ".join(f"{k} = ?" for k in columns)
        with self._connect() as db:
            db.execute(f"UPDATE experiments SET {assignments} WHERE id = ?", (*columns.values(), exp_id))

    def record(self, exp_id: str, **fields: Any) -> None:
        """Set fields of the experiment's record (columns or details), in one transaction."""
        fields = {k: stored(v) for k, v in fields.items()}
        columns = {k: v for k, v in fields.items() if k in COLUMN_FIELDS}
        details = self._checked({k: v for k, v in fields.items() if k not in COLUMN_FIELDS})
        if columns:
            self._set_columns(exp_id, **columns)
        if details:
            with self._connect() as db:
                db.execute("BEGIN IMMEDIATE")  # read-modify-write without a lost update
                row = db.execute("SELECT details FROM experiments WHERE id = ?", (exp_id,)).fetchone()
                merged = {**(json.loads(row["details"]) if row and row["details"] else {}), **details}
                db.execute("UPDATE experiments SET details = ? WHERE id = ?", (json.dumps(merged), exp_id))

    def add_resume(self, exp_id: str, epoch: int) -> None:
        """Note that the run continued from a checkpoint after `epoch` epochs."""
        self.record(exp_id, resumed_from_epochs=[*self.experiment(exp_id).resumed_from_epochs, epoch])

    def log_epoch(self, exp_id: str, epoch: int, **values: float) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO epochs VALUES (?,?,?,?)",
                       (exp_id, epoch, json.dumps(values), time.time()))
            db.execute("UPDATE experiments SET heartbeat = ? WHERE id = ?", (time.time(), exp_id))

    def log_lr_curve(self, exp_id: str, lrs: Sequence[float], losses: Sequence[float], suggested: float | None,
                     name: str = "lr_finder") -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO lr_curves VALUES (?,?,?,?,?)",
                       (exp_id, name, json.dumps([float(x) for x in lrs]),
                        json.dumps([float(x) for x in losses]), suggested))

    def log_split(self, exp_id: str, image_ids: Sequence[str], splits: Sequence[str]) -> None:
        """The photos the run used and the split of each (train, val, test; or oof and test)."""
        with self._connect() as db:
            db.execute("DELETE FROM experiment_images WHERE experiment = ?", (exp_id,))
            db.executemany("INSERT INTO experiment_images VALUES (?,?,?)",
                           [(exp_id, str(i), str(s)) for i, s in zip(image_ids, splits, strict=True)])

    def log_predictions(self, exp_id: str, image_ids: Sequence[str], paths: Sequence[str],
                        true_counts: Sequence[int], probs: np.ndarray, split: str = "test",
                        pred_counts: Sequence[int] | np.ndarray | None = None) -> None:
        """Per-image probabilities and shown counts (default: the most probable) of one split (test,
        val or oof); replaces that split's earlier rows."""
        probs = np.asarray(probs, dtype=float)
        shown = probs.argmax(axis=1) if pred_counts is None else np.asarray(pred_counts, dtype=int)
        rows = [
            (exp_id, str(i), str(p), int(t), int(c), json.dumps([round(float(x), 5) for x in pr]), split)
            for i, p, t, c, pr in zip(image_ids, paths, true_counts, shown, probs, strict=True)
        ]
        with self._connect() as db:
            db.execute("DELETE FROM predictions WHERE experiment = ? AND split = ?", (exp_id, split))
            db.executemany("INSERT OR REPLACE INTO predictions"
                           " (experiment, image_id, path, true_count, pred_count, probs, split)"
                           " VALUES (?,?,?,?,?,?,?)", rows)

    def finish(self, exp_id: str, metrics: SplitFigures | None, **fields: Any) -> None:
        self.record(exp_id, metrics=metrics, status="finished", ended_at=time.time(), **fields)

    def fail(self, exp_id: str, error: str) -> None:
        self._set_columns(exp_id, status="failed", ended_at=time.time(), error=error)

    # ---- reading -------------------------------------------------------------------------
    def artifact_dir(self, exp_id: str) -> Path:
        return layout.artifact_dir(self.root, exp_id)

    def _effective_status(self, row: sqlite3.Row) -> str:
        if row["status"] != "running":
            return row["status"]
        held = lock_is_held(layout.run_lock(self.root, row["id"]))
        if held is not None:
            return "running" if held else "interrupted"
        return "running" if time.time() - (row["heartbeat"] or 0) < STALE_AFTER_S else "interrupted"

    def _decode(self, row: sqlite3.Row) -> Experiment:
        columns = dict(row)
        columns["status"] = self._effective_status(row)
        for col in ("params", "metrics"):
            columns[col] = json.loads(columns[col]) if columns[col] else {}
        columns["data_root"] = columns["data_root"] or ""
        return Experiment.from_row(columns, json.loads(row["details"]) if row["details"] else {})

    def experiment(self, exp_id: str) -> Experiment:
        with self._connect() as db:
            row = db.execute("SELECT * FROM experiments WHERE id = ?", (exp_id,)).fetchone()
        if row is None:
            raise KeyError(f"no experiment {exp_id!r} in {self.path}")
        return self._decode(row)

    def experiments(self, status: str | None = None) -> list[Experiment]:
        """All experiments, newest first (optionally only those with this effective status)."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM experiments ORDER BY started_at DESC").fetchall()
        exps = [self._decode(r) for r in rows]
        return [e for e in exps if status is None or e.status == status]

    def find_finished(self, key: str) -> str | None:
        """The newest finished experiment with this configuration key, if any."""
        with self._connect() as db:
            row = db.execute("SELECT id FROM experiments WHERE config_key = ? AND status = 'finished'"
                             " ORDER BY started_at DESC LIMIT 1", (key,)).fetchone()
        return row["id"] if row else None

    def best(self, data_root: str | Path | None = None) -> str | None:
        """The model with the highest validation (or, if cross-validated, out-of-fold) balanced
        accuracy, among finished models on `data_root` (all data when None). Test figures play no part."""
        return best_of(self.experiments("finished"), data_root)

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

    def split(self, exp_id: str) -> pd.DataFrame:
        """(image_id, split) of every photo the run used; empty for runs that did not record it."""
        with self._connect() as db:
            rows = db.execute("SELECT image_id, split FROM experiment_images WHERE experiment = ?",
                              (exp_id,)).fetchall()
        return pd.DataFrame([dict(r) for r in rows], columns=["image_id", "split"])

    def predictions(self, exp_id: str, split: str = "test") -> pd.DataFrame:
        with self._connect() as db:
            rows = db.execute("SELECT image_id, path, true_count, pred_count, probs FROM predictions"
                              " WHERE experiment = ? AND split = ?", (exp_id, split)).fetchall()
        frame = pd.DataFrame([dict(r) for r in rows], columns=["image_id", "path", "true_count", "pred_count", "probs"])
        frame["probs"] = frame["probs"].map(json.loads)
        frame["confidence"] = [p[c] if 0 <= c < len(p) else float("nan")
                               for p, c in zip(frame["probs"], frame["pred_count"], strict=True)]
        return frame


def same_root(a: str | Path, b: str | Path) -> bool:
    """Whether two data folders are the same folder (paths compared resolved)."""
    return Path(a).resolve() == Path(b).resolve()


def selection_score(exp: Experiment) -> float | None:
    """What `best` ranks a model by: its validation (or out-of-fold) balanced accuracy, if recorded."""
    figures = exp.selection_metrics
    return None if figures is None else figures.balanced_accuracy


def best_of(experiments: Sequence[Experiment], data_root: str | Path | None = None) -> str | None:
    """`Store.best` over an already-read list (the dashboard's cached one)."""
    scored = [(score, e.id) for e in experiments if e.is_model and (score := selection_score(e)) is not None
              and (data_root is None or same_root(e.data_root, data_root))]
    return max(scored, key=lambda pair: pair[0])[1] if scored else None


def best_rule(data_root: str | Path | None = None) -> str:
    """How `best` was chosen, in words, for the CLI and the dashboard."""
    where = f" on {data_root}" if data_root else ""
    return (f"best = highest validation balanced accuracy (out-of-fold for cross-validated models) "
            f"among finished models{where}; test figures play no part in the choice")


def data_in_use(experiments: Sequence[Experiment], asked: str | Path | None = None) -> str | None:
    """The data `best` is chosen on, for the CLI and the dashboard alike: `asked` (a --data folder)
    if finished models were trained on it, else the default data folder (`core.config.find_data_dir`)
    if they were, else the data of the newest finished model; None when there is no finished model.
    Models trained on other data are never ranked against them: their figures are not comparable."""
    for root in (asked, find_data_dir()):
        if root is not None and best_of(experiments, root):
            return str(root)
    models = [e for e in experiments if e.is_model]
    return max(models, key=lambda e: e.started_at).data_root or None if models else None
