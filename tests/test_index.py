"""The incremental collection index: a rescan re-reads only new or changed files, bad ones stay reported."""
from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest

import core.collection
import core.index
from core.collection import load_collection
from tests.builders import bin_photo, write_abid_collection


@pytest.fixture
def probes(monkeypatch) -> list[str]:
    """The image paths `load_collection` actually reads, in order."""
    seen: list[str] = []
    real = core.collection._probe
    monkeypatch.setattr(core.collection, "_probe",
                        lambda entry: seen.append(os.path.basename(entry.path)) or real(entry))
    return seen


def touch_later(path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_rescan_reads_only_new_changed_and_bad_files_once(tmp_path, probes):
    root = write_abid_collection(tmp_path / "abid", [1, 2, 3, 4, 5, 0])
    (root / "metadata" / "6.json").write_text("{not json")
    index = tmp_path / "index.arrow"
    first = load_collection(root, index=index)
    assert sorted(probes) == [f"{i}.jpg" for i in range(1, 7)]
    assert list(first.skipped["path"].str.rsplit("/", n=1).str[-1]) == ["6.jpg"]

    probes.clear()
    again = load_collection(root, index=index)
    assert probes == []  # nothing changed: nothing read
    assert again.table.equals(first.table) and again.skipped.equals(first.skipped)  # the bad file is still reported

    bin_photo(2, seed=99).save(root / "bin-images" / "7.jpg")  # new
    (root / "metadata" / "7.json").write_text(json.dumps({"EXPECTED_QUANTITY": 2}))
    (root / "metadata" / "2.json").write_text(json.dumps({"EXPECTED_QUANTITY": 4}))  # relabelled
    touch_later(root / "metadata" / "2.json")
    touch_later(root / "bin-images" / "3.jpg")  # modified image
    (root / "bin-images" / "1.jpg").unlink()  # removed
    (root / "metadata" / "1.json").unlink()
    probes.clear()
    changed = load_collection(root, index=index)
    assert sorted(probes) == ["2.jpg", "3.jpg", "7.jpg"]
    counts = dict(zip(changed.table["image_id"], changed.table["count"], strict=True))
    assert counts == {"2": 4, "3": 3, "4": 4, "5": 5, "7": 2}


def test_without_an_index_every_file_is_read(tmp_path, probes):
    root = write_abid_collection(tmp_path / "abid", [1, 2])
    load_collection(root)
    load_collection(root)
    assert len(probes) == 4 and not list(tmp_path.rglob("*.arrow"))


def test_a_photo_whose_file_vanishes_is_reported_and_forgotten(tmp_path, probes):
    root = write_abid_collection(tmp_path / "abid", [1, 2, 3])
    index = tmp_path / "index.arrow"
    load_collection(root, index=index)
    (root / "bin-images" / "2.jpg").unlink()
    col = load_collection(root, index=index)
    assert list(col.table["image_id"]) == ["1", "3"]  # no metadata-only ghost, no crash
    bin_photo(2, seed=2).save(root / "bin-images" / "2.jpg")
    probes.clear()
    assert len(load_collection(root, index=index).table) == 3 and probes == ["2.jpg"]


def test_item_lists_stay_in_the_index_until_asked_for(tmp_path, probes):
    root = write_abid_collection(tmp_path / "abid", [2, 0, 3])
    index = tmp_path / "index.arrow"
    lean = load_collection(root, index=index, items=False)
    assert "items" not in lean.table.columns and len(probes) == 3
    probes.clear()
    full = load_collection(root, index=index)  # items come from the index: no file is read again
    assert probes == []
    names = {i: [item["name"] for item in json.loads(s)]
             for i, s in zip(full.table["image_id"], full.table["items"], strict=True)}
    assert names == {"1": ["item 0", "item 1"], "2": [], "3": ["item 0", "item 1", "item 2"]}
    assert full.table.drop(columns="items").equals(lean.table)


def test_a_damaged_index_is_rebuilt_not_trusted(tmp_path, probes):
    root = write_abid_collection(tmp_path / "abid", [1, 2])
    index = tmp_path / "index.arrow"
    first = load_collection(root, index=index)
    index.write_bytes(b"not an arrow file")
    probes.clear()
    with pytest.warns(UserWarning, match="unreadable"):
        again = load_collection(root, index=index)
    assert sorted(probes) == ["1.jpg", "2.jpg"] and again.table.equals(first.table)
    probes.clear()
    load_collection(root, index=index)  # rewritten whole
    assert probes == []


def test_duplicate_ids_are_skipped_and_the_rest_indexed(tmp_path, probes):
    root = write_abid_collection(tmp_path / "abid", [1, 2])
    bin_photo(3, seed=5).save(root / "bin-images" / "1.png")  # a second photo with id 1
    index = tmp_path / "index.arrow"
    col = load_collection(root, index=index)
    assert list(col.table["image_id"]) == ["1", "2"]
    assert list(col.skipped["reason"]) == ["duplicate image id 1"]
    assert col.skipped["path"].iloc[0].endswith("1.png")


def test_stat_files_matches_os_stat_on_every_thread(tmp_path, monkeypatch):
    monkeypatch.setattr(core.index, "STAT_CHUNK", 3)  # several chunks: the threaded path
    paths = []
    for k in range(10):
        (tmp_path / f"{k}.bin").write_bytes(b"x" * k)
        paths.append(str(tmp_path / f"{k}.bin"))
    paths[4], paths[7] = None, str(tmp_path / "missing.bin")
    stamps = core.index.stat_files(pa.array(paths, pa.string()), workers=2)
    for path, (size, mtime) in zip(paths, stamps, strict=True):
        if path is None or not os.path.exists(path):
            assert (size, mtime) == (-1, -1)
        else:
            assert (size, mtime) == (os.stat(path).st_size, os.stat(path).st_mtime_ns)
