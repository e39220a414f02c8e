"""Attacks on what makes nodes behind NAT reachable (``network.reachability``, ``network.relay``), by peers on
127.0.0.1: a dial-back aimed anywhere but at the asker, asked too often, malformed, or asked over a relay; a relay
filled with reservations; a circuit used past its data budget."""

import re
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
from libp2p.custom_types import TProtocol

from flair_node.core.errors import InvalidInput, RemoteError, ResourceExhausted
from flair_node.core.identity import Identity
from flair_node.network import reachability, rpc
from flair_node.network.host import connect, direct_address, full_addrs, running_host
from flair_node.network.relay import Limits, Relays

ECHO = TProtocol("/flair-test/sink/1.0.0")


@asynccontextmanager
async def hosts(count, *, relay_limits=None):
    """``count`` hosts, each with a ``Relays`` (the first serving as a relay when ``relay_limits`` is given)."""
    async with AsyncExitStack() as stack:
        every = [await stack.enter_async_context(running_host(Identity.generate())) for _ in range(count)]
        # the services' nursery inside the hosts: it ends (and they stop) before any host does
        nursery = await stack.enter_async_context(trio.open_nursery())
        out = []
        for i, host in enumerate(every):
            relays = Relays(host, serve=i == 0 and relay_limits is not None, limits=relay_limits or Limits())
            await nursery.start(relays.run)
            out.append((host, relays))
        yield out
        nursery.cancel_scope.cancel()


async def test_a_dial_back_goes_only_to_the_askers_own_address_once_per_interval():
    async with hosts(2) as [(server, _), (asker, _)]:
        reachability.serve(server)
        await connect(asker, full_addrs(server)[0])
        port = int(full_addrs(asker)[0].split("/tcp/")[1].split("/")[0])
        answer = await reachability.ask(asker, server.get_id(), port)
        # the request names a port only: the address is the one the asker's connection comes from
        assert answer.reachable and answer.address == f"/ip4/127.0.0.1/tcp/{port}"
        with pytest.raises(ResourceExhausted, match="one dial-back per"):
            await reachability.ask(asker, server.get_id(), port)


async def test_a_peers_direct_address_is_the_other_end_of_its_connection_on_either_side():
    """What a dial-back goes to (``reachability``) and what a relay's circuit address starts with (``relay``)."""
    async with hosts(3) as [(server, _), (asker, _), (stranger, _)]:
        await connect(asker, full_addrs(server)[0])
        assert direct_address(asker, server.get_id()) == full_addrs(server)[0].split("/p2p/")[0]  # where it dialled
        # the dialled side: where the connection comes from (the port the asker dialled from)
        assert re.fullmatch(r"/ip4/127\.0\.0\.1/tcp/\d+", direct_address(server, asker.get_id()) or "")
        assert direct_address(server, stranger.get_id()) is None  # not connected


@pytest.mark.parametrize("address", ["/dns4/elsewhere.example/tcp/{port}", "/ip4/127.0.0.1/tcp/1",
                                     "/ip4/10.0.0.1/tcp/{port}/p2p-circuit", "/ip4/999.0.0.1/tcp/{port}",
                                     "/ip6/127.0.0.1/tcp/{port}", "x" * 1000])
async def test_a_dial_back_answer_naming_anything_but_an_ip_at_the_asked_port_is_refused(address):
    """A node publishes the addresses dial-backs reached: a lying peer must not make it publish its choice."""
    async with hosts(2) as [(liar, _), (asker, _)]:
        async def lie(peer, request):
            return {"reachable": True, "address": address.format(**request)}

        rpc.serve(liar, reachability.PROTOCOL, lie)
        await connect(asker, full_addrs(liar)[0])
        with pytest.raises(RemoteError, match="malformed dial-back answer"):
            await reachability.ask(asker, liar.get_id(), 4001)


def test_a_public_node_publishes_every_address_reached_those_more_peers_reached_first():
    from flair_node.daemon.reachability_service import ReachabilityService

    class Host:
        def get_id(self):
            return "me"

    service = ReachabilityService.__new__(ReachabilityService)
    service.host, service.state = Host(), "public"
    service.answers = [reachability.Answer(peer, ok, address) for peer, ok, address in [
        ("a", True, "/ip4/198.51.100.7/tcp/4001"), ("b", True, "/ip4/203.0.113.9/tcp/4001"),
        ("c", True, "/ip4/203.0.113.9/tcp/4001"), ("d", False, "/ip4/192.0.2.1/tcp/4001")]]
    assert service.addresses() == ["/ip4/203.0.113.9/tcp/4001/p2p/me", "/ip4/198.51.100.7/tcp/4001/p2p/me"]


@pytest.mark.parametrize("request_", [{"port": 0}, {"port": 70000}, {"port": "22"}, {"host": "10.0.0.1", "port": 22},
                                      [22], "x" * 1000])
async def test_a_malformed_dial_back_request_is_refused_without_a_dial(request_):
    async with hosts(2) as [(server, _), (asker, _)]:
        reachability.serve(server)
        await connect(asker, full_addrs(server)[0])
        with pytest.raises(InvalidInput, match="a dial-back request is"):
            await rpc.request(asker, server.get_id(), reachability.PROTOCOL, request_)


async def test_a_dial_back_asked_over_a_relay_is_refused():
    async with hosts(3, relay_limits=Limits()) as [(relay, _), (server, server_relays), (asker, asker_relays)]:
        reachability.serve(server)
        for host in (server, asker):
            await connect(host, full_addrs(relay)[0])
        await trio.sleep(0.5)  # identify tells the server that the relay serves as one
        circuit = await server_relays.reserve(relay.get_id())
        await asker_relays.connect(circuit)
        assert [c["kind"] for c in asker_relays.kind(server.get_id())] == ["relayed"]
        with pytest.raises(InvalidInput, match="over a direct connection"):
            await reachability.ask(asker, server.get_id(), 4001)


async def test_a_relay_holds_no_more_reservations_than_its_limit():
    async with hosts(3, relay_limits=Limits(reservations=1)) as [(relay, _), (a, a_relays), (b, b_relays)]:
        for host in (a, b):
            await connect(host, full_addrs(relay)[0])
        await trio.sleep(0.5)
        await a_relays.reserve(relay.get_id())
        with pytest.raises(Exception, match="refused a reservation"):
            await b_relays.reserve(relay.get_id())
        assert b_relays.counts["reservation_failures"] == 1


async def test_a_circuit_past_its_data_budget_is_cut_and_the_relay_goes_on():
    async with hosts(3, relay_limits=Limits(circuit_mb=1)) as [(relay, _), (a, a_relays), (b, b_relays)]:
        received = []

        async def sink(stream):
            try:
                while data := await stream.read(65536):
                    received.append(len(data))
            except Exception:  # the relay cut the circuit: what arrived is counted
                pass

        a.set_stream_handler(ECHO, sink)
        for host in (a, b):
            await connect(host, full_addrs(relay)[0])
        await trio.sleep(0.5)
        circuit = await a_relays.reserve(relay.get_id())
        await b_relays.connect(circuit)
        stream = await b.new_stream(a.get_id(), [ECHO])
        with pytest.raises(Exception), trio.fail_after(30):  # noqa: B017 - py-libp2p's stream errors vary
            for _ in range(64):  # 4 MiB against a budget of 1
                await stream.write(b"x" * 65536)
        await trio.sleep(0.5)
        assert 0 < sum(received) <= (1 << 20) + 65536
        # the relay still relays: a new circuit carries a new stream
        await b.disconnect(a.get_id())
        await b_relays.connect(circuit)
        stream = await b.new_stream(a.get_id(), [ECHO])
        await stream.write(b"y" * 1000)
