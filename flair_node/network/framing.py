"""Varint-length-prefixed messages on a libp2p stream, as Bitswap and GossipSub frame them."""

from __future__ import annotations

from typing import Any

from ..core.errors import IntegrityError
from ..core.protobuf import read_varint


class MessageReader:
    """Varint-length-prefixed messages from a stream, each at most ``limit`` bytes (``what`` names the protocol
    in errors).

    Each read drains everything the stream holds (py-libp2p's Yamux copies and shifts its buffer on partial
    reads), and a message is handed out as a view into this reader's buffer, not a copy."""

    def __init__(self, stream: Any, limit: int, what: str) -> None:
        self.stream = stream
        self.limit, self.what = limit, what
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
        while True:
            try:
                length, start = read_varint(self.buffer, 0)
                break
            except IntegrityError:
                if len(self.buffer) >= 10:
                    raise
            if not await self._fill():
                if self.buffer:
                    raise IntegrityError(f"{self.what} stream ends inside a length prefix")
                return None
        if length > self.limit:
            raise IntegrityError(f"{self.what} message of {length} bytes announced (limit {self.limit})")
        while len(self.buffer) < start + length:
            if not await self._fill():
                raise IntegrityError(f"{self.what} stream ends inside a message")
        self._end = start + length
        self._view = memoryview(self.buffer)[start:self._end]
        return self._view

    async def _fill(self) -> bool:
        try:
            data = await self.stream.read(self.limit)
        except EOFError:  # py-libp2p's StreamEOF and MuxedStreamEOF both are
            return False
        self.buffer += data
        return bool(data)
