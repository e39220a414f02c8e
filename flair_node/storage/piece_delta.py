"""Piece deltas: a piece that changed in a few places, stored as what changed against the piece it came from
(``storage.pieces``), so a commit that changes k % of a model's values, scattered over all of it, stores about k %
of the model rather than every piece it touched.

A delta is the XOR of the new piece and its base taken as words of ``word`` bytes (1, 2, 4 or 8): the gaps between
the words that differ and those words, each compressed with Zstandard (level 1). The writer takes the width that
makes the delta smallest, which is the width of the changed values wherever the piece is aligned with its tensor.
XOR deltas commute, so a piece at the end of a chain is its root (a whole piece) with every delta of the chain
applied in any order: reading one costs one whole piece and the small deltas over it.

A delta's plaintext (before ``crypto.PieceCipher`` seals it as a delta), little-endian::

    depth u8 | word u8 | base digest 32 | base sealed size u32 | length u32 | count u32 | gaps u32 | values u32
    | gaps frame | values frame | zero padding

``depth`` is how many deltas lie between the piece and its root, this one included (1 for a delta of a whole
piece, at most ``MAX_DEPTH``); the base is a sealed leaf named by the SHA-256 digest of its block and that block's
size; ``length`` is the piece's length (the base's too); ``count`` words differ; the two frames are ``gaps`` and
``values`` bytes long and decompress to exactly ``4 * count`` and ``word * count`` bytes. The padding makes every
sealed delta at least ``unixfs.MIN_LEAF`` bytes, what ``unixfs.Bounds`` allows a leaf. Everything is checked before
it is used: a frame must declare its content size, and that size must be the one expected, before it is inflated.

Why not compress the XOR as it is: the measured share of a float32 piece with 2 % of its values changed that each
way stores, against the 2 % changed (``tests/unit/test_piece_delta.py`` checks the bound): Zstandard over the XOR
1.37x, zlib level 1 over it 1.76x, gaps and words as here 1.10x, which keeps a commit of k % of the values under
k % of the model plus 1 % for k up to about 10.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

import numpy as np
import zstandard

from ..core.errors import IntegrityError
from . import unixfs

#: The longest chain of deltas between a piece and the whole piece it comes from.
MAX_DEPTH = 8
#: A delta is stored only if its plaintext is at most this share of the piece; else the piece is stored whole.
MAX_SHARE = 0.5
WORDS = (1, 2, 4, 8)
HEADER = struct.Struct("<BB32sIIIII")
_UINT = {w: np.dtype(f"<u{w}") for w in WORDS}
_LOCAL = threading.local()  # a compressor is not safe to share between threads (pieces are sealed on several)


def _compress(data: bytes) -> bytes:
    compressor = getattr(_LOCAL, "compressor", None)
    if compressor is None:
        compressor = _LOCAL.compressor = zstandard.ZstdCompressor(level=1, write_content_size=True)
    out: bytes = compressor.compress(data)
    return out


@dataclass(frozen=True)
class Delta:
    """A parsed delta: ``positions`` (int64, increasing) and ``values`` (of ``word`` bytes) of the words that
    differ from its base, which is the leaf ``base`` (digest) of ``base_size`` sealed bytes."""

    depth: int
    word: int
    base: bytes
    base_size: int
    length: int
    positions: np.ndarray
    values: np.ndarray


def encode(piece: bytes | memoryview, base: bytes | bytearray, *, depth: int, base_digest: bytes, base_size: int,
           min_plaintext: int = 0) -> bytes | None:
    """The delta taking ``base`` to ``piece`` (same length, different), padded to ``min_plaintext`` bytes; None if
    it would be more than ``MAX_SHARE`` of the piece."""
    length = len(piece)
    if len(base) != length or not 1 <= depth <= MAX_DEPTH:
        raise ValueError("a delta joins two pieces of one length, at a depth of 1 to MAX_DEPTH")
    padded = -(-length // 8) * 8
    xor = np.zeros(padded, np.uint8)
    np.bitwise_xor(np.frombuffer(piece, np.uint8), np.frombuffer(base, np.uint8), out=xor[:length])
    if np.count_nonzero(xor) > MAX_SHARE * length:  # a word of any width holds at most its bytes' changes
        return None
    # The width whose delta would be smallest: each differing word costs its bytes and about one of gap.
    word = min(WORDS, key=lambda w: int(np.count_nonzero(xor.view(_UINT[w]))) * (w + 1))
    words = xor.view(_UINT[word])
    positions = np.flatnonzero(words)
    if positions.size * word > MAX_SHARE * length:
        return None
    gaps = np.diff(positions, prepend=-1) - 1
    gap_frame = _compress(gaps.astype("<u4").tobytes())
    value_frame = _compress(words[positions].tobytes())
    out = HEADER.pack(depth, word, base_digest, base_size, length, positions.size, len(gap_frame),
                      len(value_frame)) + gap_frame + value_frame
    if len(out) > MAX_SHARE * length:
        return None
    return out + bytes(max(0, min_plaintext - len(out)))


def parse(data: bytes) -> Delta:
    """A delta's plaintext, checked (see the module docstring); ``IntegrityError`` if it is not one."""
    if len(data) < HEADER.size:
        raise IntegrityError(f"a piece delta of {len(data)} bytes is shorter than its header")
    depth, word, base, base_size, length, count, gap_bytes, value_bytes = HEADER.unpack_from(data)
    if not 1 <= depth <= MAX_DEPTH or word not in WORDS:
        raise IntegrityError(f"a piece delta has depth {depth} (1 to {MAX_DEPTH}) or word {word} (one of {WORDS})")
    words = -(-length // word)
    if count > words or length > unixfs.MAX_BLOCK or base_size > unixfs.MAX_BLOCK:
        raise IntegrityError(f"a piece delta changes {count} words of a piece of {length} bytes")
    end = HEADER.size + gap_bytes + value_bytes
    if end > len(data) or any(data[end:]):
        raise IntegrityError("a piece delta's frames do not fit it, or its padding is not zeros")
    gaps = np.frombuffer(_inflate(data[HEADER.size:HEADER.size + gap_bytes], 4 * count), "<u4")
    values = np.frombuffer(_inflate(data[HEADER.size + gap_bytes:end], word * count), _UINT[word])
    positions = np.cumsum(gaps.astype(np.int64) + 1) - 1
    if count and positions[-1] >= words:
        raise IntegrityError(f"a piece delta changes word {positions[-1]} of a piece of {words} words")
    return Delta(depth, word, base, base_size, length, positions, values)


def _inflate(frame: bytes, size: int) -> bytes:
    """A Zstandard frame's content, which must declare and hold exactly ``size`` bytes (checked before a byte of it
    is inflated, so a frame cannot claim more memory than its delta is worth)."""
    try:
        declared = zstandard.frame_content_size(frame)
        if declared < 0:
            raise IntegrityError("a piece delta's frame does not declare its size")
        if declared != size:
            raise IntegrityError(f"a piece delta's frame declares {declared} bytes where {size} are expected")
        out = zstandard.ZstdDecompressor().decompress(frame, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"a piece delta's frame is not Zstandard data: {exc}") from None
    if len(out) != size:
        raise IntegrityError(f"a piece delta's frame holds {len(out)} bytes where {size} are expected")
    return out


def apply(root: bytes, deltas: list[Delta]) -> bytes | bytearray:
    """``root`` (a whole piece) with ``deltas`` applied, each of its length (checked by the caller): one copy of it."""
    if not deltas:
        return root
    length = len(root)
    out = bytearray(root)
    out.extend(bytes(-length % 8))  # a last word may reach past the piece
    _xor(np.frombuffer(out, np.uint8), deltas)
    del out[length:]
    return out


def _xor(data: np.ndarray, deltas: list[Delta]) -> None:
    for delta in deltas:
        data.view(_UINT[delta.word])[delta.positions] ^= delta.values


__all__ = ["MAX_DEPTH", "MAX_SHARE", "Delta", "apply", "encode", "parse"]
