"""The growing image cache: one row per file version, decoded once per size, resumable."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import core.data.cache
from core.data.cache import assign_rows, build_cache, cached_images
from core.data.images import load_rgb
from core.data.synthetic import bin_photo
from core.store.layout import cache_file


def photos(folder, names, seed=0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        bin_photo(k % 6, seed=seed + k).save(folder / name)
    return [str(folder / n) for n in names]


@pytest.fixture
def decoded(monkeypatch) -> list[str]:
    """Paths decoded in this process (small jobs decode in-process)."""
    seen: list[str] = []
    monkeypatch.setattr(core.data.cache, "load_rgb", lambda path, size: seen.append(path) or load_rgb(path, size))
    return seen


def test_cache_grows_and_decodes_only_new_photos(tmp_path, decoded):
    paths = photos(tmp_path / "img", [f"{k}.jpg" for k in range(10)])
    cache = tmp_path / "cache"
    first, errors = build_cache(paths, 24, cache, workers=1, progress=False)
    assert first.shape == (10, 24, 24, 3) and not errors and len(decoded) == 10
    snapshot = np.array(first)
    more = paths + photos(tmp_path / "img", ["10.jpg", "11.jpg"], seed=100)
    decoded.clear()
    grown, _ = build_cache(more, 24, cache, workers=1, progress=False)
    assert decoded == more[10:] and grown.shape[0] == 12
    np.testing.assert_array_equal(grown[:10], snapshot)
    np.testing.assert_array_equal(grown[11], load_rgb(more[11], 24))
    decoded.clear()
    build_cache(more, 16, cache, workers=1, progress=False)  # another size: its own file, same rows
    assert len(decoded) == 12 and cache_file(cache, 16).is_file()


def test_rows_are_per_file_version(tmp_path):
    frame = pd.DataFrame({"path": ["a", "b", "c"], "bytes": [1, 2, 3], "mtime_ns": [10, 20, 30]})
    assert list(assign_rows(tmp_path, frame)) == [0, 1, 2]
    assert list(assign_rows(tmp_path, frame.iloc[::-1])) == [2, 1, 0]
    frame.loc[1, "mtime_ns"] = 21  # b modified
    assert list(assign_rows(tmp_path, frame)) == [0, 3, 2]


def test_failures_are_reported_and_not_retried(tmp_path, decoded):
    paths = photos(tmp_path / "img", ["a.jpg", "b.jpg"])
    data = (tmp_path / "img" / "b.jpg").read_bytes()
    (tmp_path / "img" / "b.jpg").write_bytes(data[: len(data) // 3])
    _, errors = build_cache(paths, 16, tmp_path / "cache", workers=1, progress=False)
    assert list(errors) == [1] and "truncated" in errors[1].lower()
    decoded.clear()
    _, again = build_cache(paths, 16, tmp_path / "cache", workers=1, progress=False)
    assert again == errors and decoded == []


def test_an_interrupted_build_resumes_where_it_stopped(tmp_path, monkeypatch):
    paths = photos(tmp_path / "img", [f"{k}.jpg" for k in range(12)])
    monkeypatch.setattr(core.data.cache, "CHUNK", 4)
    calls: list[str] = []

    def dies_at_seven(path, size):
        if len(calls) == 7:
            raise KeyboardInterrupt
        calls.append(path)
        return load_rgb(path, size)

    monkeypatch.setattr(core.data.cache, "load_rgb", dies_at_seven)
    with pytest.raises(KeyboardInterrupt):
        build_cache(paths, 16, tmp_path / "cache", workers=1, progress=False)
    calls.clear()
    monkeypatch.setattr(core.data.cache, "load_rgb", lambda path, size: calls.append(path) or load_rgb(path, size))
    array, errors = build_cache(paths, 16, tmp_path / "cache", workers=1, progress=False)
    assert calls == paths[4:] and not errors  # the first chunk was recorded; the half-done second is redone
    np.testing.assert_array_equal(array, np.stack([load_rgb(p, 16) for p in paths]))


def test_parallel_build_matches_serial(tmp_path, monkeypatch):
    monkeypatch.setattr(core.data.cache, "CHUNK", 3)
    paths = photos(tmp_path / "img", [f"{k}.jpg" for k in range(9)])
    parallel, _ = build_cache(paths, 16, tmp_path / "p", workers=2, progress=False)
    rows = assign_rows(tmp_path / "s", pd.DataFrame({"path": paths, "bytes": 0, "mtime_ns": 0}))
    serial, _ = cached_images(tmp_path / "s", 16, rows, paths, workers=1, progress=False)
    np.testing.assert_array_equal(parallel, serial)
