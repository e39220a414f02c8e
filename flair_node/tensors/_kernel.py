"""The fused fixed-point merge kernel (numba): each input read once, exact integer-valued float64 arithmetic.

Per element: ``fb = rint(base·2^s)``, ``acc = Σ w_k·rint(x_k·2^s) − (Σ w_k)·fb``, ``q = rint(acc / 2^wb)`` (half to
even), ``out = (fb + q) / 2^s`` rounded to the output dtype. While every ``|rint(v·2^s)|`` is at most
``2^52 / (Σ|w_k| + |Σw_k|)`` every intermediate is an integer below 2^53, which float64 holds exactly, so this is
integer arithmetic computed on vector units and gives the same bytes as ``fixedpoint._int64_chunk`` (a test
checks it). The kernel counts values outside that range (NaN included) as it goes; the caller falls back to
the int64 path when there are any.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange
from numba.typed import List

#: Elements per block: a block's accumulator stays in L1/L2 while every input streams past it.
BLOCK = 8192
#: Adding then subtracting 1.5·2^52 rounds a float64 below 2^51 to an integer, half to even, exactly as rint
#: does; unlike a call to rint it vectorizes.
_ROUND = 6755399441055744.0


# The loops live in small non-parallel functions: LLVM vectorizes them there, not inside a prange body.
@njit(nogil=True, cache=True, inline="never")
def _accumulate(acc: Any, x: Any, w: float, scale: float, bound: float) -> int:  # pragma: no cover - compiled
    """acc += w·rint(x·scale); returns how many values were beyond ``bound`` or NaN (then nothing is exact)."""
    outside = 0
    for i in range(acc.size):
        v = (x[i] * scale + _ROUND) - _ROUND
        outside += not abs(v) <= bound
        acc[i] += w * v
    return outside


@njit(nogil=True, cache=True, inline="never")
def _finish(acc: Any, base: Any, out: Any, scale: float, shrink: float) -> None:  # pragma: no cover - compiled
    unscale = 1.0 / scale
    for i in range(acc.size):
        q = (acc[i] * shrink + _ROUND) - _ROUND
        out[i] = ((base[i] * scale + _ROUND) - _ROUND + q) * unscale


@njit(parallel=True, nogil=True, cache=True)
def _merge(base: Any, inputs: Any, weights: Any, total: float, scale: float, shrink: float, bound: float,
           out: Any) -> int:  # pragma: no cover - compiled
    n = base.size
    blocks = (n + BLOCK - 1) // BLOCK
    outside = np.zeros(blocks, np.int64)
    for b in prange(blocks):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        acc = np.zeros(hi - lo, np.float64)
        count = _accumulate(acc, base[lo:hi], -total, scale, bound)
        for k in range(len(inputs)):
            count += _accumulate(acc, inputs[k][lo:hi], weights[k], scale, bound)
        outside[b] = count
        _finish(acc, base[lo:hi], out[lo:hi], scale, shrink)
    return int(outside.sum())


def fused_merge(base: np.ndarray, inputs: list[np.ndarray], weights: list[int], scale_bits: int, weight_bits: int,
                out: np.ndarray) -> bool:
    """Merge into ``out``; False (``out`` then unusable) if a value was NaN, infinite or too large to be exact."""
    typed = List()
    for x in inputs:
        typed.append(x)
    bound = float((1 << 52) // max(1, sum(abs(w) for w in weights) + abs(sum(weights))))
    outside = _merge(base, typed, np.asarray(weights, dtype=np.float64), float(sum(weights)), float(1 << scale_bits),
                     1.0 / (1 << weight_bits), bound, out)
    return int(outside) == 0
