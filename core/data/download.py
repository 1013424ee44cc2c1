"""Fetch ABID bin images and their metadata from the public S3 bucket.

The Amazon Bin Image Dataset lives in the open bucket ``aft-vbi-pds``, which
anyone can read over plain anonymous HTTPS, so no AWS SDK or credentials are
needed. Files are written in the bucket's own layout (``bin-images/<id>.jpg``
and ``metadata/<id>.json``), which is what the project's data loader reads.

Runs are safe to interrupt and repeat: each file is streamed into a ``.part``
file beside its target and renamed into place only once it is complete
(`core.store.files.atomic_path`), so a file under its final name is always whole,
and the next run simply skips it.

`requests` is imported when a download starts, not with this module: the command line reads
`DEFAULT_BASE_URL` to build its parser, and it runs where `requests` is not installed (a GPU
machine with the stock Python, `bench/gpu.sh`).
"""

from __future__ import annotations

import email.utils
import json
import re
import threading
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from core.store.files import atomic_path

if TYPE_CHECKING:
    import requests

DEFAULT_BASE_URL = "https://aft-vbi-pds.s3.amazonaws.com"
NUM_BINS = 535234  # the bucket's sequential ids run from "1" to "535234" (with gaps)
MAX_RETRY_AFTER = 60.0  # seconds: a longer Retry-After is capped rather than hanging the run
IN_FLIGHT_PER_WORKER = 2  # bins queued per worker: memory stays flat however many ids are asked for

_ID_RE = re.compile(r"[0-9]+")
_CHUNK_BYTES = 64 * 1024


def _transient() -> tuple[type[Exception], ...]:
    """Network trouble that another attempt may well get past."""
    import requests

    return (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError)


@dataclass
class DownloadReport:
    """What a :func:`download` run did, by bin id, in the order ids were given."""

    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # both files already present
    missing: list[str] = field(default_factory=list)  # not in the bucket (404): ABID's ids have gaps
    failed: dict[str, str] = field(default_factory=dict)  # id -> reason

    def summary(self) -> str:
        return (f"downloaded {len(self.downloaded)}, already present {len(self.skipped)}, "
                f"missing from the bucket {len(self.missing)}, failed {len(self.failed)}")


class _Retryable(Exception):
    """A failure worth another attempt: network errors, 5xx, 429, a bad body."""

    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait  # the server's Retry-After, in seconds, where it sent one


class _Final(Exception):
    """A failure that retrying cannot fix, such as a 403."""


class _Missing(_Final):
    """The bucket has no such object (404)."""


def spread_ids(n: int, seed: int = 0, total: int = NUM_BINS) -> list[str]:
    """``n`` distinct ids drawn over the whole id range 1..``total`` with a fixed seed, in ascending order.

    A sample spread over the range covers the years and warehouses ABID was collected over,
    which the first ``n`` ids would not.
    """
    if not 0 <= n <= total:
        raise ValueError(f"need 0 <= n <= {total}, got {n}")
    chosen = np.random.default_rng(seed).choice(total, size=n, replace=False) + 1
    return [str(i) for i in sorted(chosen.tolist())]


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), capped; None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def first_ids(n: int, start: int = 1) -> list[str]:
    """Return ``n`` sequential bucket ids from ``start``: ``["1", "2", ...]``.

    Bucket ids are unpadded decimal strings ("121" is a bin, "00121" is not),
    so this is the safe way to name the first bins of the dataset.
    """
    if n < 0 or start < 1:
        raise ValueError(f"need n >= 0 and start >= 1, got n={n}, start={start}")
    return [str(i) for i in range(start, start + n)]


def validate_id(bin_id: str) -> str:
    """Return ``bin_id`` unchanged if it is a string of ASCII digits.

    Ids become file names and URL paths, so anything else (``"../x"``,
    ``"1.jpg"``, an int) is refused rather than allowed to escape the output
    folder. Ids are not normalised because zero padding is significant in ABID.
    """
    if not isinstance(bin_id, str) or not _ID_RE.fullmatch(bin_id):
        raise ValueError(
            f"invalid ABID bin id {bin_id!r}: expected a string of digits such as '121'"
        )
    return bin_id


def download(
    ids: Iterable[str],
    out: Path | str,
    base_url: str = DEFAULT_BASE_URL,
    workers: int = 8,
    retries: int = 3,
    timeout: float = 30.0,
    progress: bool = True,
    backoff: float = 0.5,
) -> DownloadReport:
    """Download the image and metadata of each bin in ``ids`` into ``out``.

    Files already present are not fetched again, so an interrupted run can just
    be repeated. A transient failure is retried up to ``retries`` more times,
    waiting ``backoff * 2**k`` seconds before retry ``k``; an id that is missing
    (404) or still failing is recorded in ``report.failed`` and does not stop
    the others. ``timeout`` applies to connecting and to each read.

    Raises ValueError, before anything is fetched, if any id is not a digit string.
    """
    ids = list(dict.fromkeys(validate_id(i) for i in ids))  # dedupe: one writer per file
    if workers < 1 or retries < 0:
        raise ValueError(f"need workers >= 1 and retries >= 0, got {workers}, {retries}")
    out = Path(out)
    for sub in ("bin-images", "metadata"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    fetcher = _Fetcher(base_url.rstrip("/"), out, retries, timeout, backoff)
    outcomes: dict[str, str] = {}
    pending: dict[Future, str] = {}
    queue = iter(ids)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
            total=len(ids), unit="bin", desc="ABID download", disable=not progress
        ) as bar:
            try:
                while True:
                    for bin_id in queue:  # top up to a bounded number of bins in flight
                        pending[pool.submit(fetcher.fetch_bin, bin_id)] = bin_id
                        if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                            break
                    if not pending:
                        break
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        outcomes[pending.pop(future)] = future.result()
                        bar.update()
            except BaseException:  # e.g. Ctrl-C: drop queued bins, let running ones finish
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        fetcher.close()

    report = DownloadReport()
    for bin_id in ids:
        outcome = outcomes[bin_id]
        if outcome == "downloaded":
            report.downloaded.append(bin_id)
        elif outcome == "present":
            report.skipped.append(bin_id)
        elif outcome == "missing":
            report.missing.append(bin_id)
        else:
            report.failed[bin_id] = outcome
    return report


class _Fetcher:
    """Shared settings plus one ``requests.Session`` per worker thread.

    Sessions keep connections alive between files but are not documented as
    thread-safe, hence one per thread rather than one for the pool.
    """

    def __init__(self, base_url: str, out: Path, retries: int, timeout: float, backoff: float):
        self.base_url, self.out = base_url, out
        self.retries, self.timeout, self.backoff = retries, timeout, backoff
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def fetch_bin(self, bin_id: str) -> str:
        """Fetch whichever of the bin's two files are missing.

        Returns "downloaded", "present" (nothing to fetch), "missing" (not in the bucket; its
        metadata is not asked for once the image is known missing) or the reason it failed.
        """
        fetched, errors = False, []
        wanted = ((f"bin-images/{bin_id}.jpg", False), (f"metadata/{bin_id}.json", True))
        for rel, must_be_json in wanted:
            dest = self.out / rel
            if dest.exists():  # only complete files ever get their final name
                continue
            try:
                self._fetch_with_retries(f"{self.base_url}/{rel}", dest, must_be_json)
                fetched = True
            except _Missing:
                return "missing"
            except (_Retryable, _Final) as e:
                errors.append(f"{rel}: {e}")
        if errors:
            return "; ".join(errors)
        return "downloaded" if fetched else "present"

    def _fetch_with_retries(self, url: str, dest: Path, must_be_json: bool) -> None:
        for attempt in range(self.retries + 1):
            try:
                return self._fetch_once(url, dest, must_be_json)
            except _Retryable as e:
                if attempt == self.retries:
                    raise _Retryable(f"{e} (gave up after {attempt + 1} attempts)") from e
                time.sleep(e.wait if e.wait is not None else self.backoff * 2**attempt)

    def _fetch_once(self, url: str, dest: Path, must_be_json: bool) -> None:
        import requests

        try:  # one writer per file (ids are deduplicated), so a fixed name: a stale .part is overwritten
            with atomic_path(dest, temp_name=dest.name + ".part") as part:
                self._stream(url, part)
                if must_be_json:
                    try:
                        json.loads(part.read_bytes())
                    except ValueError as e:
                        raise _Retryable(f"metadata is not valid JSON ({e})") from e
        except _transient() as e:
            raise _Retryable(f"{type(e).__name__}: {e}") from e
        except requests.RequestException as e:
            raise _Final(f"{type(e).__name__}: {e}") from e

    def _stream(self, url: str, part: Path) -> None:
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            with self._lock:
                self._sessions.append(session)

        with session.get(url, stream=True, timeout=self.timeout) as resp:
            status = resp.status_code
            if status == 429 or status >= 500:
                raise _Retryable(f"HTTP {status}", retry_after(resp.headers.get("Retry-After")))
            if status == 404:
                raise _Missing("HTTP 404 (no such object)")
            if status != 200:
                raise _Final(f"HTTP {status}")
            size = 0
            with open(part, "wb") as f:  # "wb" also overwrites any stale .part
                for chunk in resp.iter_content(_CHUNK_BYTES):
                    f.write(chunk)
                    size += len(chunk)
            expected = resp.headers.get("Content-Length", "")
            # With a Content-Encoding the length counts encoded bytes, not ours.
            encoded = "Content-Encoding" in resp.headers
            if expected.isdigit() and not encoded and size != int(expected):
                raise _Retryable(f"incomplete body: got {size} of {expected} bytes")


def fetch_sample(out: Path | str, n: int, base_url: str = DEFAULT_BASE_URL, seed: int = 0,
                 progress: bool = True, **options) -> DownloadReport:
    """Fetch (or resume) a sample of ``n`` bins spread over ABID's id range into ``out``.

    ``out`` carries a marker (`core.config.INCOMPLETE`) until every id is fetched or known
    missing, so an interrupted run is resumed and half a sample is never taken for data. A few
    bins are tried first with a single attempt, so that offline the answer comes in seconds.
    """
    from core.config import INCOMPLETE

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE).touch()
    ids = spread_ids(n, seed)
    first = download(ids[:4], out, base_url, retries=0, progress=False, **options)
    if first.failed and not (first.downloaded or first.skipped or first.missing):
        return first
    rest = download(ids[4:], out, base_url, progress=progress, **options)
    report = DownloadReport(first.downloaded + rest.downloaded, first.skipped + rest.skipped,
                            first.missing + rest.missing, {**first.failed, **rest.failed})
    if not report.failed:
        (out / INCOMPLETE).unlink()
    return report
