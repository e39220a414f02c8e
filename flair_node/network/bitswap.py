"""Block exchange over Bitswap 1.2 on the node's libp2p host: serve this node's blocks, fetch DAGs it lacks.

Flair speaks Bitswap itself (messages in ``bitswap_wire``) on py-libp2p's streams, the way Kubo does: each side
sends its messages on one long-lived stream it opened, so replies to our wants arrive on the peer's stream. A
DAG is fetched with a window of wants in flight, children queued as soon as their parent arrives.

A block is asked of one peer at a time, however many fetches wait for it: the first to need it sends the want,
and the block, checked against its CID, serves every fetch waiting, whichever peer each asked (two pulls of one
commit from two peers download it once). A fetch that ends without a block it asked for hands the want to the
next fetch waiting, which asks its own peer. ``fetch_from_any`` asks several peers that hold a DAG in turn: when
one lacks a block, sends nothing for ``STALL_BEFORE_NEXT`` seconds or is no longer connected, the next is asked
for what is still missing; what arrived is kept. A peer it must ask that is no longer connected is dialled
through its caller's ``Connect`` (py-libp2p's own dial, which a new stream makes, skips relayed addresses: a peer
behind NAT has no other).

Nothing a peer sends is trusted. A block's CID is recomputed from its bytes; a block is kept only if this node
asked that peer for exactly that CID, and only within what its DAG declares (``storage.unixfs.Bounds``: sizes,
depth, and how many blocks a walk may visit, so a DAG bomb fails after a few blocks; nodes are decoded off the
event loop). Forged or unrequested blocks and malformed messages cost the peer penalty points; at
``Penalties.BAN_AFTER`` points the peer is disconnected and ignored for ``BAN_SECONDS``, and fetches from it
fail at once. Penalties fall only on what is provably bad: a copy of a block this node asked that peer for in
the last ``ASKED_SECONDS`` is dropped without blame, up to one copy per want sent (a want withdrawn late, or
sent again after a fetch gave up). Bad input is logged once per peer per minute and
counted in ``status()``.

A peer holds at most ``MAX_STREAMS`` streams open to this node (one more resets its oldest); a message begun
must arrive whole within ``framing.FRAME_TIMEOUT`` and a peer's stream that starts none for ``IDLE_SECONDS`` is
reset, so stalled streams pin no memory. Slowness is not proof of malice: resets are counted per peer in
``stream_status()``, without penalty points.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio
from libp2p.custom_types import TProtocol

from ..core.cid import RAW, ParsedCid, parse_cid
from ..core.errors import FlairError, IntegrityError, InvalidInput, RemoteError
from ..core.ids import Cid
from ..storage import unixfs
from . import bitswap_wire as wire
from .framing import MessageReader
from .host import Host, Peer, Stream, close_stream, map_libp2p_errors, reset_stream

log = logging.getLogger(__name__)

V120, V110 = TProtocol("/ipfs/bitswap/1.2.0"), TProtocol("/ipfs/bitswap/1.1.0")
PROTOCOLS = (V120, V110)
SEND_TARGET = 1 << 20  # bytes of blocks batched into one message
MAX_LEDGER = 4096  # wants one peer may have queued here
MAX_PEERS = 4096  # peers remembered (streams, ledgers, penalty records); the least recently seen go first
_STORE_BATCH = 32  # blocks stored per thread hop while fetching
MAX_ASKED = 16384  # CIDs remembered per peer as asked of it: a late copy answering a want is no offence
ASKED_SECONDS = 600.0  # for this long after the want was sent
MAX_STREAMS = 8  # streams one peer may have open to this node; opening another resets its oldest
IDLE_SECONDS = 300.0  # a peer's stream that starts no message for this long is reset (it reopens one to talk)
CONNECTED_EVERY = 1.0  # seconds between checks, while a fetch waits, that its peer is still connected
_DONT_HAVE, _BANNED, _ORPHANED = object(), object(), object()
STALL_BEFORE_NEXT = 10.0  # s without a block before ``fetch_from_any`` leaves a peer for the next one
MAX_TRIED = 8  # peers one ``fetch_from_any`` asks at most
RESEND_AFTER = 10.0  # s of silence after which a fetch sends its peer its wants again, once


#: Dials a peer this node is not connected to, by whatever reaches it (a relayed address through its relay:
#: ``daemon.peer_links.PeerLinks.connect``); whether it is connected now. Raises nothing for a peer out of reach.
Connect = Callable[[Peer], Awaitable[bool]]


class Stalled(RemoteError):
    """A peer left for ``STALL_BEFORE_NEXT`` seconds of silence because another was there to ask (not for a
    failure of its own): ``fetch_from_any`` asks it again when no one else is left."""


class CutOff(RemoteError):
    """A peer whose connections closed while a fetch waited for its blocks (its link, this node's liveness checks or
    the peer itself closed them; not a failure of what it sent): ``fetch_from_any`` asks it again, dialled again
    first, when no one else is left."""


@dataclass
class _PeerRecord:
    points: int = 0
    refused_blocks: int = 0
    malformed_messages: int = 0
    banned_until: float = -math.inf
    last_logged: float = -math.inf


class Penalties:
    """Points per peer for bad input; a peer over ``BAN_AFTER`` points is banned for ``BAN_SECONDS``."""

    BAN_AFTER = 8
    BAN_SECONDS = 600.0
    LOG_EVERY = 60.0

    def __init__(self, clock: Callable[[], float] = trio.current_time) -> None:
        self._clock = clock
        self._peers: OrderedDict[str, _PeerRecord] = OrderedDict()

    def banned(self, peer: Peer) -> bool:
        record = self._peers.get(str(peer))
        return record is not None and record.banned_until > self._clock()

    def penalize(self, peer: Peer, what: str, *, block: bool) -> bool:
        """Count one offence of ``peer``; True if it is banned by this one."""
        now = self._clock()
        record = self._peers.get(str(peer))
        if record is None:
            if len(self._peers) >= MAX_PEERS:  # forget the oldest offender that is not banned (else the oldest)
                oldest = next((p for p, r in self._peers.items() if r.banned_until <= now), next(iter(self._peers)))
                del self._peers[oldest]
            record = self._peers[str(peer)] = _PeerRecord()
        self._peers.move_to_end(str(peer))
        if block:
            record.refused_blocks += 1
        else:
            record.malformed_messages += 1
        if now - record.last_logged >= self.LOG_EVERY:
            record.last_logged = now
            log.warning("peer %s: %s (%d refused blocks, %d malformed messages so far)", peer, what,
                        record.refused_blocks, record.malformed_messages)
        if record.banned_until > now:
            return False
        record.points += 1
        if record.points < self.BAN_AFTER:
            return False
        record.points, record.banned_until = 0, now + self.BAN_SECONDS
        log.warning("peer %s banned for %.0f s after repeated bad input", peer, self.BAN_SECONDS)
        return True

    def status(self) -> dict[str, dict[str, Any]]:
        now = self._clock()
        return {peer: {"refused_blocks": r.refused_blocks, "malformed_messages": r.malformed_messages,
                       "banned": r.banned_until > now} for peer, r in self._peers.items()}


@dataclass(eq=False)
class _Fetch:
    """One ``fetch_dag`` call: the peer asked, and where its blocks (or refusals) are delivered."""

    peer: Peer
    window: int
    asked: set[ParsedCid] = field(default_factory=set)  # CIDs this fetch sent its peer a want for
    send: trio.MemorySendChannel[tuple[ParsedCid, Any]] = field(init=False)
    receive: trio.MemoryReceiveChannel[tuple[ParsedCid, Any]] = field(init=False)

    def __post_init__(self) -> None:
        # One delivery per want in flight, plus one ban notice: sending never blocks the stream reader.
        self.send, self.receive = trio.open_memory_channel(self.window + 1)


@dataclass(eq=False)
class _Peer:
    """What this node keeps per peer: the stream it sends on, and the wants it serves them."""

    stream: Stream | None = None
    lock: trio.Lock = field(default_factory=trio.Lock)
    ledger: OrderedDict[ParsedCid, wire.Want] = field(default_factory=OrderedDict)
    serving: bool = False  # a task is answering the ledger
    #: CIDs wanted of it: when last, and how many wants it has not answered with the block yet.
    asked: OrderedDict[ParsedCid, tuple[float, int]] = field(default_factory=OrderedDict)


class BlockExchange:
    def __init__(self, host: Host, blocks: unixfs.BlockStore, *,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.host = host
        self.blocks = blocks
        self.penalties = Penalties(clock)
        self._clock = clock
        #: The streams each peer has open to this node (each with the scope of its reader), oldest first.
        self._incoming: dict[Peer, deque[tuple[Stream, trio.CancelScope]]] = {}
        #: Streams reset per peer and why: "frame" (a message not completed in time), "idle", "over_cap".
        self._reset_streams: OrderedDict[str, dict[str, int]] = OrderedDict()
        self._peers: OrderedDict[Peer, _Peer] = OrderedDict()
        self._wants: dict[ParsedCid, list[_Fetch]] = {}
        #: Blocks fetches received and checked but have not stored yet: another fetch reaching one takes it here.
        self._unstored: dict[ParsedCid, bytes] = {}
        self._fetches: set[_Fetch] = set()
        self._nursery: trio.Nursery | None = None
        #: Copies of blocks that arrived once no fetch waited for them (a second copy, or a late one): what
        #: asking two peers for one block costs.
        self.duplicates = {"blocks": 0, "bytes": 0}

    @property
    def refused_blocks(self) -> int:
        return sum(r["refused_blocks"] for r in self.penalties.status().values())

    def status(self) -> dict[str, Any]:
        return {"refused_blocks": self.refused_blocks, "duplicate_blocks": self.duplicates["blocks"],
                "duplicate_bytes": self.duplicates["bytes"], "peers": self.penalties.status()}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for protocol in PROTOCOLS:
                self.host.set_stream_handler(protocol, self._handle_stream)
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                for protocol in PROTOCOLS:
                    self.host.remove_stream_handler(protocol)
                self._nursery = None
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    for state in self._peers.values():
                        if state.stream is not None:
                            await close_stream(state.stream)

    # -- fetching ------------------------------------------------------------------------------------------

    async def fetch_dag(self, root: Cid, peer: Peer, *, max_size: int, block_timeout: float = 30.0,
                        window: int = 128) -> int:
        """Fetch every block of the DAG under ``root`` that this node lacks from ``peer``; returns how many.

        Up to ``window`` wants are in flight at once; a block linked more than once is asked for once. Raises
        ``RemoteError`` if the peer lacks a block, sends nothing for ``block_timeout`` seconds, is no longer
        connected (checked every ``CONNECTED_EVERY`` seconds) or is banned; the blocks that arrived until then are
        kept, so a fetch asked again (of this peer or another) asks only for the rest. ``IntegrityError`` if the
        DAG breaks ``unixfs.Bounds`` (deeper than ``unixfs.MAX_DEPTH``, more than ``max_size`` bytes, a block
        not of the size its parent says, more block visits than its size allows), checked as each block
        arrives, before it is stored.
        """
        stored = [0]
        await self._fetch_dag(root, peer, max_size, block_timeout, window, stored)
        return stored[0]

    async def fetch_from_any(self, root: Cid, peers: Callable[[], Sequence[Peer]], *, max_size: int,
                             block_timeout: float = 30.0, window: int = 128, connect: Connect | None = None) -> int:
        """``fetch_dag`` from the peers ``peers()`` names, in its order but those this node is connected to first
        (a dial costs seconds), each at most once (``MAX_TRIED`` in all) but for one left for its silence alone
        (``Stalled``) or cut off (``CutOff``), which is asked once more when no one else is left (the one left
        last first): when one fails (lacks a block, stalls, is cut off or banned), the next is asked for what is
        still missing, the blocks that came meanwhile kept. A peer to ask that this node is not connected to (the
        one pulled from, whose connection closed, or one cut off, which ``peers()`` no longer names) is dialled
        first with ``connect``, within ``block_timeout``; without ``connect`` a peer ``peers()`` no longer names
        is not asked again. ``peers()`` is asked again after each failure and, while a peer is silent, each
        second: a peer is left after ``STALL_BEFORE_NEXT`` seconds of silence while another is there to ask,
        after ``block_timeout`` otherwise. Returns how many blocks came in all. Raises ``RemoteError`` naming
        each peer's failure if none delivers the rest, and ``IntegrityError`` at once: a DAG that breaks its
        bounds breaks them whoever sends it (its blocks are what its root names)."""
        stored, failures, tried = [0], list[str](), set[Peer]()
        left, retried = list[Peer](), set[Peer]()  # left for their silence or cut off; those asked again

        def untried() -> list[Peer]:
            return [p for p in peers() if p not in tried] if len(tried) < MAX_TRIED else []

        def next_peer() -> Peer | None:
            """The next peer not asked yet; else one left while others were there to ask (a link back from a cut
            can stay silent for longer than ``STALL_BEFORE_NEXT``, TCP's retransmissions backing off) or whose
            connection closed (a link back, or a peer that closed a connection it judged stale, answers on a new
            one), asked once more with the whole ``block_timeout``; connected peers before those to dial."""
            named, connected = list(peers()), set(self.host.get_connected_peers())
            fresh = [p for p in named if p not in tried] if len(tried) < MAX_TRIED else []
            again = [p for p in reversed(left) if p in named or (connect is not None and p not in connected)]
            ready = sorted([*fresh, *again], key=lambda p: p not in connected)  # sorted is stable
            if not ready:
                return None
            if ready[0] in left:
                left.remove(ready[0])
                retried.add(ready[0])
            else:
                tried.add(ready[0])
            return ready[0]

        while (peer := next_peer()) is not None:
            if connect is not None and peer not in self.host.get_connected_peers() \
                    and not self.penalties.banned(peer):
                reached = False
                with trio.move_on_after(block_timeout):
                    reached = await connect(peer)
                if not reached:
                    failures.append(f"peer {peer} is not connected, and dialling it again failed")
                    log.info("fetching %s: %s", root, failures[-1])
                    continue
            try:
                await self._fetch_dag(root, peer, max_size, block_timeout, window, stored,
                                      leave_after=(STALL_BEFORE_NEXT, lambda: bool(untried())))
                return stored[0]
            except RemoteError as exc:
                if isinstance(exc, Stalled | CutOff) and peer not in retried:  # asked again when no one else is left
                    left.append(peer)
                failures.append(str(exc))
                log.info("fetching %s: %s", root, exc)
        if len(failures) == 1:
            raise RemoteError(failures[0], cid=root)
        raise RemoteError(f"none of the {len(failures)} peers asked delivered {root}: {'; '.join(failures)}"
                          if failures else f"no peer to fetch {root} from", cid=root)

    async def _fetch_dag(self, root: Cid, peer: Peer, max_size: int, block_timeout: float, window: int,
                         stored: list[int], leave_after: tuple[float, Callable[[], bool]] | None = None) -> None:
        """``fetch_dag``, adding the blocks it stores to ``stored[0]`` as it goes (they count even if it fails).
        ``leave_after``: (seconds, whether another peer could be asked): a shorter timeout while it says so."""
        if window < 1:
            raise InvalidInput(f"a fetch needs a window of at least one want, not {window}")
        if self.penalties.banned(peer):
            raise RemoteError(f"peer {peer} is banned for sending bad blocks; not fetching {root} from it")
        fetch = _Fetch(peer, window)
        bounds = unixfs.Bounds(root, max_size)
        shapes: dict[ParsedCid, unixfs.NodeShape] = {}  # blocks of this DAG checked so far (fetched or held)
        todo: deque[tuple[ParsedCid, int, int]] = deque([(parse_cid(root), max_size, 0)])  # (cid, bytes, depth)
        in_flight: dict[ParsedCid, list[tuple[int, int]]] = {}  # cid -> (bytes it must hold, depth) per place
        unstored: list[tuple[ParsedCid, bytes]] = []  # arrived and checked, stored a batch at a time

        def place(cid: ParsedCid, allowed: int, depth: int) -> None:
            todo.extend(bounds.place(cid, shapes[cid], allowed, depth))

        self._fetches.add(fetch)
        orphans: list[ParsedCid] = []  # wants another fetch sent and gave up: this one sends them now
        try:
            while todo or in_flight:
                wants: list[wire.Want] = []
                for cid in orphans:
                    self._want(fetch, cid, wants)
                orphans.clear()
                # Refill the window in batches (when half of it has arrived): fewer, larger messages both ways.
                while todo and (len(in_flight) < window // 2 or wants) and len(in_flight) < window:
                    cid, allowed, depth = todo.popleft()
                    bounds.visit(depth)
                    if cid in shapes:  # linked again: checked where it sits now, never fetched twice
                        place(cid, allowed, depth)
                    elif cid in in_flight:
                        in_flight[cid].append((allowed, depth))
                    elif self.blocks.has(cid):
                        shapes[cid] = await trio.to_thread.run_sync(self._held_shape, root, cid)
                        place(cid, allowed, depth)
                    elif cid in self._unstored:  # came for another fetch: stored by both
                        shapes[cid] = _shapes(root, [(cid, self._unstored[cid])])[0]  # one node: no thread hop
                        unstored.append((cid, self._unstored[cid]))
                        place(cid, allowed, depth)
                    else:
                        in_flight[cid] = [(allowed, depth)]
                        self._want(fetch, cid, wants)
                if wants:
                    self._asked(peer, [w.cid for w in wants])
                    await self._send(peer, wire.Message(wants=tuple(wants)))
                if not in_flight:
                    continue
                arrivals = await self._arrivals(fetch, root, in_flight, block_timeout, leave_after)
                refused = [(cid, block) for cid, block in arrivals if block is _BANNED or block is _DONT_HAVE]
                orphans += [cid for cid, block in arrivals if block is _ORPHANED]
                arrivals = [(cid, block) for cid, block in arrivals if isinstance(block, bytes)]  # kept, even if
                # a refusal ends this fetch
                # Bounds are checked before anything is stored; decoding nodes is CPU work, done off the loop.
                if any(cid.codec != RAW for cid, _ in arrivals):
                    arrived = await trio.to_thread.run_sync(_shapes, root, arrivals)
                else:
                    arrived = _shapes(root, arrivals)
                for (cid, _), found in zip(arrivals, arrived, strict=True):
                    shapes[cid] = found
                    for allowed, depth in in_flight.pop(cid):
                        place(cid, allowed, depth)
                unstored += arrivals
                for cid, block in refused:
                    if block is _BANNED:
                        raise RemoteError(f"peer {peer} was banned for sending bad blocks while sending {root}")
                    raise RemoteError(f"peer {peer} does not have block {cid.text} of {root}", cid=cid.text)
                if len(unstored) >= _STORE_BATCH:  # fewer thread hops
                    stored[0], unstored = stored[0] + await self._store(unstored), []
            stored[0] += await self._store(unstored)
        except RemoteError:  # the peer's failure: what it sent is checked and kept, and not asked for again
            stored[0] += await self._store(unstored)
            raise
        finally:
            self._fetches.discard(fetch)
            while True:  # what was delivered and not stored (on cancellation) is forgotten with this fetch
                try:
                    unstored.append(fetch.receive.receive_nowait())
                except trio.WouldBlock:
                    break
            for cid, _ in unstored:
                self._unstored.pop(cid, None)
            for cid in in_flight:
                waiting = self._wants.get(cid, [])
                if fetch in waiting:
                    waiting.remove(fetch)
                if waiting and cid in fetch.asked and not any(cid in f.asked for f in waiting):
                    self._deliver(cid, waiting[:1], _ORPHANED)  # the next fetch waiting for it asks its own peer
                elif not waiting:
                    self._wants.pop(cid, None)
            withdrawn = [cid for cid in in_flight if cid in fetch.asked]
            if withdrawn and not self.penalties.banned(peer):
                await self._cancel(peer, withdrawn)

    def _want(self, fetch: _Fetch, cid: ParsedCid, wants: list[wire.Want]) -> None:
        """Wait for ``cid`` in ``fetch``, adding a want for its peer to ``wants`` unless another fetch sent one:
        a block is asked of one peer at a time, and serves every fetch waiting for it whoever sent it (it is
        checked against its CID). If that fetch ends without it, the next one waiting asks (``_ORPHANED``)."""
        waiting = self._wants.setdefault(cid, [])
        if not any(cid in f.asked for f in waiting):
            fetch.asked.add(cid)
            wants.append(wire.Want(cid, send_dont_have=True))
        waiting.append(fetch)

    async def _arrivals(self, fetch: _Fetch, root: Cid, in_flight: dict[ParsedCid, Any], block_timeout: float,
                        leave_after: tuple[float, Callable[[], bool]] | None) -> list[tuple[ParsedCid, Any]]:
        """The next blocks (or refusals) for ``fetch``: at least one, and whatever else has arrived with it.
        ``RemoteError`` if none comes within ``block_timeout`` seconds (``leave_after``'s, while it says another
        peer could be asked); ``CutOff`` if the peer's connections close meanwhile (its wants are gone with them: a
        cut link, liveness closing a silent one, or the peer closing one it judged stale). After ``RESEND_AFTER``
        seconds of silence the wants are sent again, once: a peer may have lost them with a stream (a relayed
        connection closing after a hole punch)."""
        since, resent = trio.current_time(), False
        while True:
            with trio.move_on_after(CONNECTED_EVERY):
                arrivals = [await fetch.receive.receive()]
                break
            silent = trio.current_time() - since
            sooner = leave_after is not None and silent >= leave_after[0] and leave_after[1]()
            if sooner or silent >= block_timeout:
                own = [cid for cid in in_flight if cid in fetch.asked]
                if not own:  # waiting only for wants of other fetches: they deliver, or end and hand them over
                    since = trio.current_time()
                    continue
                text = f"peer {fetch.peer} did not deliver block {own[0].text} of {root} in {silent:.0f} s"
                if sooner and silent < block_timeout:
                    raise Stalled(text, cid=own[0].text)
                raise RemoteError(text, cid=own[0].text)
            if silent >= RESEND_AFTER and not resent:
                resent = True
                own = [cid for cid in in_flight if cid in fetch.asked]
                if own:  # a copy sent meanwhile, and the one this asks for, are both answers: no blame
                    self._asked(fetch.peer, own)
                    await self._send(fetch.peer, wire.Message(wants=tuple(wire.Want(c, send_dont_have=True)
                                                                          for c in own)))
            if fetch.peer not in self.host.get_connected_peers():
                raise CutOff(f"the connection to peer {fetch.peer} closed while fetching {root}")
        while len(arrivals) < fetch.window:
            try:
                arrivals.append(fetch.receive.receive_nowait())
            except trio.WouldBlock:
                break
        return arrivals

    def _held_shape(self, root: Cid, cid: ParsedCid) -> unixfs.NodeShape:
        return unixfs.shape(root, cid, self.blocks.get(cid))

    async def _store(self, batch: list[tuple[ParsedCid, bytes]]) -> int:
        """Store ``batch`` off the event loop; returns how many blocks it held."""
        def store() -> None:
            for cid, block in batch:  # each CID was computed from its block's bytes by wire.decode
                self.blocks.put_hashed(cid, block)

        await trio.to_thread.run_sync(store)
        for cid, _ in batch:
            self._unstored.pop(cid, None)
        return len(batch)

    def _asked(self, peer: Peer, cids: Sequence[ParsedCid]) -> None:
        """Remember that ``peer`` was asked (once more) for each of ``cids``: it may send each block once per want,
        even when an earlier copy (from it or another peer) already served every fetch waiting, or the want was
        withdrawn meanwhile."""
        asked, now = self._peer(peer).asked, self._clock()
        for cid in cids:
            _, unanswered = asked.pop(cid, (now, 0))
            asked[cid] = (now, unanswered + 1)
        while len(asked) > MAX_ASKED:
            asked.popitem(last=False)

    def _was_asked(self, peer: Peer, cid: ParsedCid) -> bool:
        """Whether a copy of ``cid`` from ``peer`` answers a want sent to it in the last ``ASKED_SECONDS`` that no
        copy answered yet (and count it answered): more copies than wants is an offence, fewer is none."""
        state = self._peers.get(peer)
        if state is None:
            return False
        when, unanswered = state.asked.get(cid, (0.0, 0))
        if unanswered < 1 or self._clock() - when > ASKED_SECONDS:
            return False
        state.asked[cid] = (when, unanswered - 1)
        return True

    async def _cancel(self, peer: Peer, cids: Sequence[ParsedCid]) -> None:
        """Withdraw wants (best effort); blocks of these arriving late are dropped without blame (``_asked``)."""
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self._send(peer, wire.Message(wants=tuple(wire.Want(c, cancel=True) for c in cids)))
            except RemoteError:
                pass  # the peer is gone: nothing to withdraw

    # -- receiving -----------------------------------------------------------------------------------------

    async def _handle_stream(self, stream: Stream) -> None:
        """A stream a peer opened to send us messages (Kubo's way of answering, and of asking). A peer holds at
        most ``MAX_STREAMS`` of them: one more resets its oldest."""
        peer = stream.muxed_conn.peer_id
        streams = self._incoming.setdefault(peer, deque())
        scope = trio.CancelScope()
        entry = (stream, scope)
        streams.append(entry)
        reset = False
        try:
            with scope:
                if len(streams) > MAX_STREAMS:
                    _, oldest = streams.popleft()
                    oldest.cancel()
                    self._count_reset(peer, "over_cap")
                reset = await self._read(peer, stream, idle_timeout=IDLE_SECONDS)
            reset = reset or scope.cancelled_caught
        finally:
            if entry in streams:
                streams.remove(entry)
            if not streams and self._incoming.get(peer) is streams:
                del self._incoming[peer]
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await (reset_stream(stream) if reset else close_stream(stream))

    async def _read_own(self, peer: Peer, stream: Stream) -> None:
        """Read what ``peer`` sends on the stream this node opened to it; one that stalls is reset, and the next
        send opens another."""
        if await self._read(peer, stream):
            state = self._peers.get(peer)
            if state is not None and state.stream is stream:
                state.stream = None
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await reset_stream(stream)

    async def _read(self, peer: Peer, stream: Stream, *, idle_timeout: float | None = None) -> bool:
        """Read ``peer``'s messages from ``stream`` until it ends; one peer's errors never reach the others.
        True if the stream stalled (a message not completed in time, or idle past ``idle_timeout``) and is to
        be reset.

        Also run on the streams this node opens: py-libp2p's Bitswap answers on the asker's stream. Messages
        are decoded (blocks hashed) right here: a thread hop per message costs more than hashing 1 MiB."""
        try:
            reader = MessageReader(stream, wire.MAX_MESSAGE, "Bitswap", idle_timeout=idle_timeout)
            while not self.penalties.banned(peer) and (data := await reader.next()) is not None:
                try:
                    message = wire.decode(data)
                except IntegrityError as exc:
                    self._penalize(peer, f"malformed Bitswap message: {exc}", block=False)
                    return False
                self._received(peer, message)
        except IntegrityError as exc:
            self._penalize(peer, f"malformed Bitswap stream: {exc}", block=False)
        except RemoteError as exc:
            if "stalled" not in exc.data:
                log.debug("Bitswap stream from %s ended: %s", peer, exc)
                return False
            self._count_reset(peer, exc.data["stalled"])  # slow is not proof of malice: counted, no penalty
            log.debug("Bitswap stream from %s reset: %s", peer, exc)
            return True
        except Exception as exc:  # per peer: a stream ending badly is that peer's business, nobody else's
            log.debug("Bitswap stream from %s ended: %r", peer, exc)
        return False

    def _count_reset(self, peer: Peer, why: str) -> None:
        counts = self._reset_streams.get(str(peer))
        if counts is None:
            if len(self._reset_streams) >= MAX_PEERS:
                self._reset_streams.popitem(last=False)
            counts = self._reset_streams[str(peer)] = {"frame": 0, "idle": 0, "over_cap": 0}
        self._reset_streams.move_to_end(str(peer))
        counts[why] += 1

    def stream_status(self) -> dict[str, Any]:
        """Streams peers have open to this node, and those reset per peer (and why) since it started."""
        return {"open": sum(len(s) for s in self._incoming.values()),
                "reset": {peer: dict(counts) for peer, counts in self._reset_streams.items()}}

    def _received(self, peer: Peer, message: wire.Message) -> None:
        withdraw: dict[Peer, list[ParsedCid]] = {}  # wants other peers need not answer any more
        for cid, block in message.blocks:
            waiting = self._wants.get(cid, [])
            answers = self._was_asked(peer, cid)  # a late or second copy of a block asked for is no offence
            if not answers and not any(f.peer == peer and cid in f.asked for f in waiting):
                self._penalize(peer, f"sent block {cid.text} that this node did not ask it for (forged bytes, "
                               "unrequested, or more copies than it was asked for)", block=True)
            elif waiting:  # its CID was checked: it serves every fetch waiting for it, whoever they asked
                for fetch in waiting:
                    if fetch.peer != peer and cid in fetch.asked:
                        withdraw.setdefault(fetch.peer, []).append(cid)
                self._unstored[cid] = block  # until stored: a fetch placing it meanwhile takes it from here
                self._deliver(cid, list(waiting), block)
            else:
                self.duplicates["blocks"] += 1
                self.duplicates["bytes"] += len(block)
        for cid in message.dont_have:
            self._deliver(cid, [f for f in self._wants.get(cid, []) if f.peer == peer and cid in f.asked], _DONT_HAVE)
        for other, cids in withdraw.items():
            if self._nursery is not None:
                self._nursery.start_soon(self._cancel, other, cids)
        if message.wants or message.full:
            self._queue_wants(peer, message)

    def _deliver(self, cid: ParsedCid, fetches: list[_Fetch], outcome: Any) -> None:
        waiting = self._wants[cid] if fetches else []
        for fetch in fetches:
            waiting.remove(fetch)
            fetch.send.send_nowait((cid, outcome))
        if fetches and not waiting:
            del self._wants[cid]

    def _penalize(self, peer: Peer, what: str, *, block: bool) -> None:
        if not self.penalties.penalize(peer, what, block=block):
            return
        for fetch in [f for f in self._fetches if f.peer == peer]:
            fetch.send.send_nowait((ParsedCid(0, b""), _BANNED))
            self._fetches.discard(fetch)
        state = self._peers.pop(peer, None)
        if self._nursery is not None:
            self._nursery.start_soon(self._disconnect, peer, state)

    async def _disconnect(self, peer: Peer, state: _Peer | None) -> None:
        with trio.move_on_after(5):
            if state is not None and state.stream is not None:
                await close_stream(state.stream)
            try:
                with map_libp2p_errors(f"disconnecting banned peer {peer}"):
                    await self.host.disconnect(peer)
            except RemoteError as exc:
                log.debug("%s", exc)

    # -- serving -------------------------------------------------------------------------------------------

    def _queue_wants(self, peer: Peer, message: wire.Message) -> None:
        state = self._peer(peer)
        if message.full:
            state.ledger.clear()
        for want in message.wants:
            if want.cancel:
                state.ledger.pop(want.cid, None)
            elif len(state.ledger) < MAX_LEDGER:
                state.ledger[want.cid] = want
        if state.ledger and not state.serving and self._nursery is not None:
            state.serving = True
            self._nursery.start_soon(self._serve, peer, state)

    async def _serve(self, peer: Peer, state: _Peer) -> None:
        """Answer ``peer``'s queued wants in order: blocks are read (off the event loop) while earlier ones are
        being sent, batched up to ``SEND_TARGET`` bytes a message."""
        send, receive = trio.open_memory_channel[list[wire.Message]](1)

        async def read_ahead() -> None:
            async with send:
                while state.ledger and not self.penalties.banned(peer):
                    batch = [state.ledger.popitem(last=False)[1] for _ in range(min(4, len(state.ledger)))]
                    await send.send(await trio.to_thread.run_sync(self._answer, batch))
                state.serving = False  # wants queued from now on start a new round

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_ahead)
                async for messages in receive:
                    for message in messages:
                        await self._send(peer, message)
        except Exception as exc:  # per peer: one that stops reading loses its wants, nobody else's
            log.debug("serving %s stopped: %r", peer, exc)
            state.ledger.clear()
            state.serving = False

    def _answer(self, wants: list[wire.Want]) -> list[wire.Message]:
        """Messages answering ``wants`` from the blocks stored here (each block re-hashed as it is read)."""
        messages: list[wire.Message] = []
        blocks: list[tuple[ParsedCid, bytes]] = []
        have, dont_have, size = [], [], 0
        for want in wants:
            block = None
            if want.have_only:
                block = b"" if self.blocks.has(want.cid) else None
            else:
                try:
                    block = self.blocks.get(want.cid)
                except FlairError:  # missing or damaged here: the peer gets a DONT_HAVE, never bad bytes
                    pass
            if block is None:
                if want.send_dont_have:
                    dont_have.append(want.cid)
            elif want.have_only:
                have.append(want.cid)
            else:
                if blocks and size + len(block) > SEND_TARGET:
                    messages.append(wire.Message(blocks=tuple(blocks)))
                    blocks, size = [], 0
                blocks.append((want.cid, block))
                size += len(block)
        messages.append(wire.Message(blocks=tuple(blocks), have=tuple(have), dont_have=tuple(dont_have)))
        return messages

    # -- sending -------------------------------------------------------------------------------------------

    def _peer(self, peer: Peer) -> _Peer:
        state = self._peers.get(peer)
        if state is None:
            if len(self._peers) >= MAX_PEERS:
                _, evicted = self._peers.popitem(last=False)
                evicted.ledger.clear()
                if evicted.stream is not None and self._nursery is not None:
                    self._nursery.start_soon(close_stream, evicted.stream)
            state = self._peers[peer] = _Peer()
        self._peers.move_to_end(peer)
        return state

    async def _send(self, peer: Peer, message: wire.Message) -> None:
        """Send on our stream to ``peer``, opening it (again) if needed; ``RemoteError`` if that fails."""
        if not (message.wants or message.blocks or message.have or message.dont_have):
            return
        state = self._peer(peer)
        async with state.lock:
            for attempt in range(2):
                try:
                    with map_libp2p_errors(f"cannot send to peer {peer}"):
                        if state.stream is None:
                            state.stream = await self.host.new_stream(peer, list(PROTOCOLS))
                            if self._nursery is not None:
                                self._nursery.start_soon(self._read_own, peer, state.stream)
                        await state.stream.write(wire.frame(message, presences=state.stream.get_protocol() == V120))
                    return
                except RemoteError:
                    stream, state.stream = state.stream, None
                    if stream is not None:
                        await close_stream(stream)
                    if attempt:
                        raise


def _shapes(root: Cid, blocks: list[tuple[ParsedCid, bytes]]) -> list[unixfs.NodeShape]:
    return [unixfs.shape(root, cid, block) for cid, block in blocks]
