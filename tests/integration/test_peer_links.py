"""Which peers a pull's payloads are asked of, and how one is dialled again (``daemon.peer_links``), on real hosts
on 127.0.0.1: a holder behind NAT, known only at its relayed address, that closes its connection in the middle
of a transfer is dialled again through the relay and sends the rest (py-libp2p's own dial, which opening a
stream makes, skips relayed addresses). A pull that failed, and liveness after pings went unanswered, close the
connections a peer had when the trouble began and not one opened since: the fresh one carries on."""

import os
from contextlib import AsyncExitStack
from functools import partial

import multiaddr
import pytest
import trio
from libp2p.host.ping import PingService

from flair_node.core.identity import Identity
from flair_node.core.ids import RepoId
from flair_node.daemon.peer_links import PeerLinks
from flair_node.network.bitswap import BlockExchange
from flair_node.network.host import connect, connections, full_addrs, peer_addrs, running_host
from flair_node.network.liveness import MISSES, Liveness
from flair_node.network.relay import Limits, Relays
from flair_node.storage import unixfs
from flair_node.storage.stores import MemoryObjectStore

pytestmark = pytest.mark.integration

REPO = RepoId("r" * 64)


def store():
    return unixfs.BlockStore(MemoryObjectStore())


class Slow(BlockExchange):
    """Waits ``pause`` seconds before each message of blocks (a slow link), and counts the blocks it sends."""

    def __init__(self, host, blocks, pause):
        super().__init__(host, blocks)
        self.sent, self.pause = 0, pause

    async def _send(self, peer, message):
        if message.blocks:
            await trio.sleep(self.pause)
        await super()._send(peer, message)
        self.sent += len(message.blocks)


def only_at(host, peer, addresses):
    """Make ``host`` know ``peer`` at ``addresses`` alone, as a node behind NAT is known (its private addresses
    are of no use to anyone else)."""
    host.get_peerstore().clear_addrs(peer)
    host.get_peerstore().add_addrs(peer, [multiaddr.Multiaddr(a) for a in addresses], 3600)


async def test_a_holder_behind_nat_that_closes_its_connection_mid_transfer_is_dialled_again_through_its_relay():
    data = os.urandom(40 * unixfs.CHUNK)
    full = store()
    root = unixfs.add(full, data)
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            relay, a, b, c = [await stack.enter_async_context(running_host(Identity.generate())) for _ in range(4)]
            nursery = await stack.enter_async_context(trio.open_nursery())
            relays = {}
            for host in (relay, b, c):
                relays[host] = Relays(host, serve=host is relay, limits=Limits())
                await nursery.start(relays[host].run)
            holder, fetcher = Slow(b, full, pause=0.2), BlockExchange(c, store())
            for exchange in (BlockExchange(a, store()), holder, fetcher):  # a: a member lacking the blocks
                await nursery.start(exchange.run)
            for host in (b, c):
                await connect(host, full_addrs(relay)[0])
            while not relays[b].offers_relay(relay.get_id()):  # noqa: ASYNC110 - identify sets no event
                await trio.sleep(0.05)
            circuit = await relays[b].reserve(relay.get_id())  # b is behind NAT: reached through the relay
            await relays[c].connect(circuit)
            await connect(c, full_addrs(a)[0])
            members = {str(a.get_id()), str(b.get_id())}
            links = PeerLinks(c, relays[c].connect, member=lambda repo, peer: peer in members,
                              relayed_only=relays[c].relayed_only, known=lambda peer: ())
            fetched = []

            async def fetch():  # pulled from a: a lacks the blocks, so b is asked for them
                fetched.append(await fetcher.fetch_from_any(root, partial(links.holders, REPO, a.get_id()),
                                                             max_size=len(data), connect=links.connect))

            nursery.start_soon(fetch)
            while len(list(fetcher.blocks.keys())) < 8:  # noqa: ASYNC110 - the store sets no event
                await trio.sleep(0.01)
            # b closes its connections to c in the middle of the transfer, as a node does when a pull from c
            # failed on a connection a cut left behind; c knows b only at its relayed address, and b cannot dial c
            only_at(c, b.get_id(), [circuit])
            only_at(b, c.get_id(), [])
            await b.disconnect(c.get_id())
            assert len(list(fetcher.blocks.keys())) < 41
            assert peer_addrs(c, b.get_id()) == [circuit]
            while not fetched:  # noqa: ASYNC110 - the fetch sets no event
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert fetched == [41] and unixfs.cat(fetcher.blocks, root, max_size=len(data)) == data
    # c dialled b again, through the relay
    assert relays[c].counts["relayed_dials"] == 2 and relays[c].counts["relayed_dial_failures"] == 0


async def another_connection(host, peer, address, besides):
    """Open one more connection from ``host`` to ``peer`` at ``address``, beside the connections ``besides``
    (as a link back from a cut, or the peer dialling again, leaves a fresh connection beside a stale one)."""
    await host.get_network().dial_addr(multiaddr.Multiaddr(address.split("/p2p/")[0]), peer)
    fresh = [conn for conn in connections(host, peer) if all(conn is not old for old in besides)]
    assert len(fresh) == 1
    return fresh[0]


async def test_a_failed_pull_closes_the_connections_it_began_with_and_not_one_opened_since():
    async with AsyncExitStack() as stack:
        b, c = [await stack.enter_async_context(running_host(Identity.generate())) for _ in range(2)]
        peer = await connect(c, full_addrs(b)[0])
        links = PeerLinks(c, partial(connect, c), member=lambda repo, peer: True, relayed_only=lambda peer: False,
                          known=lambda peer: ())
        stale = links.connections(peer)  # what a pull begins with
        fresh = await another_connection(c, peer, full_addrs(b)[0], stale)
        await links.drop(str(peer), stale)
        assert connections(c, peer) == [fresh] and links.redial_due()
        assert await PingService(c).ping(peer, 1)  # the fresh one carries streams on


async def test_liveness_closes_the_connections_open_at_the_first_missed_ping_and_not_one_opened_since():
    class Silent:  # the peer answers no ping
        async def ping(self, peer, count):
            raise OSError("no answer")

    async with AsyncExitStack() as stack:
        b, c = [await stack.enter_async_context(running_host(Identity.generate())) for _ in range(2)]
        peer = await connect(c, full_addrs(b)[0])
        liveness = Liveness(c)
        liveness.ping = Silent()
        stale = connections(c, peer)
        await liveness._check(peer, trio.Semaphore(0))  # the first miss: the connections then are suspects
        fresh = await another_connection(c, peer, full_addrs(b)[0], stale)
        for _ in range(MISSES - 1):
            await liveness._check(peer, trio.Semaphore(0))
        assert liveness.counts["dropped"] == 1 and connections(c, peer) == [fresh]
