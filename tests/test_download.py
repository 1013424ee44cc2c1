"""Tests for core.data.download against a local stand-in for the ABID S3 bucket.

Each test starts its own HTTP server on 127.0.0.1 that serves generated JPEGs
and metadata, and can be told to misbehave (5xx, dropped connections, stalls,
truncated bodies) to check retrying and resuming. Nothing leaves the machine.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

import core.data.download
from core.data.download import DownloadReport, download, first_ids, retry_after, spread_ids

pytestmark = pytest.mark.timeout(60)

# Small backoff and timeout so the failure paths take milliseconds, not seconds.
FAST = dict(progress=False, backoff=0.01, timeout=5.0, workers=4)

# A fault decides, from the requested path and how many times it has now been
# requested (1 for the first), how to answer: None serves the file normally, an
# int is an HTTP status, or one of "drop", "stall", "truncate".
Fault = Callable[[str, int], "int | str | None"]


class FakeBucket:
    """A tiny HTTP server laid out like the bucket, counting every request."""

    def __init__(self, files: dict[str, bytes], fault: Fault | None = None):
        self.files = files
        self.fault = fault or (lambda path, n: None)
        self.hits: Counter[str] = Counter()
        self.times: dict[str, list[float]] = {}  # path -> when each request arrived
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.bucket = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.stopping.set()  # wakes any stalled handler
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        bucket: FakeBucket = self.server.bucket  # type: ignore[attr-defined]
        path = self.path.lstrip("/")
        with bucket.lock:
            bucket.hits[path] += 1
            bucket.times.setdefault(path, []).append(time.monotonic())
            n = bucket.hits[path]
        action = bucket.fault(path, n)
        body = bucket.files.get(path)

        if action == "drop":  # close without any response
            self.close_connection = True
            return
        if action == "stall":  # say nothing until well past the client's timeout
            bucket.stopping.wait(2.0)
            self.close_connection = True
            return
        if isinstance(action, tuple):  # (status, Retry-After)
            self._send(action[0], b"<Error/>", {"Retry-After": action[1]})
            return
        status = action if isinstance(action, int) else (200 if body is not None else 404)
        if status != 200:
            self._send(status, b"<Error/>")
            return
        if action == "truncate":  # promise the whole body, send half, hang up
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(200, body)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


def jpeg(seed: int) -> bytes:
    """A small, valid JPEG that differs from bin to bin."""
    image = Image.new("RGB", (24, 16), ((seed * 40) % 256, (seed * 90) % 256, 128))
    image.putpixel((seed % 24, 0), (255, 255, 255))
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    return buf.getvalue()


def metadata(bin_id: str) -> bytes:
    return json.dumps(
        {
            "EXPECTED_QUANTITY": 2,
            "BIN_FCSKU_DATA": {
                f"B00{bin_id}": {"asin": f"B00{bin_id}", "name": f"item {bin_id}", "quantity": 2}
            },
        }
    ).encode()


def bucket_files(ids: list[str]) -> dict[str, bytes]:
    files = {}
    for i, bin_id in enumerate(ids):
        files[f"bin-images/{bin_id}.jpg"] = jpeg(i + 1)
        files[f"metadata/{bin_id}.json"] = metadata(bin_id)
    return files


def assert_matches(out: Path, files: dict[str, bytes], ids: list[str]) -> None:
    for rel, body in files.items():
        if rel.split("/")[1].rsplit(".", 1)[0] in ids:
            assert (out / rel).read_bytes() == body, rel
    assert not list(out.rglob("*.part"))


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make sure requests talks to 127.0.0.1 directly, whatever the environment."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def serve():
    """Start FakeBuckets for one test and shut them all down afterwards."""
    started: list[FakeBucket] = []

    def start(files: dict[str, bytes], fault: Fault | None = None) -> FakeBucket:
        started.append(FakeBucket(files, fault))
        return started[-1]

    yield start
    for bucket in started:
        bucket.close()


def test_first_ids_are_unpadded_and_sequential():
    assert first_ids(3) == ["1", "2", "3"]
    assert first_ids(2, start=121) == ["121", "122"]
    assert first_ids(0) == []
    with pytest.raises(ValueError):
        first_ids(2, start=0)


def test_downloads_every_file_byte_identical(serve, tmp_path):
    ids = first_ids(6)
    files = bucket_files(ids)
    bucket = serve(files)

    report = download(ids, tmp_path, base_url=bucket.url, workers=3)  # progress bar on

    assert report == DownloadReport(downloaded=ids, skipped=[], failed={})
    assert_matches(tmp_path, files, ids)
    assert bucket.hits == Counter({rel: 1 for rel in files})


def test_padded_and_unpadded_ids_are_different_bins(serve, tmp_path):
    ids = ["7", "007"]
    files = bucket_files(ids)
    bucket = serve(files)

    report = download(ids, tmp_path, base_url=bucket.url, **FAST)

    assert report.downloaded == ids
    assert_matches(tmp_path, files, ids)
    images = tmp_path / "bin-images"
    assert (images / "7.jpg").read_bytes() != (images / "007.jpg").read_bytes()


def test_transient_failures_are_retried(serve, tmp_path):
    ids = first_ids(4)
    files = bucket_files(ids)
    first_try = {"bin-images": 500, "metadata": "drop"}

    def fault(path: str, n: int) -> int | str | None:
        if n > 1:
            return None
        return 429 if path == "bin-images/2.jpg" else first_try[path.split("/")[0]]

    bucket = serve(files, fault)

    report = download(ids, tmp_path, base_url=bucket.url, **FAST)

    assert report == DownloadReport(downloaded=ids, skipped=[], failed={})
    assert_matches(tmp_path, files, ids)
    assert bucket.hits == Counter({rel: 2 for rel in files})


def test_stalled_response_times_out_and_is_retried(serve, tmp_path):
    ids = first_ids(2)
    files = bucket_files(ids)
    bucket = serve(files, lambda path, n: "stall" if (path, n) == ("bin-images/1.jpg", 1) else None)

    report = download(ids, tmp_path, base_url=bucket.url, **{**FAST, "timeout": 0.3})

    assert report.downloaded == ids
    assert_matches(tmp_path, files, ids)
    assert bucket.hits["bin-images/1.jpg"] == 2


def test_missing_id_is_reported_and_not_retried(serve, tmp_path):
    ids = ["1", "2", "3"]
    files = bucket_files(["1", "3"])
    bucket = serve(files)

    report = download(ids, tmp_path, base_url=bucket.url, **FAST)

    assert report.downloaded == ["1", "3"]
    assert report.missing == ["2"] and not report.failed
    assert not (tmp_path / "bin-images/2.jpg").exists()
    assert not (tmp_path / "metadata/2.json").exists()
    assert bucket.hits["bin-images/2.jpg"] == 1 and bucket.hits["metadata/2.json"] == 0
    assert_matches(tmp_path, files, ["1", "3"])


def test_persistent_server_error_fails_after_retries(serve, tmp_path):
    ids = first_ids(2)
    files = bucket_files(ids)
    bucket = serve(files, lambda path, n: 503 if path == "metadata/2.json" else None)

    report = download(ids, tmp_path, base_url=bucket.url, **{**FAST, "retries": 2})

    assert report.downloaded == ["1"]
    assert "503" in report.failed["2"]
    assert bucket.hits["metadata/2.json"] == 3  # first attempt + 2 retries
    assert not (tmp_path / "metadata/2.json").exists()
    assert (tmp_path / "bin-images/2.jpg").read_bytes() == files["bin-images/2.jpg"]


def test_metadata_that_is_not_json_is_rejected(serve, tmp_path):
    ids = first_ids(2)
    files = {**bucket_files(ids), "metadata/2.json": b'{"EXPECTED_QUANTITY": '}
    bucket = serve(files)

    report = download(ids, tmp_path, base_url=bucket.url, **{**FAST, "retries": 1})

    assert report.downloaded == ["1"]
    assert "JSON" in report.failed["2"]
    assert not (tmp_path / "metadata/2.json").exists()
    assert not list(tmp_path.rglob("*.part"))


def test_interrupted_download_resumes_without_refetching(serve, tmp_path):
    ids = first_ids(4)
    files = bucket_files(ids)
    flaky = serve(files, lambda path, n: "truncate" if path == "bin-images/3.jpg" else None)

    first = download(ids, tmp_path, base_url=flaky.url, **{**FAST, "retries": 1})

    assert first.downloaded == ["1", "2", "4"]
    assert list(first.failed) == ["3"]
    assert flaky.hits["bin-images/3.jpg"] == 2
    assert not (tmp_path / "bin-images/3.jpg").exists()  # no partial file under the final name
    assert not list(tmp_path.rglob("*.part"))

    # As if a run had been killed mid-file: a stale .part must not be trusted.
    (tmp_path / "bin-images/3.jpg.part").write_bytes(files["bin-images/3.jpg"][:10])
    good = serve(files)

    second = download(ids, tmp_path, base_url=good.url, **FAST)

    assert second == DownloadReport(downloaded=["3"], skipped=["1", "2", "4"], failed={})
    assert good.hits == Counter({"bin-images/3.jpg": 1})  # nothing complete was fetched again
    assert_matches(tmp_path, files, ids)


@pytest.mark.parametrize("bad", ["../1", "1.jpg", "", " 1", "1/2", "١٢", "-1", 121])
def test_invalid_id_raises_before_anything_is_fetched(serve, tmp_path, bad):
    bucket = serve(bucket_files(["1"]))
    out = tmp_path / "out"

    with pytest.raises(ValueError, match="invalid ABID bin id"):
        download(["1", bad], out, base_url=bucket.url, **FAST)

    assert not bucket.hits
    assert not out.exists()


def test_thousands_of_ids_with_gaps_429s_and_5xx(serve, tmp_path, monkeypatch):
    ids = first_ids(2000)
    present = [i for i in ids if int(i) % 7]  # every 7th id is a gap in the bucket
    files = bucket_files(present)

    def fault(path, n):
        number = int(path.split("/")[1].split(".")[0])
        if n == 1 and number % 50 == 1:
            return (429, "0")
        if n == 1 and number % 30 == 2:
            return 500 + number % 4
        return None

    bucket = serve(files, fault)
    outstanding, most = [0], [0]
    real_submit = core.data.download.ThreadPoolExecutor.submit

    def counting_submit(pool, fn, *args):
        outstanding[0] += 1
        most[0] = max(most[0], outstanding[0])
        future = real_submit(pool, fn, *args)
        future.add_done_callback(lambda _: outstanding.__setitem__(0, outstanding[0] - 1))
        return future

    monkeypatch.setattr(core.data.download.ThreadPoolExecutor, "submit", counting_submit)
    report = download(ids, tmp_path, base_url=bucket.url, **{**FAST, "workers": 8})
    assert sorted(report.downloaded, key=int) == present and not report.failed
    assert report.missing == [i for i in ids if int(i) % 7 == 0]
    assert most[0] <= 8 * 2  # bounded in flight, not 2000 futures at once
    assert bucket.hits["bin-images/51.jpg"] == 2 and bucket.hits["bin-images/32.jpg"] == 2
    assert len(list((tmp_path / "bin-images").iterdir())) == len(present)


def test_retry_after_is_honoured(serve, tmp_path):
    files = bucket_files(["1"])
    bucket = serve(files, lambda path, n: (503, "1") if path == "bin-images/1.jpg" and n == 1 else None)
    report = download(["1"], tmp_path, base_url=bucket.url, **FAST)
    assert report.downloaded == ["1"]
    first, second = bucket.times["bin-images/1.jpg"]
    assert second - first >= 0.9  # the server's second, not the 0.01 s backoff


def test_retry_after_parsing():
    assert retry_after("3") == 3.0 and retry_after(None) is None and retry_after("soon") is None
    assert retry_after("100000") == core.data.download.MAX_RETRY_AFTER
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait


def test_spread_ids_cover_the_range_reproducibly():
    ids = spread_ids(1000, seed=0)
    assert ids == spread_ids(1000, seed=0) and len(set(ids)) == 1000
    numbers = [int(i) for i in ids]
    assert numbers == sorted(numbers) and min(numbers) < 5000 and max(numbers) > 530_000
    assert ids[:2] != ["1", "2"] and spread_ids(1000, seed=1) != ids


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """No data folder anywhere; the default sample goes to a temporary data/abid; training is recorded."""
    import core.config
    import core.training.suite

    monkeypatch.delenv("ABID_DATA", raising=False)
    monkeypatch.setattr(core.config, "SHARED_SAMPLE", tmp_path / "no-sample")
    monkeypatch.setattr(core.config, "DEFAULT_DATA", tmp_path / "data" / "abid")
    trained: list[Path] = []
    monkeypatch.setattr(core.training.suite, "run_default_suite", lambda root, **kwargs: trained.append(Path(root)))
    return trained


def test_suite_without_data_fetches_a_spread_sample_then_trains(serve, tmp_path, no_data, capsys):
    import train
    from core.config import DEFAULT_DATA, find_data_dir
    from core.data.collection import load_collection

    wanted = spread_ids(40)
    bucket = serve(bucket_files(wanted[:30] + wanted[31:]))  # one id is a gap in the bucket
    train.main(["suite", "--sample-size", "40", "--base-url", bucket.url])
    assert no_data == [DEFAULT_DATA] and find_data_dir() == DEFAULT_DATA
    assert sorted(load_collection(DEFAULT_DATA).table["image_id"], key=int) == wanted[:30] + wanted[31:]
    assert "downloaded 39" in capsys.readouterr().out
    train.main(["suite", "--sample-size", "40", "--base-url", bucket.url])  # complete: used as it is
    assert sum(bucket.hits.values()) == 79 and len(no_data) == 2


def test_suite_resumes_an_interrupted_sample(serve, tmp_path, no_data):
    import train
    from core.config import DEFAULT_DATA, INCOMPLETE, find_data_dir

    wanted = spread_ids(12)
    bucket = serve(bucket_files(wanted), lambda path, n: (500, "0") if wanted[-1] in path else None)
    train.main(["suite", "--sample-size", "12", "--base-url", bucket.url])
    assert (DEFAULT_DATA / INCOMPLETE).exists() and find_data_dir() is None  # half a sample is not data yet
    bucket.fault = lambda path, n: None
    before = dict(bucket.hits)
    train.main(["suite", "--sample-size", "12", "--base-url", bucket.url])
    assert not (DEFAULT_DATA / INCOMPLETE).exists() and find_data_dir() == DEFAULT_DATA
    fetched_again = {p for p, n in bucket.hits.items() if n > before.get(p, 0)}
    assert fetched_again == {f"bin-images/{wanted[-1]}.jpg", f"metadata/{wanted[-1]}.json"}


def test_suite_offline_says_so_in_one_line_and_exits_0(tmp_path, no_data, capsys):
    import train

    started = time.monotonic()
    train.main(["suite", "--base-url", "http://127.0.0.1:9"])  # nothing listens on the discard port
    lines = capsys.readouterr().out.strip().splitlines()
    assert no_data == [] and time.monotonic() - started < 10
    assert lines[-1].startswith("No photos could be fetched from http://127.0.0.1:9")
    assert len(lines) == 1
