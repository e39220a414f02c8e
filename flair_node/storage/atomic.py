"""Durable file writes: temp file in the same folder, fsync, rename, fsync the folder.

A reader sees either the old file or the complete new one, and once ``atomic_write`` returns the new file
survives a crash or a ``kill -9``.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from ..core.errors import FlairError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def remove_stale_temp_files(root: Path) -> int:
    """Delete the temp files that ``atomic_write`` leaves behind when a process dies mid-write.

    Only safe while no other writer uses ``root`` (the daemon holds its home's lock). Returns how many.
    """
    removed = 0
    for path in root.rglob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def hold_lock(path: Path, busy: str) -> IO[str]:
    """An exclusive ``flock`` on the file ``path`` (created if missing), held while the returned file stays open;
    ``FlairError(busy)`` if another process holds it."""
    lock_file = open(path, "a")  # noqa: SIM115 - held by the caller for its lifetime
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise FlairError(busy, path=str(path)) from None
    return lock_file
