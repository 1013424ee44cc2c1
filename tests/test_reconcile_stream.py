"""Reconciliation streamed chunk by chunk into a sink: the same report as in memory, resumed after an
interruption without judging a bin twice, and the command line's partial report."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from core.predict import load_counter
from core.reconcile import finish_report, read_records, reconcile
from core.reconcile_stream import PartialReport, judge_chunks, reconcile_into, records_digest
from core.store import Store
from tests.builders import bin_jpeg, run_cli, write_abid_collection


@pytest.fixture(scope="module")
def counter(trained_store):
    return load_counter("best", Store(trained_store))


def _records(n: int) -> tuple[pd.DataFrame, dict[str, bytes]]:
    images = {f"b{i}.jpg": bin_jpeg(i % 6, seed=i) for i in range(n)}
    images["broken.jpg"] = b"nope"
    csv = "image,recorded_quantity\n" + "".join(f"b{i}.jpg,{(i * 7) % 6}\n" for i in range(n))
    return read_records((csv + "broken.jpg,2\nmissing.jpg,1\nb1.jpg,2.5\nb2.jpg,8\n").encode()), images


class ListSink:
    """A sink that keeps chunks in a list and can fail after some, like a run killed midway."""

    def __init__(self, fail_after: int | None = None):
        self.chunks: list[pd.DataFrame] = []
        self.fail_after = fail_after

    def write(self, rows: pd.DataFrame) -> None:
        if self.fail_after is not None and len(self.chunks) == self.fail_after:
            raise KeyboardInterrupt
        self.chunks.append(rows)


def test_streamed_chunks_make_the_same_report_as_in_memory(counter):
    records, images = _records(20)
    sink = ListSink()
    assert reconcile_into(sink, counter, records, images, chunk_size=7) == len(records)
    assert [len(c) for c in sink.chunks] == [7, 7, 7, 3]
    rows = pd.concat(sink.chunks)
    assert list(rows.index) == list(range(len(records)))  # every record once, by position
    streamed = finish_report(rows, budget="25%")
    pd.testing.assert_frame_equal(streamed, reconcile(counter, records, images, budget="25%"), check_dtype=False)


def test_an_interrupted_run_resumes_after_the_chunks_it_kept(counter):
    records, images = _records(20)
    sink = ListSink(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        reconcile_into(sink, counter, records, images, chunk_size=5)
    done = set(pd.concat(sink.chunks).index)
    assert done == set(range(10))
    sink.fail_after = None
    assert reconcile_into(sink, counter, records, images, done=done, chunk_size=5) == len(records) - 10
    rows = pd.concat(sink.chunks)
    assert sorted(rows.index) == list(range(len(records)))
    pd.testing.assert_frame_equal(finish_report(rows), reconcile(counter, records, images), check_dtype=False)
    assert list(judge_chunks(counter, records, images, done=set(range(len(records))))) == []


def test_partial_report_resumes_only_with_the_same_settings(counter, tmp_path):
    records, images = _records(8)
    settings = {"model": counter.exp_id, "records": records_digest(records)}
    partial = PartialReport(tmp_path / "report.csv", settings)
    assert not partial.resumed and partial.done() == set()
    first = next(judge_chunks(counter, records, images, chunk_size=4))
    partial.write(first)
    with open(partial.path, "a") as fh:
        fh.write('{"record": 4, "image": "b4.j')  # a line cut off by the interruption
    again = PartialReport(tmp_path / "report.csv", settings)
    assert again.resumed and again.done() == {0, 1, 2, 3}
    reconcile_into(again, counter, records, images, done=again.done(), chunk_size=4)
    pd.testing.assert_frame_equal(finish_report(again.rows()), reconcile(counter, records, images),
                                  check_dtype=False)
    other = PartialReport(tmp_path / "report.csv", {**settings, "records": "something else"})
    assert not other.resumed and other.done() == set() and other.rows().empty


def test_reconcile_cli_resumes_an_interrupted_run(trained_store, tmp_path):
    data = write_abid_collection(tmp_path / "data", [i % 6 for i in range(12)])
    records = tmp_path / "recorded.csv"
    records.write_text("image,recorded_quantity\n" + "".join(f"bin-images/{i}.jpg,{i % 6}\n" for i in range(1, 13)))
    out = tmp_path / "report.json"
    whole = run_cli("reconcile", "--data", str(data), "--records", str(records), "--out", str(out), store=trained_store)
    assert whole.returncode == 0, whole.stderr
    expected = json.loads(out.read_text())["bins"]
    assert not (tmp_path / "report.json.partial.jsonl").exists()  # removed once the report is written
    # an interrupted run: its settings and the first five bins judged, then killed
    head = PartialReport(out, {"model": json.loads(out.read_text())["settings"]["model"], "prior_wrong": 0.2,
                               "data": str(data.resolve()), "records": records_digest(read_records(records))})
    by_image = {b["image"]: b for b in expected}
    kept = [by_image[f"bin-images/{i}.jpg"] for i in range(1, 6)]  # records 0..4
    head.write(pd.DataFrame(kept, index=pd.Index(range(5), name="record")))
    out.unlink()
    resumed = run_cli("reconcile", "--data", str(data), "--records", str(records), "--out", str(out),
                      store=trained_store)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: 5 of 12 bins already judged" in resumed.stdout
    assert json.loads(out.read_text())["bins"] == expected
