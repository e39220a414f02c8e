"""Adding KZG commitments: points of BN254's G1 (y² = x³ + 3 over the prime ``Q``), as EZKL writes them.

EZKL's commitment to a column of values is an affine map of the values: ``commit(u) + commit(v) =
commit(u + v) + commit(0)`` (measured: the zero column commits to a fixed point, not to the identity). So the
commitment to the sum of many committed columns follows from theirs alone (``commitment_of_sum``), which is how
a verifier learns the commitment of a total no one reveals.

The group law is the textbook affine one, written here rather than taken from ``py_ecc``, which would bring
``eth-utils``, ``eth-typing`` and ``eth-hash`` for these two functions. The operands come from the network, so
``point`` checks that each is on the curve before any arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...core.errors import IntegrityError

#: The prime field G1's coordinates live in (BN254's base field).
Q = 21888242871839275222246405745257275088696311157297823662689037894645226208583

Point = tuple[int, int] | None  # None is the identity


def point(text: str) -> Point:
    """The point a commitment names: 64 bytes in hex, x then y, big-endian. ``IntegrityError`` if it is not
    one of the curve."""
    if not isinstance(text, str) or len(text) != 128:
        raise IntegrityError("a commitment is 64 bytes in hex")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise IntegrityError("a commitment is 64 bytes in hex") from None
    x, y = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    if x == y == 0:
        return None
    if x >= Q or y >= Q or (y * y - x * x * x - 3) % Q:
        raise IntegrityError("a commitment is not a point of the curve")
    return x, y


def text(p: Point) -> str:
    """``p`` written as ``point`` reads it."""
    x, y = p if p is not None else (0, 0)
    return (x.to_bytes(32, "big") + y.to_bytes(32, "big")).hex()


def add(p: Point, r: Point) -> Point:
    if p is None:
        return r
    if r is None:
        return p
    (x1, y1), (x2, y2) = p, r
    if x1 == x2:
        if (y1 + y2) % Q == 0:
            return None
        slope = 3 * x1 * x1 * pow(2 * y1, -1, Q) % Q
    else:
        slope = (y2 - y1) * pow(x2 - x1, -1, Q) % Q
    x3 = (slope * slope - x1 - x2) % Q
    return x3, (slope * (x1 - x3) - y1) % Q


def negate(p: Point) -> Point:
    return None if p is None else (p[0], (-p[1]) % Q)


def commitment_of_sum(commitments: Sequence[str], zero: str) -> str:
    """The commitment of the sum of the columns ``commitments`` commit to, given ``zero``, the commitment of a
    zero column: their sum minus ``len − 1`` times ``zero``."""
    if not commitments:
        raise IntegrityError("no commitments to add")
    total, minus_zero = point(commitments[0]), negate(point(zero))
    for commitment in commitments[1:]:
        total = add(add(total, point(commitment)), minus_zero)
    return text(total)
