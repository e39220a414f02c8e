"""Numba kernels behind the robust strategies, written so their results never depend on threads or chunking.

Every member re-derives a merge and compares bytes, so nothing here may depend on how work is split:

- ``sort_columns`` sorts each column (one parameter across the inputs) with a fixed sorting network of
  compare-exchange steps ``if b < a: swap``. The steps and their order are fixed by the number of inputs alone,
  so the output is a pure function of the column, whichever SIMD width or thread ran it. Equal values (−0.0
  and +0.0 included) keep their input order. torch.sort along the input dimension was measured 10-20x slower
  here (it sorts each tiny column with generic code), and torch.minimum/maximum may pick either of −0.0 and
  +0.0 depending on whether its vector or scalar loop ran, so a fixed network in numba is both the fast and
  the exact choice.
- ``closest_window`` picks, per column, the sorted values nearest the column's median (Bulyan's last step).
- ``add_pair_distances`` adds squared Euclidean distances between every pair of inputs into float64 totals.
  Sums are formed in a fixed order: eight lane accumulators per ``DIST_BLOCK`` elements (blocks start at
  multiples of ``DIST_BLOCK`` of the tensor, whatever the caller's chunking), combined in a fixed tree, then
  block after block in index order. No fastmath, so LLVM may not reassociate any of it.

All kernels count non-finite values as they read them (``v - v == 0`` fails only for NaN and ±inf; it always
holds for integers) so callers can refuse such inputs without another pass.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from numba import njit, prange

#: Columns sorted per step: the inputs' values for a block stay in L1 while the network runs over them.
BLOCK = 512
#: Elements per partial distance sum. Fixed: it defines the summation order, so it must never follow the chunk size.
DIST_BLOCK = 4096
_LANES = 8


@lru_cache(maxsize=64)
def sorting_network(n: int) -> np.ndarray:
    """Batcher's odd-even merge sort for ``n`` values, as an (m, 2) array of compare-exchange index pairs.

    Built for the next power of two and pruned: the missing inputs would be +inf at the top indices, where no
    comparator ever moves them, so every comparator touching them is a no-op and can be dropped.
    """
    size = 1
    while size < n:
        size *= 2
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


@njit(nogil=True, cache=True, inline="never")
def _load_columns(scratch: Any, slices: Any, lo: int, hi: int) -> int:  # pragma: no cover - compiled
    bad = 0
    for i in range(len(slices)):
        src = slices[i]
        row = scratch[i]
        for k in range(hi - lo):
            v = src[lo + k]
            bad += not (v - v == 0)
            row[k] = v
    return bad


@njit(nogil=True, cache=True, inline="never")
def _run_network(scratch: Any, pairs: Any) -> None:  # pragma: no cover - compiled
    width = scratch.shape[1]
    for c in range(pairs.shape[0]):
        a = scratch[pairs[c, 0]]
        b = scratch[pairs[c, 1]]
        for k in range(width):
            x = a[k]
            y = b[k]
            swap = y < x
            # Both stores unconditional: LLVM turns the selects into vector min/max-like blends.
            a[k] = y if swap else x
            b[k] = x if swap else y


@njit(parallel=True, nogil=True, cache=True)
def sort_columns(slices: Any, pairs: Any, out: Any) -> int:  # pragma: no cover - compiled
    """``out[:, k]`` = the values ``slices[i][k]`` in ascending order. Returns how many were NaN or infinite."""
    n, size = out.shape
    blocks = (size + BLOCK - 1) // BLOCK
    bad = np.zeros(blocks, np.int64)
    for b in prange(blocks):
        lo = b * BLOCK
        hi = min(size, lo + BLOCK)
        scratch = np.empty((n, hi - lo), out.dtype)
        bad[b] = _load_columns(scratch, slices, lo, hi)
        _run_network(scratch, pairs)
        for i in range(n):
            out[i, lo:hi] = scratch[i]
    return int(bad.sum())


@njit(parallel=True, nogil=True, cache=True)
def closest_window(ordered: Any, out: Any) -> None:  # pragma: no cover - compiled
    """``out[:, k]`` = the ``out.shape[0]`` values of the sorted column ``ordered[:, k]`` nearest its median.

    The median is the middle value, or for an even count the midpoint of the two middle values, formed in
    float64 (exact for float32 and smaller types): it only ranks values here, it is never part of the result.
    The nearest values of a sorted column are a contiguous run, found by dropping, one at a time, the end that
    lies farther from the median (distances in float64; on a tie the upper end goes).
    """
    rows, size = ordered.shape
    width = out.shape[0]
    blocks = (size + BLOCK - 1) // BLOCK
    for b in prange(blocks):
        for k in range(b * BLOCK, min(size, (b + 1) * BLOCK)):
            c = (np.float64(ordered[(rows - 1) // 2, k]) + np.float64(ordered[rows // 2, k])) * 0.5
            first = 0
            last = rows - 1
            for _ in range(rows - width):
                if abs(np.float64(ordered[first, k]) - c) > abs(np.float64(ordered[last, k]) - c):
                    first += 1
                else:
                    last -= 1
            for j in range(width):
                out[j, k] = ordered[first + j, k]


@njit(nogil=True, cache=True, inline="never")
def _squared_distance(a: Any, b: Any) -> float:  # pragma: no cover - compiled
    """Σ (a − b)² over rows whose length is a multiple of 8, in eight lanes combined in a fixed tree."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    for r in range(a.size // _LANES):
        k = r * _LANES
        d0 = a[k] - b[k]
        d1 = a[k + 1] - b[k + 1]
        d2 = a[k + 2] - b[k + 2]
        d3 = a[k + 3] - b[k + 3]
        d4 = a[k + 4] - b[k + 4]
        d5 = a[k + 5] - b[k + 5]
        d6 = a[k + 6] - b[k + 6]
        d7 = a[k + 7] - b[k + 7]
        s0 += d0 * d0
        s1 += d1 * d1
        s2 += d2 * d2
        s3 += d3 * d3
        s4 += d4 * d4
        s5 += d5 * d5
        s6 += d6 * d6
        s7 += d7 * d7
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(parallel=True, nogil=True, cache=True)
def add_pair_distances(slices: Any, totals: Any) -> int:  # pragma: no cover - compiled
    """Add Σ_k (x_i[k] − x_j[k])² to ``totals[p]`` for every pair i < j (p counts pairs in row order).

    ``slices`` must start at a multiple of ``DIST_BLOCK`` of their tensor, so the blocks, and with them the order
    of every addition, are the same however the tensor was cut. Returns how many values were NaN or infinite.
    """
    n = len(slices)
    size = slices[0].size
    blocks = (size + DIST_BLOCK - 1) // DIST_BLOCK
    pairs = n * (n - 1) // 2
    partial = np.zeros((blocks, pairs), np.float64)
    bad = np.zeros(blocks, np.int64)
    for b in prange(blocks):
        lo = b * DIST_BLOCK
        hi = min(size, lo + DIST_BLOCK)
        # Zero padding past ``hi`` adds exact zeros: the lanes stay tied to the element index.
        scratch = np.zeros((n, DIST_BLOCK), np.float64)
        count = 0
        for i in range(n):
            src = slices[i]
            row = scratch[i]
            for k in range(hi - lo):
                v = np.float64(src[lo + k])
                count += not (v - v == 0)
                row[k] = v
        bad[b] = count
        p = 0
        for i in range(n):
            for j in range(i + 1, n):
                partial[b, p] = _squared_distance(scratch[i], scratch[j])
                p += 1
    for b in range(blocks):
        for p in range(pairs):
            totals[p] += partial[b, p]
    return int(bad.sum())
