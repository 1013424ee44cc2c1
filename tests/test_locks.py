"""The one file lock: exclusive, non-blocking on request, and visible to others while held."""
from __future__ import annotations

from core.store.locks import exclusive_lock, lock_is_held


def test_a_held_lock_is_refused_without_blocking_and_seen_as_held(tmp_path):
    path = tmp_path / "locks" / "x.lock"
    assert lock_is_held(path) is None and not path.exists()  # asking creates nothing
    with exclusive_lock(path) as got:
        assert got and lock_is_held(path) is True
        with exclusive_lock(path, blocking=False) as second:  # another open of the file: another holder
            assert second is False
    assert lock_is_held(path) is False
    with exclusive_lock(path, blocking=False) as again:
        assert again
