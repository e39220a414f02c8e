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
# A secure round masks in Z/2^r, for the smallest r that holds its sum: a masked update travels as r bits per
# value, packed, not 64. Masks drawn in Z/2^64 and cut to r bits are uniform there too, and cancel there as
# they do in Z/2^64.
#
# Packing: values go in groups of 64, and a group's 64 r-bit values fill exactly r 64-bit words, value k at bit
# k·r of the group (little-endian words, a value crossing a word boundary split across the two). Each of the
# 64 positions of a group is one vectorised shift over every group at once, so packing costs a few passes over
# the data whatever r is. The last group is padded with zeros, and the packed bytes cut to ceil(count·r / 8).

GROUP = 64  # values per group: r words of 64 bits


def ring_bits(bits: int, weight_bits: int) -> int:
    """Bits per value of the ring a round masks in, when each contribution's change is below ``2^bits`` (in
    fixed point) and the weights add up to ``2^weight_bits``: room for the weighted sum and its sign."""
    if not 0 <= bits <= 62 or not 0 <= weight_bits <= 32:
        raise InvalidInput(f"changes of {bits} bits weighted by {weight_bits} bits do not fit a ring of int64")
    return min(64, bits + weight_bits + 1)


def packed_size(count: int, ring: int) -> int:
    """Bytes of ``count`` values of ``ring`` bits packed."""
    return (count * ring + 7) // 8


def _check_ring(ring: int) -> None:
    if not 1 <= ring <= 64:
        raise InvalidInput(f"a ring has 1 to 64 bits per value, not {ring}")


def _placements(ring: int) -> Iterable[tuple[int, int, int]]:
    """For each position k of a group: k, the word its value starts in, and the bit it starts at (a value that
    starts within ``ring`` bits of the word's end runs over into the next word)."""
    for k in range(GROUP):
        word, shift = divmod(k * ring, 64)
        yield k, word, shift


def to_ring(values: np.ndarray, ring: int) -> bytes:
    """``values`` (int64, already masked) cut to ``ring`` bits each and packed: what is published."""
    if values.dtype != np.int64 or values.ndim != 1:
        raise InvalidInput("a flat int64 vector is cut to the ring")
    _check_ring(ring)
    groups = -(-values.size // GROUP)
    cut = np.zeros(groups * GROUP, dtype=np.uint64)
    cut[:values.size] = values.view(np.uint64)
    if ring < 64:
        cut &= np.uint64((1 << ring) - 1)
    by_position = cut.reshape(groups, GROUP).T.copy()  # each position's values contiguous
    words = np.zeros((ring, groups), dtype=np.uint64)
    for k, word, shift in _placements(ring):
        words[word] |= by_position[k] << np.uint64(shift)
        if shift + ring > 64:
            words[word + 1] |= by_position[k] >> np.uint64(64 - shift)
    return words.T.astype("<u8", copy=False).tobytes()[:packed_size(values.size, ring)]


def from_packed(data: bytes, ring: int, count: int) -> np.ndarray:
    """The ``count`` values of ``ring`` bits ``to_ring`` packed into ``data``, as uint64 below ``2^ring``;
    ``InvalidInput`` unless ``data`` is exactly their size."""
    _check_ring(ring)
    if len(data) != packed_size(count, ring):
        raise InvalidInput(f"{count} values of {ring} bits pack into {packed_size(count, ring)} bytes, "
                           f"not {len(data)}")
    groups = -(-count // GROUP)
    padded = np.zeros(groups * ring * 8, dtype=np.uint8)
    padded[:len(data)] = np.frombuffer(data, dtype=np.uint8)
    words = padded.view("<u8").reshape(groups, ring).T.copy()
    by_position = np.empty((GROUP, groups), dtype=np.uint64)
    for k, word, shift in _placements(ring):
        np.right_shift(words[word], np.uint64(shift), out=by_position[k])
        if shift + ring > 64:
            by_position[k] |= words[word + 1] << np.uint64(64 - shift)
    values = by_position.T.reshape(-1)[:count]
    if ring < 64:
        values &= np.uint64((1 << ring) - 1)
    return values


def ring_total(published: Iterable[bytes], ring: int, count: int) -> np.ndarray:
    """The sum, in Z/2^``ring``, of vectors of ``count`` values that ``to_ring`` packed, as uint64 (reduced by
    ``from_ring``)."""
    total = np.zeros(count, dtype=np.uint64)
    for data in published:
        np.add(total, from_packed(data, ring, count), out=total)
    return total


def from_ring(total: np.ndarray, ring: int, corrections: Iterable[np.ndarray] = ()) -> np.ndarray:
    """``total`` (uint64, a ``ring_total``) minus each of ``corrections`` (int64 masks), reduced to the ring
    of ``ring`` bits and read as signed: the plain sum, when it fits the ring."""
    _check_ring(ring)
    plain = total.copy()
    for correction in corrections:
        if correction.size != plain.size:
            raise InvalidInput("a correction must have as many values as the sum")
        np.subtract(plain, correction.view(np.uint64), out=plain)
    shift = np.uint64(64 - ring)
    return (plain << shift).view(np.int64) >> np.int64(shift)
