"""Collections in three layouts, bad input skipped and reported, stored stratified splits, cache."""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from core.data import DataError, load_collection, parse_count, stratified_split
from core.dataset import prepare_dataset
from tests.builders import bin_photo, requires_sample, write_abid_collection


def test_manifest_layout(tiny_collection):
    col = load_collection(tiny_collection)
    assert col.layout == "manifest"
    assert len(col.table) == 36 and sorted(col.table["count"].unique()) == list(range(6))
    assert col.skipped.empty


def test_abid_layout_reads_counts_and_items(tmp_path):
    root = write_abid_collection(tmp_path / "abid", [0, 2, 3, 7])
    col = load_collection(root)
    assert col.layout == "abid"
    assert dict(zip(col.table["image_id"], col.table["count"])) == {"1": 0, "2": 2, "3": 3}
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


def test_stratified_split_is_seeded_and_keeps_rare_classes_everywhere():
    counts = pd.Series([0] * 5 + [1] * 100 + [3] * 20)
    a = stratified_split(counts, (0.7, 0.2, 0.1), seed=3)
    assert (a == stratified_split(counts, (0.7, 0.2, 0.1), seed=3)).all()
    assert not (a == stratified_split(counts, (0.7, 0.2, 0.1), seed=4)).all()
    for cls in (0, 1, 3):
        assert set(a[counts.to_numpy() == cls]) == {"train", "val", "test"}
    ones = a[counts.to_numpy() == 1]
    assert (ones == "train").sum() == 70 and (ones == "val").sum() == 20
    with pytest.raises(ValueError):
        stratified_split(counts, (0.5, 0.2, 0.1))


def test_prepared_dataset_caches_images_and_stores_its_split(tiny_collection, store_root):
    ds = prepare_dataset(tiny_collection, image_size=32, progress=False)
    arr = ds.images(32)
    assert arr.shape == (36, 32, 32, 3) and arr.dtype == np.uint8
    assert ds.table["split"].value_counts().to_dict() == {"train": 24, "val": 6, "test": 6}
    split_files = list(ds.folder.glob("split_*.csv"))
    assert len(split_files) == 1
    # Same data, other call: the stored split and cache are reused, not recomputed.
    mtime = (ds.folder / "images_32.npy").stat().st_mtime_ns
    again = prepare_dataset(tiny_collection, image_size=32, progress=False)
    assert (ds.folder / "images_32.npy").stat().st_mtime_ns == mtime
    pd.testing.assert_series_equal(again.table.set_index("image_id")["split"], ds.table.set_index("image_id")["split"])
    prepare_dataset(tiny_collection, image_size=32, seed=99, progress=False)
    assert len(list(ds.folder.glob("split_*.csv"))) == 2  # another seed is another stored split
    x, y = again.arrays("test", 32)
    assert x.shape == (6, 32, 32, 3) and len(y) == 6


def test_changed_collection_gets_a_new_cache(tiny_collection, store_root):
    ds = prepare_dataset(tiny_collection, image_size=32, progress=False)
    before = ds.images(32)[ds.table.set_index("image_id").loc["c2_0", "row"]].copy()
    time.sleep(0.01)
    bin_photo(5, seed=12345).save(tiny_collection / "images" / "c2_0.jpg")
    changed = prepare_dataset(tiny_collection, image_size=32, progress=False)
    assert changed.fingerprint != ds.fingerprint
    after = changed.images(32)[changed.table.set_index("image_id").loc["c2_0", "row"]]
    assert not np.array_equal(before, after)


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

    col = load_collection(SHARED_SAMPLE)
    assert len(col.table) == 2649 and col.out_of_range == 174
    assert col.table["count"].value_counts().to_dict() == {1: 1204, 5: 693, 2: 365, 4: 304, 3: 71, 0: 12}
    with_items = col.table[col.table["items"] != ""]
    assert len(with_items) > 300 and with_items["items"].str.contains('"name"').any()
