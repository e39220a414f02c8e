"""Block exchange over Bitswap 1.2 on the node's libp2p host: serve this node's blocks, fetch DAGs it lacks.

Flair speaks Bitswap itself (messages in ``bitswap_wire``) on py-libp2p's streams, the way Kubo does: each side
sends its messages on one long-lived stream it opened, so replies to our wants arrive on the peer's stream. A
DAG is fetched with a window of wants in flight, children queued as soon as their parent arrives.

Nothing a peer sends is trusted. A block's CID is recomputed from its bytes; a block is kept only if this node
asked that peer for exactly that CID, and only within the size its DAG declares. Forged or unrequested blocks
and malformed messages cost the peer penalty points; at ``Penalties.BAN_AFTER`` points the peer is
disconnected and ignored for ``BAN_SECONDS``, and fetches from it fail at once. Bad input is logged once per
peer per minute and counted in ``status()``.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio
from libp2p.custom_types import TProtocol

from ..core.cid import ParsedCid, parse_cid
from ..core.errors import FlairError, IntegrityError, InvalidInput, RemoteError
from ..core.ids import Cid
from ..storage import unixfs
from . import bitswap_wire as wire
from .framing import MessageReader

log = logging.getLogger(__name__)

V120, V110 = TProtocol("/ipfs/bitswap/1.2.0"), TProtocol("/ipfs/bitswap/1.1.0")
PROTOCOLS = (V120, V110)
SEND_TARGET = 1 << 20  # bytes of blocks batched into one message
MAX_LEDGER = 4096  # wants one peer may have queued here
MAX_PEERS = 4096  # peers remembered (streams, ledgers, penalty records); the least recently seen go first
_STORE_BATCH = 32  # blocks stored per thread hop while fetching
_LATE_CANCELLED = 1024  # CIDs per peer whose late arrival after a cancel is no offence
_DONT_HAVE, _BANNED = object(), object()


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

    def banned(self, peer: Any) -> bool:
        record = self._peers.get(str(peer))
        return record is not None and record.banned_until > self._clock()

    def penalize(self, peer: Any, what: str, *, block: bool) -> bool:
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

    peer: Any
    window: int
    send: trio.MemorySendChannel[tuple[ParsedCid, Any]] = field(init=False)
    receive: trio.MemoryReceiveChannel[tuple[ParsedCid, Any]] = field(init=False)

    def __post_init__(self) -> None:
        # One delivery per want in flight, plus one ban notice: sending never blocks the stream reader.
        self.send, self.receive = trio.open_memory_channel(self.window + 1)


@dataclass(eq=False)
class _Peer:
    """What this node keeps per peer: the stream it sends on, and the wants it serves them."""

    stream: Any = None
    lock: trio.Lock = field(default_factory=trio.Lock)
    ledger: OrderedDict[ParsedCid, wire.Want] = field(default_factory=OrderedDict)
    serving: bool = False  # a task is answering the ledger
    cancelled: OrderedDict[ParsedCid, None] = field(default_factory=OrderedDict)


class BlockExchange:
    def __init__(self, host: Any, blocks: unixfs.BlockStore, *,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.host = host
        self.blocks = blocks
        self.penalties = Penalties(clock)
        self._peers: OrderedDict[Any, _Peer] = OrderedDict()
        self._wants: dict[ParsedCid, list[_Fetch]] = {}
        self._fetches: set[_Fetch] = set()
        self._nursery: trio.Nursery | None = None

    @property
    def refused_blocks(self) -> int:
        return sum(r["refused_blocks"] for r in self.penalties.status().values())

    def status(self) -> dict[str, Any]:
        return {"refused_blocks": self.refused_blocks, "peers": self.penalties.status()}

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
                            await _close(state.stream)

    # -- fetching ------------------------------------------------------------------------------------------

    async def fetch_dag(self, root: Cid, peer: Any, *, max_size: int, block_timeout: float = 30.0,
                        window: int = 128) -> int:
        """Fetch every block of the DAG under ``root`` that this node lacks from ``peer``; returns how many.

        Up to ``window`` wants are in flight at once. Raises ``RemoteError`` if the peer lacks a block, sends
        nothing for ``block_timeout`` seconds, or is banned; ``IntegrityError`` if the DAG is deeper than
        ``unixfs.MAX_DEPTH`` or holds more than ``max_size`` bytes.
        """
        if window < 1:
            raise InvalidInput(f"a fetch needs a window of at least one want, not {window}")
        if self.penalties.banned(peer):
            raise RemoteError(f"peer {peer} is banned for sending bad blocks; not fetching {root} from it")
        fetch = _Fetch(peer, window)
        todo: deque[tuple[ParsedCid, int, int]] = deque([(parse_cid(root), max_size, 0)])
        in_flight: dict[ParsedCid, list[tuple[int, int]]] = {}  # cid -> (bytes it may hold, depth) per place
        unstored: list[tuple[ParsedCid, bytes]] = []  # arrived and checked, stored a batch at a time
        fetched = 0

        def arrived(cid: ParsedCid, block: bytes, places: list[tuple[int, int]]) -> None:
            for allowed, depth in places:
                for child, size in unixfs.children(root, cid, block, allowed):
                    if depth + 1 > unixfs.MAX_DEPTH:
                        raise IntegrityError(f"DAG under {root} is deeper than {unixfs.MAX_DEPTH}", cid=root)
                    todo.append((child, size, depth + 1))

        self._fetches.add(fetch)
        try:
            while todo or in_flight:
                wants = []
                # Refill the window in batches (when half of it has arrived): fewer, larger messages both ways.
                while todo and (len(in_flight) < window // 2 or wants) and len(in_flight) < window:
                    cid, allowed, depth = todo.popleft()
                    if cid in in_flight:  # the same block twice in one DAG: asked for once
                        in_flight[cid].append((allowed, depth))
                    elif self.blocks.has(cid):
                        arrived(cid, await trio.to_thread.run_sync(self.blocks.get, cid), [(allowed, depth)])
                    else:
                        in_flight[cid] = [(allowed, depth)]
                        self._wants.setdefault(cid, []).append(fetch)
                        wants.append(wire.Want(cid, send_dont_have=True))
                if wants:
                    await self._send(peer, wire.Message(wants=tuple(wants)))
                if not in_flight:
                    continue
                with trio.move_on_after(block_timeout):
                    arrivals = [await fetch.receive.receive()]
                    while len(arrivals) < window:  # and whatever else has arrived
                        try:
                            arrivals.append(fetch.receive.receive_nowait())
                        except trio.WouldBlock:
                            break
                    for cid, block in arrivals:
                        if block is _BANNED:
                            raise RemoteError(f"peer {peer} was banned for sending bad blocks while sending {root}")
                        if block is _DONT_HAVE:
                            raise RemoteError(f"peer {peer} does not have block {cid.text} of {root}", cid=cid.text)
                        arrived(cid, block, in_flight.pop(cid))  # bounds checked before anything is stored
                    unstored += arrivals
                    if len(unstored) >= _STORE_BATCH:  # fewer thread hops
                        fetched, unstored = fetched + await self._store(unstored), []
                    continue
                first = next(iter(in_flight)).text
                raise RemoteError(f"peer {peer} did not deliver block {first} of {root} within {block_timeout:g} s",
                                  cid=first)
            return fetched + await self._store(unstored)
        finally:
            self._fetches.discard(fetch)
            for cid in in_flight:
                waiting = self._wants.get(cid, [])
                if fetch in waiting:
                    waiting.remove(fetch)
                if not waiting:
                    self._wants.pop(cid, None)
            if in_flight and not self.penalties.banned(peer):
                await self._cancel(peer, list(in_flight))

    async def _store(self, batch: list[tuple[ParsedCid, bytes]]) -> int:
        """Store ``batch`` off the event loop; returns how many blocks it held."""
        def store() -> None:
            for cid, block in batch:  # each CID was computed from its block's bytes by wire.decode
                self.blocks.put_hashed(cid, block)

        await trio.to_thread.run_sync(store)
        return len(batch)

    async def _cancel(self, peer: Any, cids: Sequence[ParsedCid]) -> None:
        """Withdraw wants (best effort); blocks of these arriving late are then dropped without blame."""
        state = self._peer(peer)
        for cid in cids:
            state.cancelled[cid] = None
            state.cancelled.move_to_end(cid)
        while len(state.cancelled) > _LATE_CANCELLED:
            state.cancelled.popitem(last=False)
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self._send(peer, wire.Message(wants=tuple(wire.Want(c, cancel=True) for c in cids)))
            except RemoteError:
                pass  # the peer is gone: nothing to withdraw

    # -- receiving -----------------------------------------------------------------------------------------

    async def _handle_stream(self, stream: Any) -> None:
        """A stream a peer opened to send us messages (Kubo's way of answering, and of asking)."""
        try:
            await self._read(stream.muxed_conn.peer_id, stream)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await _close(stream)

    async def _read(self, peer: Any, stream: Any) -> None:
        """Read ``peer``'s messages from ``stream`` until it ends; one peer's errors never reach the others.

        Also run on the streams this node opens: py-libp2p's Bitswap answers on the asker's stream. Messages
        are decoded (blocks hashed) right here: a thread hop per message costs more than hashing 1 MiB."""
        try:
            reader = MessageReader(stream, wire.MAX_MESSAGE, "Bitswap")
            while not self.penalties.banned(peer) and (data := await reader.next()) is not None:
                try:
                    message = wire.decode(data)
                except IntegrityError as exc:
                    self._penalize(peer, f"malformed Bitswap message: {exc}", block=False)
                    return
                self._received(peer, message)
        except IntegrityError as exc:
            self._penalize(peer, f"malformed Bitswap stream: {exc}", block=False)
        except Exception as exc:  # a peer's stream ending badly is that peer's business
            log.debug("Bitswap stream from %s ended: %r", peer, exc)

    def _received(self, peer: Any, message: wire.Message) -> None:
        for cid, block in message.blocks:
            fetches = [f for f in self._wants.get(cid, []) if f.peer == peer]
            if fetches:
                self._deliver(cid, fetches, block)
            elif cid not in self._peer(peer).cancelled:
                self._penalize(peer, f"sent block {cid.text} that this node did not ask it for "
                               "(forged bytes or unrequested)", block=True)
        for cid in message.dont_have:
            self._deliver(cid, [f for f in self._wants.get(cid, []) if f.peer == peer], _DONT_HAVE)
        if message.wants or message.full:
            self._queue_wants(peer, message)

    def _deliver(self, cid: ParsedCid, fetches: list[_Fetch], outcome: Any) -> None:
        waiting = self._wants[cid] if fetches else []
        for fetch in fetches:
            waiting.remove(fetch)
            fetch.send.send_nowait((cid, outcome))
        if fetches and not waiting:
            del self._wants[cid]

    def _penalize(self, peer: Any, what: str, *, block: bool) -> None:
        if not self.penalties.penalize(peer, what, block=block):
            return
        for fetch in [f for f in self._fetches if f.peer == peer]:
            fetch.send.send_nowait((ParsedCid(0, b""), _BANNED))
            self._fetches.discard(fetch)
        state = self._peers.pop(peer, None)
        if self._nursery is not None:
            self._nursery.start_soon(self._disconnect, peer, state)

    async def _disconnect(self, peer: Any, state: _Peer | None) -> None:
        with trio.move_on_after(5):
            try:
                if state is not None and state.stream is not None:
                    await _close(state.stream)
                await self.host.disconnect(peer)
            except Exception as exc:
                log.debug("disconnecting banned peer %s: %r", peer, exc)

    # -- serving -------------------------------------------------------------------------------------------

    def _queue_wants(self, peer: Any, message: wire.Message) -> None:
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

    async def _serve(self, peer: Any, state: _Peer) -> None:
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
        except Exception as exc:  # a peer that stops reading loses its wants, nobody else's
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

    def _peer(self, peer: Any) -> _Peer:
        state = self._peers.get(peer)
        if state is None:
            if len(self._peers) >= MAX_PEERS:
                _, evicted = self._peers.popitem(last=False)
                evicted.ledger.clear()
                if evicted.stream is not None and self._nursery is not None:
                    self._nursery.start_soon(_close, evicted.stream)
            state = self._peers[peer] = _Peer()
        self._peers.move_to_end(peer)
        return state

    async def _send(self, peer: Any, message: wire.Message) -> None:
        """Send on our stream to ``peer``, opening it (again) if needed; ``RemoteError`` if that fails."""
        if not (message.wants or message.blocks or message.have or message.dont_have):
            return
        state = self._peer(peer)
        async with state.lock:
            for attempt in range(2):
                try:
                    if state.stream is None:
                        state.stream = await self.host.new_stream(peer, list(PROTOCOLS))
                        if self._nursery is not None:
                            self._nursery.start_soon(self._read, peer, state.stream)
                    await state.stream.write(wire.frame(message, presences=state.stream.get_protocol() == V120))
                    return
                except Exception as exc:
                    stream, state.stream = state.stream, None
                    if stream is not None:
                        await _close(stream)
                    if attempt:
                        raise RemoteError(f"cannot send to peer {peer}: {exc!r}") from None


async def _close(stream: Any) -> None:
    try:
        await stream.close()
    except Exception as exc:
        log.debug("closing a Bitswap stream: %r", exc)
