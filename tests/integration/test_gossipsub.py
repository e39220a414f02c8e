"""What is specific to Flair's own GossipSub router (``network.gossipsub``) and its wire format
(``network.gossipsub_wire``); the gossip contract every implementation keeps is ``test_gossip.py``'s.

Wire tests are pure and fast. Router tests run real hosts on 127.0.0.1 (random ports): honest ``GossipSub`` nodes,
and a *raw* peer, a plain py-libp2p host that writes hand-built frames on ``/meshsub/1.1.0`` and reads the frames
the node sends back, to play a misbehaving or precisely scripted peer. What a node must NOT send can only be
observed over time: those checks read for a short ``QUIET`` period.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from itertools import count
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from libp2p.custom_types import TProtocol
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import signature_validator

from flair_node.core.errors import IntegrityError
from flair_node.core.identity import Identity, public_key_bytes
from flair_node.core.ids import PeerId
from flair_node.core.protobuf import bytes_field, int_field, key, read_varint
from flair_node.network import gossipsub_wire as wire
from flair_node.network.framing import MessageReader
from flair_node.network.gossip import GossipMessage
from flair_node.network.gossipsub import GOSSIP_WINDOWS, HISTORY, PRUNE_BACKOFF, V10, V11, GossipSub
from flair_node.network.host import connect, full_addrs, peer_id, running_host

TOPIC, OTHER = "flair/repo/7f3a1c", "flair/repo/other"
QUIET = 0.5  # seconds to wait for what must not arrive
BEAT = 0.1  # a fast heartbeat, so gossip and backoff are seen within a test's time
_SEQNOS = count(1)


def origin_of(identity: Identity) -> bytes:
    """A message's ``from``: the peer id bytes of ``identity`` (an identity multihash of its Ed25519 key)."""
    return b"\x00\x24\x08\x01\x12\x20" + public_key_bytes(identity.public_key)


def peer_of(identity: Identity) -> PeerId:
    return PeerId(str(peer_id(identity.public_key)))


def signed(identity: Identity, data: bytes, *, topics: tuple[str, ...] = (TOPIC,),
           signer: Identity | None = None) -> wire.Message:
    """A message from ``identity`` with a fresh seqno, signed by ``signer`` (``identity`` unless told)."""
    unsigned = wire.Message(origin_of(identity), data, next(_SEQNOS).to_bytes(8, "big"), topics)
    return replace(unsigned, signature=(signer or identity).sign(unsigned.signed_part()))


def body(pieces: list[bytes]) -> bytes:
    """The body of ``wire.frame(pieces)``, checking its length prefix on the way."""
    framed = wire.frame(pieces)
    length, start = read_varint(framed, 0)
    assert len(framed) == start + length
    return framed[start:]


def accept(forwarder: PeerId, data: bytes) -> bool:
    return True


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (router state has no event to wait on); each test's ``fail_after`` bounds it."""
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.01)


# -- wire --------------------------------------------------------------------------------------------------

any_topic = st.text(min_size=1, max_size=20)
any_id = st.binary(min_size=1, max_size=wire.MAX_ID_BYTES)
any_message = st.builds(wire.Message, st.binary(min_size=1, max_size=64), st.binary(max_size=100),
                        st.binary(min_size=1, max_size=64), st.lists(any_topic, max_size=wire.MAX_TOPICS).map(tuple),
                        st.binary(max_size=64), st.binary(max_size=40))
any_piece = st.one_of(  # (builder name, its arguments), a publish given the message
    st.tuples(st.just("subscription"), any_topic, st.booleans()),
    st.tuples(st.just("publish"), any_message),
    st.tuples(st.just("graft"), any_topic),
    st.tuples(st.just("prune"), any_topic, st.integers(0, 2**32)),
    st.tuples(st.just("ihave"), any_topic, st.lists(any_id, max_size=4)),
    st.tuples(st.just("iwant"), st.lists(any_id, max_size=4)),
)


def build(piece: tuple[Any, ...]) -> bytes:
    kind, *args = piece
    return wire.publish(args[0].encode()) if kind == "publish" else getattr(wire, kind)(*args)


def expected(built: list[tuple[Any, ...]]) -> wire.Rpc:
    """The RPC that the frame of ``built`` pieces means."""
    rpc = wire.Rpc()
    for kind, *args in built:
        if kind == "subscription":
            rpc.subscriptions.append((args[1], args[0]))
        elif kind == "publish":
            rpc.messages.append((args[0], args[0].encode()))
        elif kind == "graft":
            rpc.graft.append(args[0])
        elif kind == "prune":
            rpc.prune.append((args[0], args[1]))
        elif kind == "ihave":
            rpc.ihave.append((args[0], args[1]))
        else:
            rpc.iwant.extend(args[0])
    return rpc


@given(st.lists(any_piece, max_size=8))
def test_pieces_joined_in_one_frame_decode_as_one_rpc_holding_them_all(built):
    assert wire.decode(body([build(p) for p in built])) == expected(built)


def test_each_piece_builder_round_trips_and_py_libp2p_reads_the_same_rpc():
    message = signed(Identity.generate(), b"commit 1")
    frame_body = body([wire.subscription(TOPIC, True), wire.subscription(OTHER, False), wire.publish(message.encode()),
                       wire.graft(TOPIC), wire.prune(OTHER, 60), wire.ihave(TOPIC, [b"id-1", b"id-2"]),
                       wire.iwant([b"id-3"])])
    assert wire.decode(frame_body) == wire.Rpc(
        subscriptions=[(True, TOPIC), (False, OTHER)], messages=[(message, message.encode())],
        ihave=[(TOPIC, [b"id-1", b"id-2"])], iwant=[b"id-3"], graft=[TOPIC], prune=[(OTHER, 60)])
    theirs = rpc_pb2.RPC.FromString(frame_body)  # four control fields merge into one ControlMessage
    assert [(s.subscribe, s.topicid) for s in theirs.subscriptions] == [(True, TOPIC), (False, OTHER)]
    assert [m.SerializeToString() for m in theirs.publish] == [message.encode()]
    assert [g.topicID for g in theirs.control.graft] == [TOPIC]
    assert [(p.topicID, p.backoff) for p in theirs.control.prune] == [(OTHER, 60)]
    assert [(i.topicID, list(i.messageIDs)) for i in theirs.control.ihave] == [(TOPIC, [b"id-1", b"id-2"])]
    assert [list(i.messageIDs) for i in theirs.control.iwant] == [[b"id-3"]]


def test_an_rpc_built_by_py_libp2p_decodes_and_its_unknown_fields_are_skipped():
    message = signed(Identity.generate(), b"commit 1", topics=(TOPIC, OTHER))
    theirs = rpc_pb2.RPC(
        subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=True, topicid=TOPIC)],
        publish=[rpc_pb2.Message.FromString(message.encode())],
        control=rpc_pb2.ControlMessage(
            ihave=[rpc_pb2.ControlIHave(topicID=TOPIC, messageIDs=[b"id-1"])],
            iwant=[rpc_pb2.ControlIWant(messageIDs=[b"id-2"])],
            graft=[rpc_pb2.ControlGraft(topicID=TOPIC)],
            prune=[rpc_pb2.ControlPrune(topicID=OTHER, backoff=30,  # peer exchange: ignored
                                        peers=[rpc_pb2.PeerInfo(peerID=b"peer", signedPeerRecord=b"record")])],
            idontwant=[rpc_pb2.ControlIDontWant(messageIDs=[b"id-3"])]),
        senderRecord=b"a signed peer record envelope")  # field 4, which py-libp2p sends and Flair does not use
    rpc = wire.decode(theirs.SerializeToString())
    assert rpc == wire.Rpc(subscriptions=[(True, TOPIC)], messages=[(message, message.encode())],
                           ihave=[(TOPIC, [b"id-1"])], iwant=[b"id-2"], graft=[TOPIC], prune=[(OTHER, 30)])
    unknown = int_field(9, 7) + bytes_field(10, b"\xff future")  # in the RPC, a subscription, a message
    rpc = wire.decode(unknown + bytes_field(1, int_field(1, 1) + bytes_field(2, TOPIC.encode()) + unknown)
                      + wire.publish(message.encode() + unknown))
    assert rpc == wire.Rpc(subscriptions=[(True, TOPIC)], messages=[(message, message.encode() + unknown)])


def test_a_message_is_encoded_and_signed_exactly_as_py_libp2p_encodes_it():
    identity = Identity.generate()
    for data, names in [(b"commit 1", (TOPIC,)), (b"", (TOPIC, OTHER)), (bytes(range(256)) * 4, ())]:
        ours = signed(identity, data, topics=names)
        theirs = rpc_pb2.Message(from_id=ours.origin, data=data, seqno=ours.seqno, topicIDs=list(names))
        assert ours.signed_part() == b"libp2p-pubsub:" + theirs.SerializeToString()
        theirs.signature = ours.signature
        assert ours.encode() == theirs.SerializeToString()
        theirs.key = ours.origin[2:]  # the public-key protobuf the peer id inlines
        assert replace(ours, key=ours.origin[2:]).encode() == theirs.SerializeToString()
        assert signature_validator(theirs)  # py-libp2p's own check accepts our signature
    forged = signed(identity, b"commit 1", signer=Identity.generate())
    assert not signature_validator(rpc_pb2.Message.FromString(forged.encode()))


def _message_fields(*, origin: bytes = b"\x01", seqno: bytes = b"\x02", extra: bytes = b"") -> bytes:
    return wire.publish((bytes_field(1, origin) if origin else b"") + bytes_field(2, b"data")
                        + (bytes_field(3, seqno) if seqno else b"") + extra)


def _graft_raw(topic: bytes) -> bytes:
    return bytes_field(3, bytes_field(3, bytes_field(1, topic)))


@pytest.mark.parametrize("data, match", [
    pytest.param(wire.subscription(TOPIC, True)[:-1], "runs past", id="truncated-field"),
    pytest.param(b"\x0a\x85", "varint", id="truncated-length"),
    pytest.param(int_field(2, 1), "number where bytes", id="varint-for-a-message"),
    pytest.param(int_field(3, 1), "number where bytes", id="varint-for-control"),
    pytest.param(_message_fields(extra=int_field(2, 5)), "number where bytes", id="varint-for-data"),
    pytest.param(bytes_field(1, bytes_field(1, b"yes") + bytes_field(2, b"t")), "bytes where a number",
                 id="bytes-for-subscribe"),
    pytest.param(_message_fields(seqno=b""), "lacks", id="message-without-seqno"),
    pytest.param(_message_fields(origin=b""), "lacks", id="message-without-from"),
    pytest.param(_message_fields(origin=bytes(100), seqno=bytes(29)), "too long", id="message-id-too-long"),
    pytest.param(_message_fields(extra=bytes_field(4, b"\xff\xfe")), "UTF-8", id="non-utf8-message-topic"),
    pytest.param(_graft_raw(b"\xc3"), "UTF-8", id="non-utf8-graft-topic"),
    pytest.param(_message_fields(extra=bytes_field(4, b"")), "1 to", id="empty-message-topic"),
    pytest.param(wire.graft(""), "1 to", id="empty-graft-topic"),
    pytest.param(bytes_field(1, bytes_field(2, b"")), "1 to", id="empty-subscription-topic"),
    pytest.param(wire.graft("t" * (wire.MAX_TOPIC_BYTES + 1)), "1 to", id="topic-too-long"),
    pytest.param(wire.prune(TOPIC, 1)[:-1] + b"\x80", "varint", id="truncated-backoff"),
    pytest.param(bytes_field(3, bytes_field(4, bytes_field(1, TOPIC.encode()) + bytes_field(3, b"x"))),
                 "bytes where a number", id="bytes-for-backoff"),
    pytest.param(wire.ihave(TOPIC, [b""]), "message id", id="empty-message-id"),
    pytest.param(wire.iwant([bytes(wire.MAX_ID_BYTES + 1)]), "message id", id="message-id-too-long-in-iwant"),
    pytest.param(bytes_field(3, bytes_field(1, bytes_field(2, b"id"))), "1 to", id="ihave-without-topic"),
    pytest.param(_message_fields(extra=b"".join(bytes_field(4, b"t") for _ in range(wire.MAX_TOPICS + 1))),
                 "more than", id="too-many-topics"),
    pytest.param(key(5, 1) + bytes(8), "wire type", id="fixed64-field"),
])
def test_malformed_input_raises_integrity_error(data, match):
    with pytest.raises(IntegrityError, match=match):
        wire.decode(data)


@given(st.lists(any_piece, min_size=1, max_size=4), st.data())
def test_mutated_frames_decode_or_raise_integrity_error_only(built, data):
    frame_body = bytearray(body([build(p) for p in built]))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(frame_body) - 1))
        frame_body[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame_body)))
    try:
        wire.decode(bytes(frame_body[:cut]))
    except IntegrityError:
        pass  # refusing is right; any other exception would escape a peer's handler as a bug


def test_counts_beyond_their_bounds_are_ignored_not_refused():
    half = [i.to_bytes(4, "big") for i in range(wire.MAX_IDS // 2 + 100)]
    rpc = wire.decode(body([wire.ihave(TOPIC, half), wire.ihave(OTHER, half), wire.iwant(half)]))
    assert rpc.ihave == [(TOPIC, half), (OTHER, half[:wire.MAX_IDS - len(half)])]
    assert rpc.iwant == []  # the budget of ids was spent on the IHAVEs
    assert sum(len(found) for _, found in rpc.ihave) + len(rpc.iwant) == wire.MAX_IDS

    rpc = wire.decode(body([wire.ihave(TOPIC, half), wire.iwant(half)]))
    assert rpc.ihave == [(TOPIC, half)] and rpc.iwant == half[:wire.MAX_IDS - len(half)]

    names = [f"topic/{i}" for i in range(wire.MAX_SUBSCRIPTIONS + 10)]
    rpc = wire.decode(body([wire.subscription(name, True) for name in names]))
    assert rpc.subscriptions == [(True, name) for name in names[:wire.MAX_SUBSCRIPTIONS]]

    rpc = wire.decode(body([wire.graft(name) for name in names]))
    assert rpc.graft == names[:wire.MAX_CONTROL]


# -- the router on real hosts --------------------------------------------------------------------------------


@asynccontextmanager
async def gossipsub_nodes(n: int, *, heartbeat: float = BEAT) -> AsyncIterator[tuple[list[Any], list[GossipSub]]]:
    """``n`` started GossipSub nodes on their own hosts, not yet linked: ``(hosts, nodes)``."""
    async with AsyncExitStack() as stack:
        hosts = [await stack.enter_async_context(running_host(Identity.generate())) for _ in range(n)]
        nursery = await stack.enter_async_context(trio.open_nursery())
        nodes = [GossipSub(host, heartbeat=heartbeat) for host in hosts]
        for node in nodes:
            await nursery.start(node.run)
        yield hosts, nodes
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def meshed_pair() -> AsyncIterator[tuple[list[Any], list[GossipSub]]]:
    """Two GossipSub nodes, linked, joined to TOPIC and in each other's mesh: ``(hosts, nodes)``."""
    async with gossipsub_nodes(2) as (hosts, nodes):
        await connect(hosts[1], full_addrs(hosts[0])[0])
        for node in nodes:
            await node.join(TOPIC, accept)
        await wait_until(lambda: nodes[0].peers(TOPIC) == [nodes[1].peer_id] and
                         nodes[1].peers(TOPIC) == [nodes[0].peer_id])
        yield hosts, nodes


async def collect(node: GossipSub, into: list[GossipMessage]) -> None:
    async for message in node.messages:
        into.append(message)


@dataclass
class RawPeer:
    """A py-libp2p host speaking GossipSub by hand: ``send`` writes a frame on its stream to the node, ``next``
    decodes the frames the node writes on the stream it opened back (all of them kept in ``received``)."""

    host: Any
    identity: Identity
    stream: Any
    inbox: trio.MemoryReceiveChannel[bytes]
    received: list[wire.Rpc] = field(default_factory=list)

    @property
    def peer_id(self) -> PeerId:
        return peer_of(self.identity)

    async def send(self, *pieces: bytes) -> None:
        await self.stream.write(wire.frame(list(pieces)))

    async def next(self, match: Callable[[wire.Rpc], Any] = bool) -> wire.Rpc:
        """The next frame from the node for which ``match`` is true (frames before it are skipped)."""
        while True:
            rpc = wire.decode(await self.inbox.receive())
            self.received.append(rpc)
            if match(rpc):
                return rpc

    async def quiet(self, seconds: float = QUIET) -> list[wire.Rpc]:
        """Every frame the node sends in the next ``seconds``."""
        rpcs = []
        with trio.move_on_after(seconds):
            while True:
                rpcs.append(await self.next())
        return rpcs


@asynccontextmanager
async def raw_peer(node_host: Any, protocol: TProtocol = V11) -> AsyncIterator[RawPeer]:
    """A raw peer speaking ``protocol``, connected to ``node_host``, with its own stream open to it."""
    identity = Identity.generate()
    send, receive = trio.open_memory_channel[bytes](math.inf)

    async def read(stream: Any) -> None:
        reader = MessageReader(stream, wire.MAX_RPC, "GossipSub")
        try:
            while (data := await reader.next()) is not None:
                send.send_nowait(bytes(data))
        except Exception:  # the stream is reset when the test tears the hosts down
            return

    async with running_host(identity) as host:
        host.set_stream_handler(protocol, read)
        await connect(host, full_addrs(node_host)[0])
        stream = await host.new_stream(node_host.get_id(), [protocol])
        yield RawPeer(host, identity, stream, receive)


@asynccontextmanager
async def grafted_peer() -> AsyncIterator[tuple[GossipSub, RawPeer]]:
    """A GossipSub node joined to TOPIC, and a raw peer it has grafted into that topic's mesh."""
    async with gossipsub_nodes(1) as (hosts, (node,)):
        await node.join(TOPIC, accept)
        async with raw_peer(hosts[0]) as raw:
            await grafted(raw, node)
            yield node, raw


async def grafted(raw: RawPeer, node: GossipSub) -> None:
    """``raw`` subscribes to ``TOPIC``; returns when ``node`` (joined, with room in its mesh) has grafted it."""
    await raw.send(wire.subscription(TOPIC, True))
    await raw.next(lambda rpc: TOPIC in rpc.graft)
    assert node.peers(TOPIC) == [raw.peer_id]


@pytest.mark.integration
async def test_the_first_frame_to_a_new_peer_carries_the_nodes_topics():
    with trio.fail_after(10):
        async with gossipsub_nodes(1) as (hosts, (node,)):
            for topic in (TOPIC, OTHER, "flair/repo/left"):
                await node.join(topic, accept)
            await node.leave("flair/repo/left")
            async with raw_peer(hosts[0]) as raw:
                hello = await raw.next()
                assert sorted(hello.subscriptions) == [(True, TOPIC), (True, OTHER)]
                assert hello == wire.Rpc(subscriptions=hello.subscriptions)  # nothing else


@pytest.mark.integration
async def test_a_closed_topic_tells_an_unadmitted_peer_nothing_and_hears_nothing_from_it():
    def about(rpc: wire.Rpc) -> bool:
        """Whether the node said anything of TOPIC to the raw peer."""
        return (any(topic == TOPIC for _, topic in rpc.subscriptions) or TOPIC in rpc.graft
                or any(topic == TOPIC for topic, _ in rpc.prune) or any(t == TOPIC for t, _ in rpc.ihave)
                or bool(rpc.iwant) or any(TOPIC in m.topics for m, _ in rpc.messages))

    allowed: set[PeerId] = set()
    with trio.fail_after(15):
        async with gossipsub_nodes(1) as (hosts, (node,)):
            await node.join(TOPIC, accept, admit=lambda peer: peer in allowed)
            await node.join(OTHER, accept)
            async with raw_peer(hosts[0]) as raw:
                assert (await raw.next()).subscriptions == [(True, OTHER)]  # the open topic only
                await node.publish(TOPIC, b"members only")
                unseen = signed(raw.identity, b"unseen")
                await raw.send(wire.subscription(TOPIC, True), wire.graft(TOPIC), wire.ihave(TOPIC, [unseen.id]),
                               wire.publish(signed(raw.identity, b"from a stranger").encode()))
                assert not any(about(rpc) for rpc in await raw.quiet(BEAT * 5))  # nor does a heartbeat tell it
                status = node.status()
                assert (status["unadmitted"], status["delivered"], node.peers(TOPIC)) == (2, 0, [])  # graft, message

                allowed.add(raw.peer_id)  # let in: told at the next heartbeat, and grafted (its subscription held)
                start = len(raw.received)
                await raw.next(lambda rpc: TOPIC in rpc.graft)  # the same frame may carry both
                assert any((True, TOPIC) in rpc.subscriptions for rpc in raw.received[start:])
                await node.publish(TOPIC, b"for members")
                (message, _), = (await raw.next(lambda rpc: rpc.messages)).messages

                allowed.discard(raw.peer_id)  # let out: told, dropped from the mesh, and served nothing
                await raw.next(lambda rpc: (False, TOPIC) in rpc.subscriptions)
                assert node.peers(TOPIC) == []
                await raw.send(wire.iwant([message.id]))
                assert not any(about(rpc) for rpc in await raw.quiet(BEAT * 5))


@pytest.mark.integration
async def test_a_meshsub_1_0_peer_is_heard_and_answered_on_1_0():
    with trio.fail_after(10):
        async with gossipsub_nodes(1) as (hosts, (node,)):
            await node.join(TOPIC, accept)
            async with raw_peer(hosts[0], V10) as raw:  # the node's stream to it can only be 1.0.0
                assert await raw.next() == wire.Rpc(subscriptions=[(True, TOPIC)])
                await raw.send(wire.publish(signed(raw.identity, b"from a 1.0 peer").encode()))
                assert await node.messages.receive() == GossipMessage(TOPIC, b"from a 1.0 peer", raw.peer_id)


@pytest.mark.integration
async def test_a_message_is_delivered_only_if_its_origin_signed_it():
    calls: list[tuple[PeerId, bytes]] = []

    def record(forwarder: PeerId, data: bytes) -> bool:
        calls.append((forwarder, data))
        return True

    with trio.fail_after(10):
        async with gossipsub_nodes(1) as (hosts, (node,)):
            await node.join(TOPIC, record)
            async with raw_peer(hosts[0]) as raw:
                alice, mallory = Identity.generate(), Identity.generate()
                tampered = signed(alice, b"pay alice")
                keyless = wire.Message(b"\x12\x20" + bytes(32), b"no key in its id", b"\x01", (TOPIC,))  # sha256 id
                bad = [
                    signed(alice, b"forged", signer=mallory),  # signed by a key other than its ``from``
                    replace(tampered, data=b"pay mallory"),
                    replace(signed(alice, b"unsigned"), signature=b""),
                    replace(signed(alice, b"wrong key"), key=origin_of(mallory)[2:]),
                    replace(keyless, signature=alice.sign(keyless.signed_part()), key=origin_of(alice)[2:]),
                ]
                await raw.send(*(wire.publish(m.encode()) for m in bad))
                await wait_until(lambda: node.status()["rejected"] == len(bad))
                assert node.status()["delivered"] == 0 and calls == []  # the validator never saw them
                assert node.status()["bad_peers"] == {raw.peer_id: len(bad)}  # counted against the peer
                # The same raw peer hands over true messages, its own and alice's: it is the signature that counts.
                own = signed(raw.identity, b"from the raw peer")
                alices = replace(signed(alice, b"from alice"), key=origin_of(alice)[2:])
                await raw.send(wire.publish(own.encode()), wire.publish(alices.encode()))
                assert await node.messages.receive() == GossipMessage(TOPIC, b"from the raw peer", raw.peer_id)
                assert await node.messages.receive() == GossipMessage(TOPIC, b"from alice", peer_of(alice))
                assert calls == [(raw.peer_id, b"from the raw peer"), (raw.peer_id, b"from alice")]
                assert node.status()["rejected"] == len(bad)


@pytest.mark.integration
async def test_a_malformed_frame_closes_that_stream_and_the_node_keeps_serving():
    with trio.fail_after(15):
        async with meshed_pair() as (hosts, (node, honest)):
            async with raw_peer(hosts[0]) as raw:
                await raw.stream.write(wire.frame([int_field(2, 1)]))  # a number where a message belongs
                await wait_until(lambda: node.status()["malformed"] == 1)
                assert await MessageReader(raw.stream, wire.MAX_RPC, "GossipSub").next() is None  # closed
                await node.publish(TOPIC, b"to the honest peer")
                assert await honest.messages.receive() == GossipMessage(TOPIC, b"to the honest peer", node.peer_id)
                await honest.publish(TOPIC, b"from the honest peer")
                assert await node.messages.receive() == GossipMessage(TOPIC, b"from the honest peer",
                                                                      honest.peer_id)
                # Only the stream was closed, not the peer banned: on a new stream it is heard again.
                raw.stream = await raw.host.new_stream(hosts[0].get_id(), [V11])
                await raw.send(wire.publish(signed(raw.identity, b"again").encode()))
                assert await node.messages.receive() == GossipMessage(TOPIC, b"again", raw.peer_id)
                assert node.status()["malformed"] == 1


@pytest.mark.integration
async def test_a_lazy_peer_is_sent_ihave_for_gossip_windows_heartbeats_and_served_on_iwant():
    with trio.fail_after(15):
        async with grafted_peer() as (node, raw):
            await raw.send(wire.prune(TOPIC, 60))  # out of the mesh, still subscribed: a lazy peer
            await wait_until(lambda: node.peers(TOPIC) == [])
            start = len(raw.received)
            await node.publish(TOPIC, b"commit 1")

            def announced() -> list[tuple[str, list[bytes]]]:
                return [entry for rpc in raw.received[start:] for entry in rpc.ihave]

            (message, published), = (await raw.next(lambda rpc: rpc.messages)).messages  # flood publishing
            while not announced():
                await raw.next()
            await raw.send(wire.iwant([message.id, b"never published"]))
            served = await raw.next(lambda rpc: rpc.messages)
            assert served.messages == [(message, published)]  # the very bytes, from the message cache
            while len(announced()) < GOSSIP_WINDOWS:
                await raw.next()
            assert not any(rpc.ihave for rpc in await raw.quiet(BEAT * (HISTORY + 3)))  # announced no more
            assert announced() == [(TOPIC, [message.id])] * GOSSIP_WINDOWS  # one IHAVE a heartbeat
            await raw.send(wire.iwant([message.id]))  # HISTORY heartbeats on, it is gone from the cache
            assert not any(rpc.messages for rpc in await raw.quiet())


@pytest.mark.integration
async def test_ihave_of_an_unseen_message_on_a_joined_topic_is_answered_with_iwant():
    with trio.fail_after(10):
        async with grafted_peer() as (node, raw):
            await node.publish(TOPIC, b"seen here")
            (seen, _), = (await raw.next(lambda rpc: rpc.messages)).messages
            unseen, elsewhere = signed(raw.identity, b"unseen"), signed(raw.identity, b"x", topics=(OTHER,))
            await raw.send(wire.ihave(TOPIC, [seen.id, unseen.id]), wire.ihave(OTHER, [elsewhere.id]))
            assert (await raw.next(lambda rpc: rpc.iwant)).iwant == [unseen.id]
            await raw.send(wire.publish(unseen.encode()))
            assert await node.messages.receive() == GossipMessage(TOPIC, b"unseen", raw.peer_id)


@pytest.mark.integration
async def test_a_message_missed_in_the_mesh_is_recovered_through_ihave_and_iwant():
    # B - A - C, where C leaves and rejoins: A, within the backoff of C's PRUNE, keeps C out of its mesh. A floods
    # only its own messages, so B's message reaches C only if A announces it (IHAVE) and C asks for it (IWANT).
    with trio.fail_after(15):
        async with gossipsub_nodes(3) as (hosts, (a, b, c)), trio.open_nursery() as nursery:
            for other in (1, 2):
                await connect(hosts[other], full_addrs(hosts[0])[0])
            for node in (a, b, c):
                await node.join(TOPIC, accept)
            await wait_until(lambda: a.peers(TOPIC) == sorted([b.peer_id, c.peer_id]))
            await c.leave(TOPIC)
            # C's PRUNE handled before it rejoins: in one frame with the GRAFT it would leave the two disagreeing
            # (test_a_prune_and_a_graft_in_one_frame_leave_both_sides_agreed_on_the_mesh).
            await wait_until(lambda: a.peers(TOPIC) == [b.peer_id])
            await c.join(TOPIC, accept)
            await wait_until(lambda: c.peers(TOPIC) == [])
            received: list[GossipMessage] = []
            nursery.start_soon(collect, c, received)
            await b.publish(TOPIC, b"commit 1")
            await wait_until(lambda: len(received) == 1)
            assert received == [GossipMessage(TOPIC, b"commit 1", b.peer_id)]
            assert a.status()["delivered"] == 1 and a.peers(TOPIC) == [b.peer_id] and c.peers(TOPIC) == []
            nursery.cancel_scope.cancel()


@pytest.mark.integration
async def test_leaving_prunes_the_mesh_and_unsubscribes():
    with trio.fail_after(10):
        async with grafted_peer() as (node, raw):
            await node.leave(TOPIC)
            left = await raw.next(lambda rpc: rpc.prune)
            assert left.prune == [(TOPIC, PRUNE_BACKOFF)] and (False, TOPIC) in left.subscriptions
            assert node.peers(TOPIC) == []


@pytest.mark.integration
async def test_a_graft_inside_the_backoff_is_answered_with_prune_and_one_for_a_topic_not_joined_ignored():
    with trio.fail_after(10):
        async with grafted_peer() as (node, raw):
            await raw.send(wire.prune(TOPIC, 0))  # no backoff given: the default one
            await wait_until(lambda: node.peers(TOPIC) == [])
            await raw.send(wire.graft(OTHER), wire.graft(TOPIC))
            refused = await raw.next(lambda rpc: rpc.prune)
            assert refused.prune == [(TOPIC, PRUNE_BACKOFF)]  # OTHER is not joined: no answer at all
            assert node.peers(TOPIC) == []
            assert not any(rpc.graft for rpc in await raw.quiet(BEAT * 3))  # nor regrafted at a heartbeat


@pytest.mark.integration
async def test_the_backoff_a_prune_asks_for_delays_regrafting_until_it_ends():
    with trio.fail_after(10):
        async with grafted_peer() as (node, raw):
            pruned = trio.current_time()
            await raw.send(wire.prune(TOPIC, 1))
            await raw.next(lambda rpc: TOPIC in rpc.graft)  # a heartbeat finds the mesh short, once allowed
            assert trio.current_time() - pruned >= 1
            assert node.peers(TOPIC) == [raw.peer_id]


# -- found by these tests, and mended ---------------------------------------------------------------------


@pytest.mark.integration
async def test_rejoining_does_not_graft_the_peers_pruned_on_leaving():
    with trio.fail_after(10):
        async with grafted_peer() as (node, raw):
            await node.leave(TOPIC)
            await raw.next(lambda rpc: rpc.prune)
            await node.join(TOPIC, accept)
            rejoined = await raw.next(lambda rpc: (True, TOPIC) in rpc.subscriptions)
            assert TOPIC not in rejoined.graft
            assert not any(TOPIC in rpc.graft for rpc in await raw.quiet())


@pytest.mark.integration
async def test_a_prune_and_a_graft_in_one_frame_leave_both_sides_agreed_on_the_mesh():
    with trio.fail_after(10):
        async with grafted_peer() as (node, raw):
            start = len(raw.received)
            await raw.send(wire.prune(TOPIC, 0), wire.subscription(TOPIC, False), wire.subscription(TOPIC, True),
                           wire.graft(TOPIC))
            await raw.quiet()
            answers = [entry for rpc in raw.received[start:] for entry in
                       [("graft", t) for t in rpc.graft] + [("prune", t) for t, _ in rpc.prune]]
            told_in_mesh = not answers or answers[-1] == ("graft", TOPIC)  # an unanswered GRAFT stands
            assert (node.peers(TOPIC) == [raw.peer_id]) == told_in_mesh, (answers, node.peers(TOPIC))


@pytest.mark.integration
async def test_a_forged_copy_does_not_censor_the_true_message():
    with trio.fail_after(15):
        async with meshed_pair() as (hosts, (publisher, node)):
            async with raw_peer(hosts[0]) as watcher, raw_peer(hosts[1]) as attacker:
                await watcher.send(wire.subscription(TOPIC, True))
                await wait_until(lambda: publisher.peers(TOPIC) == sorted([node.peer_id, watcher.peer_id]))
                await publisher.publish(TOPIC, b"commit 1")
                (first, _), = (await watcher.next(lambda rpc: rpc.messages)).messages
                assert await node.messages.receive() == GossipMessage(TOPIC, b"commit 1", publisher.peer_id)
                following = (int.from_bytes(first.seqno, "big") + 1).to_bytes(8, "big")
                forged = wire.Message(first.origin, b"forged", following, (TOPIC,), signature=bytes(64))
                await attacker.send(wire.publish(forged.encode()))
                await wait_until(lambda: node.status()["rejected"] == 1)
                await publisher.publish(TOPIC, b"commit 2")  # takes the predicted seqno
                await publisher.publish(TOPIC, b"commit 3")  # on the same stream, so handled after commit 2
                delivered = [(await node.messages.receive()).data]
                while delivered[-1] != b"commit 3":
                    delivered.append((await node.messages.receive()).data)
                assert delivered == [b"commit 2", b"commit 3"]


@pytest.mark.parametrize("unknown", [int_field(9, 1), bytes_field(10, b"\xff not protobuf")], ids=["varint", "bytes"])
def test_unknown_control_fields_are_skipped(unknown):
    assert wire.decode(bytes_field(3, unknown) + wire.graft(TOPIC)).graft == [TOPIC]
