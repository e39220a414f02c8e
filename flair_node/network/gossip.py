"""Gossip: signed announcements flooded on one topic per repository, behind Flair's own small interface.

A node ``join``\\ s a topic with a validator, ``publish``\\ es bytes on it, and reads what others published from
its ``messages`` channel as ``GossipMessage`` records. The validator sees every message that arrives on the
topic before anything else happens to it: a message it rejects is neither delivered here nor relayed to other
peers, so one honest node stops bad announcements from spreading through it. Everything is in Flair's types
(``PeerId`` text, ``bytes``); no transport type crosses this interface.

Implementations keeping the same contract (``tests/contracts/test_gossip.py`` runs one suite against each):

- ``GossipSub`` (``gossipsub``): GossipSub v1.1 spoken by Flair itself on the node's libp2p host; what the
  daemon runs.
- ``MemoryGossip`` / ``MemoryGossipNetwork`` (here): nodes in one trio run, linked by explicit links (or all to
  all), flooding each message once over every link, for fast tests of the layers above.
- ``Libp2pGossip`` (``testing.pylibp2p_gossip``): py-libp2p's own GossipSub, configured so that a burst
  reaches every node; the reference peer ``GossipSub`` is tested against (mixed clusters) and the baseline of
  ``bench/gossip_hosts.py``.

Contract, in both:

- A node never receives what it published itself; every other node that joined the topic and is reachable
  through nodes that accept the message receives it exactly once.
- The validator is called with ``(forwarder, data)`` for each distinct message (an async one, rarely, twice):
  ``forwarder`` is the peer that handed the message to this node, not necessarily its publisher. It may be a
  plain function or an ``async def``; an exception counts as a rejection and as bad input from the forwarder
  (counted per peer, logged in one line once per peer per minute: never a traceback per message).
  ``GossipMessage.from_peer`` is the publisher (with libp2p, the peer whose key signed the message).
- Messages larger than ``max_message_size`` are refused by ``publish`` (``InvalidInput``) and dropped on
  receipt (counted in ``status()["oversize"]``, never given to the validator, never relayed).
- Delivery never blocks the transport: ``messages`` holds up to ``queue_size`` messages; beyond that a message
  is dropped and counted in ``status()["dropped_full"]``, which a consumer that keeps up keeps at 0.
- ``run`` is a service: ``task_status.started()`` when ready, cancellation stops it and closes ``messages``.
  ``join``, ``leave`` and ``publish`` need it running.
- A topic joined with ``admit`` has a closed mesh: a peer the function refuses (it is asked again at every
  heartbeat, so a verdict may change) is never told this node subscribes, never sent or relayed a message of the
  topic, never in its mesh, and whatever it sends on the topic (subscriptions, grafts, messages, IHAVE, IWANT)
  is ignored without reaching the validator (counted in ``status()["unadmitted"]``). Flair gives each repository's
  topic its current members (``daemon.p2p``): a peer that is not one receives none of the repository's
  announcements. ``Libp2pGossip`` cannot keep a closed mesh (py-libp2p's router has no hook for it) and refuses
  ``admit``.

Memory bounds of ``MemoryGossip``: ``queue_size`` delivered and ``INBOX_SIZE`` incoming messages per node, each at
most ``max_message_size`` bytes, and the ids of the last ``SEEN_SIZE`` messages.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Container, Hashable
from dataclasses import asdict, dataclass, field, replace
from itertools import count
from typing import Any, Protocol

import trio

from ..core.errors import InvalidInput
from ..core.ids import PeerId

log = logging.getLogger(__name__)


#: Called as ``validate(forwarder, data)``; true to accept. A plain function or an ``async def``.
Validator = Callable[[PeerId, bytes], "Awaitable[bool] | bool"]
#: Whether a peer may be in a topic's mesh (see the contract: a closed mesh).
Admission = Callable[[PeerId], bool]

MAX_MESSAGE_SIZE = 64 * 1024  # bytes of one message's data
QUEUE_SIZE = 4096  # accepted messages waiting in ``messages`` for the consumer
MAX_TOPIC_LENGTH = 256  # characters of a topic name
INBOX_SIZE = 8192  # MemoryGossip: messages waiting to be validated
SEEN_SIZE = 65536  # MemoryGossip: ids of recent messages remembered to drop duplicates
LOG_EVERY = 60.0  # seconds between two log lines about the same peer's bad input
MAX_OFFENDERS = 4096  # peers whose bad input is counted (the least offending forgotten first)
CLIP = 300  # characters of one text argument in a log line about bad input


@dataclass(frozen=True)
class GossipMessage:
    """A message accepted on ``topic``: ``from_peer`` published ``data`` (maybe relayed by others)."""

    topic: str
    data: bytes
    from_peer: PeerId


class Gossip(Protocol):
    """What the rest of Flair uses to gossip; see the module docstring for the contract."""

    #: Messages accepted by this node's validators, in arrival order, for every joined topic.
    messages: trio.MemoryReceiveChannel[GossipMessage]

    @property
    def peer_id(self) -> PeerId: ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None: ...

    async def join(self, topic: str, validate: Validator, *, admit: Admission | None = None) -> None:
        """Subscribe to ``topic``; ``validate`` judges each message on it, and only peers ``admit`` lets in (all,
        without it) exchange anything of it with this node. Joining again replaces both."""

    async def leave(self, topic: str) -> None:
        """Unsubscribe: nothing more on ``topic`` is delivered or relayed by this node."""

    async def publish(self, topic: str, data: bytes) -> None:
        """Send ``data`` to the peers of a joined ``topic``. Raises ``InvalidInput`` if too large or not joined."""

    def peers(self, topic: str) -> list[PeerId]:
        """The peers this node exchanges ``topic``'s messages with directly (its mesh)."""

    def status(self) -> dict[str, Any]:
        """Counters (published, delivered, rejected, oversize, dropped_full) and peers per topic."""


@dataclass
class Counters:
    """What a gossip node counts; ``status()`` reports them."""

    published: int = 0  # messages this node published
    delivered: int = 0  # messages put in ``messages``
    rejected: int = 0  # messages a validator refused (or failed on)
    oversize: int = 0  # received messages over the size limit
    dropped_full: int = 0  # accepted messages dropped because ``messages`` (or an inbox) was full
    malformed: int = 0  # frames that did not parse (GossipSub; the peer's stream is closed)
    flooded: int = 0  # messages dropped because their forwarder sent over the rate limit (GossipSub)
    dropped_outbound: int = 0  # messages not sent because a peer's outbound queue was full (GossipSub)
    unadmitted: int = 0  # messages (and grafts) of a closed topic ignored because their sender is not admitted

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class RecentIds:
    """The last ``size`` ids seen, oldest forgotten first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._ids: OrderedDict[Hashable, None] = OrderedDict()

    def add(self, key: Hashable) -> bool:
        """Remember ``key``; False if it was already remembered."""
        if key in self._ids:
            return False
        self._ids[key] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return True

    def __contains__(self, key: Hashable) -> bool:
        return key in self._ids


@dataclass
class BadInputLog:
    """Logs bad input once per peer per ``LOG_EVERY`` seconds (remembering at most 1024 peers), each text
    argument clipped to ``CLIP`` characters (a peer chooses what its errors say)."""

    clock: Callable[[], float] = trio.current_time
    _last: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def warn(self, peer: str, what: str, *args: object) -> None:
        now = self.clock()
        if now - self._last.get(peer, -math.inf) < LOG_EVERY:
            return
        self._last[peer] = now
        self._last.move_to_end(peer)
        if len(self._last) > 1024:
            self._last.popitem(last=False)
        log.warning("peer %s: " + what + " (further reports from this peer muted for %.0f s)", peer,
                    *(clip(a) for a in args), LOG_EVERY)


def clip(value: object) -> object:
    """``value`` for a log line: numbers as they are, anything else as text of at most ``CLIP`` characters."""
    if isinstance(value, int | float):
        return value
    text = repr(value) if isinstance(value, BaseException) and not str(value) else str(value)
    return text if len(text) <= CLIP else text[:CLIP] + "..."


@dataclass
class Offences:
    """Bad input per peer: counted in ``counts`` (at most ``MAX_OFFENDERS`` peers, the least offending forgotten
    first) and logged once per peer per ``LOG_EVERY`` seconds."""

    log: BadInputLog = field(default_factory=BadInputLog)
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, peer: str, what: str, *args: object) -> None:
        if peer not in self.counts and len(self.counts) >= MAX_OFFENDERS:
            del self.counts[min(self.counts, key=self.counts.__getitem__)]
        self.counts[peer] += 1
        self.log.warn(peer, what, *args)


#: Where validator failures go when the caller keeps no ``Offences`` of its own.
_UNCOUNTED = Offences(BadInputLog(time.monotonic))


def check_topic(topic: str) -> None:
    if not isinstance(topic, str) or not 0 < len(topic) <= MAX_TOPIC_LENGTH:
        raise InvalidInput(f"a topic is a non-empty name of at most {MAX_TOPIC_LENGTH} characters, not {topic!r}",
                           topic=str(topic)[:MAX_TOPIC_LENGTH])


def check_publish(joined: Container[str], topic: str, data: bytes, limit: int) -> None:
    """What every implementation's ``publish`` refuses: a bad topic, one not joined, data over ``limit``."""
    check_topic(topic)
    if topic not in joined:
        raise InvalidInput(f"join {topic} before publishing on it", topic=topic)
    check_size(topic, data, limit)


def check_size(topic: str, data: bytes, limit: int) -> None:
    if not isinstance(data, bytes):
        raise InvalidInput(f"gossip data must be bytes, not {type(data).__name__}", topic=topic)
    if len(data) > limit:
        raise InvalidInput(f"message of {len(data)} bytes on {topic} is over the {limit}-byte limit; "
                           "gossip announcements, and move payloads by block exchange", topic=topic)


def admits(admit: Admission | None, peer: PeerId) -> bool:
    """Whether ``admit`` lets ``peer`` in (``None`` lets everyone in); one that raises lets nobody in."""
    if admit is None:
        return True
    try:
        return bool(admit(peer))
    except Exception:  # the admission's bug must not open the mesh, nor stop the router
        log.exception("admission of %s failed; not admitted", peer)
        return False


def is_async_validator(validate: Validator) -> bool:
    # an ``async def`` function, a partial of one, or an object whose ``__call__`` is ``async def``
    return inspect.iscoroutinefunction(validate) or inspect.iscoroutinefunction(type(validate).__call__)


def judge_sync(validate: Validator, topic: str, forwarder: PeerId, data: bytes,
               offences: Offences | None = None) -> bool:
    """Call a plain validator; an exception or an awaitable answer counts as a rejection. An exception is bad
    input from ``forwarder``, added to ``offences``."""
    try:
        verdict = validate(forwarder, data)
    except Exception as exc:  # whatever the message made the validator raise: that message's fault
        _failed(offences, forwarder, topic, exc)
        return False
    if inspect.isawaitable(verdict):
        if inspect.iscoroutine(verdict):
            verdict.close()
        log.error("validator of %s returned an awaitable from a plain function; make it `async def`", topic)
        return False
    return bool(verdict)


async def judge(validate: Validator, topic: str, forwarder: PeerId, data: bytes,
                offences: Offences | None = None) -> bool:
    """Call a plain or async validator; an exception counts as a rejection, and as bad input (``judge_sync``)."""
    if not is_async_validator(validate):
        return judge_sync(validate, topic, forwarder, data, offences)
    try:
        return bool(await validate(forwarder, data))  # type: ignore[misc]
    except Exception as exc:  # per message, as in ``judge_sync``: that message's fault, never the router's end
        _failed(offences, forwarder, topic, exc)
        return False


def _failed(offences: Offences | None, forwarder: PeerId, topic: str, exc: Exception) -> None:
    (offences or _UNCOUNTED).add(forwarder, "validator of %s failed on a message (%s: %s); message rejected",
                                 topic, type(exc).__name__, exc)


def deliver(send: trio.MemorySendChannel[GossipMessage], message: GossipMessage, counters: Counters) -> None:
    """Hand ``message`` to the consumer without ever blocking the transport."""
    try:
        send.send_nowait(message)
    except trio.WouldBlock:
        counters.dropped_full += 1
        if counters.dropped_full == 1 or counters.dropped_full % 1000 == 0:
            log.warning("gossip consumer is behind: %d messages dropped so far", counters.dropped_full)
    except trio.ClosedResourceError:
        pass  # the service stopped
    else:
        counters.delivered += 1


# -- in memory -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Envelope:
    topic: str
    data: bytes
    origin: PeerId
    seqno: int
    forwarder: PeerId


class MemoryGossipNetwork:
    """Memory gossip nodes in one trio run. With ``full_mesh`` every node is linked to every other; otherwise
    ``connect`` draws the links (a line A-B-C makes B the only way between A and C)."""

    def __init__(self, *, full_mesh: bool = True) -> None:
        self._full_mesh = full_mesh
        self._nodes: dict[PeerId, MemoryGossip] = {}
        self._links: dict[PeerId, set[PeerId]] = {}
        self._names = count(1)

    def node(self, peer_id: str | None = None, *, max_message_size: int = MAX_MESSAGE_SIZE,
             queue_size: int = QUEUE_SIZE) -> MemoryGossip:
        """A new node (``run`` it before use), named ``peer_id`` or ``memory-<n>``."""
        name = PeerId(peer_id or f"memory-{next(self._names)}")
        if name in self._nodes:
            raise InvalidInput(f"memory gossip network already has a node {name}", peer=name)
        node = MemoryGossip(self, name, max_message_size=max_message_size, queue_size=queue_size)
        self._links[name] = set(self._nodes) if self._full_mesh else set()
        for other in self._links[name]:
            self._links[other].add(name)
        self._nodes[name] = node
        return node

    def connect(self, a: str, b: str) -> None:
        """Link nodes ``a`` and ``b`` both ways."""
        for x in (a, b):
            if x not in self._nodes:
                raise InvalidInput(f"no memory gossip node {x}", peer=x)
        if a != b:
            self._links[PeerId(a)].add(PeerId(b))
            self._links[PeerId(b)].add(PeerId(a))

    def neighbours(self, peer: PeerId) -> list[MemoryGossip]:
        return [self._nodes[p] for p in sorted(self._links[peer])]


class MemoryGossip:
    """One node of a ``MemoryGossipNetwork``. Messages wait in the node's inbox until its ``run`` validates them
    one at a time; each is relayed, once, to linked nodes that joined the topic."""

    def __init__(self, network: MemoryGossipNetwork, peer_id: PeerId, *, max_message_size: int = MAX_MESSAGE_SIZE,
                 queue_size: int = QUEUE_SIZE) -> None:
        self._network = network
        self._peer_id = peer_id
        self.max_message_size = max_message_size
        self._inbox_send, self._inbox = trio.open_memory_channel[_Envelope](INBOX_SIZE)
        self._send, self.messages = trio.open_memory_channel[GossipMessage](queue_size)
        self._topics: dict[str, Validator] = {}
        self._admit: dict[str, Admission | None] = {}
        self._seen = RecentIds(SEEN_SIZE)
        self._seqno = count(1)
        self._running = False
        self._counters = Counters()
        self._offences = Offences()

    @property
    def peer_id(self) -> PeerId:
        return self._peer_id

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._running = True
        try:
            task_status.started()
            async for envelope in self._inbox:
                await self._receive(envelope)
        finally:
            self._running = False
            self._inbox.close()
            self._send.close()

    async def join(self, topic: str, validate: Validator, *, admit: Admission | None = None) -> None:
        self._check_running()
        check_topic(topic)
        self._topics[topic] = validate
        self._admit[topic] = admit
        await trio.lowlevel.checkpoint()

    async def leave(self, topic: str) -> None:
        self._check_running()
        self._topics.pop(topic, None)
        self._admit.pop(topic, None)
        await trio.lowlevel.checkpoint()

    async def publish(self, topic: str, data: bytes) -> None:
        self._check_running()
        check_publish(self._topics, topic, data, self.max_message_size)
        envelope = _Envelope(topic, data, self._peer_id, next(self._seqno), self._peer_id)
        self._seen.add((envelope.origin, envelope.seqno))
        self._counters.published += 1
        for node in self._mesh(topic):
            try:
                await node._inbox_send.send(envelope)  # the publisher waits for room; relays never wait
            except trio.BrokenResourceError:
                pass  # that node stopped

    def peers(self, topic: str) -> list[PeerId]:
        return [node.peer_id for node in self._mesh(topic)]

    def status(self) -> dict[str, Any]:
        return {**self._counters.as_dict(), "bad_peers": dict(self._offences.counts),
                "topics": {t: {"peers": len(self.peers(t))} for t in self._topics}}

    def _mesh(self, topic: str) -> list[MemoryGossip]:
        if topic not in self._topics:
            return []
        return [n for n in self._network.neighbours(self._peer_id) if n._running and topic in n._topics
                and admits(self._admit.get(topic), n.peer_id) and admits(n._admit.get(topic), self._peer_id)]

    def _check_running(self) -> None:
        if not self._running:
            raise RuntimeError(f"gossip node {self._peer_id} is not running; start its run() first")

    async def _receive(self, envelope: _Envelope) -> None:
        validate = self._topics.get(envelope.topic)
        if validate is None:
            return  # not joined (any more)
        if not admits(self._admit.get(envelope.topic), envelope.forwarder):
            self._counters.unadmitted += 1  # before ``seen``: its copy must not hide an admitted peer's
            return
        if not self._seen.add((envelope.origin, envelope.seqno)):
            return  # a duplicate: each message is judged once
        if len(envelope.data) > self.max_message_size:
            self._counters.oversize += 1
            self._offences.add(envelope.forwarder, "message of %d bytes on %s is over the size limit",
                               len(envelope.data), envelope.topic)
            return
        if not await judge(validate, envelope.topic, envelope.forwarder, envelope.data, self._offences):
            self._counters.rejected += 1  # the validator's owner reports what it refuses, and why
            return
        if envelope.topic not in self._topics:
            return  # left while an async validator ran
        deliver(self._send, GossipMessage(envelope.topic, envelope.data, envelope.origin), self._counters)
        relayed = replace(envelope, forwarder=self._peer_id)
        for node in self._mesh(envelope.topic):
            if node.peer_id in (envelope.forwarder, envelope.origin):
                continue
            try:
                node._inbox_send.send_nowait(relayed)
            except trio.WouldBlock:
                node._counters.dropped_full += 1
            except trio.BrokenResourceError:
                pass  # that node stopped
