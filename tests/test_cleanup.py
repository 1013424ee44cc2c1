"""`train.py gc`: caches no experiment uses are removed and reported; used ones stay."""
from __future__ import annotations

import train
from core.data.dataset import prepare_dataset
from core.data.synthetic import write_abid_collection
from core.store.database import Store


def test_gc_removes_only_what_no_experiment_uses(tmp_path, store_root, capsys):
    used_root = write_abid_collection(tmp_path / "used", [0, 1, 2, 3])
    other_root = write_abid_collection(tmp_path / "other", [1, 2])
    used = prepare_dataset(used_root, image_size=16, progress=False)
    used.images(24)  # a second size that no experiment reads
    other = prepare_dataset(other_root, image_size=16, progress=False)
    (store_root / "datasets" / "0123456789abcdef").mkdir()  # the older per-fingerprint layout
    (store_root / "datasets" / "0123456789abcdef" / "images_16.npy").write_bytes(b"x" * 5000)
    (used.cache_folder / "versions" / "stale").mkdir(parents=True)
    store = Store(store_root)
    exp_id = store.start("m", "classical", "svc", {}, used.fingerprint, code_version=1, data_root=str(used_root))
    store.record(exp_id, image_size=16, status="finished")

    train.main(["gc", "--dry-run"])
    assert "would remove" in capsys.readouterr().out and other.cache_folder.exists()
    train.main(["gc"])
    out = capsys.readouterr().out
    assert not other.cache_folder.exists() and not (store_root / "datasets" / "0123456789abcdef").exists()
    assert not (used.cache_folder / "images_24.u8").exists() and not (used.cache_folder / "versions" / "stale").exists()
    assert (used.cache_folder / "images_16.u8").exists() and (used.cache_folder / "index.arrow").exists()
    assert out.count("removed") == 4 and "freed" in out
    again = prepare_dataset(used_root, image_size=16, progress=False)
    assert again.images(24).shape == (4, 24, 24, 3) and again.images(24).any()  # a removed size is decoded afresh
    train.main(["gc"])
    assert "freed 0.0 MB in 1 caches" in capsys.readouterr().out  # the size-24 cache just rebuilt goes again


def test_gc_keeps_every_size_a_cnn_recipe_reads(tmp_path, store_root, capsys):
    """Progressive resizing reads the earlier phases' sizes too, not only the final one."""
    root = write_abid_collection(tmp_path / "data", [0, 1, 2])
    data = prepare_dataset(root, image_size=16, progress=False)
    data.images(24)
    store = Store(store_root)
    params = {"phases": [{"epochs": 1, "image_size": 16}, {"epochs": 1, "image_size": 24}]}
    exp_id = store.start("cnn", "cnn", "m", params, data.fingerprint, code_version=1, data_root=str(root))
    store.record(exp_id, image_size=24, status="finished")
    train.main(["gc"])
    assert (data.cache_folder / "images_16.u8").exists() and (data.cache_folder / "images_24.u8").exists()
