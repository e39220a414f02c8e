"""Attacks on a node's DHT (``network.discovery``), from a stranger speaking the IPFS DHT protocol through py-libp2p's
own ``KadDHT``: values parked in the node's memory, provider records without end, a provider record carrying
thousands of addresses, a provider naming another peer; and a clone whose first provider lies."""

from contextlib import asynccontextmanager

import multiaddr
import pytest
import trio
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.tools.anyio_service import background_trio_service

from flair_node.core.identity import Identity
from flair_node.network import discovery
from flair_node.network.discovery import Found, Kademlia, locator, locator_key
from flair_node.network.host import connect, full_addrs, running_host


@asynccontextmanager
async def node_and_stranger(*, stranger_addrs=None):
    """A Flair DHT server, and a stranger's py-libp2p DHT (client) connected to it."""
    async with running_host(Identity.generate()) as host, running_host(Identity.generate()) as other, \
            trio.open_nursery() as nursery:
        if stranger_addrs is not None:  # what the stranger publishes as its addresses
            other.get_addrs = lambda: [multiaddr.Multiaddr(a) for a in stranger_addrs]
        dht = Kademlia(host, server=True)
        await nursery.start(dht.run)
        theirs = KadDHT(other, DHTMode.CLIENT)
        async with background_trio_service(theirs):
            await connect(other, full_addrs(host)[0])
            yield host, dht, other, theirs
        nursery.cancel_scope.cancel()


async def test_a_stranger_cannot_park_values_in_a_nodes_dht():
    async with node_and_stranger() as (host, dht, _, theirs):
        for i in range(20):
            await theirs.value_store._store_at_peer(host.get_id(), f"/flair/{i}".encode(), b"x" * 100_000)
        await theirs.value_store._store_at_peer(host.get_id(), b"plain-key", b"y" * 100_000)
        assert dht.status()["stored_values"] == 0


async def test_provider_records_are_capped_in_keys_and_addresses(monkeypatch):
    monkeypatch.setattr(discovery, "MAX_PROVIDER_KEYS", 5)
    many = [f"/ip4/10.9.{i // 250}.{i % 250 + 1}/tcp/4001" for i in range(2000)]
    async with node_and_stranger(stranger_addrs=many) as (host, dht, other, theirs):
        for i in range(8):  # within py-libp2p's own rate limit (10 a peer in 10 s): the cap is what stops these
            key = bytes.fromhex(locator_key(locator(b"flood", bytes([i]))))
            assert await theirs.provider_store._send_add_provider(host.get_id(), key)
        with trio.fail_after(5):  # the node echoes each message as it takes it in: the last may still be under way
            while dht.status()["refused_keys"] < 3:  # noqa: ASYNC110 - py-libp2p sets no event
                await trio.sleep(0.05)
        stored = dht._providers.providers  # Flair's bounded store inside the DHT, the thing under test
        assert len(stored) == 5
        for records in stored.values():
            assert all(len(r.addresses) == discovery.MAX_PROVIDER_ADDRS for r in records.values())
        # what a lookup hands on is bounded the same way
        found = await dht.find(locator(b"flood", bytes([0])))
        assert [f.peer for f in found] == [str(other.get_id())] and len(found[0].addrs) <= discovery.MAX_PROVIDER_ADDRS


async def test_a_locator_must_be_32_bytes():
    with pytest.raises(Exception, match="32 bytes"):
        locator_key(b"short")


async def test_an_address_naming_another_peer_is_not_dialled():
    from flair_node.daemon.discovery_service import DiscoveryService
    from flair_node.storage.repos import RepoSet

    async with running_host(Identity.generate()) as host, running_host(Identity.generate()) as victim:
        service = DiscoveryService(host, Kademlia(host, server=False), RepoSet.in_memory(Identity.generate()),
                                   member_peers=lambda repo: 0)
        liar = Found("12D3KooWHsRfLZbXPNLqqtC965aA5C24B3v4QiPNUxB8U6XCKm1B", tuple(full_addrs(victim)))
        assert await service.dial(liar) is None
        assert victim.get_id() not in host.get_connected_peers()
