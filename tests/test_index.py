"""The incremental collection index: a rescan re-reads only new or changed files, bad ones stay reported."""
from __future__ import annotations

import json
import os
import warnings

import pyarrow as pa
import pytest

import core.data.collection
import core.data.index
import core.store.files
from core.data.collection import load_collection
from core.data.synthetic import bin_photo, write_abid_collection, write_manifest_collection
from tests.builders import settle_folders


@pytest.fixture
def probes(monkeypatch) -> list[str]:
    """The image paths `load_collection` actually reads, in order."""
    seen: list[str] = []
    real = core.data.collection._probe
    monkeypatch.setattr(core.data.collection, "_probe",
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
    monkeypatch.setattr(core.data.index, "STAT_CHUNK", 3)  # several chunks: the threaded path
    paths = []
    for k in range(10):
        (tmp_path / f"{k}.bin").write_bytes(b"x" * k)
        paths.append(str(tmp_path / f"{k}.bin"))
    paths[4], paths[7] = None, str(tmp_path / "missing.bin")
    stamps = core.data.index.stat_files(pa.array(paths, pa.string()), workers=2)
    for path, (size, mtime) in zip(paths, stamps, strict=True):
        if path is None or not os.path.exists(path):
            assert (size, mtime) == (-1, -1)
        else:
            assert (size, mtime) == (os.stat(path).st_size, os.stat(path).st_mtime_ns)


@pytest.fixture
def stats(monkeypatch) -> list[int]:
    """How many files each `stat_files` call of `load_collection` stats."""
    calls: list[int] = []
    real = core.data.index.stat_files
    monkeypatch.setattr(core.data.index, "stat_files", lambda paths, *a, **k: calls.append(len(paths)) or real(paths))
    return calls


def counts_of(root, index, **kwargs) -> dict[str, int]:
    table = load_collection(root, index=index, **kwargs).table
    return dict(zip(table["image_id"], table["count"], strict=True))


def test_an_unchanged_rescan_of_settled_folders_stats_no_file(tmp_path, probes, stats):
    root = write_abid_collection(tmp_path / "abid", [1, 2, 3])
    settle_folders(root / "bin-images", root / "metadata")
    index = tmp_path / "index.arrow"
    first = load_collection(root, index=index)
    assert sum(stats) == 6  # the first load stats every image and metadata file
    stats.clear(), probes.clear()
    again = load_collection(root, index=index)
    assert stats == [] and probes == []
    assert again.table.equals(first.table)


def test_files_added_removed_or_replaced_by_rename_are_seen(tmp_path, probes):
    root = write_abid_collection(tmp_path / "abid", [1, 2, 3])
    index = tmp_path / "index.arrow"
    settle_folders(root / "bin-images", root / "metadata")
    load_collection(root, index=index)
    bin_photo(4, seed=9).save(root / "bin-images" / "4.jpg")
    (root / "metadata" / "4.json").write_text(json.dumps({"EXPECTED_QUANTITY": 4}))
    assert counts_of(root, index) == {"1": 1, "2": 2, "3": 3, "4": 4}
    settle_folders(root / "bin-images", root / "metadata")
    load_collection(root, index=index)
    (root / "bin-images" / "1.jpg").unlink()
    assert counts_of(root, index) == {"2": 2, "3": 3, "4": 4}
    settle_folders(root / "bin-images", root / "metadata")
    load_collection(root, index=index)
    (root / "metadata" / "tmp").write_text(json.dumps({"EXPECTED_QUANTITY": 5}))  # how the downloader writes
    os.replace(root / "metadata" / "tmp", root / "metadata" / "2.json")
    probes.clear()
    assert counts_of(root, index) == {"2": 5, "3": 3, "4": 4} and probes == ["2.jpg"]


def test_an_edit_in_place_is_seen_only_with_recheck(tmp_path, probes, stats):
    root = write_abid_collection(tmp_path / "abid", [1, 2, 3])
    index = tmp_path / "index.arrow"
    settle_folders(root / "bin-images", root / "metadata")
    load_collection(root, index=index)
    with open(root / "metadata" / "2.json", "w") as fh:  # same file, new content: the folder does not change
        json.dump({"EXPECTED_QUANTITY": 5}, fh)
    assert counts_of(root, index) == {"1": 1, "2": 2, "3": 3}  # trusted, so not seen
    stats.clear(), probes.clear()
    assert counts_of(root, index, recheck=True) == {"1": 1, "2": 5, "3": 3}
    assert sum(stats) == 6 and probes == ["2.jpg"]
    stats.clear()
    assert counts_of(root, index) == {"1": 1, "2": 5, "3": 3} and stats == []  # the index learnt it


def test_a_folder_changed_just_before_the_scan_is_not_trusted(tmp_path, stats):
    root = write_abid_collection(tmp_path / "abid", [1, 2, 3])
    index = tmp_path / "index.arrow"
    load_collection(root, index=index)  # the folders were written within the margin of this scan
    stats.clear()
    load_collection(root, index=index)
    assert sum(stats) == 6  # a file written in the same tick as the scan could hide behind an unchanged mtime


def test_only_files_in_changed_folders_are_stated(tmp_path, stats):
    root = write_manifest_collection(tmp_path / "data", per_class=1)
    (root / "more").mkdir()
    bin_photo(2, seed=7).save(root / "more" / "x.jpg")
    with open(root / "manifest.csv", "a") as fh:
        fh.write("more/x.jpg,2,\n")
    settle_folders(root / "images", root / "more")
    index = tmp_path / "index.arrow"
    load_collection(root, index=index)
    bin_photo(3, seed=8).save(root / "more" / "y.jpg")  # changes more/, not images/
    stats.clear()
    assert len(load_collection(root, index=index).table) == 7
    assert stats == [1, 1]  # more/x.jpg (and its missing metadata): not the six in images/


def test_an_index_without_folder_stamps_still_loads(tmp_path, probes, stats):
    root = write_abid_collection(tmp_path / "abid", [1, 2])
    settle_folders(root / "bin-images", root / "metadata")
    index = tmp_path / "index.arrow"
    first = load_collection(root, index=index)
    table = pa.ipc.open_file(index.read_bytes()).read_all()  # a copy: the file is overwritten below
    assert table.schema.metadata  # this layout has them
    older = table.replace_schema_metadata(None)
    with pa.OSFile(str(index), "wb") as sink, pa.ipc.new_file(sink, older.schema) as writer:
        writer.write_table(older)
    stats.clear(), probes.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = load_collection(root, index=index)
    assert again.table.equals(first.table) and probes == [] and sum(stats) == 4  # stat'ed, nothing read
    stats.clear()
    load_collection(root, index=index)  # stamps recorded by the load before
    assert stats == []


def test_an_index_of_another_layout_is_read_again(tmp_path, probes):
    root = write_abid_collection(tmp_path / "abid", [1, 2])
    index = tmp_path / "index.arrow"
    load_collection(root, index=index)
    table = pa.ipc.open_file(index.read_bytes()).read_all().drop_columns(["digest"])
    with pa.OSFile(str(index), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    probes.clear()
    with pytest.warns(UserWarning, match="another layout"):
        load_collection(root, index=index)
    assert sorted(probes) == ["1.jpg", "2.jpg"]


def test_a_read_only_store_is_warned_about_and_loading_works_on(tmp_path, monkeypatch):
    root = write_abid_collection(tmp_path / "abid", [1, 2])

    def refuse(*args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(core.store.files.tempfile, "mkstemp", refuse)
    with pytest.warns(UserWarning, match="not updated"):
        col = load_collection(root, index=tmp_path / "index.arrow")
    assert len(col.table) == 2 and not (tmp_path / "index.arrow").exists()


def test_an_index_rewrite_that_fails_midway_keeps_the_old_index(tmp_path, monkeypatch):
    root, index = write_abid_collection(tmp_path / "abid", [1, 2]), tmp_path / "index.arrow"
    load_collection(root, index=index)
    before = index.read_bytes()
    write_abid_collection(root, [3])  # bin 1 now holds 3 items: its files are read again and the index rewritten

    def full(self, part):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pa.ipc.RecordBatchFileWriter, "write_table", full)
    with pytest.warns(UserWarning, match="not updated"):
        col = load_collection(root, index=index)
    assert sorted(col.table["count"]) == [2, 3] and index.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
