"""``GossipSub``: the ``Gossip`` contract as GossipSub v1.1 (``/meshsub/1.1.0``, and 1.0.0), spoken by Flair
itself on the node's libp2p host, wire-compatible with py-libp2p's and go-libp2p's routers.

Why Flair's own: py-libp2p 0.8.1's router costs several milliseconds of CPU per message per hop (a signed
peer-record envelope built and verified on every RPC, one RPC per message, a 32-slot subscription queue, a
10-messages-a-second spam limit to configure away); ten daemons on two cores could not keep a burst under
100 ms (``bench/gossip_hosts.py`` measures both routers in one run). Here a burst costs few frames:

- One long-lived stream to each peer that speaks the protocol, opened on connection; its first frame carries
  this node's subscriptions. A peer's outgoing pieces (``gossipsub_wire``'s top-level fields) wait in its queue
  (at most ``OUTBOUND_QUEUE``) and whatever has gathered goes as one frame of at most ``MAX_RPC`` bytes.
- Per joined topic, a mesh of ``DEGREE`` peers, kept between ``DEGREE_LOW`` and ``DEGREE_HIGH`` at each
  heartbeat with GRAFT and PRUNE; a PRUNE's backoff is honoured both ways. A peer subscribing while the mesh is
  short is grafted at once, not at the next heartbeat.
- This node's own messages are flooded to every peer subscribed to the topic (v1.1 flood publishing): one hop.
- A received message is dropped if its topic is not joined here, its id (origin + seqno) was seen, its data is
  over ``max_message_size``, or its signature fails (StrictSign: ``from`` is an Ed25519 peer id whose key
  signed the message). Then the topic's validator judges it; an accepted one is delivered, forwarded to the
  mesh except its forwarder and origin, kept ``HISTORY`` heartbeats for IWANT, and announced by IHAVE to up
  to ``DEGREE_LAZY`` subscribed peers outside the mesh for ``GOSSIP_WINDOWS`` heartbeats, so a node that
  missed it asks for it.

A topic joined with ``admit`` keeps a closed mesh (the contract in ``gossip``): each peer's verdict is asked once
per heartbeat and kept until the next (or until ``reconsider``); this node's subscription is told to a peer when
it is admitted and withdrawn (UNSUBSCRIBE) when it no longer is, and a peer's subscription is remembered either
way, so a peer admitted later joins the mesh at the next heartbeat without subscribing again.

Not implemented: peer scoring, peer exchange on PRUNE (received PX is ignored), fanout (publishing needs
``join``), direct peers, and v1.2's IDONTWANT. Peers whose id is not an Ed25519 key can subscribe and relay,
but their own messages fail the signature check (no Flair member has such an id).

Nothing a peer sends is trusted: a malformed frame closes that peer's stream; a peer handing over more than
``RATE_LIMIT`` messages a second has the excess dropped; these, oversized messages and bad signatures are
counted (in ``status()``, in all and per peer in ``bad_peers``) and logged once per peer per minute. What a
validator refuses is counted in ``rejected`` and left to the validator's owner to report; a validator that
raises on a message makes it bad input from its forwarder, counted in ``bad_peers`` too (``gossip.judge``).
Bounds per node: ``OUTBOUND_QUEUE`` pieces per peer (each at most ``max_message_size`` plus a few hundred
bytes), ``queue_size`` delivered messages, ``SEEN`` message ids, ``CACHE_BYTES`` of cached messages, and
``MAX_IDS`` ids asked for or served per peer per heartbeat.
"""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from itertools import count
from typing import Any

import base58
import nacl.exceptions
import nacl.signing
import trio
from libp2p.custom_types import TProtocol

from ..core.errors import IntegrityError, InvalidInput
from ..core.ids import PeerId
from . import gossipsub_wire as wire
from .framing import MessageReader
from .gossip import (
    MAX_MESSAGE_SIZE,
    QUEUE_SIZE,
    Admission,
    Counters,
    GossipMessage,
    Offences,
    RecentIds,
    Validator,
    admits,
    check_publish,
    check_topic,
    deliver,
    is_async_validator,
    judge,
    judge_sync,
)
from .host import ConnectionEvents, Host, Peer, Stream, close_stream

log = logging.getLogger(__name__)

V11, V10 = TProtocol("/meshsub/1.1.0"), TProtocol("/meshsub/1.0.0")
PROTOCOLS = (V11, V10)
HEARTBEAT = 1.0  # seconds between heartbeats (mesh upkeep, IHAVE gossip, cache windows)
DEGREE, DEGREE_LOW, DEGREE_HIGH, DEGREE_LAZY = 6, 5, 12, 6  # go-libp2p's defaults
HISTORY, GOSSIP_WINDOWS = 5, 3  # heartbeats a message is kept for IWANT, and announced by IHAVE
PRUNE_BACKOFF = 60  # seconds before a pruned peer may be grafted again (the spec's default)
MAX_BACKOFF = 3600  # a peer's PRUNE may ask for at most this many seconds
OUTBOUND_QUEUE = 8192  # pieces waiting for one peer; beyond, its messages are dropped (and counted)
HIGH_WATER = 2048  # publish waits while a subscribed peer has more pieces than this waiting ...
PUBLISH_WAIT = 5.0  # ... but not longer than this many seconds
RATE_LIMIT = 10_000  # messages per second one peer may hand over
SEEN = 131_072  # message ids remembered, to handle each message once
CACHE_BYTES = 32 << 20  # bytes of recent messages kept for IWANT
OPEN_TIMEOUT = 10.0  # seconds to open the stream to a new peer
_ED25519_PEER = b"\x00\x24\x08\x01\x12\x20"  # identity multihash of an Ed25519 public-key protobuf, then the key
_KEYS = 4096  # verify keys cached, by origin


@dataclass(eq=False)
class _Peer:
    """A peer speaking (or maybe speaking) GossipSub: its topics, and the pieces waiting for its stream."""

    id: Peer
    name: PeerId
    raw: bytes  # the peer id's bytes, as in a message's ``from``
    topics: set[str] = field(default_factory=set)  # what it subscribed to
    told: set[str] = field(default_factory=set)  # the topics it was told this node subscribes to
    outbox: deque[bytes] = field(default_factory=deque)
    ready: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    tokens: float = RATE_LIMIT
    refilled: float = 0.0
    asked: int = 0  # ids asked of it (IWANT) this heartbeat
    served: int = 0  # ids served to it this heartbeat

    def send(self, piece: bytes) -> bool:
        if len(self.outbox) >= OUTBOUND_QUEUE:
            return False
        self.outbox.append(piece)
        self.ready.set()
        return True

    def allow(self, now: float) -> bool:
        """Take one message from the peer's rate budget (``RATE_LIMIT`` a second, as a token bucket)."""
        self.tokens = min(RATE_LIMIT, self.tokens + (now - self.refilled) * RATE_LIMIT)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class _MessageCache:
    """Recent messages (as ``publish`` pieces) for IWANT, by heartbeat window; at most ``CACHE_BYTES``."""

    def __init__(self) -> None:
        self._entries: OrderedDict[bytes, tuple[str, bytes, int]] = OrderedDict()
        self._window = self._bytes = 0

    def add(self, message_id: bytes, topic: str, piece: bytes) -> None:
        if message_id in self._entries:
            return
        self._entries[message_id] = (topic, piece, self._window)
        self._bytes += len(piece)
        while self._bytes > CACHE_BYTES:
            self._bytes -= len(self._entries.popitem(last=False)[1][1])

    def get(self, message_id: bytes) -> tuple[str, bytes] | None:
        """The topic and piece of a cached message."""
        entry = self._entries.get(message_id)
        return entry[:2] if entry else None

    def recent(self, topic: str) -> list[bytes]:
        """Ids of ``topic``'s messages of the last ``GOSSIP_WINDOWS`` heartbeats, oldest first."""
        since = self._window - GOSSIP_WINDOWS
        return [mid for mid, (t, _, window) in self._entries.items() if t == topic and window > since]

    def shift(self) -> None:
        self._window += 1
        while self._entries:
            mid, (_, piece, window) = next(iter(self._entries.items()))
            if window > self._window - HISTORY:
                return
            del self._entries[mid]
            self._bytes -= len(piece)


class GossipSub:
    """GossipSub on ``host`` (a started py-libp2p host, e.g. from ``host.running_host``)."""

    def __init__(self, host: Host, *, max_message_size: int = MAX_MESSAGE_SIZE, queue_size: int = QUEUE_SIZE,
                 heartbeat: float = HEARTBEAT) -> None:
        if not 0 < max_message_size <= wire.MAX_RPC - 4096:
            raise InvalidInput(f"max_message_size must be 1 to {wire.MAX_RPC - 4096} bytes: one message per frame")
        self._host = host
        self._self = host.get_id()
        self._origin: bytes = self._self.to_bytes()
        self._key = host.get_private_key()
        self.max_message_size = max_message_size
        self._heartbeat = heartbeat
        self._send, self.messages = trio.open_memory_channel[GossipMessage](queue_size)
        self._peers: dict[Peer, _Peer] = {}
        self._topics: dict[str, Validator] = {}
        self._admit: dict[str, Admission | None] = {}
        self._verdicts: dict[tuple[str, Peer], bool] = {}  # admissions asked this heartbeat
        self._mesh: dict[str, set[_Peer]] = {}
        self._backoff: dict[tuple[str, Peer], float] = {}
        self._seen = RecentIds(SEEN)
        self._cache = _MessageCache()
        self._seqno = count(time.time_ns())  # never reused across restarts: peers remember ids
        self._keys: OrderedDict[bytes, nacl.signing.VerifyKey] = OrderedDict()
        self._counters = Counters()
        self._offences = Offences()  # peer -> frames and messages refused, before or by a validator's failure
        # the swarm awaits these inline: they only note the peer
        self._notifee = ConnectionEvents(lambda conn: self._connected(conn.muxed_conn.peer_id),
                                         lambda conn: self._disconnected(conn.muxed_conn.peer_id))
        self._wire = {"frames_in": 0, "frames_out": 0, "duplicates": 0}  # transport counters, for status()
        self._nursery: trio.Nursery | None = None

    @property
    def peer_id(self) -> PeerId:
        return PeerId(str(self._self))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        network = self._host.get_network()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for protocol in PROTOCOLS:
                    self._host.set_stream_handler(protocol, self._handle_stream)
                network.register_notifee(self._notifee)
                for peer in self._host.get_connected_peers():
                    self._connected(peer)
                nursery.start_soon(self._heartbeat_loop)
                task_status.started()
        finally:
            self._nursery = None
            network.remove_notifee(self._notifee)
            for protocol in PROTOCOLS:
                self._host.remove_stream_handler(protocol)
            self._peers.clear()
            self._mesh.clear()
            self._send.close()

    async def join(self, topic: str, validate: Validator, *, admit: Admission | None = None) -> None:
        self._running()
        check_topic(topic)
        joined = topic in self._topics
        self._topics[topic], self._admit[topic] = validate, admit
        self._verdicts = {key: v for key, v in self._verdicts.items() if key[0] != topic}
        self._mesh.setdefault(topic, set())
        for peer in self._peers.values():
            self._tell(peer)
        if not joined:
            self._fill_mesh(topic, DEGREE)
        await trio.lowlevel.checkpoint()

    async def leave(self, topic: str) -> None:
        self._running()
        if self._topics.pop(topic, None) is not None:
            self._admit.pop(topic, None)
            until = trio.current_time() + PRUNE_BACKOFF
            for peer in self._mesh.pop(topic, set()):
                peer.send(wire.prune(topic, PRUNE_BACKOFF))
                self._backoff[(topic, peer.id)] = until  # both sides back off, as the spec asks
            for peer in self._peers.values():
                if topic in peer.told:
                    peer.told.discard(topic)
                    peer.send(wire.subscription(topic, False))
        await trio.lowlevel.checkpoint()

    async def publish(self, topic: str, data: bytes) -> None:
        self._running()
        check_publish(self._topics, topic, data, self.max_message_size)
        await self._make_room(topic)
        unsigned = wire.Message(self._origin, data, next(self._seqno).to_bytes(8, "big"), (topic,))
        message = replace(unsigned, signature=self._key.sign(unsigned.signed_part()))
        self._seen.add(message.id)
        piece = wire.publish(message.encode())
        self._cache.add(message.id, topic, piece)
        for peer in self._peers.values():
            if self._subscribed(topic, peer):
                self._queue(peer, piece)
        self._counters.published += 1

    def peers(self, topic: str) -> list[PeerId]:
        return sorted(peer.name for peer in self._mesh.get(topic, ()))

    def reconsider(self, peer: PeerId) -> None:
        """Ask the admission of ``peer`` afresh now, not at the next heartbeat (it proved something: say it
        became a member), and tell it the topics it is now admitted to."""
        self._verdicts = {key: v for key, v in self._verdicts.items() if str(key[1]) != peer}
        for known in self._peers.values():
            if known.name == peer:
                self._tell(known)

    def status(self) -> dict[str, Any]:
        return {**self._counters.as_dict(),
                "outbound_queued_max": max((len(p.outbox) for p in self._peers.values()), default=0), **self._wire,
                "bad_peers": dict(self._offences.counts),
                "topics": {t: {"peers": len(self._mesh.get(t, ()))} for t in self._topics}}

    # -- peers and streams -------------------------------------------------------------------------------

    def _running(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError(f"gossip on {self._self} is not running; start its run() first")
        return self._nursery

    def _connected(self, peer_id: Peer) -> _Peer | None:
        """A peer to speak GossipSub with: open our stream to it, with our subscriptions first."""
        peer = self._peers.get(peer_id)
        if peer is None and self._nursery is not None:
            peer = self._peers[peer_id] = _Peer(peer_id, PeerId(str(peer_id)), peer_id.to_bytes())
            self._tell(peer)
            self._nursery.start_soon(self._send_loop, peer)
        return peer

    def _disconnected(self, peer_id: Peer) -> None:
        if peer_id in self._peers and peer_id not in self._host.get_connected_peers():
            self._forget(self._peers[peer_id])

    def _forget(self, peer: _Peer) -> None:
        if self._peers.get(peer.id) is peer:
            del self._peers[peer.id]
        for mesh in self._mesh.values():
            mesh.discard(peer)
        peer.scope.cancel()

    async def _send_loop(self, peer: _Peer) -> None:
        """Open our stream to ``peer`` and send what gathers in its queue, as few frames as it fits."""
        stream = None
        with peer.scope:
            try:
                with trio.fail_after(OPEN_TIMEOUT):
                    stream = await self._host.new_stream(peer.id, list(PROTOCOLS))
                while True:
                    await peer.ready.wait()
                    peer.ready = trio.Event()
                    while peer.outbox:
                        pieces, size = [peer.outbox.popleft()], 0
                        size = len(pieces[0])
                        while peer.outbox and size + len(peer.outbox[0]) <= wire.MAX_RPC - 16:
                            size += len(peer.outbox[0])
                            pieces.append(peer.outbox.popleft())
                        await stream.write(wire.frame(pieces))
                        self._wire["frames_out"] += 1
            except Exception as exc:  # per peer: it does not speak GossipSub, or went away; only its stream ends
                log.debug("no GossipSub with %s: %r", peer.name, exc)
                self._forget(peer)
        if stream is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await close_stream(stream)

    async def _handle_stream(self, stream: Stream) -> None:
        """A stream a peer opened to send us its RPCs; read it until it ends."""
        peer_id = stream.muxed_conn.peer_id
        try:
            reader = MessageReader(stream, wire.MAX_RPC, "GossipSub")
            while (data := await reader.next()) is not None:
                peer = self._connected(peer_id)
                if peer is None:
                    return
                self._wire["frames_in"] += 1
                await self._handle_rpc(peer, wire.decode(data))
        except IntegrityError as exc:
            self._offence(str(peer_id), "malformed", "malformed GossipSub frame (stream closed): %s", exc)
        except Exception as exc:  # a peer's stream ending badly is that peer's business
            log.debug("GossipSub stream from %s ended: %r", peer_id, exc)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await close_stream(stream)
            self._disconnected(peer_id)

    # -- closed meshes ----------------------------------------------------------------------------------

    def _admitted(self, topic: str, peer: _Peer) -> bool:
        """Whether ``peer`` may exchange ``topic``'s messages with this node (asked once per heartbeat)."""
        admit = self._admit.get(topic)
        if admit is None:
            return True
        verdict = self._verdicts.get((topic, peer.id))
        if verdict is None:
            verdict = self._verdicts[(topic, peer.id)] = admits(admit, peer.name)
        return verdict

    def _subscribed(self, topic: str, peer: _Peer) -> bool:
        return topic in peer.topics and self._admitted(topic, peer)

    def _tell(self, peer: _Peer) -> None:
        """Bring what ``peer`` was told of this node's subscriptions to what it is admitted to."""
        for topic in self._topics:
            if self._admitted(topic, peer):
                if topic not in peer.told:
                    peer.told.add(topic)
                    peer.send(wire.subscription(topic, True))
            elif topic in peer.told:
                peer.told.discard(topic)
                self._mesh[topic].discard(peer)
                peer.send(wire.subscription(topic, False))

    # -- what peers send ---------------------------------------------------------------------------------

    async def _handle_rpc(self, peer: _Peer, rpc: wire.Rpc) -> None:
        # PRUNEs first: a frame may join a peer's leave() and join() (PRUNE, unsubscribe, subscribe), and the
        # backoff the PRUNE sets must keep this node from grafting the peer right back.
        now = trio.current_time()
        for topic, backoff in rpc.prune:
            if topic in self._mesh:
                self._mesh[topic].discard(peer)
                self._backoff[(topic, peer.id)] = now + min(backoff or PRUNE_BACKOFF, MAX_BACKOFF)
        for subscribe, topic in rpc.subscriptions:
            if not subscribe:
                peer.topics.discard(topic)
                self._mesh.get(topic, set()).discard(peer)
            elif len(peer.topics) < wire.MAX_SUBSCRIPTIONS:
                peer.topics.add(topic)
                if topic in self._topics and len(self._mesh[topic]) < DEGREE:
                    self._fill_mesh(topic, DEGREE, [peer])
        for message, raw in rpc.messages:
            await self._received(peer, message, raw)
        self._control(peer, rpc)

    async def _received(self, peer: _Peer, message: wire.Message, raw: bytes) -> None:
        joined = [t for t in message.topics if t in self._topics]
        topics = [t for t in joined if self._admitted(t, peer)]
        if not topics:
            if joined:  # before ``seen``: its copy must not hide an admitted peer's
                self._counters.unadmitted += 1
            return  # not joined here
        if message.id in self._seen or message.origin == self._origin:
            self._wire["duplicates"] += 1  # each message is handled once
            return
        if not peer.allow(trio.current_time()):
            self._offence(peer.name, "flooded", "over %d messages a second; the excess dropped", RATE_LIMIT)
            return
        if len(message.data) > self.max_message_size:
            self._offence(peer.name, "oversize", "message of %d bytes on %s is over the size limit", len(message.data),
                           ",".join(topics))
            return
        if not self._signed(message):
            self._offence(peer.name, "rejected", "message on %s with a missing or wrong signature", ",".join(topics))
            return
        # Seen only now: a forged, oversized or flooded copy must not make the true message a "duplicate".
        self._seen.add(message.id)
        origin = PeerId(_peer_text(message.origin))
        for topic in topics:
            validate = self._topics.get(topic)
            if validate is None:
                continue
            if is_async_validator(validate):
                accepted = await judge(validate, topic, peer.name, message.data, self._offences)
            else:
                accepted = judge_sync(validate, topic, peer.name, message.data, self._offences)
            if not accepted:
                self._counters.rejected += 1  # the validator's owner reports what it refuses, and why
                continue
            if topic not in self._topics:
                continue  # left while an async validator ran
            deliver(self._send, GossipMessage(topic, message.data, origin), self._counters)
            piece = wire.publish(raw)
            self._cache.add(message.id, topic, piece)
            for other in self._mesh[topic]:
                if other is not peer and other.raw != message.origin:
                    self._queue(other, piece)

    def _control(self, peer: _Peer, rpc: wire.Rpc) -> None:
        now = trio.current_time()
        for topic in rpc.graft:
            if topic not in self._topics:
                continue  # not joined here: ignored, as go-libp2p does (answering would let a peer make us talk)
            if not self._admitted(topic, peer):
                self._counters.unadmitted += 1  # ignored too: a PRUNE would tell it this node is on the topic
            elif self._backoff.get((topic, peer.id), 0) > now:
                peer.send(wire.prune(topic, PRUNE_BACKOFF))
            else:
                peer.topics.add(topic)
                self._mesh[topic].add(peer)
        wanted = [mid for topic, ids in rpc.ihave if topic in self._topics and self._admitted(topic, peer)
                  for mid in ids if mid not in self._seen]
        wanted = wanted[:max(0, wire.MAX_IDS - peer.asked)]
        if wanted:
            peer.asked += len(wanted)
            peer.send(wire.iwant(wanted))
        for mid in rpc.iwant[:max(0, wire.MAX_IDS - peer.served)]:
            cached = self._cache.get(mid)
            if cached is not None and self._admitted(cached[0], peer):
                peer.served += 1
                self._queue(peer, cached[1])

    def _offence(self, peer: str, counter: str, what: str, *args: object) -> None:
        """Bad input from ``peer``: counted (in all and per peer) and logged once per peer per minute."""
        setattr(self._counters, counter, getattr(self._counters, counter) + 1)
        self._offences.add(peer, what, *args)

    def _signed(self, message: wire.Message) -> bool:
        origin = message.origin
        if len(origin) != 38 or not origin.startswith(_ED25519_PEER) or len(message.signature) != 64:
            return False
        if message.key and message.key != origin[2:]:  # ``key`` is the public-key protobuf the id inlines
            return False
        key = self._keys.get(origin)
        if key is None:
            key = self._keys[origin] = nacl.signing.VerifyKey(origin[6:])
            if len(self._keys) > _KEYS:
                self._keys.popitem(last=False)
        try:
            key.verify(message.signed_part(), message.signature)
        except (nacl.exceptions.BadSignatureError, ValueError):
            return False
        return True

    # -- mesh upkeep -------------------------------------------------------------------------------------

    def _queue(self, peer: _Peer, piece: bytes) -> None:
        if not peer.send(piece):
            self._counters.dropped_outbound += 1
            if self._counters.dropped_outbound % 1000 == 1:
                log.warning("peer %s is not reading GossipSub: %d messages dropped so far", peer.name,
                            self._counters.dropped_outbound)

    async def _make_room(self, topic: str) -> None:
        """Back-pressure: wait while a peer subscribed to ``topic`` has over ``HIGH_WATER`` pieces waiting."""
        with trio.move_on_after(PUBLISH_WAIT) as waited:
            # noqa below: a queue fills and drains in frames; a short poll costs less than an event per piece
            while any(len(p.outbox) > HIGH_WATER for p in self._peers.values() if self._subscribed(topic, p)):  # noqa: ASYNC110
                await trio.sleep(0.002)
        if waited.cancelled_caught:
            log.warning("a peer is not reading %s; publishing anyway (it may miss messages)", topic)

    def _fill_mesh(self, topic: str, size: int, candidates: list[_Peer] | None = None) -> None:
        """Graft peers subscribed to ``topic`` (from ``candidates``, or any) until the mesh has ``size``."""
        mesh, now = self._mesh[topic], trio.current_time()
        pool = [p for p in (self._peers.values() if candidates is None else candidates)
                if self._subscribed(topic, p) and p not in mesh and self._backoff.get((topic, p.id), 0) <= now]
        for peer in random.sample(pool, min(len(pool), max(0, size - len(mesh)))):
            mesh.add(peer)
            peer.send(wire.graft(topic))

    async def _heartbeat_loop(self) -> None:
        while True:
            await trio.sleep(self._heartbeat)
            try:
                self._beat()
            except Exception:  # a bug here must not end the router: the next heartbeat tries again
                log.exception("GossipSub heartbeat failed")

    def _beat(self) -> None:
        now = trio.current_time()
        connected = set(self._host.get_connected_peers())
        for peer in [p for p in self._peers.values() if p.id not in connected]:
            self._forget(peer)
        self._backoff = {k: until for k, until in self._backoff.items() if until > now}
        self._verdicts.clear()  # admissions are asked afresh: memberships change
        for peer in self._peers.values():
            self._tell(peer)
        for topic, mesh in self._mesh.items():
            mesh.difference_update([p for p in mesh if not self._subscribed(topic, p)])
            if len(mesh) < DEGREE_LOW:
                self._fill_mesh(topic, DEGREE)
            elif len(mesh) > DEGREE_HIGH:
                for peer in random.sample(sorted(mesh, key=lambda p: p.name), len(mesh) - DEGREE):
                    mesh.discard(peer)
                    peer.send(wire.prune(topic, PRUNE_BACKOFF))
                    self._backoff[(topic, peer.id)] = now + PRUNE_BACKOFF
            ids = self._cache.recent(topic)[-wire.MAX_IDS // 2:]
            if ids:
                lazy = [p for p in self._peers.values() if self._subscribed(topic, p) and p not in mesh]
                for peer in random.sample(lazy, min(DEGREE_LAZY, len(lazy))):
                    peer.send(wire.ihave(topic, ids))
        self._cache.shift()
        for peer in self._peers.values():
            peer.asked = peer.served = 0


def _peer_text(raw: bytes) -> str:
    return base58.b58encode(raw).decode("ascii")
