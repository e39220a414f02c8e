"""Object and ref stores: the interfaces and their memory and disk versions.

``ObjectStore`` keeps immutable bytes under a 64-hex key (the caller derives and re-checks the key: blobs are
keyed by their SHA-256, records by their id). ``RefStore`` keeps one repository's refs, each naming a signed
record (a branch names its latest branch move), and moves them only by compare-and-swap. A repository is
assembled from one of each (see ``repo.Repository``); memory and disk versions pass the same contract tests.

The disk versions write through ``atomic.atomic_write``: files are private (0600, folders 0700), every new folder
is made durable with its file, and a full disk or a lack of file descriptors fails the one call with
``ResourceExhausted`` naming the path (reads included), with nothing already stored lost or changed.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote

from ..core.errors import IntegrityError, NotFound, RefConflict
from ..core.ids import BranchName, RecordId, is_full_id, short
from .atomic import atomic_write, fsync_dir, make_dirs, open_private, resource_errors


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def has(self, key: str) -> bool: ...
    def keys(self, prefix: str = "") -> Iterator[str]: ...
    def delete(self, key: str) -> None: ...


class RefStore(Protocol):
    def get(self, name: BranchName) -> RecordId | None: ...
    def compare_and_swap(self, name: BranchName, expected: RecordId | None, new: RecordId) -> None:
        """Point ``name`` at ``new`` if it points at ``expected`` now (``None``: if it does not exist)."""
        ...
    def all(self) -> dict[BranchName, RecordId]:
        """Every branch; names starting with "." are reserved for other refs and left out."""
        ...


def _check_key(key: str) -> None:
    if not is_full_id(key):
        raise IntegrityError(f"object key {key!r} is not a 64-digit hex id")


def _conflict(name: str, expected: RecordId | None, current: RecordId | None) -> RefConflict:
    if expected is None:
        return RefConflict(f"ref {name} already exists (at {short(current or '')})", ref=name)
    if current is None:
        return RefConflict(f"ref {name} does not exist any more", ref=name)
    return RefConflict(f"ref {name} moved: expected {short(expected)}, it is now {short(current)}", ref=name)


class MemoryObjectStore:
    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}

    def put(self, key: str, data: bytes) -> None:
        _check_key(key)
        self._objects.setdefault(key, bytes(data))

    def get(self, key: str) -> bytes:
        try:
            return self._objects[key]
        except KeyError:
            raise NotFound(f"object {short(key)} is not stored", object=key) from None

    def has(self, key: str) -> bool:
        return key in self._objects

    def keys(self, prefix: str = "") -> Iterator[str]:
        return iter(sorted(k for k in self._objects if k.startswith(prefix)))

    def delete(self, key: str) -> None:
        self._objects.pop(key, None)


class MemoryRefStore:
    def __init__(self) -> None:
        self._refs: dict[BranchName, RecordId] = {}
        self._lock = threading.Lock()

    def get(self, name: BranchName) -> RecordId | None:
        return self._refs.get(name)

    def compare_and_swap(self, name: BranchName, expected: RecordId | None, new: RecordId) -> None:
        with self._lock:
            current = self._refs.get(name)
            if current != expected:
                raise _conflict(name, expected, current)
            self._refs[name] = new

    def all(self) -> dict[BranchName, RecordId]:
        return dict(sorted((k, v) for k, v in self._refs.items() if not k.startswith(".")))


class DiskObjectStore:
    """Objects as files ``ROOT/ab/cdef...``, each written atomically and never rewritten."""

    def __init__(self, root: Path) -> None:
        self.root = root
        make_dirs(root)

    def _path(self, key: str) -> Path:
        _check_key(key)
        return self.root / key[:2] / key[2:]

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if not path.exists():
            atomic_write(path, data)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            with resource_errors(path):
                return path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"object {short(key)} is not stored", object=key) from None

    def has(self, key: str) -> bool:
        return self._path(key).exists()

    def keys(self, prefix: str = "") -> Iterator[str]:
        with resource_errors(self.root):
            fans = sorted(os.listdir(self.root))
        for fan in fans:
            if len(fan) != 2 or not fan.startswith(prefix[:2]):
                continue
            with resource_errors(self.root / fan):
                rests = sorted(os.listdir(self.root / fan))
            for rest in rests:
                key = fan + rest
                if is_full_id(key) and key.startswith(prefix):
                    yield key

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class DiskRefStore:
    """Branches as files ``ROOT/<quoted name>`` holding a commit id; CAS under a lock shared by processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        make_dirs(root)
        self._lock = threading.Lock()

    def _path(self, name: str) -> Path:
        return self.root / quote(name, safe="")

    def _read(self, path: Path) -> RecordId | None:
        try:
            with resource_errors(path):
                text = path.read_text().strip()
        except FileNotFoundError:
            return None
        if not is_full_id(text):
            raise IntegrityError(f"ref file {path} does not hold a record id", ref=path.name)
        return RecordId(text)

    def get(self, name: BranchName) -> RecordId | None:
        return self._read(self._path(name))

    def compare_and_swap(self, name: BranchName, expected: RecordId | None, new: RecordId) -> None:
        path = self._path(name)
        with self._lock, open_private(self.root / ".lock") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            current = self._read(path)
            if current != expected:
                raise _conflict(name, expected, current)
            atomic_write(path, (new + "\n").encode())

    def all(self) -> dict[BranchName, RecordId]:
        refs: dict[BranchName, RecordId] = {}
        with resource_errors(self.root):
            entries = sorted(os.listdir(self.root))
        for entry in entries:
            if entry.startswith("."):
                continue
            ref = self._read(self.root / entry)
            if ref is not None:
                refs[BranchName(unquote(entry))] = ref
        return refs


__all__ = [
    "DiskObjectStore", "DiskRefStore", "MemoryObjectStore", "MemoryRefStore", "ObjectStore", "RefStore",
    "fsync_dir",
]
