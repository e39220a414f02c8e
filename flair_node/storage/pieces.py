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

import bisect
import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
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


class Snapshot:
    """A payload in pieces read by ranges of its bytes (the canonical safetensors file it holds): the leaves a
    range falls in are read, re-hashed, checked and opened, the last one kept for the next read. ``what`` names it
    in errors. Listing the leaves reads the DAG's nodes only; ``size`` is the plaintext's length."""

    def __init__(self, store: unixfs.BlockStore, cipher: PieceCipher, root: Cid, size: int, what: str) -> None:
        self.store, self.cipher, self.root, self.what = store, cipher, root, what
        self._leaves = unixfs.leaves(store, root, max_size=size)
        self._starts: list[int] = []
        at = 0
        for _, sealed in self._leaves:
            if sealed < PieceCipher.OVERHEAD or (sealed == PieceCipher.OVERHEAD and len(self._leaves) > 1):
                raise IntegrityError(f"{what} has a piece of {sealed} bytes, too short to be sealed", cid=root)
            self._starts.append(at)
            at += sealed - PieceCipher.OVERHEAD
        self.size = at
        self._open: tuple[int, bytes] = (-1, b"")

    def _piece(self, index: int) -> bytes:
        if self._open[0] != index:
            cid, sealed = self._leaves[index]
            block = unixfs.check_leaf(self.root, cid, self.store.get(cid), sealed)
            self._open = (index, self.cipher.open(block))
        return self._open[1]

    def readinto(self, start: int, buffer: memoryview) -> None:
        """Fill ``buffer`` with the bytes from ``start``; ``IntegrityError`` past the end."""
        if start < 0 or start + len(buffer) > self.size:
            raise IntegrityError(f"{self.what} ends before byte {start + len(buffer)}")
        index = bisect.bisect_right(self._starts, start) - 1
        at = 0
        while at < len(buffer):
            piece = self._piece(index)
            offset = start + at - self._starts[index]
            take = min(len(piece) - offset, len(buffer) - at)
            buffer[at:at + take] = piece[offset:offset + take]
            at += take
            index += 1

    def read(self, start: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``start``, fewer only at the end."""
        out = bytearray(max(0, min(n, self.size - start)))
        self.readinto(start, memoryview(out))
        return bytes(out)

    def reader(self) -> Callable[[int], bytes]:
        """``read(n)`` of the bytes in order from the first: what ``safetensors_file.read_header`` reads."""
        at = 0

        def read(n: int) -> bytes:
            nonlocal at
            data = self.read(at, n)
            at += len(data)
            return data

        return read

    def pieces(self) -> Iterator[bytes]:
        """Every piece, opened, in order: the whole file, one piece at a time."""
        for index in range(len(self._leaves)):
            yield self._piece(index)


__all__ = ["CODEC", "PIECE", "Snapshot", "cut", "write"]
