"""Reconciliation streamed chunk by chunk into a sink: the same report as in memory, resumed after an
interruption without judging a bin twice, and the store's batch as the command line's one sink
(each photo hashed from the bytes it was counted from, the report written from the batch in chunks)."""
from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import core.reconcile.stream
from core.counting.service import load_counter
from core.data.synthetic import bin_jpeg, write_abid_collection
from core.reconcile.batches import (
    BatchSink,
    append_bins,
    batch_bins,
    batch_report,
    batch_settings,
    finish_batch,
    open_batch,
    resume_or_open,
    write_batch_report,
)
from core.reconcile.inventory import REPORT_COLUMNS, finish_report, read_records, reconcile, report_totals, write_report
from core.reconcile.stream import (
    JudgedChunk,
    judge_chunks,
    read_photo,
    reconcile_into,
    records_digest,
    skipped_records,
)
from core.store.database import Store
from core.store.files import content_hash, file_hash
from train import main


@pytest.fixture(scope="module")
def counter(trained_store):
    return load_counter("best", Store(trained_store))


def _records(n: int) -> tuple[pd.DataFrame, dict[str, bytes]]:
    images = {f"b{i}.jpg": bin_jpeg(i % 6, seed=i) for i in range(n)}
    images["broken.jpg"] = b"nope"
    csv = "image,recorded_quantity\n" + "".join(f"b{i}.jpg,{(i * 7) % 6}\n" for i in range(n))
    return read_records((csv + "broken.jpg,2\nmissing.jpg,1\nb1.jpg,2.5\nb2.jpg,8\n").encode()), images


def _on_disk(images: dict[str, bytes], folder: Path) -> dict[str, Path]:
    """The photos as files of a data folder, as `core.reconcile.inventory.records_from_folder` gives them."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in images}


class ListSink:
    """A sink that keeps chunks in a list and can fail after some, like a run killed midway."""

    def __init__(self, fail_after: int | None = None):
        self.chunks: list[JudgedChunk] = []
        self.fail_after = fail_after

    def write(self, chunk: JudgedChunk) -> None:
        if self.fail_after is not None and len(self.chunks) == self.fail_after:
            raise KeyboardInterrupt
        self.chunks.append(chunk)

    def rows(self) -> pd.DataFrame:
        return pd.concat([c.rows for c in self.chunks])


def test_streamed_chunks_make_the_same_report_as_in_memory(counter):
    records, images = _records(20)
    sink = ListSink()
    assert reconcile_into(sink, counter, records, images, chunk_size=7) == len(records)
    assert [len(c.rows) for c in sink.chunks] == [7, 7, 7, 3]
    rows = sink.rows()
    assert list(rows.index) == list(range(len(records)))  # every record once, by position
    streamed = finish_report(rows, budget="25%")
    pd.testing.assert_frame_equal(streamed, reconcile(counter, records, images, budget="25%"), check_dtype=False)
    hashes = {name: digest for c in sink.chunks for name, digest in c.hashes.items()}
    assert hashes == {name: content_hash(data) for name, data in images.items()}  # every photo counted, hashed


def test_a_photo_is_read_once_for_counting_and_hashing(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(bin_jpeg(2, seed=1))
    assert read_photo(path) == (path.read_bytes(), file_hash(path))
    assert read_photo(b"abc") == (b"abc", content_hash(b"abc"))
    assert read_photo(tmp_path / "gone.jpg") == (tmp_path / "gone.jpg", "")  # the decoder says why


def test_an_interrupted_run_resumes_after_the_chunks_it_kept(counter):
    records, images = _records(20)
    sink = ListSink(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        reconcile_into(sink, counter, records, images, chunk_size=5)
    done = set(sink.rows().index)
    assert done == set(range(10))
    sink.fail_after = None
    assert reconcile_into(sink, counter, records, images, done=done, chunk_size=5) == len(records) - 10
    rows = sink.rows()
    assert sorted(rows.index) == list(range(len(records)))
    pd.testing.assert_frame_equal(finish_report(rows), reconcile(counter, records, images), check_dtype=False)
    assert list(judge_chunks(counter, records, images, done=set(range(len(records))))) == []


def test_a_batch_resumes_only_with_the_same_settings_and_keeps_one_row_per_bin(counter, tmp_path):
    records, photos = _records(8)
    images = _on_disk(photos, tmp_path / "data")
    store = Store(tmp_path / "store")
    settings = {**batch_settings(counter, 0.2, 0.5, None), "records": records_digest(records)}
    where = {"model": counter.exp_id, "model_name": counter.name, "data_root": str(tmp_path / "data")}
    batch, stored = resume_or_open(store, settings=settings, **where)
    assert stored == set()
    BatchSink(store, batch, images).write(next(judge_chunks(counter, records, images, chunk_size=4)))  # then killed
    again, stored = resume_or_open(store, settings=settings, **where)
    assert again == batch and stored == {"b0.jpg", "b1.jpg", "b2.jpg", "b3.jpg"}
    other, nothing = resume_or_open(store, settings={**settings, "records": "something else"}, **where)
    assert other != batch and nothing == set()
    skipped = skipped_records(records, stored)
    assert skipped == {0, 1, 2, 3, len(records) - 2, len(records) - 1}  # done, and b1.jpg / b2.jpg named again
    reconcile_into(BatchSink(store, batch, images), counter, records, images, skipped, chunk_size=4)
    finish_batch(store, batch)
    first = records[~records["image"].duplicated()].reset_index(drop=True)
    pd.testing.assert_frame_equal(batch_report(store, batch), reconcile(counter, first, images), check_dtype=False)
    bins = batch_bins(store, batch).set_index("image")
    assert bins.at["b5.jpg", "content_hash"] == file_hash(images["b5.jpg"])
    assert bins.at["b5.jpg", "path"] == str(images["b5.jpg"].resolve())
    assert bins.at["missing.jpg", "content_hash"] == "" and bins.at["missing.jpg", "path"] == ""
    assert resume_or_open(store, settings=settings, **where)[0] not in (batch, other)  # finished: not resumed


@pytest.mark.parametrize("suffix", ["csv", "json"])
def test_the_report_written_from_a_batch_in_chunks_is_the_report_of_every_row(counter, tmp_path, suffix):
    records, photos = _records(10)
    images = _on_disk(photos, tmp_path / "data")
    store = Store(tmp_path / "store")
    batch = open_batch(store, model=counter.exp_id, model_name=counter.name,
                       settings=batch_settings(counter, 0.2, 0.5, "30%"))
    first = records[~records["image"].duplicated()].reset_index(drop=True)
    rows = ListSink()
    reconcile_into(rows, counter, first, images, chunk_size=4)
    for chunk in rows.chunks:
        BatchSink(store, batch, images).write(chunk)
    finish_batch(store, batch)
    settings = {"model": counter.exp_id, "note": "as given"}
    streamed, whole = tmp_path / f"streamed.{suffix}", tmp_path / f"whole.{suffix}"
    write_batch_report(store, batch, streamed, settings, chunk_size=3)
    write_report(finish_report(rows.rows(), budget="30%"), whole, settings)
    if suffix == "json":
        assert json.loads(streamed.read_text()) == json.loads(whole.read_text())
    else:
        pd.testing.assert_frame_equal(pd.read_csv(streamed), pd.read_csv(whole), check_dtype=False)


@pytest.mark.parametrize("n", [0, 3])
def test_the_json_report_keeps_its_format(tmp_path, n):
    """Written a row at a time, the JSON report is the very text of one `json.dumps` of it all."""
    report = finish_report(pd.DataFrame([{"image": f"b{i}.jpg", "recorded_quantity": i, "p_mismatch": i / 4,
                                          "probs": [0.5, 0.5], "note": "", "error": ""} for i in range(n)],
                                        columns=REPORT_COLUMNS))
    write_report(report, tmp_path / "r.json", {"model": "m"})
    expected = json.dumps({"settings": {"model": "m"}, "totals": report_totals(report).to_dict(),
                           "bins": json.loads(report.to_json(orient="records"))}, indent=2)
    assert (tmp_path / "r.json").read_text() == expected


def _report_peak(tmp_path: Path, bins: int) -> int:
    """Peak Python memory (bytes) of writing the JSON report of a finished batch of `bins` bins."""
    store = Store(tmp_path / f"store-{bins}")
    batch = open_batch(store, model="m", model_name="tiny", settings={"prior_wrong": 0.2, "budget": None})
    rng = np.random.default_rng(0)
    for start in range(0, bins, 1000):
        p = rng.random(min(1000, bins - start)).round(4)
        append_bins(store, batch, pd.DataFrame({
            "image": [f"bin-{start + i}.jpg" for i in range(len(p))], "recorded_quantity": 2, "predicted_count": 2,
            "expected_count": 2.0, "confidence": 0.9, "p_recorded": 0.9, "p_mismatch": p, "mismatch": p > 0.5,
            "note": "", "error": "", "probs": [[0.1, 0.2, 0.7]] * len(p)}))
    finish_batch(store, batch)
    tracemalloc.start()
    try:
        write_batch_report(store, batch, tmp_path / f"report-{bins}.json", chunk_size=500)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_writing_a_batchs_report_takes_the_same_memory_for_ten_times_the_bins(tmp_path):
    large = _report_peak(tmp_path, 20_000)  # first: whatever the first write sets up counts against it
    small = _report_peak(tmp_path, 2_000)
    assert large < 1.2 * small, (small, large)


def test_reconcile_cli_resumes_an_interrupted_run_without_counting_its_bins_again(trained_store, tmp_path,
                                                                                 monkeypatch, capsys):
    data = write_abid_collection(tmp_path / "data", [i % 6 for i in range(12)])
    records = tmp_path / "recorded.csv"
    records.write_text("image,recorded_quantity\n" + "".join(f"bin-images/{i}.jpg,{i % 6}\n" for i in range(1, 13)))

    def run(out: Path) -> None:
        main(["reconcile", "--data", str(data), "--records", str(records), "--out", str(out),
              "--store", str(trained_store)])

    run(tmp_path / "whole.json")
    expected = json.loads((tmp_path / "whole.json").read_text())
    real_write = BatchSink.write

    def killed_after_five(sink: BatchSink, chunk: JudgedChunk) -> None:
        """The run is killed once the first five bins are kept."""
        kept = chunk.rows.iloc[:5]
        real_write(sink, JudgedChunk(kept, {image: chunk.hashes[image] for image in kept["image"]}))
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(BatchSink, "write", killed_after_five)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "resumed.json")
    assert not (tmp_path / "resumed.json").exists()
    capsys.readouterr()
    read = []
    monkeypatch.setattr(core.reconcile.stream, "read_photo", lambda source: read.append(source) or read_photo(source))
    run(tmp_path / "resumed.json")
    assert "resuming: 5 of 12 bins already judged" in capsys.readouterr().out
    assert len(read) == 7  # only the bins not kept were counted
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed == expected
