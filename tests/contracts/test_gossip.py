"""The gossip contract, run against every implementation: memory nodes in one trio run, Flair's GossipSub on real
hosts on 127.0.0.1 (random ports), py-libp2p's GossipSub (the reference it must interoperate with), and a mixed
cluster where Flair's and py-libp2p's routers alternate, so every link is an interop link.

Each test draws its links explicitly (all to all, or a line A-B-C where B is the only way between A and C) and
waits, with a bounded poll, until every node's mesh holds exactly its linked neighbours. That something did NOT
happen (a duplicate, a relay of a rejected message) can only be observed over time: those checks wait a short
``QUIET`` period after the messages that must arrive have arrived.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio

from flair_node.core.errors import InvalidInput
from flair_node.core.identity import Identity
from flair_node.core.ids import PeerId
from flair_node.network.gossip import MAX_MESSAGE_SIZE, Gossip, GossipMessage, MemoryGossipNetwork
from flair_node.network.gossipsub import GossipSub
from flair_node.network.host import connect, full_addrs, running_host
from flair_node.testing.pylibp2p_gossip import Libp2pGossip

TOPIC = "flair/repo/7f3a1c"
QUIET = 0.5  # seconds to wait for what must not arrive
FULL3 = [(0, 1), (0, 2), (1, 2)]
LINE3 = [(0, 1), (1, 2)]  # A - B - C


@dataclass
class Cluster:
    """Running gossip nodes, what each received, and their links."""

    nodes: list[Gossip]
    links: Sequence[tuple[int, int]]
    received: list[list[GossipMessage]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.received = [[] for _ in self.nodes]

    async def collect(self, index: int) -> None:
        async for message in self.nodes[index].messages:
            self.received[index].append(message)

    def neighbours(self, index: int) -> set[PeerId]:
        return {self.nodes[b if a == index else a].peer_id for a, b in self.links if index in (a, b)}

    async def join(self, validators: Sequence[Callable] | None = None, topic: str = TOPIC) -> None:
        """Every node joins ``topic``; returns once each node's mesh is exactly its neighbours."""
        for i, node in enumerate(self.nodes):
            await node.join(topic, validators[i] if validators else accept)
        await wait_until(lambda: all(set(n.peers(topic)) == self.neighbours(i) for i, n in enumerate(self.nodes)))

    def data(self, index: int) -> list[bytes]:
        return [m.data for m in self.received[index]]


def accept(forwarder: PeerId, data: bytes) -> bool:
    return True


async def wait_until(condition: Callable[[], bool], seconds: float = 15) -> None:
    """Poll ``condition`` (mesh and counters are py-libp2p state with no event to wait on) for ``seconds``."""
    with trio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.02)


@asynccontextmanager
async def memory_nodes(sizes: Sequence[int], links: Sequence[tuple[int, int]]) -> AsyncIterator[list[Gossip]]:
    network = MemoryGossipNetwork(full_mesh=False)
    nodes = [network.node(max_message_size=size) for size in sizes]
    for a, b in links:
        network.connect(nodes[a].peer_id, nodes[b].peer_id)
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        yield list(nodes)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def libp2p_nodes(sizes: Sequence[int], links: Sequence[tuple[int, int]], kinds: Sequence[type]
                       ) -> AsyncIterator[list[Gossip]]:
    async with AsyncExitStack() as stack:
        hosts = [await stack.enter_async_context(running_host(Identity.generate())) for _ in sizes]
        nursery = await stack.enter_async_context(trio.open_nursery())
        nodes = [kinds[i % len(kinds)](host, max_message_size=size)
                 for i, (host, size) in enumerate(zip(hosts, sizes, strict=True))]
        for node in nodes:
            await nursery.start(node.run)
        for a, b in links:
            await connect(hosts[b], full_addrs(hosts[a])[0])
        yield list(nodes)
        nursery.cancel_scope.cancel()


KINDS = {"gossipsub": [GossipSub], "py-libp2p": [Libp2pGossip], "mixed": [GossipSub, Libp2pGossip]}


def _clusters(kind: str) -> Callable:
    """``async with make(3, links) as c``: started, linked nodes of ``kind`` whose messages are being collected."""

    @asynccontextmanager
    async def make(n: int, links: Sequence[tuple[int, int]], sizes: Sequence[int] | None = None
                   ) -> AsyncIterator[Cluster]:
        sizes = sizes or [MAX_MESSAGE_SIZE] * n
        start = memory_nodes(sizes, links) if kind == "memory" else libp2p_nodes(sizes, links, KINDS[kind])
        with trio.fail_after(120):
            async with start as nodes, trio.open_nursery() as nursery:
                result = Cluster(nodes, links)
                for i in range(n):
                    nursery.start_soon(result.collect, i)
                yield result
                nursery.cancel_scope.cancel()

    return make


@pytest.fixture(params=["memory", *(pytest.param(kind, marks=pytest.mark.integration) for kind in KINDS)])
def cluster(request: pytest.FixtureRequest) -> Callable:
    return _clusters(request.param)


@pytest.fixture(params=["memory", pytest.param("gossipsub", marks=pytest.mark.integration)])
def closed_cluster(request: pytest.FixtureRequest) -> Callable:
    """The implementations that keep a closed mesh (``Libp2pGossip`` refuses ``admit``)."""
    return _clusters(request.param)


class Recorder:
    """A validator that records ``(forwarder, data)`` and rejects data starting with ``bad``; sync or async."""

    def __init__(self, *, is_async: bool = False, delay: float = 0.0) -> None:
        self.calls: list[tuple[PeerId, bytes]] = []
        self.is_async, self.delay = is_async, delay

    def verdict(self, forwarder: PeerId, data: bytes) -> bool:
        self.calls.append((forwarder, data))
        return not data.startswith(b"bad")

    def validator(self) -> Callable:
        if not self.is_async:
            return self.verdict

        async def check(forwarder: PeerId, data: bytes) -> bool:
            await trio.sleep(self.delay)
            return self.verdict(forwarder, data)

        return check


@pytest.mark.parametrize("is_async", [False, True], ids=["sync-validator", "async-validator"])
async def test_a_message_reaches_every_other_node_exactly_once(cluster, is_async):
    # Z's validator is slower than B's: Z gets B's relay while still judging A's copy (py-libp2p would deliver both).
    recorders = [Recorder(is_async=is_async, delay=delay) for delay in (0.0, 0.0, 0.3)]
    async with cluster(3, FULL3) as c:
        await c.join([r.validator() for r in recorders])
        a = c.nodes[0]
        await a.publish(TOPIC, b"commit 1")
        await wait_until(lambda: len(c.received[1]) == len(c.received[2]) == 1)
        await trio.sleep(QUIET)
        for i in (1, 2):
            assert c.received[i] == [GossipMessage(TOPIC, b"commit 1", a.peer_id)]
            assert {data for _, data in recorders[i].calls} == {b"commit 1"}
            assert recorders[i].calls[0][0] in {a.peer_id, c.nodes[3 - i].peer_id}  # whoever handed it over
            assert c.nodes[i].status()["delivered"] == 1
        assert c.received[0] == [] and recorders[0].calls == []  # the publisher hears nothing back
        assert a.status()["published"] == 1
        assert a.status()["topics"] == {TOPIC: {"peers": 2}}


async def test_a_rejected_message_is_neither_delivered_nor_relayed(cluster):
    recorders = [Recorder() for _ in range(3)]
    async with cluster(3, LINE3) as c:
        await c.join([r.validator() for r in recorders])
        a, b, z = c.nodes
        await a.publish(TOPIC, b"bad announcement")
        await wait_until(lambda: b.status()["rejected"] == 1)
        await a.publish(TOPIC, b"good announcement")
        await wait_until(lambda: len(c.received[2]) == 1)
        await trio.sleep(QUIET)
        assert c.data(1) == c.data(2) == [b"good announcement"]
        assert c.received[2][0].from_peer == a.peer_id  # published by A, relayed by B
        assert recorders[1].calls == [(a.peer_id, b"bad announcement"), (a.peer_id, b"good announcement")]
        assert recorders[2].calls == [(b.peer_id, b"good announcement")]  # C never saw the bad one
        assert b.status()["rejected"] == 1 and z.status()["rejected"] == 0


async def test_a_validator_that_raises_rejects(cluster):
    def broken(forwarder: PeerId, data: bytes) -> bool:
        raise ValueError("validator bug")

    async with cluster(3, LINE3) as c:
        await c.join([accept, broken, accept])
        await c.nodes[0].publish(TOPIC, b"announcement")
        await wait_until(lambda: c.nodes[1].status()["rejected"] == 1)
        await trio.sleep(QUIET)
        assert c.received == [[], [], []]


async def test_leave_stops_delivery(cluster):
    async with cluster(3, FULL3) as c:
        await c.join()
        a, b, z = c.nodes
        await z.leave(TOPIC)
        assert z.peers(TOPIC) == [] and z.status()["topics"] == {}
        await a.publish(TOPIC, b"after leave")
        await wait_until(lambda: len(c.received[1]) == 1)
        await wait_until(lambda: a.peers(TOPIC) == [b.peer_id])  # A noticed Z left
        await trio.sleep(QUIET)
        assert c.received[2] == []
        with pytest.raises(InvalidInput):
            await z.publish(TOPIC, b"not joined")


async def test_size_limits(cluster):
    async with cluster(2, [(0, 1)], sizes=[2 * MAX_MESSAGE_SIZE, MAX_MESSAGE_SIZE]) as c:
        await c.join()
        big, small = c.nodes
        with pytest.raises(InvalidInput, match="over the"):
            await small.publish(TOPIC, bytes(MAX_MESSAGE_SIZE + 1))
        with pytest.raises(InvalidInput):
            await small.publish("", b"no topic")
        await big.publish(TOPIC, bytes(MAX_MESSAGE_SIZE + 1))  # within the sender's limit, over the receiver's
        await wait_until(lambda: small.status()["oversize"] == 1)
        await big.publish(TOPIC, bytes(MAX_MESSAGE_SIZE))  # exactly at the limit
        await wait_until(lambda: len(c.received[1]) == 1)
        await trio.sleep(QUIET)
        assert c.data(1) == [bytes(MAX_MESSAGE_SIZE)]
        assert small.status()["rejected"] == 0 and small.status()["delivered"] == 1


async def test_a_burst_of_1000_reaches_every_node(cluster):
    burst = [b"announcement %04d" % i for i in range(1000)]
    async with cluster(3, FULL3) as c:
        await c.join()
        with trio.fail_after(60):
            for data in burst:
                await c.nodes[0].publish(TOPIC, data)
            await wait_until(lambda: len(c.received[1]) >= len(burst) and len(c.received[2]) >= len(burst), 60)
        await trio.sleep(QUIET)
        for i in (1, 2):
            assert sorted(c.data(i)) == burst  # every one, once
            status = c.nodes[i].status()
            assert (status["delivered"], status["dropped_full"], status["rejected"]) == (1000, 0, 0)
        assert c.nodes[0].status()["published"] == 1000 and c.received[0] == []


async def test_a_closed_mesh_sends_nothing_to_whom_it_does_not_admit(closed_cluster):
    # A and B admit each other; Z (everyone's neighbour, admitting all) is let in for a while, then out again.
    async with closed_cluster(3, FULL3) as c:
        a, b, z = c.nodes
        members = {a.peer_id, b.peer_id}
        for node in (a, b):
            await node.join(TOPIC, accept, admit=lambda peer: peer in members)
        await z.join(TOPIC, accept)
        await wait_until(lambda: a.peers(TOPIC) == [b.peer_id] and b.peers(TOPIC) == [a.peer_id])
        await a.publish(TOPIC, b"members only 1")
        await z.publish(TOPIC, b"from a stranger")
        await wait_until(lambda: len(c.received[1]) == 1)
        await trio.sleep(QUIET)
        assert c.data(1) == [b"members only 1"] and c.received[2] == [] and c.received[0] == []
        assert z.peers(TOPIC) == []

        members.add(z.peer_id)  # admitted from the next heartbeat on
        await wait_until(lambda: z.peer_id in a.peers(TOPIC) and a.peer_id in z.peers(TOPIC))
        await a.publish(TOPIC, b"members only 2")
        await wait_until(lambda: c.data(2) == [b"members only 2"])

        members.discard(z.peer_id)
        await wait_until(lambda: z.peers(TOPIC) == [] and z.peer_id not in a.peers(TOPIC) + b.peers(TOPIC))
        await a.publish(TOPIC, b"members only 3")
        await wait_until(lambda: len(c.received[1]) == 3)
        await trio.sleep(QUIET)
        assert c.data(2) == [b"members only 2"]


async def test_an_admission_that_raises_admits_nobody(closed_cluster):
    def broken(peer: PeerId) -> bool:
        raise ValueError("admission bug")

    async with closed_cluster(2, [(0, 1)]) as c:
        a, b = c.nodes
        await a.join(TOPIC, accept, admit=broken)
        await b.join(TOPIC, accept)
        await b.publish(TOPIC, b"not heard")
        await a.publish(TOPIC, b"not sent")
        await trio.sleep(QUIET)
        assert c.received == [[], []] and a.peers(TOPIC) == []


@pytest.mark.integration
async def test_py_libp2p_cannot_keep_a_closed_mesh():
    async with running_host(Identity.generate()) as host, trio.open_nursery() as nursery:
        gossip = Libp2pGossip(host)
        await nursery.start(gossip.run)
        with pytest.raises(InvalidInput, match="closed"):
            await gossip.join(TOPIC, accept, admit=lambda peer: True)
        nursery.cancel_scope.cancel()


@pytest.mark.integration
async def test_join_publish_and_leave_need_a_running_node():
    network = MemoryGossipNetwork()
    node = network.node()
    with pytest.raises(RuntimeError):
        await node.join(TOPIC, accept)
    async with running_host(Identity.generate()) as host:
        gossip = GossipSub(host)
        with pytest.raises(RuntimeError):
            await gossip.publish(TOPIC, b"x")
        assert gossip.peers(TOPIC) == []


@pytest.mark.integration
async def test_gossip_reaches_peers_connected_before_it_started():
    # Connection events only tell of new peers; the daemon may dial before gossip runs.
    with trio.fail_after(30):
        async with running_host(Identity.generate()) as a, running_host(Identity.generate()) as b, \
                trio.open_nursery() as nursery:
            await connect(b, full_addrs(a)[0])
            nodes = [GossipSub(a), GossipSub(b)]
            for node in nodes:
                await nursery.start(node.run)
            await Cluster(nodes, [(0, 1)]).join()
            await nodes[0].publish(TOPIC, b"hello")
            assert await nodes[1].messages.receive() == GossipMessage(TOPIC, b"hello", nodes[0].peer_id)
            nursery.cancel_scope.cancel()
