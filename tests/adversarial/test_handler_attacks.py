"""Misbehaving streams on one connection to a node: none of them may cost the node its other streams.

The finding (py-libp2p 0.8.1): each stream a peer opens, from the multistream negotiation to the protocol's
handler, runs as a task of the nursery that accepts that connection's streams, and what it raises escapes into
that nursery. A handler letting ``StreamEOF`` (py-libp2p's end of stream) or a parser's ``ValueError`` through
would end the acceptance of every later stream on the connection; and a stranger's stream naming its protocol in
bytes that are not UTF-8 (py-libp2p decodes the name unguarded) went further, through the swarm's service manager,
and stopped the daemon. ``running_host`` now routes every inbound stream through ``network.handlers.StreamGuard``.

The attack here: a stranger (``testing.hostile``) asks a real daemon which protocols it serves (multistream
``ls``), then on ONE connection misbehaves on each of them in every way below, before and after negotiation,
and after each attack asks a well-formed hello on the same connection: it must be answered within
``SERVED_WITHIN`` seconds (the defect showed as a ``StreamFailure`` after 10 s), and the connection must be the
one it started on (neither side gave up on it). At the end the daemon still answers its API and has logged its
failed streams once for the peer, not once per stream. In process, the guard itself: what a handler raises is
counted against its peer and logged once, and cancellation goes through it untouched. And py-libp2p's
identify-push, which catches its own failures but logged an ERROR (or a WARNING) for each: a stranger's malformed
pushes are logged at DEBUG only, and the connection serves on.
"""

from __future__ import annotations

import logging
import re
import struct
import time

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.identity.identify.pb.identify_pb2 import Identify
from libp2p.identity.identify_push import ID_PUSH

from flair_node.core.identity import Identity
from flair_node.core.protobuf import read_varint, varint
from flair_node.daemon.p2p import P2PService
from flair_node.network import rpc
from flair_node.network.bitswap import BlockExchange
from flair_node.network.handlers import StreamGuard
from flair_node.network.host import Stream, connect, full_addrs, running_host
from flair_node.protocol import hello
from flair_node.protocol.rounds import RoundMemory
from flair_node.storage.repos import RepoSet
from flair_node.testing.cluster import address, configure
from flair_node.testing.daemon import running_daemon
from flair_node.testing.hostile import hostile_peer

ATTACK_TIMEOUT = 50.0  # the whole attack on a daemon, every protocol and every way
STEP_TIMEOUT = 5.0  # one misbehaving stream, opened, written and ended
SERVED_WITHIN = 5.0  # a well-formed request after an attack; the defect made it fail after 10 s
#: What a daemon serves whatever its configuration: Flair's own protocols, and py-libp2p's identify and ping.
ALWAYS_SERVED = {hello.PROTOCOL, "/flair/sync/1.0.0", "/meshsub/1.1.0", "/meshsub/1.0.0", "/ipfs/bitswap/1.2.0",
                 "/ipfs/bitswap/1.1.0", "/ipfs/id/1.0.0", "/ipfs/id/push/1.0.0", "/ipfs/ping/1.0.0"}


def ms(text: str) -> bytes:
    """One multistream-select message: ``text`` and a newline, after their varint length."""
    line = text.encode() + b"\n"
    return varint(len(line)) + line


HANDSHAKE = ms("/multistream/1.0.0")

#: Ways to misbehave on a raw stream, before any protocol is agreed: (bytes written, then "close" or "reset").
BEFORE_NEGOTIATION = {
    "closes at once": (b"", "close"),
    "sends garbage instead of multistream": (b"\xde\xad\xbe\xef" * 16, "close"),
    "names a protocol in bytes that are not UTF-8": (HANDSHAKE + varint(4) + b"\xff\xfe\xfd\n", "close"),
    "names a protocol with a runaway length prefix": (HANDSHAKE + b"\xff" * 12, "close"),
    "names a protocol of 1 GiB and ends": (HANDSHAKE + varint(1 << 30), "close"),
    "names an empty protocol": (HANDSHAKE + varint(0), "close"),
    "names a protocol without its newline": (HANDSHAKE + varint(3) + b"abc", "close"),
    "names a protocol nobody serves": (HANDSHAKE + ms("/nobody/1.0.0"), "close"),
    "resets inside the handshake": (HANDSHAKE[:8], "reset"),
}

#: Ways to misbehave once a protocol is agreed. Flair's protocols frame with a 4-byte length (``rpc``) or a
#: varint (Bitswap, GossipSub, identify): each framing gets its own truncations.
AFTER_NEGOTIATION = {
    "sends nothing and closes": (b"", "close"),
    "sends garbage": (b"\xde\xad\xbe\xef" * 64, "close"),
    "announces a runaway length": (b"\xff" * 12, "close"),  # a varint past 64 bits; a 4 GiB u32
    "ends inside a varint length": (b"\x80", "close"),
    "ends inside a 4-byte length": (b"\x00\x00", "close"),
    "ends inside a varint-framed message": (varint(100) + bytes(10), "close"),
    "ends inside a u32-framed message": (struct.pack(">I", 100) + bytes(10), "close"),
    "resets inside a varint-framed message": (varint(100) + bytes(10), "reset"),
    "resets inside a u32-framed message": (struct.pack(">I", 100) + bytes(10), "reset"),
}


async def misbehave(stream: Stream, data: bytes, end: str) -> None:
    """Write ``data`` on ``stream``, then end it as ``end`` says (a reset after a moment: the node is reading)."""
    if data:
        await stream.write(data)
    if end == "reset":
        await trio.sleep(0.05)
        await stream.reset()
    else:
        await stream.close()


async def served_protocols(host, peer) -> set[str]:
    """What ``peer`` answers to multistream's ``ls``: the protocols it serves, by its own account."""
    stream = await host.get_network().new_stream(peer)
    try:
        await stream.write(HANDSHAKE + ms("ls"))
        data = b""
        with trio.fail_after(STEP_TIMEOUT):  # the peer does not end the stream after its answer: read up to it
            while b"\n\n" not in data:  # the listing's last line, then the end of its message
                data += await stream.read(4096)
    finally:
        await stream.reset()
    assert data.startswith(HANDSHAKE), data  # the handshake echoed, then one message listing a protocol a line
    length, start = read_varint(data, len(HANDSHAKE))
    return set(data[start:start + length].decode().split()) - {"/multistream/1.0.0"}


async def attack(target: str) -> dict:
    """Every misbehaviour on every protocol the daemon at ``target`` serves, on one connection, each followed by
    a hello that must be served on it in time; it stops at the first that is not (the rest would wait in vain
    too). What happened."""
    seen: dict = {"failures": [], "attacks": 0}
    with trio.fail_after(ATTACK_TIMEOUT):
        async with hostile_peer() as mallory:
            peer = await mallory.connect(target)
            network = mallory.host.get_network()
            (connection,) = network.get_connections(peer)
            seen["peer"], seen["protocols"] = mallory.peer_id, await served_protocols(mallory.host, peer)
            attacks = [(f"a stream that {way}", None, data, end) for way, (data, end) in BEFORE_NEGOTIATION.items()]
            attacks += [(f"a {protocol} stream that {way}", protocol, data, end)
                        for protocol in sorted(seen["protocols"]) for way, (data, end) in AFTER_NEGOTIATION.items()]

            async def still_served(after: str) -> bool:
                started = time.monotonic()
                try:
                    with trio.fail_after(SERVED_WITHIN):
                        reply = await rpc.request(mallory.host, peer, hello.PROTOCOL, {"cards": []})
                    assert len(reply["cards"]) == hello.PAD_TO, reply  # the stranger gets padding, and an answer
                except Exception as exc:  # any failure to be served is the finding: named in the report
                    seen["failures"].append(f"after {after}: {exc!r} ({time.monotonic() - started:.1f} s)")
                if network.get_connections(peer) != [connection]:
                    seen["failures"].append(f"after {after}: the connection was dropped or replaced")
                return not seen["failures"]

            served = await still_served("nothing")
            for label, protocol, data, end in attacks:
                if not served:
                    break
                try:
                    with trio.fail_after(STEP_TIMEOUT):
                        # A raw stream for the attacks on negotiation itself; a negotiated one for the rest.
                        stream = await (network.new_stream(peer) if protocol is None
                                        else mallory.host.new_stream(peer, [TProtocol(protocol)]))
                        await misbehave(stream, data, end)
                except Exception as exc:  # the node stopped taking streams during an earlier attack
                    seen["failures"].append(f"opening {label}: {exc!r}")
                    break
                seen["attacks"] += 1
                served = await still_served(label)
            # A handler may fail a while after its stream ended (a read deadline): the connection must outlast it.
            if served:
                await trio.sleep(2)
                await still_served("all of them, two seconds on")
    return seen


@pytest.mark.integration
@pytest.mark.slow
def test_no_misbehaving_stream_costs_a_daemon_its_other_streams_on_that_connection(tmp_path):
    with running_daemon(configure(tmp_path / "a", sync_interval=600)) as daemon:
        log_start = (daemon.home / "daemon.log").stat().st_size
        seen = trio.run(attack, address(daemon))

        assert seen["failures"] == []
        assert ALWAYS_SERVED <= seen["protocols"], seen["protocols"]
        assert seen["attacks"] >= len(BEFORE_NEGOTIATION) + len(ALWAYS_SERVED) * len(AFTER_NEGOTIATION)
        assert daemon.process.poll() is None
        assert daemon.client.call("node.whoami")["public_key"]
        # The guard caught at least the stream naming its protocol in non-UTF-8 bytes (the handlers catch their
        # own errors): logged once for the peer, whatever the number of its failed streams, all within a minute.
        with open(daemon.home / "daemon.log", "rb") as log_file:
            log_file.seek(log_start)
            logged = log_file.read().decode(errors="replace")
        guard_lines = re.findall(rf"peer {seen['peer']}: its stream \(.*", logged)
        assert len(guard_lines) == 1, guard_lines
        assert daemon.client.call("node.status")["p2p"]["failed_streams"].get(seen["peer"], 0) >= 1
        # the identify-push streams misbehaved too: py-libp2p's ERROR for each is logged at DEBUG, which the
        # daemon's log leaves out
        assert "identify/push" not in logged, re.findall(r".*identify/push.*", logged)


class FakeStream:
    """What the guard touches of a stream: who opened it, its protocol, and its reset."""

    def __init__(self, peer: str) -> None:
        self.muxed_conn = type("Connection", (), {"peer_id": peer})()
        self.was_reset = False

    def get_protocol(self) -> str:
        return "/test/1.0.0"

    async def reset(self) -> None:
        self.was_reset = True


async def test_a_failing_handler_is_counted_against_its_peer_logged_once_and_its_stream_reset(caplog):
    async def parse(stream):
        raise ValueError("not a number")

    async def fan_out(stream):  # two failures at once, as a handler's nursery raises them
        async with trio.open_nursery() as nursery:
            nursery.start_soon(parse, stream)
            nursery.start_soon(parse, stream)

    streams = [FakeStream("mallory") for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="flair_node.network.gossip"):
        guard = StreamGuard(parse)
        for stream in streams[:2]:
            await guard(stream)
        guard.handler = fan_out
        await guard(streams[2])

    assert guard.failed.counts == {"mallory": 3}
    assert all(stream.was_reset for stream in streams)
    logged = [r.getMessage() for r in caplog.records if "its stream (" in r.getMessage()]
    assert logged == [  # the first failure only: the rest are muted for a minute
        "peer mallory: its stream (/test/1.0.0) failed: ValueError('not a number') "
        "(further reports from this peer muted for 60 s)"]


async def test_cancellation_goes_through_the_guard_uncounted():
    async def forever(stream):
        await trio.sleep_forever()

    guard, stream = StreamGuard(forever), FakeStream("alice")
    with trio.move_on_after(0.1) as scope:
        await guard(stream)

    assert scope.cancelled_caught  # the Cancelled reached the scope that was cancelled
    assert guard.failed.counts == {} and not stream.was_reset


async def test_a_handler_letting_stream_eof_through_leaves_the_connection_serving(caplog):
    """A handler that reads past the end of its stream (py-libp2p raises ``StreamEOF`` there, not b"") on one
    connection, three times; then another protocol on the same connection is served at once."""
    async def read_forever(stream):
        while True:
            await stream.read(64)

    async def echo(stream):
        await stream.write(await stream.read(64))
        await stream.close()

    with caplog.at_level(logging.WARNING, logger="flair_node.network.gossip"), trio.fail_after(30):
        async with running_host(Identity.generate()) as node, running_host(Identity.generate()) as stranger:
            node.set_stream_handler(TProtocol("/test/eof/1.0.0"), read_forever)
            node.set_stream_handler(TProtocol("/test/echo/1.0.0"), echo)
            peer = await connect(stranger, full_addrs(node)[0])
            (connection,) = stranger.get_network().get_connections(peer)
            for _ in range(3):
                stream = await stranger.new_stream(peer, [TProtocol("/test/eof/1.0.0")])
                await stream.write(b"then nothing more")
                await stream.close()
            await trio.sleep(0.2)  # the node reads to the end, and its handler raises
            with trio.fail_after(SERVED_WITHIN):
                stream = await stranger.new_stream(peer, [TProtocol("/test/echo/1.0.0")])
                await stream.write(b"still there?")
                assert await stream.read(64) == b"still there?"
            assert stranger.get_network().get_connections(peer) == [connection]
            me = str(stranger.get_id())

    failures = [r.getMessage() for r in caplog.records if "its stream (" in r.getMessage()]
    assert len(failures) == 1 and failures[0].startswith(f"peer {me}: its stream (/test/eof/1.0.0) failed: StreamEOF")


def framed(message: Identify) -> bytes:
    body = message.SerializeToString()
    return varint(len(body)) + body


#: Identify pushes a stranger can send, each of which py-libp2p logged at ERROR or WARNING, once a push.
IDENTIFY_PUSHES = {
    "garbage": b"\xde\xad\xbe\xef" * 16,
    "a runaway length": b"\xff" * 12,
    "a message cut short": varint(100) + bytes(10),
    "bytes that are not protobuf": varint(8) + b"\xff" * 8,
    "a public key that is no key": framed(Identify(public_key=b"\x00junk")),
    "another peer's public key": framed(Identify(public_key=create_new_key_pair().public_key.serialize())),
}


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG], ids=["info", "debug"])
async def test_a_strangers_malformed_identify_pushes_log_only_at_debug_and_the_node_serves_on(caplog, level):
    """py-libp2p's identify-push handler logged an ERROR for each push it could not read, and its peer-store update
    a WARNING or an ERROR for each field it refused: a stranger could flood a node's log. They are logged at DEBUG
    (``host.DEBUG_ONLY_LOGGERS``), so a node logging at INFO logs none of them; the connection and the node serve
    on."""
    async def echo(stream):
        await stream.write(await stream.read(64))
        await stream.close()

    rounds = 10
    identity_log = logging.getLogger("libp2p.identity")
    before = identity_log.level
    # the logger's level only: caplog's handler takes every level, as the daemon's (``logging.basicConfig``) does
    identity_log.setLevel(level)
    try:
        with trio.fail_after(30):
            async with running_host(Identity.generate()) as node, running_host(Identity.generate()) as stranger:
                node.set_stream_handler(TProtocol("/test/echo/1.0.0"), echo)
                peer = await connect(stranger, full_addrs(node)[0])
                (connection,) = stranger.get_network().get_connections(peer)
                for _ in range(rounds):
                    for data in IDENTIFY_PUSHES.values():
                        stream = await stranger.new_stream(peer, [ID_PUSH])
                        await misbehave(stream, data, "close")
                await trio.sleep(0.5)  # the node reads each push to its end
                with trio.fail_after(SERVED_WITHIN):
                    stream = await stranger.new_stream(peer, [TProtocol("/test/echo/1.0.0")])
                    await stream.write(b"still there?")
                    assert await stream.read(64) == b"still there?"
                assert stranger.get_network().get_connections(peer) == [connection]
    finally:
        identity_log.setLevel(before)

    loud = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records
            if r.levelno > logging.INFO or (r.name.startswith("libp2p.identity") and r.levelno > logging.DEBUG)]
    assert loud == []
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("libp2p.identity")]
    if level == logging.INFO:
        assert logged == []
        return
    # still there for whoever debugs: every push the handler could not read, and every field the update refused
    assert sum("Error processing identify/push" in m for m in logged) == rounds * 4, logged
    assert sum("Error updating public key" in m for m in logged) == rounds, logged
    assert sum("does not hash to their peer ID" in m for m in logged) == rounds, logged


async def test_a_peers_failed_streams_show_in_the_p2p_status():
    """What the guard counted, per peer, in ``P2PService.status`` (``node.status``'s ``p2p``)."""
    with trio.fail_after(30):
        async with running_host(Identity.generate()) as node, running_host(Identity.generate()) as stranger:
            repos = RepoSet.in_memory(Identity.generate())
            p2p = P2PService(node, BlockExchange(node, repos.blocks), repos, memory=RoundMemory())
            peer = await connect(stranger, full_addrs(node)[0])
            assert p2p.status()["failed_streams"] == {}
            for _ in range(3):  # each names its protocol in bytes that are not UTF-8: py-libp2p's negotiation raises
                stream = await stranger.get_network().new_stream(peer)
                await misbehave(stream, *BEFORE_NEGOTIATION["names a protocol in bytes that are not UTF-8"])
            me = str(stranger.get_id())
            while p2p.status()["failed_streams"].get(me, 0) < 3:  # noqa: ASYNC110 - the guard sets no event
                await trio.sleep(0.05)
            status = p2p.status()
            assert status["failed_streams"] == {me: 3}
            assert [p["failed_streams"] for p in status["peers"] if p["peer"] == me] == [3]
