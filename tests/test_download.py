"""Tests for core.download against a local stand-in for the ABID S3 bucket.

Each test starts its own HTTP server on 127.0.0.1 that serves generated JPEGs
and metadata, and can be told to misbehave (5xx, dropped connections, stalls,
truncated bodies) to check retrying and resuming. Nothing leaves the machine.
"""

from __future__ import annotations

import io
import json
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from core.download import DownloadReport, download, first_ids

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

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
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
    assert list(report.failed) == ["2"]
    assert "404" in report.failed["2"]
    assert not (tmp_path / "bin-images/2.jpg").exists()
    assert not (tmp_path / "metadata/2.json").exists()
    assert bucket.hits["bin-images/2.jpg"] == bucket.hits["metadata/2.json"] == 1
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
