"""Varint-length-prefixed messages on a libp2p stream, as Bitswap and GossipSub frame them.

Every read has a deadline, so a peer cannot hold a stream (and the buffer behind it) by going quiet: a message
whose first byte has arrived must be complete within ``frame_timeout`` seconds, and a reader given an
``idle_timeout`` gives up on a stream that starts no message for that long. Either raises ``RemoteError`` with
``data["stalled"]`` set to ``"frame"`` or ``"idle"``; the caller closes (resets) the stream. A stream that ends
inside a message is a ``RemoteError`` too (a connection can drop mid-message); only what is provably malformed
(a length over the limit, a runaway length prefix) is an ``IntegrityError``.
"""

from __future__ import annotations

import math

import trio

from ..core.errors import IntegrityError, RemoteError
from ..core.protobuf import read_varint
from .host import Stream

FRAME_TIMEOUT = 20.0  # seconds for a message to arrive whole once it has begun (4 MiB at 200 KiB/s)


class MessageReader:
    """Varint-length-prefixed messages from a stream, each at most ``limit`` bytes (``what`` names the protocol
    in errors), each complete within ``frame_timeout`` seconds of its first byte (``FRAME_TIMEOUT`` unless
    given); with an ``idle_timeout``, the next message must begin within that many seconds.

    Each read drains everything the stream holds (py-libp2p's Yamux copies and shifts its buffer on partial
    reads), and a message is handed out as a view into this reader's buffer, not a copy."""

    def __init__(self, stream: Stream, limit: int, what: str, *, frame_timeout: float | None = None,
                 idle_timeout: float | None = None) -> None:
        self.stream = stream
        self.limit, self.what = limit, what
        self.frame_timeout = FRAME_TIMEOUT if frame_timeout is None else frame_timeout
        self.idle_timeout = math.inf if idle_timeout is None else idle_timeout
        self.buffer = bytearray()
        self._view: memoryview | None = None  # the message handed out last, and where it ends
        self._end = 0

    async def next(self) -> memoryview | None:
        """The next message, valid until the next call; None at a clean end of stream."""
        if self._view is not None:
            consumed = self._end
            self._view.release()
            self._view = None
            del self.buffer[:consumed]
        began = trio.current_time() if self.buffer else None  # when the message's first byte arrived
        while True:
            try:
                length, start = read_varint(self.buffer, 0)
                break
            except IntegrityError:
                if len(self.buffer) >= 10:
                    raise
            if not await self._fill(began):
                if self.buffer:
                    raise RemoteError(f"{self.what} stream ends inside a length prefix")
                return None
            if began is None:
                began = trio.current_time()
        if length > self.limit:
            raise IntegrityError(f"{self.what} message of {length} bytes announced (limit {self.limit})")
        while len(self.buffer) < start + length:
            if not await self._fill(began):
                raise RemoteError(f"{self.what} stream ends inside a message")
        self._end = start + length
        self._view = memoryview(self.buffer)[start:self._end]
        return self._view

    async def _fill(self, began: float | None) -> bool:
        """Read what the stream holds, by the deadline of the message begun at ``began`` (None: none begun)."""
        deadline = trio.current_time() + self.idle_timeout if began is None else began + self.frame_timeout
        with trio.move_on_at(deadline):
            try:
                data = await self.stream.read(self.limit)
            except EOFError:  # py-libp2p's StreamEOF and MuxedStreamEOF both are
                return False
            self.buffer += data
            return bool(data)
        if began is None:
            raise RemoteError(f"{self.what} stream idle for {self.idle_timeout:g} s", stalled="idle")
        raise RemoteError(f"{self.what} message not complete {self.frame_timeout:g} s after it began "
                          f"({len(self.buffer)} bytes arrived)", stalled="frame")
