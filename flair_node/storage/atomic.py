"""Durable, private file writes: temp file in the same folder, fsync, rename, fsync the folder.

A reader sees either the old file or the complete new one, and once ``atomic_write`` returns the new file
survives a crash or a ``kill -9``: every folder it had to create is made durable too (``make_dirs`` fsyncs the
parent of each new folder). Files are private (0600 unless asked otherwise, whatever the umask) and new folders
0700: a node's home holds its keys and the plaintext it works on.

When the machine runs out of something -- the disk is full (ENOSPC), the quota is used up (EDQUOT), or no file
descriptor is left (EMFILE, ENFILE) -- the write fails with ``core.errors.ResourceExhausted`` naming the path,
its temp file is removed and the old file, if any, is left as it was.

Temp files are named ``.NAME.PID.RANDOM.tmp``; ``remove_stale_temp_files`` deletes those an interrupted process
left behind, in folders that only the caller writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO

from ..core.errors import FlairError, ResourceExhausted

FILE_MODE = 0o600
DIR_MODE = 0o700


@contextlib.contextmanager
def resource_errors(path: object) -> Iterator[None]:
    """Turn an ``OSError`` saying the machine ran out of disk or descriptors into ``ResourceExhausted`` naming
    ``path``; other errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        error = ResourceExhausted.from_os_error(exc, path)
        if error is None:
            raise
        raise error from exc


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, *, mode: int = DIR_MODE) -> None:
    """Create ``path`` and its missing parents with ``mode``, fsyncing the parent of each folder created, so a
    file written durably inside it is not lost with its folder in a crash."""
    missing: list[Path] = []
    cursor = path
    while not cursor.is_dir():
        missing.append(cursor)
        if cursor.parent == cursor:
            break
        cursor = cursor.parent
    with resource_errors(path):
        for folder in reversed(missing):
            try:
                folder.mkdir(mode=mode)
            except FileExistsError:
                if not folder.is_dir():
                    raise
            fsync_dir(folder.parent)  # also when another thread made it first: it may not have synced it yet


def atomic_write(path: Path, data: bytes, *, mode: int = FILE_MODE) -> None:
    """Write ``data`` to ``path`` atomically and durably, as a file with exactly ``mode``."""
    with atomic_writer(path, mode=mode) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_writer(path: Path, *, mode: int = FILE_MODE) -> Iterator[BinaryIO]:
    """A file to write ``path`` through, atomically and durably, as a file with exactly ``mode``: it replaces
    ``path`` when the block ends, and is removed instead if the block raises (a write of any size, in pieces)."""
    make_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    with resource_errors(path):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)  # the umask may have taken bits away
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)


def open_private(path: Path) -> IO[str]:
    """``path`` opened for appending, created 0600 if missing (lock files)."""
    with resource_errors(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    return os.fdopen(fd, "a")


def remove_stale_temp_files(root: Path, *, recursive: bool = True) -> int:
    """Delete the temp files that ``atomic_write`` leaves behind when a process dies mid-write, in ``root`` (and
    the folders below it when ``recursive``).

    Only safe in folders no other process writes to while this runs (the daemon holds its home's lock, and sweeps
    only the folders of its own stores). Returns how many.
    """
    removed = 0
    for path in root.rglob(".*.tmp") if recursive else root.glob(".*.tmp"):
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def hold_lock(path: Path, busy: str) -> IO[str]:
    """An exclusive ``flock`` on the file ``path`` (created 0600 if missing), held while the returned file stays
    open; ``FlairError(busy)`` if another process holds it."""
    lock_file = open_private(path)
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise FlairError(busy, path=str(path)) from None
    return lock_file


__all__ = ["DIR_MODE", "FILE_MODE", "atomic_write", "atomic_writer", "fsync_dir", "hold_lock", "make_dirs",
           "open_private", "remove_stale_temp_files", "resource_errors"]
