"""Attacks on what a node fetches and serves (issue 16): a pull that would download before it checks, DAG bombs,
stalled and surplus streams, duplicate blocks from an honest peer, and a member whose role has expired.

Each test performs the attack: crafted DAGs in memory, hostile Flair/py-libp2p hosts on 127.0.0.1 speaking Bitswap
and the sync protocol, and real ``flair-node`` daemons where the finding involved one. Each asserts that the node
still answers, that nothing was accepted, and, where a peer is to blame, that the counters name it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections import Counter
from contextlib import asynccontextmanager

import pytest
import trio
from libp2p.host.exceptions import StreamFailure
from libp2p.network.stream.exceptions import StreamError

from flair_node.core.cid import DAG_PB, RAW, FileNode, Link, cid_for, encode_file_node, parse_cid
from flair_node.core.errors import Forbidden, IntegrityError
from flair_node.core.identity import Identity
from flair_node.core.objects import Payload
from flair_node.core.protobuf import bytes_field, int_field, varint
from flair_node.network import bitswap, framing, rpc
from flair_node.network import bitswap_wire as wire
from flair_node.network.bitswap import V120, BlockExchange
from flair_node.network.host import connect, full_addrs, running_host
from flair_node.protocol import sync
from flair_node.protocol.rounds import RoundMemory
from flair_node.protocol.sync import PROTOCOL, PeerSource, SyncServer, pull
from flair_node.storage import unixfs
from flair_node.storage.clock import now_ms
from flair_node.storage.repos import RepoSet
from flair_node.storage.stores import MemoryObjectStore
from flair_node.testing.commit_graph import tiny_state
from flair_node.testing.sync import LocalSource

WIDE = unixfs.MAX_LINKS


class CountingBlocks(unixfs.BlockStore):
    """A block store that counts every block read: what a walk visited, or what a peer's wants made it serve."""

    def __init__(self, objects=None):
        super().__init__(objects if objects is not None else MemoryObjectStore())
        self.reads: Counter[str] = Counter()

    def get(self, cid):
        self.reads[parse_cid(cid).text if isinstance(cid, str) else cid.text] += 1
        return super().get(cid)


async def until(check, what, seconds):
    """Poll ``check`` until true; fails naming ``what`` after ``seconds``."""
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await trio.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


def put_node(store, links, *, filesize=None):
    """A dag-pb UnixFS file node over ``links`` ([(cid, blocksize)]), stored; ``filesize`` overrides the declared
    total (what Kubo writes as field 3). Returns its CID."""
    if filesize is None:
        block = encode_file_node(FileNode(tuple(Link(c, 1) for c, _ in links), tuple(s for _, s in links)))
    else:
        data = int_field(1, 2) + int_field(3, filesize) + b"".join(int_field(4, s) for _, s in links)
        block = b"".join(bytes_field(2, bytes_field(1, parse_cid(c).binary) + int_field(3, 1)) for c, _ in links)
        block += bytes_field(1, data)
    cid = cid_for(DAG_PB, block)
    store.put(cid, block)
    return cid


def put_leaf(store, data):
    cid = cid_for(RAW, data)
    store.put(cid, data)
    return cid


def zero_bomb(store):
    """The reported bomb: three distinct blocks, each node linking the one below ``WIDE`` times with a
    blocksize of zero, so no size bound ever grows while the walk expands WIDE**2 leaves."""
    leaf = put_leaf(store, b"x")
    middle = put_node(store, [(leaf, 0)] * WIDE)
    return put_node(store, [(middle, 0)] * WIDE), 1 << 20


def wide_bomb(store):
    """Four distinct blocks whose sizes add up honestly: WIDE**3 one-byte leaves (5.3 MB declared), which Flair's
    layout would hold in 21 leaves: millions of visits for a small declared size."""
    leaf = put_leaf(store, b"x")
    a = put_node(store, [(leaf, 1)] * WIDE)
    b = put_node(store, [(a, WIDE)] * WIDE)
    return put_node(store, [(b, WIDE ** 2)] * WIDE), WIDE ** 3


BOMBS = {"zero blocksizes": zero_bomb, "honest-looking sizes": wide_bomb}


# -- DAG walks over crafted DAGs, in memory ------------------------------------------------------------------

@pytest.mark.parametrize("bomb", list(BOMBS))
def test_a_dag_bomb_is_refused_after_a_few_visits(bomb):
    store = CountingBlocks()
    root, declared = BOMBS[bomb](store)
    started = time.monotonic()
    with pytest.raises(IntegrityError, match="zero bytes|more than .* blocks"):
        unixfs.cat(store, root, max_size=declared)
    with pytest.raises(IntegrityError):
        unixfs.block_keys(store, root, max_size=declared)
    assert time.monotonic() - started < 1.0
    limit = unixfs.max_visits(declared)
    assert sum(store.reads.values()) <= 2 * (limit + 1)  # two walks, each stopped within its bound


def test_a_block_must_hold_exactly_what_its_parent_says():
    store = unixfs.BlockStore(MemoryObjectStore())
    leaves = [put_leaf(store, os.urandom(50)) for _ in range(2)]
    child = put_node(store, [(c, 50) for c in leaves])  # 100 bytes
    liar = put_node(store, [(child, 200)])  # gives the child 200 bytes: it holds less
    with pytest.raises(IntegrityError, match="less than its declared size"):
        unixfs.cat(store, liar, max_size=1000)
    overstated = put_node(store, [(c, 50) for c in leaves], filesize=10_000)  # field 3 disagrees with the links
    with pytest.raises(IntegrityError, match="declares 10000 bytes but its links hold 100"):
        unixfs.cat(store, overstated, max_size=20_000)
    assert unixfs.cat(store, child, max_size=100) == b"".join(store.get(c) for c in leaves)


def test_the_empty_file_is_the_only_block_of_zero_bytes():
    store = unixfs.BlockStore(MemoryObjectStore())
    empty = unixfs.add(store, b"")
    assert parse_cid(empty).codec == RAW and unixfs.cat(store, empty, max_size=0) == b""
    with pytest.raises(IntegrityError, match="zero bytes"):
        unixfs.cat(store, put_node(store, [(empty, 0), (put_leaf(store, b"y"), 1)]), max_size=10)


def test_nodes_wider_than_the_layout_are_refused():
    store = unixfs.BlockStore(MemoryObjectStore())
    leaf = put_leaf(store, b"z")
    with pytest.raises(IntegrityError, match=f"{WIDE + 1} links"):
        unixfs.cat(store, put_node(store, [(leaf, 1)] * (WIDE + 1)), max_size=10_000)


def test_an_honest_file_with_repeated_leaves_still_reads_within_its_bounds():
    store = CountingBlocks()
    data = bytes(3 * unixfs.CHUNK) + os.urandom(1000)  # three identical leaves, one more, and a root
    root = unixfs.add(store, data)
    assert unixfs.cat(store, root, max_size=len(data)) == data
    assert sum(store.reads.values()) == unixfs.max_blocks(len(data)) == 5
    assert len(unixfs.block_keys(store, root, max_size=len(data))) == 3


# -- verify before fetch ---------------------------------------------------------------------------------------

OWNER, ALICE, STRANGER = Identity.generate(), Identity.generate(), Identity.generate()


class RecordingSource(LocalSource):
    """Another node's stores, noting every payload ``pull`` asks for."""

    def __init__(self, *args):
        super().__init__(*args)
        self.asked: list[str] = []

    async def blocks(self, cid, max_size):
        self.asked.append(cid)
        await super().blocks(cid, max_size)


def plant(repo, author, branch, *, payload=None, on=None):
    """A commit by ``author`` on ``branch`` of ``repo`` (made there, bypassing every check: what a hostile peer
    serves), built on ``on`` (default: main's head), with ``payload`` if given; the branch points at it."""
    head = repo.commit(on or repo.head("main"))
    forged = dataclasses.replace(head, parents=(head.id,), author=author.public_key, kind="commit",
                                 message=f"planted on {branch}", timestamp_ms=head.timestamp_ms + 1,
                                 payload=payload or head.payload, signature=b"").signed(author)
    repo.objects.put(forged.id, forged.encode())
    repo._move_branch(OWNER, branch, forged.id, expected=None, epoch=repo.members.current().epoch,
                      timestamp=head.timestamp_ms + 2)
    return forged


def terabyte_payload(repo):
    head = repo.commit(repo.head("main"))
    return dataclasses.replace(head.payload, cid=cid_for(RAW, os.urandom(32)), size=1 << 40)


async def test_a_pull_checks_a_commit_before_asking_for_a_block_of_it():
    theirs = RepoSet.in_memory(OWNER)
    repo = theirs.create("digits", tiny_state(0))
    repo.invite(OWNER, ALICE.public_key, "contributor")
    payload = terabyte_payload(repo)
    forged = plant(repo, STRANGER, "huge", payload=payload)
    mine = RepoSet.in_memory(ALICE)
    source = RecordingSource(theirs, ALICE.public_key, mine)
    result = await pull(mine, repo.id, source, memory=RoundMemory())
    assert "is not a member" in result.refused[forged.id]
    assert payload.cid not in source.asked  # not one block of the stranger's 1 TiB was asked for
    assert source.asked == [repo.commit(repo.head("main")).payload.cid]  # the one honest payload was
    assert not mine.open(repo.id).objects.has(forged.id) and result.commits == 1


# -- a hostile peer serving DAG bombs over Bitswap -------------------------------------------------------------

@asynccontextmanager
async def exchanges(*stores):
    """One Flair host and block exchange per store, each on 127.0.0.1; yields [(host, exchange)]."""
    async with _hosts(len(stores)) as hosts, trio.open_nursery() as nursery:  # hosts close after the services
        nodes = []
        for host, store in zip(hosts, stores, strict=True):
            exchange = BlockExchange(host, store)
            await nursery.start(exchange.run)
            nodes.append((host, exchange))
        yield nodes
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def _hosts(n):
    if n == 0:
        yield []
        return
    async with running_host(Identity.generate()) as host, _hosts(n - 1) as rest:
        yield [host, *rest]


@pytest.mark.integration
@pytest.mark.parametrize("bomb", list(BOMBS))
async def test_a_peer_serving_a_dag_bomb_fails_the_fetch_fast_and_the_node_still_serves(bomb):
    hostile_blocks, victim_blocks = CountingBlocks(), unixfs.BlockStore(MemoryObjectStore())
    root, declared = BOMBS[bomb](hostile_blocks)
    honest = os.urandom(300_000)
    honest_root = unixfs.add(victim_blocks, honest)
    with trio.fail_after(30):
        async with exchanges(hostile_blocks, victim_blocks, unixfs.BlockStore(MemoryObjectStore())) as nodes:
            (hostile, _), (victim_host, victim), (_, other) = nodes
            peer = await connect(victim_host, full_addrs(hostile)[0])
            started = trio.current_time()
            with pytest.raises(IntegrityError, match="zero bytes|more than .* blocks"):
                await victim.fetch_dag(root, peer, max_size=declared, block_timeout=10)
            assert trio.current_time() - started < 5
            assert sum(hostile_blocks.reads.values()) <= 4  # each distinct block asked for once at most
            assert not any(victim_blocks.has(c) for c in hostile_blocks.reads)  # nothing of the bomb was kept
            victim_peer = await connect(nodes[2][0], full_addrs(victim_host)[0])
            assert await other.fetch_dag(honest_root, victim_peer, max_size=len(honest)) == 3  # still serves


# -- finding 13: an honest peer sending a block twice -----------------------------------------------------------

class CountingExchange(BlockExchange):
    """Counts the blocks it sends."""

    sent = 0

    def _answer(self, wants):
        messages = super()._answer(wants)
        self.sent += sum(len(m.blocks) for m in messages)
        return messages


def test_a_peer_may_send_one_copy_per_want_and_no_more():
    block = os.urandom(100)
    cid = parse_cid(cid_for(RAW, block))
    exchange = BlockExchange(None, unixfs.BlockStore(MemoryObjectStore()), clock=lambda: 0.0)
    exchange._asked("honest", [cid])  # asked, and asked again after a fetch gave up
    exchange._asked("honest", [cid])
    copy = wire.Message(blocks=((cid, block),))
    for _ in range(2):
        exchange._received("honest", copy)
    # no fetch waits for it: both copies are counted as duplicates, against no one
    assert exchange.status() == {"refused_blocks": 0, "duplicate_blocks": 2, "duplicate_bytes": 200, "peers": {}}
    exchange._received("honest", copy)  # a third copy of a block asked for twice is not an answer
    exchange._received("stranger", copy)  # nor is a copy from a peer never asked
    assert {p: r["refused_blocks"] for p, r in exchange.status()["peers"].items()} == {"honest": 1, "stranger": 1}


def test_a_block_another_peer_was_asked_for_is_an_offence_from_a_peer_never_asked():
    from flair_node.network.bitswap import _Fetch

    block = os.urandom(100)
    cid = parse_cid(cid_for(RAW, block))
    exchange = BlockExchange(None, unixfs.BlockStore(MemoryObjectStore()), clock=lambda: 0.0)
    fetch = _Fetch("honest", window=4)
    exchange._want(fetch, cid, [])
    exchange._asked("honest", [cid])
    exchange._received("stranger", wire.Message(blocks=((cid, block),)))  # right bytes, but nobody asked it
    assert {p: r["refused_blocks"] for p, r in exchange.status()["peers"].items()} == {"stranger": 1}
    with pytest.raises(trio.WouldBlock):
        fetch.receive.receive_nowait()  # not delivered: the fetch still waits for the honest peer's copy
    exchange._received("honest", wire.Message(blocks=((cid, block),)))
    assert fetch.receive.receive_nowait() == (cid, block)


@pytest.mark.integration
async def test_two_fetches_of_one_dag_from_one_honest_peer_ask_it_for_each_block_once():
    data = os.urandom(40 * unixfs.CHUNK)
    a_blocks, b_blocks = unixfs.BlockStore(MemoryObjectStore()), unixfs.BlockStore(MemoryObjectStore())
    root = unixfs.add(a_blocks, data)
    with trio.fail_after(60):
        async with running_host(Identity.generate()) as a, running_host(Identity.generate()) as b, \
                trio.open_nursery() as nursery:
            server = CountingExchange(a, a_blocks)
            await nursery.start(server.run)
            fetcher = BlockExchange(b, b_blocks)
            await nursery.start(fetcher.run)
            peer = await connect(b, full_addrs(a)[0])

            async def fetch(delay, counts):
                await trio.sleep(delay)  # the second starts while the first is under way
                counts.append(await fetcher.fetch_dag(root, peer, max_size=len(data), window=4))

            for delay in (0.0, 0.02, 0.05, 0.1):
                counts = []
                async with trio.open_nursery() as attempt:
                    attempt.start_soon(fetch, 0.0, counts)
                    attempt.start_soon(fetch, delay, counts)
                assert len(counts) == 2 and unixfs.cat(b_blocks, root, max_size=len(data)) == data
                assert max(counts) == unixfs.max_blocks(len(data))  # the first fetched every block
                for key in list(b_blocks.keys()):
                    b_blocks.delete_key(key)
            # the second fetch waited for the first one's wants: the peer sent each block once per attempt
            assert server.sent == 4 * unixfs.max_blocks(len(data))
            status = fetcher.status()
            assert status == {"refused_blocks": 0, "duplicate_blocks": 0, "duplicate_bytes": 0, "peers": {}}
            nursery.cancel_scope.cancel()


# -- finding 11: stalled and surplus Bitswap streams ---------------------------------------------------------------

def buffered(host, peer):
    """Bytes the host's Yamux connections to ``peer`` hold unread."""
    return sum(len(buffer) for conn in host.get_network().get_connections(peer)
               for buffer in conn.muxed_conn.stream_buffers.values())


async def stall(host, peer, *, streams, sent):
    """Open ``streams`` Bitswap streams to ``peer``, on each half a 4 MiB message (``sent`` bytes of it), then
    wait until the peer has dropped every one (the caller bounds the wait)."""

    async def one():
        try:
            stream = await host.new_stream(peer, [V120])
            await stream.write(varint(wire.MAX_MESSAGE) + os.urandom(sent))
            await stream.read(1)  # nothing ever comes: the read ends when the stream is reset
        except Exception:  # reset as it opened, before the write completed, or while waiting: dropped
            pass

    async with trio.open_nursery() as nursery:
        for _ in range(streams):
            nursery.start_soon(one)


@pytest.mark.integration
async def test_stalled_and_surplus_bitswap_streams_are_reset_and_pin_no_memory(monkeypatch):
    monkeypatch.setattr(framing, "FRAME_TIMEOUT", 1.0)
    monkeypatch.setattr(bitswap, "IDLE_SECONDS", 1.0)
    data = os.urandom(5000)
    victim_blocks = unixfs.BlockStore(MemoryObjectStore())
    root = unixfs.add(victim_blocks, data)
    with trio.fail_after(30):
        async with exchanges(victim_blocks, unixfs.BlockStore(MemoryObjectStore())) as nodes:
            (victim_host, victim), (attacker, attacker_exchange) = nodes
            peer = await connect(attacker, full_addrs(victim_host)[0])
            me = str(attacker.get_id())
            await stall(attacker, peer, streams=24, sent=1 << 20)
            status = victim.stream_status()
            assert status["open"] == 0
            assert status["reset"][me] == {"frame": bitswap.MAX_STREAMS, "idle": 0,
                                           "over_cap": 24 - bitswap.MAX_STREAMS}
            assert buffered(victim_host, attacker.get_id()) < 64 * 1024  # nothing of the 24 MiB is held
            idle = await attacker.new_stream(peer, [V120])  # says nothing at all
            with trio.fail_after(5), pytest.raises((StreamError, EOFError)):  # reset by the victim
                await idle.read(1)
            assert victim.stream_status()["reset"][me]["idle"] == 1
            status = victim.status()
            assert (status["refused_blocks"], status["peers"]) == (0, {})  # slow is no offence: no points
            assert await attacker_exchange.fetch_dag(root, peer, max_size=len(data)) == 1  # still served


@pytest.mark.integration
async def test_sync_requests_beyond_the_per_peer_cap_are_reset():
    theirs = RepoSet.in_memory(OWNER)
    repo = theirs.create("digits", tiny_state(0))
    repo.invite(OWNER, ALICE.public_key, "contributor")
    with trio.fail_after(30):
        async with running_host(OWNER) as server, running_host(STRANGER) as attacker, \
                running_host(ALICE) as member, trio.open_nursery() as nursery:
            served = sync.serve(server, theirs, timeout=2)
            mine = RepoSet.in_memory(ALICE)
            exchange = BlockExchange(member, mine.blocks)
            await nursery.start(exchange.run)
            await nursery.start(BlockExchange(server, theirs.blocks).run)
            peer = await connect(attacker, full_addrs(server)[0])
            held = 0
            for _ in range(3 * rpc.MAX_PER_PEER):
                try:
                    stream = await attacker.new_stream(peer, [PROTOCOL])
                    await stream.write(b"\x00\x10")  # half of a frame's length, and nothing more
                    held += 1
                except (StreamFailure, StreamError):  # reset by the server before or as it opened
                    pass
            assert held >= rpc.MAX_PER_PEER
            refused = served.refused.counts
            await until(lambda: refused[str(attacker.get_id())] == 2 * rpc.MAX_PER_PEER, "surplus reset", 5)
            # A member is still answered meanwhile.
            result = await pull(mine, repo.id, PeerSource(member, await connect(member, full_addrs(server)[0]),
                                                          exchange, ALICE), memory=RoundMemory())
            assert result.commits == 1 and result.refused == {}
            await until(lambda: not served.open, "the stalled requests timed out", 5)
            assert served.status() == {"open": 0, "refused": {str(attacker.get_id()): 2 * rpc.MAX_PER_PEER},
                                       "failed": {str(attacker.get_id()): rpc.MAX_PER_PEER}}  # the stalled ones
            nursery.cancel_scope.cancel()


# -- finding 10: a member whose role has expired ---------------------------------------------------------------

async def test_the_sync_server_judges_roles_at_the_time_of_asking():
    theirs = RepoSet.in_memory(OWNER)
    repo = theirs.create("digits", tiny_state(0))
    expires = now_ms() + 60_000
    repo.invite(OWNER, ALICE.public_key, "reader", expires_ms=expires)
    ask = {"op": "heads", "repo": repo.id}
    assert "moves" in await SyncServer(theirs, clock=lambda: expires - 1).handle(ALICE.public_key, ask)
    for late in (expires, expires + 86_400_000):
        with pytest.raises(Forbidden, match="members only"):
            await SyncServer(theirs, clock=lambda late=late: late).handle(ALICE.public_key, ask)


@pytest.mark.integration
async def test_a_member_whose_role_expired_reads_nothing_over_the_network():
    theirs = RepoSet.in_memory(OWNER)
    repo = theirs.create("digits", tiny_state(0))
    expires = now_ms() + 2_000
    repo.invite(OWNER, ALICE.public_key, "reader", expires_ms=expires)
    with trio.fail_after(30):
        async with running_host(OWNER) as server, running_host(ALICE) as member, trio.open_nursery() as nursery:
            sync.serve(server, theirs)
            await nursery.start(BlockExchange(server, theirs.blocks).run)
            exchange = BlockExchange(member, RepoSet.in_memory(ALICE).blocks)
            await nursery.start(exchange.run)
            source = PeerSource(member, await connect(member, full_addrs(server)[0]), exchange, ALICE)
            assert "moves" in await source.heads(repo.id)  # while the role holds
            await trio.sleep(max(0.0, (expires - now_ms()) / 1000) + 0.1)
            with pytest.raises(Forbidden, match="members only"):
                await source.heads(repo.id)
            with pytest.raises(Forbidden, match="members only"):
                await source.records(repo.id, [repo.head("main")])
            nursery.cancel_scope.cancel()


# -- against a real daemon ----------------------------------------------------------------------------------------

@pytest.mark.integration
async def test_a_daemon_pulling_from_a_hostile_peer_fetches_nothing_unchecked_and_survives_dag_bombs(tmp_path):
    from flair_node.testing.daemon import running_daemon

    with running_daemon(tmp_path / "victim") as daemon:
        victim_key = daemon.client.call("node.whoami")["public_key"]
        hostile = RepoSet.in_memory(OWNER)
        repo = hostile.create("digits", tiny_state(0))
        repo.invite(OWNER, victim_key, "contributor")
        huge = terabyte_payload(repo)
        forged = plant(repo, STRANGER, "huge", payload=huge)  # a stranger's commit naming 1 TiB
        blocks = CountingBlocks(hostile.blocks.objects)
        bombs = {}
        for name, make in BOMBS.items():  # the owner's own commits, whose payloads are DAG bombs
            root, declared = make(blocks)
            base = repo.commit(repo.head("main")).payload
            bombs[plant(repo, OWNER, name.replace(" ", "-"), payload=Payload(root, base.codec, declared,
                                                                             key_epoch=base.key_epoch)).id] = root
        with trio.fail_after(90):
            async with running_host(OWNER) as host, trio.open_nursery() as nursery:
                sync.serve(host, hostile)
                await nursery.start(BlockExchange(host, blocks).run)
                address = full_addrs(host)[0]
                started = trio.current_time()
                result = await trio.to_thread.run_sync(
                    lambda: daemon.client.call("repo.pull", repo=repo.id, peer=address))
                assert trio.current_time() - started < 10  # the bombs were not expanded
                assert "is not a member" in result["refused"][forged.id]
                assert blocks.reads[huge.cid] == 0  # not one block of the 1 TiB was asked for
                for commit, root in bombs.items():
                    assert re.search("links a block of zero bytes|has more than \\d+ blocks", result["refused"][commit])
                    assert 1 <= blocks.reads[root] <= 2  # asked once (twice if a catch-up pull ran meanwhile)
                assert len(blocks.reads) <= 1 + 2 * 2  # the honest payload, and at most two blocks per bomb
                log = await trio.to_thread.run_sync(lambda: daemon.client.call("repo.log", repo=repo.id))
                assert [c["id"] for c in log["commits"]] == [repo.head("main")]  # only what checked out
                branches = await trio.to_thread.run_sync(lambda: daemon.client.call("repo.branch", repo=repo.id))
                assert set(branches["branches"]) == {"main"}
                nursery.cancel_scope.cancel()
        assert daemon.client.call("node.whoami")["public_key"] == victim_key  # still answering


@pytest.mark.integration
@pytest.mark.slow  # the daemon's own frame timeout: about 25 s
async def test_a_daemon_resets_stalled_bitswap_streams(tmp_path):
    from flair_node.testing.daemon import running_daemon
    from flair_node.testing.memory import rss_mb

    with running_daemon(tmp_path / "victim") as daemon:
        address = daemon.client.call("node.status")["p2p"]["addrs"][0]
        before = rss_mb(daemon.pid)
        with trio.fail_after(framing.FRAME_TIMEOUT + 30):
            async with running_host(STRANGER) as attacker:
                peer = await connect(attacker, address)
                started = trio.current_time()
                await stall(attacker, peer, streams=24, sent=2 << 20)
                assert trio.current_time() - started < framing.FRAME_TIMEOUT + 15
        grown = rss_mb(daemon.pid) - before
        assert grown < 24, f"the daemon holds {grown:.0f} MB more after 24 stalled streams of 2 MiB"
        assert daemon.client.call("node.whoami")
