"""Payloads in pieces (codec ``snapshot-v1``): a commit's whole weights as the canonical safetensors file of them
(``tensors.safetensors_file``), cut into pieces along its tensors, each piece sealed on its own
(``core.crypto.PieceCipher``) and stored as one raw leaf of a UnixFS file DAG.

What this buys:

- **Storage and transfer in proportion to the change.** Sealing is deterministic, so a piece that is the same in
  two commits is the same block: stored once, and never fetched again by a peer that holds it. A commit that
  changes 2 % of a model's tensors adds about 2 % of the model's blocks. A piece that changed in a few places is
  stored as a delta against the same piece of the commit's first parent (``storage.piece_delta``), so a change
  scattered over every piece costs about what changed too.
- **Bounded memory.** Weights go through a piece at a time, both ways: a commit reads its file range by range
  (``tensors.safetensors_file.FileSource``) and a checkout writes one piece after another.
- **History does not matter.** A piece is a whole piece or at most ``piece_delta.MAX_DEPTH`` small deltas over
  one, whatever the history's length (``bitdelta-v1`` replayed every delta from the last full payload).

How a file is cut (``cut``): as segments, its header and then each tensor, and each segment in parts of ``PIECE``
bytes counted from the segment's own start, so a tensor's parts fall at the same offsets in every commit and an
unchanged tensor gives the same pieces whatever changed before it. A segment's last part shorter than
``unixfs.CHUNK`` is carried into the next piece instead of making a leaf of its own, so every whole piece but the
last holds at least ``CHUNK`` bytes, and a delta is padded to ``unixfs.MIN_LEAF``: a DAG of pieces never has more
blocks than ``unixfs.Bounds`` allows a file of its size, and a peer fetches and walks it like any other payload.
A piece is at most ``CHUNK + PIECE`` bytes, and sealed it fits a leaf (``unixfs.MAX_BLOCK``).

A leaf is a whole piece (sealed as such) or a delta of one (sealed as a delta, naming the leaf it applies to, which
lies in an ancestor's payload: a peer that pulls a history fetches it with that payload). A commit is stored
against its first parent when both are in pieces under one key and have one header, so the same pieces (``write``
with ``base``): each piece equal to the parent's reuses the parent's leaf, each that differs in at most
``piece_delta.MAX_SHARE`` of its bytes is a delta against the parent's leaf (against the whole piece at the end of
its chain once the chain is ``MAX_DEPTH`` long), and any other is sealed whole. Where piece after piece changed
too much, the parent's pieces are read for only one in 32 (``_Tries``): a commit that changes every weight costs
about what it cost before deltas, its unchanged pieces still found equal to whole pieces by their sealed bytes.
Where the pieces lie in the file follows from its header (``lengths``), which is read first.

Sealing and hashing run on ``WORKERS`` threads (OpenSSL and hashlib release the GIL on large buffers), and each
sealed block is written, fsynced and renamed into place on one of ``WRITERS`` more: a thread waiting for the disk
holds no core, so the sealing threads keep both cores busy meanwhile. At most ``WINDOW`` pieces are in flight,
sealed or not, which is all the memory a commit takes beyond the file's header.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ..core.cid import RAW, ParsedCid
from ..core.crypto import PieceCipher
from ..core.errors import IntegrityError, NotFound
from ..core.ids import Cid
from ..core.objects import PIECES_CODEC
from ..tensors.safetensors_file import Header, read_header
from . import piece_delta, unixfs

log = logging.getLogger(__name__)

#: The payload codec of weights stored in pieces.
CODEC = PIECES_CODEC
#: Bytes of a tensor (or of the header) in one piece, counted from its start.
PIECE = 512 * 1024
#: Threads that seal and hash pieces.
WORKERS = 2
#: Threads that write sealed blocks to the store (mostly waiting for fsync).
WRITERS = 3
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


def lengths(sizes: Sequence[int]) -> list[int]:
    """The lengths of the pieces ``cut`` makes of segments of ``sizes`` bytes (cut in parts of ``PIECE``)."""
    out: list[int] = []
    carry, made = 0, False
    for size in sizes:
        parts = [PIECE] * (size // PIECE) + ([size % PIECE] if size % PIECE else [])
        for part in parts[:-1]:
            out.append(carry + part)
            carry, made = 0, True
        if parts:
            if carry + parts[-1] < unixfs.CHUNK:
                carry += parts[-1]
            else:
                out.append(carry + parts[-1])
                carry, made = 0, True
    if carry or not made:
        out.append(carry)
    return out


def write(store: unixfs.BlockStore, cipher: PieceCipher, pieces: Iterable[Part],
          base: Snapshot | None = None) -> tuple[Cid, int]:
    """Seal and store ``pieces`` (each at most ``CHUNK + PIECE`` bytes) as the leaves of a UnixFS file; returns
    its root and its size (the sealed bytes). A piece whose sealed block is stored already is not written again.
    With ``base`` (a payload of the same pieces under ``cipher``), each piece is stored against the same piece of
    it (see the module docstring)."""
    leaves: list[tuple[Cid, int]] = []
    in_flight: deque[Future[_Sealed]] = deque()
    tries = _Tries()

    def stored(sealed: Future[_Sealed]) -> tuple[Cid, int]:
        cid, size, written = sealed.result()
        if written is not None:
            written.result()
        return cid, size

    with ThreadPoolExecutor(WORKERS, thread_name_prefix="flair-pieces") as pool, \
            ThreadPoolExecutor(WRITERS, thread_name_prefix="flair-writes") as writers:
        try:
            for index, piece in enumerate(pieces):
                in_flight.append(pool.submit(_store, store, cipher, piece, base, index, tries, writers))
                if len(in_flight) >= WINDOW:
                    leaves.append(stored(in_flight.popleft()))
            while in_flight:
                leaves.append(stored(in_flight.popleft()))
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise
    return unixfs.link_leaves(store, leaves), sum(size for _, size in leaves)


#: A piece sealed: its leaf's CID and size, and its write to the store under way (None if the store holds it).
_Sealed = tuple[Cid, int, "Future[None] | None"]


class _Tries:
    """Whether the next piece is worth reading its base for: after ``FUTILE`` pieces in a row that changed too
    much for a delta (a commit that changes every weight), only every ``PROBE``-th, until a delta pays again.
    An approximate count shared by the sealing threads: it only decides how much work to try."""

    FUTILE, PROBE = 4, 32

    def __init__(self) -> None:
        self.futile = self.asked = 0

    def worth(self) -> bool:
        self.asked += 1
        return self.futile < self.FUTILE or self.asked % self.PROBE == 0

    def note(self, paid: bool) -> None:
        self.futile = 0 if paid else self.futile + 1


def _store(store: unixfs.BlockStore, cipher: PieceCipher, piece: Part, base: Snapshot | None,
           index: int, tries: _Tries, writers: ThreadPoolExecutor) -> _Sealed:
    old = None
    if base is not None and index < base.count and tries.worth():
        try:
            old = base.resolve(index)
        except (IntegrityError, NotFound) as exc:  # a damaged parent is no base: this piece is stored whole
            log.warning("%s: piece %d does not read (%s); stored whole", base.what, index, exc)
    if old is not None and len(old.plain) == len(piece):
        # The parent's leaf again, or the piece against it; once its chain is as long as allowed, against (or
        # again) the whole piece at the chain's end.
        plain, depth, (cid, size) = (old.plain, old.depth, old.leaf) \
            if old.depth < piece_delta.MAX_DEPTH or old.plain == piece else (old.root_plain, 0, old.root)
        if plain == piece:
            tries.note(True)
            return cid.text, size, None
        delta = piece_delta.encode(piece, plain, depth=depth + 1, base_digest=cid.digest, base_size=size,
                                   min_plaintext=unixfs.MIN_LEAF - cipher.OVERHEAD)
        tries.note(delta is not None)
        if delta is not None:
            return _seal(store, cipher.seal(delta, delta=True), writers)
    return _seal(store, cipher.seal(piece), writers)


def _seal(store: unixfs.BlockStore, sealed: bytes, writers: ThreadPoolExecutor | None = None) -> _Sealed:
    """Hash ``sealed`` and store it unless the store holds it: on one of ``writers``, or here without."""
    cid = ParsedCid(RAW, hashlib.sha256(sealed).digest())
    written = None
    if not store.has(cid):
        if writers is None:
            store.put_hashed(cid, sealed)
        else:
            written = writers.submit(store.put_hashed, cid, sealed)
    return cid.text, len(sealed), written


Leaf = tuple[ParsedCid, int]


@dataclass(frozen=True)
class Resolved:
    """A piece read through: its bytes, the leaf that holds it, how many deltas lie between it and the whole piece
    at the end of its chain (``root``, whose bytes are ``root_plain``)."""

    plain: bytes | bytearray
    depth: int
    leaf: Leaf
    root_plain: bytes
    root: Leaf


class Snapshot:
    """A payload in pieces read by ranges of its bytes (the canonical safetensors file it holds): the leaves a
    range falls in are read, re-hashed, checked and opened (with the chain of a delta), the last one kept for the
    next read. ``what`` names it in errors; ``size`` is the payload's declared (sealed) size. Listing the leaves
    reads the DAG's nodes only, then ``header`` is read from the first pieces; the attribute ``size`` is the
    plaintext's length."""

    def __init__(self, store: unixfs.BlockStore, cipher: PieceCipher, root: Cid, size: int, what: str) -> None:
        self.store, self.cipher, self.root, self.what = store, cipher, root, what
        self._leaves = unixfs.leaves(store, root, max_size=size)
        self._lengths: list[int] = []
        self._open: tuple[int, bytes | bytearray] = (-1, b"")
        # The header lies in whole pieces but for the part it may share with a tensor's first piece (a delta): at
        # most the declared bytes and one piece, however many pieces small deltas stand for.
        self.header: Header = read_header(self._in_order(), None, what,
                                          header_at_most=size + unixfs.CHUNK + PIECE)
        self._lengths = lengths([len(self.header.raw), *(e.nbytes for e in self.header.entries)])
        if len(self._lengths) != len(self._leaves):
            raise IntegrityError(f"{what} has {len(self._leaves)} pieces where its header makes "
                                 f"{len(self._lengths)}", cid=root)
        self._starts = list(itertools.accumulate(self._lengths[:-1], initial=0))
        self.size = self.header.size
        if self._open[0] >= 0 and len(self._open[1]) != self._lengths[self._open[0]]:
            self._open = (-1, b"")  # read for the header before its length could be checked: checked when read

    @property
    def count(self) -> int:
        return len(self._leaves)

    def resolve(self, index: int) -> Resolved:
        """Piece ``index`` read through its chain of deltas, every block of it checked (safe from any thread)."""
        leaf = self._leaves[index]
        cid, sealed = leaf
        deltas: list[piece_delta.Delta] = []
        while True:
            try:
                block = unixfs.check_leaf(self.root, cid, self.store.get(cid), sealed)
            except NotFound:
                raise NotFound(f"{self.what}: piece {index} needs block {cid.text}, which is not stored here",
                               cid=cid.text) from None
            is_delta, plain = self.cipher.open_leaf(block)
            if not is_delta:
                break
            delta = piece_delta.parse(plain)
            if deltas and (delta.depth != deltas[-1].depth - 1 or delta.length != deltas[-1].length):
                raise IntegrityError(f"{self.what}: piece {index} has a chain of deltas that does not hold together",
                                     cid=self.root)
            deltas.append(delta)
            cid, sealed = ParsedCid(RAW, delta.base), delta.base_size
        if deltas and (deltas[-1].depth != 1 or len(plain) != deltas[-1].length):
            raise IntegrityError(f"{self.what}: piece {index} has a chain of deltas that does not end at a whole "
                                 f"piece of its length", cid=self.root)
        if self._lengths and len(plain) != self._lengths[index]:
            raise IntegrityError(f"{self.what}: piece {index} holds {len(plain)} bytes where its header makes "
                                 f"{self._lengths[index]}", cid=self.root)
        return Resolved(piece_delta.apply(plain, deltas), len(deltas), leaf, plain, (cid, sealed))

    def _piece(self, index: int) -> bytes | bytearray:
        if self._open[0] != index:
            self._open = (index, self.resolve(index).plain)
        return self._open[1]

    def _in_order(self) -> Callable[[int], bytes]:
        """``read(n)`` of the bytes from the first, piece after piece: how the header is read before the pieces'
        places are known."""
        index, buffer = 0, bytearray()

        def read(n: int) -> bytes:
            nonlocal index
            while len(buffer) < n and index < len(self._leaves):
                buffer.extend(self._piece(index))
                index += 1
            data = bytes(buffer[:n])
            del buffer[:n]
            return data

        return read

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
            buffer[at:at + take] = memoryview(piece)[offset:offset + take]  # a slice of bytes would be a copy
            at += take
            index += 1

    def span(self, start: int, stop: int) -> tuple[tuple[bytes, ...], int, int]:
        """What bytes ``start`` to ``stop`` are, without reading them: the leaves they lie in, from where in the
        first, and how many. Two payloads sealed under one key hold equal bytes where their spans are equal
        (equal leaves are equal ciphertexts, which open to equal pieces, a delta's through the leaves it names)."""
        first = bisect.bisect_right(self._starts, start) - 1
        last = bisect.bisect_right(self._starts, max(start, stop - 1)) - 1
        return tuple(cid.digest for cid, _ in self._leaves[first:last + 1]), start - self._starts[first], stop - start

    def read(self, start: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``start``, fewer only at the end."""
        out = bytearray(max(0, min(n, self.size - start)))
        self.readinto(start, memoryview(out))
        return bytes(out)

    def pieces(self) -> Iterator[bytes | bytearray]:
        """Every piece, opened, in order: the whole file, one piece at a time."""
        for index in range(len(self._leaves)):
            yield self._piece(index)


__all__ = ["CODEC", "PIECE", "Resolved", "Snapshot", "cut", "lengths", "write"]
