"""Atomic writes: the target changes only when the block succeeds; no temporary file stays behind."""
from __future__ import annotations

import pytest

from core.store.files import atomic_path


@pytest.mark.parametrize("temp_name", [None, "x.bin.part"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, temp_name):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target, temp_name=temp_name) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]
    with atomic_path(target, temp_name=temp_name) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


def test_a_named_temporary_left_by_a_killed_run_is_overwritten(tmp_path):
    (tmp_path / "x.bin.part").write_bytes(b"stale and longer")
    with atomic_path(tmp_path / "x.bin", temp_name="x.bin.part") as tmp, open(tmp, "wb") as fh:
        fh.write(b"whole")
    assert (tmp_path / "x.bin").read_bytes() == b"whole" and not (tmp_path / "x.bin.part").exists()
