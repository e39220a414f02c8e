"""One request and one reply on a libp2p stream of their own: canonical msgpack, each at most 1 MiB.

py-libp2p's RequestResponse breaks on replies over ~6.5 MiB (Yamux); Flair's replies stay small by design (records,
never tensors: those travel as blocks). Both sides bound what they read and how long they wait (the whole exchange
within ``TIMEOUT``), and a server answers at most ``MAX_PER_PEER`` requests of one peer at a time: a stream beyond
that is reset at once. The handler learns who asks as the peer id the connection authenticated (a transport key:
which member it is, a protocol proves for itself, as ``protocol.sync`` does). A ``FlairError`` raised by the handler
reaches the caller as the same kind of error, its message prefixed with the peer; anything else is reported as a
``RemoteError``. What goes wrong on the serving side (streams refused, requests failed) is counted per peer in
``Served`` and logged once per peer per minute.
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from libp2p.custom_types import TProtocol

from ..core import encoding
from ..core.errors import FlairError, RemoteError, error_for_code
from .gossip import Offences
from .host import Host, Peer, Stream, close_stream, map_libp2p_errors, reset_stream

log = logging.getLogger(__name__)

MAX_FRAME = encoding.MAX_RECORD_BYTES
TIMEOUT = 30.0
MAX_PER_PEER = 8  # requests of one peer answered at once
Handler = Callable[[str, Any], Awaitable[Any]]  # (the asking peer's id, the request)


@dataclass
class Served:
    """What one served protocol is doing, per peer: requests in progress, streams refused (over the cap), and
    requests that ended without a reply (stalled past the timeout, cut off, or a handler bug)."""

    open: Counter[str] = field(default_factory=Counter)
    refused: Offences = field(default_factory=Offences)
    failed: Offences = field(default_factory=Offences)

    def status(self) -> dict[str, Any]:
        return {"open": sum(self.open.values()), "refused": dict(self.refused.counts),
                "failed": dict(self.failed.counts)}


def serve(host: Host, protocol: str, handler: Handler, *, timeout: float = TIMEOUT,
          max_per_peer: int = MAX_PER_PEER) -> Served:
    """Answer every request on ``protocol`` with ``handler(asker's peer id, request)``, at most ``max_per_peer`` of
    one peer at a time; returns the counters of what it serves."""
    served = Served()

    async def on_stream(stream: Stream) -> None:
        peer = stream.muxed_conn.peer_id
        name = str(peer)
        if served.open[name] >= max_per_peer:
            served.refused.add(name, "opened more than %d %s streams at once: reset", max_per_peer, protocol)
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await reset_stream(stream)
            return
        served.open[name] += 1
        try:
            with trio.fail_after(timeout):
                try:
                    reply: Any = {"ok": await handler(name, encoding.decode(await _read_frame(stream)))}
                except FlairError as exc:
                    reply = {"error": {"code": exc.code, "message": exc.message}}
                await stream.write(_frame(encoding.encode(reply)))
        except Exception as exc:  # one asker's trouble (a handler bug included) never reaches the node
            served.failed.add(name, "%s request failed: %r", protocol, exc)
        finally:
            served.open[name] -= 1
            if served.open[name] <= 0:
                del served.open[name]
            await _close(stream)

    host.set_stream_handler(TProtocol(protocol), on_stream)
    return served


async def request(host: Host, peer: Peer, protocol: str, value: Any) -> Any:
    """Send ``value`` to ``peer`` and return its reply (within ``TIMEOUT``); the peer's ``FlairError`` kind, or
    ``RemoteError``."""
    try:
        with trio.fail_after(TIMEOUT), map_libp2p_errors(f"{protocol} request to peer {peer} failed"):
            stream = await host.new_stream(peer, [TProtocol(protocol)])
            try:
                await stream.write(_frame(encoding.encode(value)))
                reply = encoding.decode(await _read_frame(stream))
            finally:
                await _close(stream)
    except trio.TooSlowError:
        raise RemoteError(f"peer {peer} did not answer {protocol} within {TIMEOUT:g} s") from None
    if isinstance(reply, dict) and set(reply) == {"ok"}:
        return reply["ok"]
    error = reply.get("error") if isinstance(reply, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), int) and isinstance(error.get("message"), str):
        raise error_for_code(error["code"])(f"peer {peer}: {error['message'][:500]}")
    raise RemoteError(f"peer {peer} sent a malformed {protocol} reply")


def _frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


async def _read_frame(stream: Stream) -> bytes:
    (length,) = struct.unpack(">I", await _read_exactly(stream, 4))
    if length > MAX_FRAME:
        raise RemoteError(f"a frame of {length} bytes is over the {MAX_FRAME}-byte limit")
    return await _read_exactly(stream, length)


async def _read_exactly(stream: Stream, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        try:
            data = await stream.read(n - got)
        except EOFError:
            data = b""
        if not data:
            raise RemoteError(f"stream ended after {got} of {n} bytes")
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


async def _close(stream: Stream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(2):
        await close_stream(stream)
