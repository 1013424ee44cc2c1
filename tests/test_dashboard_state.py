"""The dashboard's cached store reads follow the store: a new epoch shows on the next render."""
from __future__ import annotations

from core.store.database import Store
from dashboard import state


def test_cached_reads_see_new_writes(store_root, monkeypatch):
    store = Store()
    exp = store.start("live", "cnn", "efficientnet_lite0", {}, dataset="d", code_version=1)
    store.log_epoch(exp, 1, val_loss=1.0)
    assert list(state.epochs(exp)["epoch"]) == [1]
    assert list(state.epochs(exp)["epoch"]) == [1]  # served from the cache while nothing changed
    store.log_epoch(exp, 2, val_loss=0.9)
    store.log_lr_curve(exp, [1e-4, 1e-3], [2.0, 1.5], suggested=1e-3)
    assert list(state.epochs(exp)["epoch"]) == [1, 2]
    assert state.lr_curves(exp)[0]["suggested"] == 1e-3


def test_looking_at_a_missing_store_creates_none(tmp_path, monkeypatch):
    monkeypatch.setenv("BINSIGHT_STORE", str(tmp_path / "store"))
    assert state.experiments() == [] and not (tmp_path / "store").exists()
