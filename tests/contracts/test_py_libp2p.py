"""What Flair reads of py-libp2p's private state, run against real py-libp2p objects on 127.0.0.1.

py-libp2p 0.8.1 offers no public way to read these, so Flair reads its private attributes, each through one
accessor (``network.relay.reservations``, ``network.relay.hole_punched``). A py-libp2p upgrade that renames or
reshapes one fails here, by name, instead of leaving ``flair status`` and the relay service wrong.
"""

from contextlib import AsyncExitStack, asynccontextmanager

import trio

from flair_node.core.identity import Identity
from flair_node.network.host import connect, full_addrs, running_host
from flair_node.network.relay import Limits, Relays, hole_punched, reservations

TIMEOUT = 30.0  # s for the whole test: a reservation, a relayed dial and a hole punch on loopback take seconds


@asynccontextmanager
async def relay_and_two_peers():
    """A relay, and two hosts connected to it (each with its ``Relays``), once identify told them it relays."""
    async with AsyncExitStack() as stack:
        hosts = [await stack.enter_async_context(running_host(Identity.generate())) for _ in range(3)]
        nursery = await stack.enter_async_context(trio.open_nursery())
        every = []
        for i, host in enumerate(hosts):
            relays = Relays(host, serve=i == 0, limits=Limits())
            await nursery.start(relays.run)
            every.append((host, relays))
        relay = hosts[0]
        for host in hosts[1:]:
            await connect(host, full_addrs(relay)[0])
        while not all(r.offers_relay(relay.get_id()) for _, r in every[1:]):  # noqa: ASYNC110 - identify sets no event
            await trio.sleep(0.05)
        yield every
        nursery.cancel_scope.cancel()


async def test_a_reservation_and_a_hole_punch_show_in_what_relay_reads_of_py_libp2p():
    with trio.fail_after(TIMEOUT):
        async with relay_and_two_peers() as [(relay, _), (a, a_relays), (b, b_relays)]:
            # CircuitV2Transport._reservations: the relays a node holds a slot on
            assert list(reservations(a_relays.transport)) == []
            circuit = await a_relays.reserve(relay.get_id())
            assert list(reservations(a_relays.transport)) == [relay.get_id()]
            assert a_relays.holds(str(relay.get_id()))

            # DCUtRProtocol._direct_connections: the peers a node upgraded from relayed to direct, on the side that
            # started it (on loopback the upgrade succeeds; DCUtR drives it on each side every 2 s, so either may)
            assert list(hole_punched(a_relays.dcutr)) == list(hole_punched(b_relays.dcutr)) == []
            await b_relays.connect(circuit)
            # the relayed connection alone, for now: the hole punch takes DCUtR's round trips after it
            assert b_relays.relayed_only(a.get_id()) and not b_relays.relayed_only(relay.get_id())

            def punchers():
                return [(relays, other) for relays, other in [(a_relays, b), (b_relays, a)]
                        if other.get_id() in hole_punched(relays.dcutr)]

            while not punchers():  # noqa: ASYNC110 - DCUtR sets no event
                await trio.sleep(0.1)
            for relays, other in punchers():
                assert list(hole_punched(relays.dcutr)) == [other.get_id()]
                assert relays.status()["hole_punched"] == 1
                assert "hole-punched" in [c["kind"] for c in relays.kind(other.get_id())]
                assert not relays.relayed_only(other.get_id())  # payloads go the direct way
