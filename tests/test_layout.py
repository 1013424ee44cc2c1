"""The store's layout: the names an existing store has on disk, and the names read back."""
from __future__ import annotations

import hashlib

from core.store import layout


def test_paths_are_those_an_existing_store_has(tmp_path):
    data = tmp_path / "data"
    folder = layout.collection_folder(data, tmp_path)
    assert folder == tmp_path / "datasets" / hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:16]
    assert not folder.exists()  # computing a path writes nothing
    assert layout.cache_file(folder, 64) == folder / "images_64.u8"
    version = layout.version_dir(folder, "abc")
    assert layout.features_dir(version, 128) == folder / "versions" / "abc" / "features" / "128px"
    assert layout.run_lock(tmp_path, "e1") == tmp_path / "e1" / "run.lock"
    assert layout.database(tmp_path) == tmp_path / "experiments.sqlite"


def test_names_read_back_ignore_what_the_layout_did_not_write(tmp_path):
    folder = layout.collection_folder(tmp_path / "data", tmp_path)
    assert layout.collection_root(folder) is None and layout.cache_files(folder) == {}
    layout.record_collection_root(folder, tmp_path / "data")
    for name in ("images_16.u8", "images_224.u8", "images_16.npy", ".images_32.u8.x.tmp", "images_x.u8"):
        (folder / name).write_bytes(b"")
    assert layout.cache_files(folder) == {16: folder / "images_16.u8", 224: folder / "images_224.u8"}
    assert layout.collection_root(folder) == str((tmp_path / "data").resolve())
    assert layout.collection_folders(tmp_path) == [folder]
