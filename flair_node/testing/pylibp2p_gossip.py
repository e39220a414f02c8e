"""``Libp2pGossip``: the ``Gossip`` contract on py-libp2p 0.8.1's GossipSub, on a running libp2p host.

The daemon runs Flair's own router (``network.gossipsub``); this one is the other implementation it must
interoperate with (``tests/contracts/test_gossip.py`` runs mixed clusters) and the baseline ``bench/gossip_hosts.py``
measures it against. It was the daemon's router until its per-message cost kept ten daemons on two cores from
meeting the gossip latency goal.

py-libp2p's defaults lose messages silently under a burst; each knob below is set where it lives:

===========================  ==========================================  ========  ============================
knob                         where in py-libp2p 0.8.1 (libp2p/pubsub/)    default   here
===========================  ==========================================  ========  ============================
heartbeat                    GossipSub(heartbeat_interval=)               120 s     ``HEARTBEAT`` 1 s
                             gossipsub.py:179
outbound queue per peer      rpc_queue.py:39 OutBoundQueueSize, bound     32 RPCs   ``OUTBOUND_QUEUE`` 4096
                             as RpcQueue's default (rpc_queue.py:122);
                             ``RpcQueue()`` per peer at pubsub.py:948
subscription queue           pubsub.py:124 SUBSCRIPTION_CHANNEL_SIZE,     32 msgs   not used: accepted messages
                             full -> dropped at pubsub.py:1372                      go straight to ``messages``
spam protection              GossipSub(max_messages_per_topic_per_        10/s      ``RATE_LIMIT`` 10000/s
                             second=) gossipsub.py:190, checked per
                             forwarder and topic at gossipsub.py:975
concurrent async validators  Pubsub(max_concurrent_validator_count=)      10        ``VALIDATORS`` 64
                             pubsub.py:384
signing                      Pubsub(strict_signing=) pubsub.py:381        True      True: signed by the host key,
                                                                                    origin's signature checked
inbound RPC frame            Pubsub(max_inbound_rpc_size=) pubsub.py:390  1 MiB     1 MiB (a larger frame resets
                                                                                    the peer's stream)
messages held for a peer     GossipSub(max_pending_messages_per_peer=)    100       ``OUTBOUND_QUEUE`` 4096 (older
whose stream is not open     gossipsub.py:197, dropped at :620                      dropped with a warning)
===========================  ==========================================  ========  ============================

How:

- Accepted messages are handed over synchronously: ``_Pubsub`` overrides ``Pubsub.notify_subscriptions`` (the
  one place py-libp2p puts a validated message into its 32-slot subscription channel, dropping it when full)
  and puts it in ``messages`` (``queue_size``, default 4096; a full queue is counted in ``dropped_full``).
  There is no intermediate queue to drain, so none can fill.
- Each peer's outbound ``RpcQueue`` is resized as Pubsub registers it (``_SizedQueues``), before anything is
  pushed. This touches one private attribute (``RpcQueue._queue.max_size``); py-libp2p 0.8.1 has no knob.
- ``publish`` applies back-pressure instead of letting the library drop: it waits while any peer's outbound
  queue holds more than ``HIGH_WATER`` RPCs (at most ``PUBLISH_WAIT`` s, then publishes anyway), and keeps
  this node's own rate under ``RATE_LIMIT / 2`` per topic (py-libp2p applies the spam limit to its own
  publishes too, after local delivery, and drops silently). Relays rely on the queue size.
- Validators run as py-libp2p topic validators (``Pubsub.set_topic_validator``): it calls them before it
  delivers or forwards a message, so a rejected message is not relayed. py-libp2p caches each verdict by
  message id (300 s, 1000 ids), so a validator is called once per message, except that an async validator
  can be called again for a copy that arrives while the first is being judged (only one copy is delivered:
  ``_accepted`` drops the second, which py-libp2p would deliver). An async validator that takes longer than
  ``VALIDATION_TIMEOUT`` rejects the message; py-libp2p does not report it, so it is not counted.
  The size check runs first in the same hook.
- py-libp2p hands a publisher its own messages and runs its validators on them; both are skipped here.
- Router: ``/meshsub/1.1.0`` (and 1.0.0). 1.2 is not offered: py-libp2p 0.8.1 sends an IDONTWANT control RPC
  to every mesh peer for every message, even its own small ones, doubling the RPCs per message.

Bounds per node: ``OUTBOUND_QUEUE`` RPCs per peer (each at most 1 MiB; with ``MAX_MESSAGE_SIZE`` 64 KiB
messages, 256 MiB per peer in the worst case, ~4 MiB with 1 KiB announcements), ``queue_size`` delivered
messages, py-libp2p's seen-message cache (every message id for 120 s, at most ``RATE_LIMIT`` per forwarder
per topic per second) and its rate-limit window (``RATE_LIMIT`` timestamps per forwarder and topic).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.tools.anyio_service import background_trio_service

from ..core.errors import InvalidInput
from ..core.ids import PeerId
from ..network.gossip import (
    MAX_MESSAGE_SIZE,
    QUEUE_SIZE,
    Admission,
    BadInputLog,
    Counters,
    GossipMessage,
    Offences,
    RecentIds,
    Validator,
    check_publish,
    check_topic,
    deliver,
    is_async_validator,
    judge,
    judge_sync,
)
from ..network.host import Host, map_libp2p_errors

log = logging.getLogger(__name__)

PROTOCOLS = (PROTOCOL_ID_V11, PROTOCOL_ID)
HEARTBEAT = 1  # seconds between GossipSub heartbeats (mesh upkeep, gossip)
DEGREE, DEGREE_LOW, DEGREE_HIGH = 6, 5, 12  # GossipSub mesh size per topic (go-libp2p's defaults)
OUTBOUND_QUEUE = 4096  # RPCs queued per peer before py-libp2p drops
HIGH_WATER = 1024  # publish waits while a peer's outbound queue is longer than this
PUBLISH_WAIT = 5.0  # ... but not longer than this many seconds
RATE_LIMIT = 10_000  # messages per second per forwarding peer per topic, then py-libp2p drops
VALIDATORS = 64  # async validators running at once
VALIDATION_TIMEOUT = 5.0  # seconds an async validator may take (then the message is rejected)
RECENT = 65536  # ids of recently delivered messages, to deliver each once


class _SizedQueues(dict[ID, RpcQueue]):
    """Pubsub's ``peer_queues``: resizes each peer's outbound queue as Pubsub registers it."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __setitem__(self, peer: ID, queue: RpcQueue) -> None:
        inner = getattr(queue, "_queue", None)
        if not hasattr(inner, "max_size"):
            raise RuntimeError("py-libp2p's RpcQueue changed: cannot size the outbound queue; check gossip_libp2p")
        inner.max_size = self.size  # type: ignore[union-attr]
        super().__setitem__(peer, queue)


class _Pubsub(Pubsub):
    """py-libp2p's Pubsub, handing each accepted message to ``on_message`` instead of its subscription channels."""

    def __init__(self, host: Any, router: GossipSub, *, on_message: Callable[[rpc_pb2.Message], None],
                 outbound_queue: int, **options: Any) -> None:
        super().__init__(host, router, **options)
        self._on_message = on_message
        self.peer_queues = _SizedQueues(outbound_queue)

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        self._on_message(publish_message)


class Libp2pGossip:
    """GossipSub on ``host`` (a started py-libp2p host, e.g. from ``host.running_host``)."""

    def __init__(self, host: Host, *, max_message_size: int = MAX_MESSAGE_SIZE, queue_size: int = QUEUE_SIZE,
                 heartbeat: float = HEARTBEAT) -> None:
        self._host = host
        self._self = host.get_id()
        self.max_message_size = max_message_size
        self._heartbeat = heartbeat
        self._send, self.messages = trio.open_memory_channel[GossipMessage](queue_size)
        self._pubsub: _Pubsub | None = None
        self._router: GossipSub | None = None
        self._topics: dict[str, Validator] = {}
        self._published_at: dict[str, deque[float]] = {}
        self._recent = RecentIds(RECENT)
        self._counters = Counters()
        self._bad = BadInputLog()
        self._offences = Offences()  # validators' exceptions, per forwarder

    @property
    def peer_id(self) -> PeerId:
        return PeerId(str(self._self))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        router = GossipSub(
            protocols=PROTOCOLS, degree=DEGREE, degree_low=DEGREE_LOW, degree_high=DEGREE_HIGH,
            heartbeat_interval=self._heartbeat,  # type: ignore[arg-type]  # annotated int, used as a float
            max_messages_per_topic_per_second=RATE_LIMIT, max_pending_messages_per_peer=OUTBOUND_QUEUE,
        )
        # Built here, not in __init__: Pubsub's connection notifee blocks new connections until Pubsub runs.
        pubsub = _Pubsub(self._host, router, on_message=self._accepted, outbound_queue=OUTBOUND_QUEUE,
                         strict_signing=True, max_concurrent_validator_count=VALIDATORS,
                         validation_timeout=VALIDATION_TIMEOUT)
        try:
            async with background_trio_service(pubsub), background_trio_service(router), \
                    trio.open_nursery() as nursery:
                await pubsub.wait_until_ready()
                self._pubsub, self._router = pubsub, router
                # Peers connected before Pubsub existed never fire its notifee: open their pubsub streams now.
                for peer in self._host.get_connected_peers():
                    nursery.start_soon(pubsub.ensure_peer_stream, peer)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._pubsub = self._router = None
            for protocol in PROTOCOLS:
                self._host.remove_stream_handler(protocol)
            pubsub.seen_messages.stop()  # py-libp2p starts a sweeper thread per Pubsub and never stops it
            self._send.close()

    async def join(self, topic: str, validate: Validator, *, admit: Admission | None = None) -> None:
        pubsub = self._running()
        check_topic(topic)
        if admit is not None:
            raise InvalidInput("py-libp2p's GossipSub has no hook to keep a topic's mesh closed: join without admit")
        if is_async_validator(validate):
            async def check_async(forwarder: ID, msg: rpc_pb2.Message) -> bool:
                early = self._screen(forwarder, msg)
                if early is not None:
                    return early
                judged = await judge(validate, topic, PeerId(str(forwarder)), msg.data, self._offences)
                return self._counted(judged, forwarder, topic)

            pubsub.set_topic_validator(topic, check_async, True)
        else:
            def check(forwarder: ID, msg: rpc_pb2.Message) -> bool:
                early = self._screen(forwarder, msg)
                if early is not None:
                    return early
                judged = judge_sync(validate, topic, PeerId(str(forwarder)), msg.data, self._offences)
                return self._counted(judged, forwarder, topic)

            pubsub.set_topic_validator(topic, check, False)
        self._topics[topic] = validate
        with map_libp2p_errors(f"cannot subscribe to {topic}", topic=topic):
            await pubsub.subscribe(topic)

    async def leave(self, topic: str) -> None:
        pubsub = self._running()
        self._topics.pop(topic, None)
        try:
            with map_libp2p_errors(f"cannot unsubscribe from {topic}", topic=topic):
                await pubsub.unsubscribe(topic)
        finally:
            pubsub.remove_topic_validator(topic)

    async def publish(self, topic: str, data: bytes) -> None:
        pubsub = self._running()
        check_publish(self._topics, topic, data, self.max_message_size)
        await self._make_room(pubsub, topic)
        with map_libp2p_errors(f"cannot publish on {topic}", topic=topic):
            await pubsub.publish(topic, data)
        self._counters.published += 1

    def peers(self, topic: str) -> list[PeerId]:
        if self._router is None:
            return []
        return sorted(PeerId(str(p)) for p in self._router.mesh.get(topic, ()))

    def status(self) -> dict[str, Any]:
        queues = self._pubsub.peer_queues.values() if self._pubsub is not None else ()
        return {**self._counters.as_dict(), "outbound_queued_max": max((len(q) for q in queues), default=0),
                "topics": {t: {"peers": len(self.peers(t))} for t in self._topics},
                "bad_peers": dict(self._offences.counts)}

    # -- internals ---------------------------------------------------------------------------------------

    def _running(self) -> _Pubsub:
        if self._pubsub is None:
            raise RuntimeError(f"gossip on {self._self} is not running; start its run() first")
        return self._pubsub

    def _screen(self, forwarder: ID, msg: rpc_pb2.Message) -> bool | None:
        """Before a validator: True for this node's own message (py-libp2p validates those too), False for one
        over the size limit, None to ask the validator."""
        if forwarder == self._self:
            return True
        if len(msg.data) <= self.max_message_size:
            return None
        self._counters.oversize += 1
        self._bad.warn(str(forwarder), "message of %d bytes on %s is over the size limit", len(msg.data),
                       ",".join(msg.topicIDs))
        return False

    def _counted(self, accepted: bool, forwarder: ID, topic: str) -> bool:
        if not accepted:
            self._counters.rejected += 1
            self._bad.warn(str(forwarder), "message on %s rejected by its validator", topic)
        return accepted

    def _accepted(self, msg: rpc_pb2.Message) -> None:
        """Called by py-libp2p, synchronously, for each message its validators accepted."""
        origin = ID(msg.from_id)
        if origin == self._self:
            return  # py-libp2p gives a publisher its own message back
        # py-libp2p checks "seen" before awaiting async validators and marks it after: two copies arriving
        # from two peers during validation both get here. Deliver once.
        if not self._recent.add(msg.from_id + msg.seqno):
            return
        for topic in msg.topicIDs:
            if topic in self._topics:
                deliver(self._send, GossipMessage(topic, bytes(msg.data), PeerId(str(origin))), self._counters)

    async def _make_room(self, pubsub: _Pubsub, topic: str) -> None:
        """Wait until this publish can neither trip py-libp2p's rate limit nor overflow a peer's queue."""
        window = self._published_at.setdefault(topic, deque())
        while True:
            now = trio.current_time()
            while window and window[0] <= now - 1.0:
                window.popleft()
            if len(window) < RATE_LIMIT // 2:
                break
            await trio.sleep(window[0] + 1.0 - now)
        window.append(trio.current_time())
        with trio.move_on_after(PUBLISH_WAIT) as waited:
            # noqa below: py-libp2p's RpcQueue signals its reader only, so a writer can but poll for room
            while any(len(queue) > HIGH_WATER for queue in pubsub.peer_queues.values()):  # noqa: ASYNC110
                await trio.sleep(0.001)
        if waited.cancelled_caught:
            log.warning("a peer is not reading %s; publishing anyway (it may miss messages)", topic)
