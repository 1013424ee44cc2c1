"""File locks: the one way processes of binsight take turns (an exclusive `flock` on a file).

The kernel releases an `flock` when its process dies, however it dies, so a lock never outlives
its holder and whether a lock file is held tells whether its holder still lives (`lock_is_held`).
Two opens of one file conflict even inside one process, so threads take turns too. With the
store on shared storage this holds across hosts (NFS, Lustre mounted with `-o flock`).
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive_lock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive `flock` on `path` (created if missing) for the block; yields False, without
    holding it, if `blocking` is off and another holder has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def lock_is_held(path: Path) -> bool | None:
    """True if some process holds the lock file, False if it is free, None if there is no such file
    (a lock file is never created just by asking)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
