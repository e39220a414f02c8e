"""Payload DAGs: Kubo-identical CIDs, every block re-hashed on read, hostile DAGs refused, pins and gc."""

import os

import aleph_cid
import pytest

from flair_node.core.cid import DAG_PB, RAW, FileNode, Link, cid_for, encode_file_node, parse_cid
from flair_node.core.errors import IntegrityError, InvalidInput, NotFound
from flair_node.core.identity import Identity
from flair_node.storage import unixfs
from flair_node.storage.repos import RepoSet
from flair_node.storage.stores import MemoryObjectStore
from flair_node.testing.commit_graph import tiny_state


def kubo_cid(data: bytes) -> str:
    """What `ipfs add --cid-version=1 --raw-leaves` prints, as reproduced by aleph-cid."""
    hasher = aleph_cid.CidHasher.for_ipfs_v1_raw_leaves()
    hasher.update(data)
    return hasher.finalize()


@pytest.mark.parametrize("size", [0, 1, 256 * 1024, 256 * 1024 + 1, 10 * 2**20, 175 * 256 * 1024 + 3])
def test_cids_match_kubo(size):
    data = os.urandom(size)
    store = unixfs.BlockStore(MemoryObjectStore())
    root = unixfs.add(store, data)
    assert root == kubo_cid(data)
    assert unixfs.cat(store, root, max_size=size) == data


def test_cid_text_round_trips_and_garbage_is_refused():
    cid = cid_for(DAG_PB, b"node")
    assert parse_cid(cid).text == cid and parse_cid(cid).codec == DAG_PB
    for bad in ["", "bafy", "Qm" + "1" * 44, "z" * 40, "b" + "a" * 300]:
        with pytest.raises(InvalidInput):
            parse_cid(bad)


def test_kubo_s_default_cidv0_content_is_refused_by_naming_the_flags_flair_reads():
    hasher = aleph_cid.CidHasher.for_ipfs()  # what a plain `ipfs add` prints: a CIDv0, leaves with inline data
    hasher.update(os.urandom(1000))
    qm = hasher.finalize()
    assert qm.startswith("Qm")
    store = unixfs.BlockStore(MemoryObjectStore())
    with pytest.raises(InvalidInput, match="--cid-version=1 --raw-leaves"):
        unixfs.cat(store, qm, max_size=1000)  # said before any block is read (or, over Bitswap, asked for)
    with pytest.raises(InvalidInput, match="--cid-version=1 --raw-leaves"):
        unixfs.Bounds(qm, 1000)


def test_a_block_that_does_not_match_its_cid_is_refused():
    store = unixfs.BlockStore(MemoryObjectStore())
    cid = cid_for(RAW, b"honest")
    with pytest.raises(IntegrityError, match="does not hash"):
        store.put(cid, b"forged")
    store.put(cid, b"honest")
    store.objects._objects[parse_cid(cid).key] = b"rotted"  # damage at rest
    with pytest.raises(IntegrityError, match="does not hash"):
        store.get(cid)
    with pytest.raises(NotFound):
        store.get(cid_for(RAW, b"absent"))


def test_dags_larger_than_declared_are_refused():
    store = unixfs.BlockStore(MemoryObjectStore())
    root = unixfs.add(store, os.urandom(600_000))
    with pytest.raises(IntegrityError, match="declares more"):
        unixfs.cat(store, root, max_size=599_999)
    # A node that lies about its children's sizes is caught at the leaf.
    leaf = cid_for(RAW, b"x" * 100)
    store.put(leaf, b"x" * 100)
    liar = encode_file_node(FileNode((Link(leaf, 100),), (10,)))
    liar_cid = cid_for(DAG_PB, liar)
    store.put(liar_cid, liar)
    with pytest.raises(IntegrityError, match="more than its declared size"):
        unixfs.cat(store, liar_cid, max_size=1000)


def test_deep_dags_are_refused():
    store = unixfs.BlockStore(MemoryObjectStore())
    cid, tsize = cid_for(RAW, b"z"), 1
    store.put(cid, b"z")
    for _ in range(unixfs.MAX_DEPTH + 1):
        node = encode_file_node(FileNode((Link(cid, tsize),), (1,)))
        cid, tsize = cid_for(DAG_PB, node), tsize + len(node)
        store.put(cid, node)
    with pytest.raises(IntegrityError, match="deeper"):
        unixfs.cat(store, cid, max_size=10)


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_gc_removes_only_unpinned_blocks(kind, tmp_path):
    me = Identity.generate()
    repos = RepoSet.in_memory(me) if kind == "memory" else RepoSet.on_disk(tmp_path / "home", me)
    repo = repos.create("tiny", tiny_state(0))
    repo.commit_weights(me, tiny_state(1), message="one")
    orphan = unixfs.add(repos.blocks, os.urandom(300_000))  # e.g. left by a commit that crashed before its ref
    kept, removed = repos.gc()
    assert removed == 3 and kept == 2  # the orphan's two leaves and its root; the two commits' payloads stay
    assert not repos.blocks.has(orphan)
    repo._states.clear()
    checked, problems = repo.fsck()
    assert checked == 2 and problems == []
    assert repos.gc() == (2, 0)
