"""A tiny experiment store filled by real training runs, shared by the dashboard's test modules.

Generated photos in ABID's own layout (36, six per count, item names in their metadata), trained
for seconds: CNN runs at 32 px whose phases start
with the LR finder (so pages have curves and LR sweeps), a standalone LR sweep (a finished
experiment without test metrics, which model pickers must leave out) and classical models.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from core.classical import train_classical
from core.cnn import find_lr, train_cnn
from core.store import Store
from tests.conftest import write_abid_collection

CNN_TINY = {"batch_size": 8, "lr_finder_steps": 8, "patience": 5}
CLASSICAL_TINY = {"image_size": 32, "feature_params": {"size": 32}, "folds": 3, "n_jobs": 1, "progress": False}
_BUILT: dict[str, Path] = {}  # one build per test session, whichever module asks first


def build_trained_store(root: Path) -> Path:
    """Train the tiny experiments into `root/store` (data in `root/data`); returns the store folder."""
    data = write_abid_collection(root / "data", [count for count in range(6) for _ in range(6)])
    store = Store(root / "store")
    train_cnn(data, "quick", store, progress=False, overrides={
        **CNN_TINY, "phases": [{"epochs": 1, "image_size": 32, "train_body": False},
                               {"epochs": 1, "image_size": 32, "differential": True}]})
    train_cnn(data, "quick", store, progress=False, overrides={
        **CNN_TINY, "phases": [{"epochs": 2, "image_size": 32, "train_body": False, "lr": 3e-3}]})
    find_lr(data, "quick", store, progress=False, overrides={**CNN_TINY, "phases": [{"epochs": 1, "image_size": 32}]})
    train_classical(data, "hog", "svc", store=store, grid={"C": [1, 10]}, **CLASSICAL_TINY)
    train_classical(data, "raw", "logreg", store=store, grid={"C": [1]}, **CLASSICAL_TINY)
    return store.root


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory) -> Path:
    if "store" not in _BUILT:
        _BUILT["store"] = build_trained_store(tmp_path_factory.mktemp("dashboard"))
    return _BUILT["store"]
