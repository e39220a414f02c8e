"""The fused fixed-point merge kernel (numba): each input read once, exact integer-valued float64 arithmetic.

Per element: ``fb = rint(base·2^s)``, ``acc = Σ w_k·rint(x_k·2^s) − (Σ w_k)·fb``, ``q = rint(acc / 2^wb)`` (half to
even), ``out = (fb + q) / 2^s`` rounded to the output dtype. The caller guarantees every ``|rint(v·2^s)|`` is at
most ``2^52 / Σ|w_k|``; then every intermediate is an integer below 2^53, which float64 holds exactly, so this
is integer arithmetic computed on vector units and gives the same bytes as ``fixedpoint._int64_chunk`` (a test
checks it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange  # type: ignore[import-untyped]
from numba.typed import List  # type: ignore[import-untyped]

#: Elements per block: a block's accumulator stays in L1/L2 while every input streams past it.
BLOCK = 8192
#: Adding then subtracting 1.5·2^52 rounds a float64 below 2^51 to an integer, half to even, exactly as rint
#: does; unlike a call to rint it vectorizes.
_ROUND = 6755399441055744.0


# The loops live in small non-parallel functions: LLVM vectorizes them there, not inside a prange body.
@njit(nogil=True, cache=True, inline="never")  # type: ignore[untyped-decorator]
def _accumulate(acc: Any, x: Any, w: float, scale: float) -> None:  # pragma: no cover - compiled
    for i in range(acc.size):
        acc[i] += w * ((x[i] * scale + _ROUND) - _ROUND)


@njit(nogil=True, cache=True, inline="never")  # type: ignore[untyped-decorator]
def _finish(acc: Any, base: Any, out: Any, total: float, scale: float, shrink: float) -> None:  # pragma: no cover
    unscale = 1.0 / scale
    for i in range(acc.size):
        fb = (base[i] * scale + _ROUND) - _ROUND
        q = ((acc[i] - total * fb) * shrink + _ROUND) - _ROUND
        out[i] = (fb + q) * unscale


@njit(parallel=True, nogil=True, cache=True)  # type: ignore[untyped-decorator]
def _merge(base: Any, inputs: Any, weights: Any, total: float, scale: float, shrink: float,
           out: Any) -> None:  # pragma: no cover - compiled
    n = base.size
    for b in prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        acc = np.zeros(hi - lo, np.float64)
        for k in range(len(inputs)):
            _accumulate(acc, inputs[k][lo:hi], weights[k], scale)
        _finish(acc, base[lo:hi], out[lo:hi], total, scale, shrink)


def fused_merge(base: np.ndarray, inputs: list[np.ndarray], weights: list[int], scale_bits: int, weight_bits: int,
                out: np.ndarray) -> None:
    typed = List()
    for x in inputs:
        typed.append(x)
    _merge(base, typed, np.asarray(weights, dtype=np.float64), float(sum(weights)), float(1 << scale_bits),
           1.0 / (1 << weight_bits), out)
