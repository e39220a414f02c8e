"""One contract, every implementation: memory and disk object and ref stores behave the same."""

import os
import stat
import threading

import pytest

from flair_node.core.errors import IntegrityError, NotFound, RefConflict
from flair_node.core.identity import Identity
from flair_node.core.ids import sha256_hex
from flair_node.storage.keyfile import read_keypair, write_keypair
from flair_node.storage.stores import DiskObjectStore, DiskRefStore, MemoryObjectStore, MemoryRefStore

A, B, C = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture(params=["memory", "disk"])
def objects(request, tmp_path):
    return MemoryObjectStore() if request.param == "memory" else DiskObjectStore(tmp_path / "objects")


@pytest.fixture(params=["memory", "disk"])
def refs(request, tmp_path):
    return MemoryRefStore() if request.param == "memory" else DiskRefStore(tmp_path / "refs")


def test_objects_put_get_has(objects):
    key = sha256_hex(b"hello")
    assert not objects.has(key)
    objects.put(key, b"hello")
    objects.put(key, b"hello")  # idempotent
    assert objects.has(key)
    assert objects.get(key) == b"hello"
    assert list(objects.keys()) == [key]
    assert list(objects.keys(key[:5])) == [key]
    assert list(objects.keys("0000" if not key.startswith("0000") else "ffff")) == []


def test_objects_missing_and_bad_keys(objects):
    with pytest.raises(NotFound):
        objects.get(A)
    with pytest.raises(IntegrityError):
        objects.put("../../etc/passwd", b"x")


def test_refs_compare_and_swap(refs):
    assert refs.get("main") is None
    refs.compare_and_swap("main", None, A)
    assert refs.get("main") == A
    with pytest.raises(RefConflict, match="already exists"):
        refs.compare_and_swap("main", None, B)
    with pytest.raises(RefConflict, match="moved"):
        refs.compare_and_swap("main", B, C)
    refs.compare_and_swap("main", A, B)
    refs.compare_and_swap("team/alice", None, C)
    assert refs.all() == {"main": B, "team/alice": C}


def test_concurrent_swaps_exactly_one_wins(refs):
    refs.compare_and_swap("main", None, A)
    wins, conflicts = [], []
    barrier = threading.Barrier(8)

    def attempt(i):
        barrier.wait()
        try:
            refs.compare_and_swap("main", A, f"{i:064x}")
            wins.append(i)
        except RefConflict:
            conflicts.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(conflicts) == 7
    assert refs.get("main") == f"{wins[0]:064x}"


def test_disk_stores_survive_reopening(tmp_path):
    DiskObjectStore(tmp_path / "o").put(A, b"data")
    DiskRefStore(tmp_path / "r").compare_and_swap("main", None, A)
    assert DiskObjectStore(tmp_path / "o").get(A) == b"data"
    assert DiskRefStore(tmp_path / "r").get("main") == A
    assert not [p for p in (tmp_path / "o").rglob("*.tmp")]


def test_keypair_file_is_private_and_solana_shaped(tmp_path):
    identity = Identity.generate()
    path = tmp_path / "id.json"
    write_keypair(path, identity)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_keypair(path).public_key == identity.public_key
    import json

    assert len(json.loads(path.read_text())) == 64
    os.chmod(path, 0o644)
    with pytest.raises(Exception, match="readable by others"):
        read_keypair(path)
