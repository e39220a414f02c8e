"""Payloads in pieces (codec ``snapshot-v1``): a commit's whole weights as the canonical safetensors file of them
(``tensors.safetensors_file``), cut into pieces along its tensors, each piece sealed on its own
(``core.crypto.PieceCipher``) and stored as one raw leaf of a UnixFS file DAG.

What this buys:

- **Storage and transfer in proportion to the change.** Sealing is deterministic, so a piece that is the same in
  two commits is the same block: stored once, and never fetched again by a peer that holds it. A commit that
  changes 2 % of a model's tensors adds about 2 % of the model's blocks.
- **Bounded memory.** Weights go through a piece at a time, both ways: a commit reads its file range by range
  (``tensors.safetensors_file.FileSource``) and a checkout writes one piece after another.
- **History does not matter.** Every commit holds its whole weights, so reading one never replays the deltas of
  its ancestors (``bitdelta-v1`` did, from the last full payload).

How a file is cut (``cut``): as segments, its header and then each tensor, and each segment in parts of ``PIECE``
bytes counted from the segment's own start, so a tensor's parts fall at the same offsets in every commit and an
unchanged tensor gives the same pieces whatever changed before it. A segment's last part shorter than
``unixfs.CHUNK`` is carried into the next piece instead of making a leaf of its own, so every leaf but the last
holds at least ``CHUNK`` bytes: a DAG of pieces never has more blocks than ``unixfs.Bounds`` allows a file of its
size, and a peer fetches and walks it like any other payload. A piece is at most ``CHUNK + PIECE`` bytes, and
sealed it fits a leaf (``unixfs.MAX_BLOCK``).

Sealing and hashing run on ``WORKERS`` threads (OpenSSL and hashlib release the GIL on large buffers), with at most
``WINDOW`` pieces in flight, which is all the memory a commit takes beyond the file's header.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from ..core.cid import RAW, ParsedCid
from ..core.crypto import PieceCipher
from ..core.errors import IntegrityError
from ..core.ids import Cid
from ..core.objects import PIECES_CODEC
from . import unixfs

#: The payload codec of weights stored in pieces.
CODEC = PIECES_CODEC
#: Bytes of a tensor (or of the header) in one piece, counted from its start.
PIECE = 512 * 1024
#: Threads that seal, hash and store pieces.
WORKERS = 2
#: Pieces read ahead of the one being stored.
WINDOW = 8

Part = bytes | memoryview


def cut(segments: Iterable[Iterable[Part]]) -> Iterator[Part]:
    """The pieces of a file given as ``segments`` of parts (see the module docstring); at least one piece."""
    carry = b""
    made = False
    for segment in segments:
        pending: Part | None = None
        for part in segment:
            if pending is not None:
                yield _join(carry, pending)
                carry, made = b"", True
            pending = part
        if pending is not None:
            piece = _join(carry, pending)
            if len(piece) < unixfs.CHUNK:
                carry = bytes(piece)
            else:
                yield piece
                carry, made = b"", True
    if carry or not made:
        yield carry


def _join(carry: bytes, part: Part) -> Part:
    return carry + bytes(part) if carry else part


def write(store: unixfs.BlockStore, cipher: PieceCipher, pieces: Iterable[Part]) -> tuple[Cid, int]:
    """Seal and store ``pieces`` (each at most ``CHUNK + PIECE`` bytes) as the leaves of a UnixFS file; returns
    its root and its size (the sealed bytes). A piece whose sealed block is stored already is not written again."""
    leaves: list[tuple[Cid, int]] = []
    in_flight: deque[Future[tuple[Cid, int]]] = deque()
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="flair-pieces") as pool:
        try:
            for piece in pieces:
                in_flight.append(pool.submit(_seal, store, cipher, piece))
                if len(in_flight) >= WINDOW:
                    leaves.append(in_flight.popleft().result())
            while in_flight:
                leaves.append(in_flight.popleft().result())
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise
    return unixfs.link_leaves(store, leaves), sum(size for _, size in leaves)


def _seal(store: unixfs.BlockStore, cipher: PieceCipher, piece: Part) -> tuple[Cid, int]:
    sealed = cipher.seal(piece)
    cid = ParsedCid(RAW, hashlib.sha256(sealed).digest())
    if not store.has(cid):
        store.put_hashed(cid, sealed)
    return cid.text, len(sealed)


def read(store: unixfs.BlockStore, cipher: PieceCipher, root: Cid, size: int) -> Iterator[bytes]:
    """The pieces of the payload under ``root`` (``size`` sealed bytes), opened, in order: every block re-hashed
    against its CID and every piece authenticated on the way."""
    for cid, block in unixfs.walk(store, root, max_size=size):
        if cid.codec == RAW:
            yield cipher.open(block)


class Reader:
    """The bytes of a payload's pieces as one stream: what ``tensors.safetensors_file.read_header`` and
    ``safetensors_io.read_state`` read from, with the end checked (``end``). ``what`` names it in errors."""

    def __init__(self, pieces: Iterator[bytes], what: str) -> None:
        self._pieces = pieces
        self._piece = memoryview(b"")
        self.what = what

    def _next(self) -> bool:
        for piece in self._pieces:
            if piece:
                self._piece = memoryview(piece)
                return True
        return False

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes, fewer only at the end."""
        out = bytearray()
        while len(out) < n and (self._piece or self._next()):
            take = self._piece[:n - len(out)]
            out += take
            self._piece = self._piece[len(take):]
        return bytes(out)

    def readinto(self, buffer: memoryview) -> None:
        """Fill ``buffer`` exactly; ``IntegrityError`` if the payload ends first."""
        at = 0
        while at < len(buffer):
            if not self._piece and not self._next():
                raise IntegrityError(f"{self.what} ends {len(buffer) - at} bytes early")
            take = self._piece[:len(buffer) - at]
            buffer[at:at + len(take)] = take
            at += len(take)
            self._piece = self._piece[len(take):]

    def chunks(self, n: int) -> Iterator[memoryview]:
        """The next ``n`` bytes as they come (each valid until the next is asked for); ``IntegrityError`` if the
        payload ends first."""
        while n:
            if not self._piece and not self._next():
                raise IntegrityError(f"{self.what} ends {n} bytes early")
            take = self._piece[:n]
            self._piece = self._piece[len(take):]
            n -= len(take)
            yield take

    def end(self) -> None:
        """``IntegrityError`` unless every byte has been read."""
        if self._piece or self._next():
            raise IntegrityError(f"{self.what} holds more bytes than its tensors")


__all__ = ["CODEC", "PIECE", "Reader", "cut", "read", "write"]
