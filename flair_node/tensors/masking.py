"""Masks over Flair's int64 fixed-point ring, for secure aggregation (the key material is ``core.secagg``).

An update in Flair's exact merge arithmetic is a vector of int64 (``tensors.fixedpoint``). A mask is a vector of
the same length drawn from a 32-byte seed (``core.secagg.expand``: AES-256-CTR), read as int64; masking adds it
with wraparound, i.e. in the ring Z/2^64. A contributor's masked update is

    y = x + PRG(self seed) + sum over neighbours j of sign(i, j) * PRG(pair seed i,j)       (mod 2^64)

and since each pair mask is added by one side and subtracted by the other, the sum of all masked updates minus
the contributors' self masks is exactly the sum of the updates, bit for bit, whenever that sum fits in int64 (the
merge's range checks see to it). A masked update on its own is uniformly distributed: it says nothing of ``x``.

If a contributor masked and then dropped out, its neighbours' masked updates still hold their pair masks with it;
``pair_correction`` rebuilds those from the seeds the survivors recover and the sum is freed of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from ..core.errors import InvalidInput
from ..core.secagg import MAX_STREAM, expand, sign_of

MAX_VALUES = MAX_STREAM // 8  # int64 values of one mask


def prg(seed: bytes, count: int) -> np.ndarray:
    """``count`` int64 drawn from ``seed``: its expansion (``secagg.expand``) read as little-endian int64."""
    if not 0 <= count <= MAX_VALUES:
        raise InvalidInput(f"a mask has from 0 to {MAX_VALUES} values, not {count}")
    return np.frombuffer(expand(seed, 8 * count), dtype="<i8")


def _add(total: np.ndarray, other: np.ndarray, sign: int = 1) -> None:
    """``total += sign * other`` in Z/2^64, in place (unsigned views: numpy's int64 overflow is a wraparound
    there, with no warning)."""
    out = total.view(np.uint64)
    if sign > 0:
        np.add(out, other.view(np.uint64), out=out)
    else:
        np.subtract(out, other.view(np.uint64), out=out)


def mask(values: np.ndarray, self_seed: bytes, mine: bytes, pair_seeds: Mapping[bytes, bytes]) -> np.ndarray:
    """``values`` (int64) masked by the self seed and the pair seeds shared with each neighbour (keyed by the
    neighbour's public key; ``mine`` is this contributor's), as a new int64 array."""
    if values.dtype != np.int64 or values.ndim != 1:
        raise InvalidInput("only a flat int64 vector can be masked")
    masked = values.copy()
    _add(masked, prg(self_seed, values.size))
    for theirs, seed in pair_seeds.items():
        _add(masked, prg(seed, values.size), sign_of(mine, theirs))
    return masked


def ring_sum(vectors: Iterable[np.ndarray]) -> np.ndarray:
    """The sum of int64 vectors of one length in Z/2^64."""
    total: np.ndarray | None = None
    for vector in vectors:
        if vector.dtype != np.int64 or vector.ndim != 1:
            raise InvalidInput("masked updates are flat int64 vectors")
        if total is None:
            total = vector.copy()
        elif vector.size != total.size:
            raise InvalidInput(f"masked updates of {total.size} and {vector.size} values cannot be summed")
        else:
            _add(total, vector)
    if total is None:
        raise InvalidInput("no masked update to sum")
    return total


def unmask(masked_sum: np.ndarray, self_seeds: Iterable[bytes], corrections: Iterable[np.ndarray] = ()) -> np.ndarray:
    """The plain sum: ``masked_sum`` minus the survivors' self masks and minus each ``pair_correction`` of a
    contributor who dropped out after its neighbours masked."""
    plain = masked_sum.copy()
    for seed in self_seeds:
        _add(plain, prg(seed, plain.size), -1)
    for correction in corrections:
        if correction.size != plain.size:
            raise InvalidInput("a correction must have as many values as the sum")
        _add(plain, correction, -1)
    return plain


def pair_correction(dropped: bytes, survivors_seeds: Mapping[bytes, bytes], count: int) -> np.ndarray:
    """What the survivors' masked updates still hold of their pair masks with ``dropped`` (its public key):
    ``survivors_seeds`` maps each surviving neighbour's public key to the seed it shared with ``dropped``
    (recomputed from ``dropped``'s recovered ephemeral secret)."""
    total = np.zeros(count, dtype=np.int64)
    for survivor, seed in survivors_seeds.items():
        _add(total, prg(seed, count), sign_of(survivor, dropped))
    return total


# -- the round's ring ------------------------------------------------------------------------------------
# A secure round masks in Z/2^(8w), the smallest whole number of bytes that holds its sum: a masked update
# travels as w bytes per value, not 8. Masks drawn in Z/2^64 and cut to w bytes are uniform there too, and
# cancel there as they do in Z/2^64.


def ring_width(bits: int, weight_bits: int) -> int:
    """Bytes per value of the ring a round masks in, when each contribution's change is below ``2^bits`` (in
    fixed point) and the weights add up to ``2^weight_bits``: room for the weighted sum and its sign."""
    if not 0 <= bits <= 62 or not 0 <= weight_bits <= 32:
        raise InvalidInput(f"changes of {bits} bits weighted by {weight_bits} bits do not fit a ring of int64")
    return min(8, (bits + weight_bits + 1 + 7) // 8)


def to_ring(values: np.ndarray, width: int) -> bytes:
    """``values`` (int64, already masked) cut to ``width`` bytes each, little-endian: what is published."""
    if values.dtype != np.int64 or values.ndim != 1 or not 1 <= width <= 8:
        raise InvalidInput("a flat int64 vector is cut to 1 to 8 bytes per value")
    return values.astype("<i8", copy=False).view(np.uint8).reshape(-1, 8)[:, :width].tobytes()


def ring_total(published: Iterable[bytes], width: int, count: int) -> np.ndarray:
    """The sum, in Z/2^(8 ``width``), of vectors of ``count`` values that ``to_ring`` cut, as uint64."""
    total = np.zeros(count, dtype=np.uint64)
    wide = np.zeros((count, 8), dtype=np.uint8)
    for data in published:
        if len(data) != width * count:
            raise InvalidInput(f"a masked update of {count} values in a ring of {width} bytes is "
                               f"{width * count} bytes, not {len(data)}")
        wide[:, :width] = np.frombuffer(data, dtype=np.uint8).reshape(count, width)
        np.add(total, wide.view("<u8").reshape(count), out=total)
    return total


def from_ring(total: np.ndarray, width: int, corrections: Iterable[np.ndarray] = ()) -> np.ndarray:
    """``total`` (uint64, a ``ring_total``) minus each of ``corrections`` (int64 masks), reduced to the ring
    of ``width`` bytes and read as signed: the plain sum, when it fits the ring."""
    plain = total.copy()
    for correction in corrections:
        if correction.size != plain.size:
            raise InvalidInput("a correction must have as many values as the sum")
        np.subtract(plain, correction.view(np.uint64), out=plain)
    shift = np.uint64(64 - 8 * width)
    return (plain << shift).view(np.int64) >> np.int64(shift)
