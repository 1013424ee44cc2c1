"""Collections in three layouts, bad input skipped and reported, stable grouped splits, cache."""
from __future__ import annotations

import csv
import json
import struct
import time
import zlib
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from core.data.collection import DataError, load_collection, parse_count
from core.data.dataset import assign_splits, prepare_dataset, recheck_collection
from core.data.synthetic import bin_photo, write_abid_collection, write_manifest_collection
from tests.builders import requires_sample, settle_folders


def test_manifest_layout(tiny_collection):
    col = load_collection(tiny_collection)
    assert col.layout == "manifest"
    assert len(col.table) == 36 and sorted(col.table["count"].unique()) == list(range(6))
    assert col.skipped.empty


def test_abid_layout_reads_counts_and_items(tmp_path):
    root = write_abid_collection(tmp_path / "abid", [0, 2, 3, 7])
    col = load_collection(root)
    assert col.layout == "abid"
    assert dict(zip(col.table["image_id"], col.table["count"], strict=True)) == {"1": 0, "2": 2, "3": 3}
    assert col.out_of_range == 1  # the bin with 7 items is outside 0..5
    items = json.loads(col.table.set_index("image_id").loc["3", "items"])
    assert [i["name"] for i in items] == ["item 0", "item 1", "item 2"]


def test_max_count_is_a_parameter(tmp_path):
    root = write_abid_collection(tmp_path / "abid", [0, 2, 3, 7])
    assert len(load_collection(root, max_count=7).table) == 4


def test_count_named_folders(tmp_path):
    for count in (0, 1, 3):
        (tmp_path / str(count)).mkdir()
        bin_photo(count, seed=count).save(tmp_path / str(count) / f"bin{count}.jpg")
    (tmp_path / "notes").mkdir()  # not a count: ignored
    col = load_collection(tmp_path)
    assert col.layout == "folders" and sorted(col.table["count"]) == [0, 1, 3]


def test_bad_input_is_skipped_and_reported(tmp_path):
    root = write_abid_collection(tmp_path / "abid", [1, 2, 3, 4, 5])
    (root / "metadata" / "1.json").write_text("{not json")
    (root / "metadata" / "2.json").unlink()
    (root / "metadata" / "3.json").write_text(json.dumps({"EXPECTED_QUANTITY": -2}))
    (root / "bin-images" / "4.jpg").write_bytes(b"")
    col = load_collection(root)
    assert list(col.table["image_id"]) == ["5"]
    reasons = " ".join(col.skipped["reason"])
    for expected in ("invalid metadata JSON", "no metadata JSON", "non-negative", "empty file"):
        assert expected in reasons


def test_manifest_rows_outside_root_or_with_bad_counts_are_skipped(tiny_collection):
    outside = tiny_collection.parent / "outside.jpg"
    bin_photo(1, seed=1).save(outside)
    with open(tiny_collection / "manifest.csv", "a") as fh:
        fh.write("../outside.jpg,1,\n")
        fh.write(f"{outside},1,\n")
        fh.write("images/c1_0.jpg,two,\n")
        fh.write("images/c1_1.jpg,2.5,\n")
        fh.write("images/missing.jpg,1,\n")
    col = load_collection(tiny_collection)
    assert len(col.table) == 36 and len(col.skipped) == 5
    assert col.skipped["reason"].str.contains("outside the data root").sum() == 1
    assert col.skipped["reason"].str.contains("relative").sum() == 1


def test_collection_with_no_usable_image_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.csv").write_text("file,count\nimages/none.jpg,1\n")
    with pytest.raises(DataError, match="no usable image"):
        load_collection(tmp_path)
    with pytest.raises(DataError, match="not a bin-photo collection"):
        load_collection(tmp_path / "..")


@pytest.mark.parametrize("value, expected", [("3", 3), (3, 3), ("4.0", 4), (" 2 ", 2)])
def test_parse_count_accepts_integers(value, expected):
    assert parse_count(value) == expected


@pytest.mark.parametrize("value", ["", "x", "-1", "2.5", True])
def test_parse_count_rejects_the_rest(value):
    with pytest.raises(ValueError):
        parse_count(value)


def test_splits_are_a_pure_function_of_group_and_seed():
    groups = [f"abid:{i}" for i in range(4000)]
    a = assign_splits(groups, (0.7, 0.2, 0.1), seed=3)
    assert (a == assign_splits(groups, (0.7, 0.2, 0.1), seed=3)).all()
    assert (a[1000:] == assign_splits(groups[1000:], (0.7, 0.2, 0.1), seed=3)).all()  # others don't matter
    assert (a != assign_splits(groups, (0.7, 0.2, 0.1), seed=4)).mean() > 0.3
    shares = pd.Series(a).value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.03 and abs(shares["val"] - 0.2) < 0.03 and abs(shares["test"] - 0.1) < 0.03
    assert set(assign_splits(groups, (0.8, 0.2, 0.0))) == {"train", "val"}
    with pytest.raises(ValueError):
        assign_splits(groups, (0.5, 0.2, 0.1))


def test_adding_photos_moves_no_existing_photo(tiny_collection, store_root):
    before = prepare_dataset(tiny_collection, image_size=32, progress=False).table.set_index("image_id")["split"]
    with open(tiny_collection / "manifest.csv", "a") as fh:
        for k in range(40):
            bin_photo(k % 6, seed=50_000 + k).save(tiny_collection / "images" / f"new_{k}.jpg")
            fh.write(f"images/new_{k}.jpg,{k % 6},\n")
    after = prepare_dataset(tiny_collection, image_size=32, progress=False).table.set_index("image_id")["split"]
    assert len(after) == len(before) + 40
    pd.testing.assert_series_equal(after.loc[before.index], before)


def test_same_original_id_or_same_bytes_land_together(tmp_path, store_root):
    root = tmp_path / "dups"
    (root / "images").mkdir(parents=True)
    lines = ["file,count,original_id,sha256"]
    for k in range(60):  # pairs sharing an ABID id, pairs sharing the manifest's hash, byte-identical pairs
        bin_photo(1, seed=k).save(root / "images" / f"id{k}.jpg")
        bin_photo(1, seed=1000 + k).save(root / "images" / f"id{k}_v2.jpg")
        lines += [f"images/id{k}.jpg,1,{k},", f"images/id{k}_v2.jpg,1,{k},"]
        bin_photo(2, seed=2000 + k).save(root / "images" / f"h{k}.jpg")
        bin_photo(2, seed=3000 + k).save(root / "images" / f"h{k}_copy.jpg")
        lines += [f"images/h{k}.jpg,2,,hash{k}", f"images/h{k}_copy.jpg,2,,HASH{k}"]
        bin_photo(3, seed=4000 + k).save(root / "images" / f"b{k}.jpg")
        (root / "images" / f"b{k}_copy.jpg").write_bytes((root / "images" / f"b{k}.jpg").read_bytes())
        lines += [f"images/b{k}.jpg,3,,", f"images/b{k}_copy.jpg,3,,"]
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    split = prepare_dataset(root, image_size=16, progress=False).table.set_index("image_id")["split"]
    for prefix, suffix in (("id", "_v2"), ("h", "_copy"), ("b", "_copy")):
        firsts = split[[f"{prefix}{k}" for k in range(60)]].to_numpy()
        assert (firsts == split[[f"{prefix}{k}{suffix}" for k in range(60)]].to_numpy()).all()
        assert len(set(firsts)) > 1  # the pairs are spread over the splits, so sharing one is not by chance


def test_prepared_dataset_caches_images_and_splits_by_group(tiny_collection, store_root, monkeypatch):
    ds = prepare_dataset(tiny_collection, image_size=32, progress=False)
    arr = ds.images(32)
    assert arr.shape == (36, 32, 32, 3) and arr.dtype == np.uint8
    assert list(ds.table.columns) == ["image_id", "path", "count", "group", "split", "row"]  # items: load_collection
    assert ds.table["group"].str.startswith("sha256:").all()  # no ABID id in this manifest: content hashes
    assert (ds.table["split"] == assign_splits(ds.table["group"], seed=0)).all()
    assert not list(ds.cache_folder.rglob("split_*.csv"))  # nothing stored: the split is recomputed, identically
    # Same data, other call: nothing is read or decoded again, the split is the same.
    monkeypatch.setattr("core.data.cache.load_rgb", fail_if_called)
    monkeypatch.setattr("core.data.collection._probe", fail_if_called)
    again = prepare_dataset(tiny_collection, image_size=32, progress=False)
    assert again.fingerprint == ds.fingerprint and again.folder == ds.folder
    pd.testing.assert_frame_equal(again.table, ds.table)
    other_seed = prepare_dataset(tiny_collection, image_size=32, seed=99, progress=False)
    assert (other_seed.table["split"] != ds.table["split"]).any()


def fail_if_called(*args, **kwargs):
    raise AssertionError("read or decoded a photo that had not changed")


def test_batches_stream_a_split_from_the_cache(tiny_collection, store_root):
    ds = prepare_dataset(tiny_collection, image_size=16, progress=False)
    test = ds.split("test")
    parts = list(ds.batches("test", 16, batch_size=2))
    assert [len(x) for x, _ in parts] == [2] * (len(test) // 2) + ([1] if len(test) % 2 else [])
    images, counts = np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])
    np.testing.assert_array_equal(images, ds.images(16)[ds.rows("test")])
    np.testing.assert_array_equal(counts, test["count"].to_numpy())
    assert all(type(x) is np.ndarray and x.dtype == np.uint8 for x, _ in parts)  # copies, not views of the map
    with pytest.raises(ValueError):
        next(ds.batches("test", 16, batch_size=0))


def test_export_split_writes_image_id_and_split(tiny_collection, store_root, tmp_path, capsys):
    import train

    out = tmp_path / "split.csv"
    train.main(["prepare", "--data", str(tiny_collection), "--size", "16", "--export-split", str(out)])
    exported = pd.read_csv(out, dtype=str)
    assert list(exported.columns) == ["image_id", "split"] and len(exported) == 36
    ds = prepare_dataset(tiny_collection, image_size=16, progress=False)
    assert (dict(zip(exported["image_id"], exported["split"], strict=True))
            == dict(zip(ds.table["image_id"], ds.table["split"], strict=True)))
    assert "split of 36 photos" in capsys.readouterr().out


def test_a_changed_photo_is_read_and_decoded_again_alone(tiny_collection, store_root, monkeypatch):
    ds = prepare_dataset(tiny_collection, image_size=32, progress=False)
    old_row = ds.table.set_index("image_id").loc["c2_0", "row"]
    before = ds.images(32)[old_row].copy()
    time.sleep(0.01)
    bin_photo(5, seed=12345).save(tiny_collection / "images" / "c2_0.jpg")
    decoded = []
    real = __import__("core.data.cache", fromlist=["load_rgb"]).load_rgb
    monkeypatch.setattr("core.data.cache.load_rgb", lambda path, size: decoded.append(path) or real(path, size))
    changed = prepare_dataset(tiny_collection, image_size=32, progress=False)
    assert changed.fingerprint != ds.fingerprint and changed.cache_folder == ds.cache_folder
    assert decoded == [str(tiny_collection / "images" / "c2_0.jpg")]
    new_row = changed.table.set_index("image_id").loc["c2_0", "row"]
    assert new_row != old_row
    assert not np.array_equal(before, changed.images(32)[new_row])
    np.testing.assert_array_equal(changed.images(32)[old_row], before)  # rows are never rewritten


def test_truncated_jpeg_is_dropped_at_cache_time(tiny_collection, store_root):
    path = tiny_collection / "images" / "c3_0.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    ds = prepare_dataset(tiny_collection, image_size=32, progress=False)
    assert "c3_0" not in set(ds.table["image_id"])
    assert ds.collection.skipped["reason"].str.contains("truncated").any()


@requires_sample
def test_shared_sample_loads_with_counts_0_to_5(store_root):
    from core.config import SHARED_SAMPLE

    with open(SHARED_SAMPLE / "manifest.csv", newline="") as fh:  # what the sample says of itself
        rows = list(csv.DictReader(fh))
    expected = Counter(int(r["count"]) for r in rows if int(r["count"]) <= 5)
    col = load_collection(SHARED_SAMPLE)
    assert len(col.table) == sum(expected.values()) and col.out_of_range == len(rows) - sum(expected.values())
    assert col.table["count"].value_counts().to_dict() == dict(expected)
    assert set(expected) == set(range(6))
    with_metadata = sum(1 for r in rows if r["metadata"] and int(r["count"]) <= 5)
    with_items = col.table[col.table["items"] != ""]
    assert len(with_items) == with_metadata and with_items["items"].str.contains('"name"').any()


@requires_sample
def test_shared_sample_splits_keep_abid_bins_together(store_root):
    from core.config import SHARED_SAMPLE

    table = load_collection(SHARED_SAMPLE).table.set_index("image_id")
    split = pd.Series(assign_splits(table["group"]), index=table.index)
    assert table.loc["dandresky__521", "group"] == table.loc["dandresky__521_v2", "group"] == "abid:521"
    assert split["dandresky__521"] == split["dandresky__521_v2"]
    shares = split.value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.04 and abs(shares["val"] - 0.2) < 0.04 and abs(shares["test"] - 0.1) < 0.04


def header_only_png(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels but holds none: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_prepare_skips_and_reports_a_decompression_bomb(tiny_collection, store_root, capsys):
    import train

    (tiny_collection / "images" / "bomb.png").write_bytes(header_only_png(20_000, 20_000))  # 400 MP
    with open(tiny_collection / "manifest.csv", "a") as fh:
        fh.write("images/bomb.png,2,\n")
    train.main(["prepare", "--data", str(tiny_collection), "--size", "16"])
    out = capsys.readouterr().out
    assert json.loads(out[: out.index("\n}") + 2])["images"] == 36
    assert "bomb.png: image too large" in out


def test_counts_are_whole_numbers_whatever_the_layout(tmp_path):
    """Counts read from metadata (ABID layout) and from a manifest are integers, not floats."""
    abid = load_collection(write_abid_collection(tmp_path / "abid", [0, 1, 2]))
    manifest = load_collection(write_manifest_collection(tmp_path / "manifest", per_class=1))
    for table in (abid.table, manifest.table):
        assert table["count"].dtype == np.int64


def test_recheck_collection_lets_later_loads_see_edits_in_place(tmp_path):
    root = write_abid_collection(tmp_path / "abid", [1, 2, 3])
    settle_folders(root / "bin-images", root / "metadata")
    store = tmp_path / "store"
    assert len(prepare_dataset(root, image_size=32, store_root=store, progress=False).table) == 3
    (root / "metadata" / "3.json").write_text(json.dumps({"EXPECTED_QUANTITY": 9}))  # in place: out of range now
    assert len(prepare_dataset(root, image_size=32, store_root=store, progress=False).table) == 3
    recheck_collection(root, store)
    assert len(prepare_dataset(root, image_size=32, store_root=store, progress=False).table) == 2
