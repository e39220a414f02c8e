"""Krum and Multi-Krum (Blanchard et al., NeurIPS 2017), as Flower's ``aggregate_krum``.

With n inputs of which up to f may be Byzantine, an input's score is the sum of its squared Euclidean distances
to its ``n − f − 2`` nearest other inputs (at least one). Krum returns the input with the lowest score, bit for
bit (tensors it left unchanged are the base's own); Multi-Krum (``keep`` > 1) returns the weighted mean of the
``keep`` lowest-scoring inputs, computed by ``fixedpoint.combine`` with their weights renormalised to
2^WEIGHT_BITS (Flower weights them by examples too).

Determinism. Distances are float64 sums formed in a fixed order (``_kernels.add_pair_distances``: fixed blocks
and lanes, tensors in name order), so they are the same bits on every machine and for any chunk size; each
score adds a node's sorted distances left to right; ties between scores go to the lower input index.

Distances cover floating-point tensors only: integer and bool tensors (batch counters, masks) have scales
unrelated to the weights' and would swamp them. They still follow the chosen inputs into the result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numba.typed import List

from ...core.errors import InvalidInput, MergeError
from ...tensors.fixedpoint import combine_tensor, combined, normalize_weights, same_bits
from ...tensors.safetensors_io import TORCH_DTYPES, Ranges, StateDict, ranges_of, spec_of
from . import _base
from ._base import Strategy, require_int
from ._kernels import DIST_BLOCK, add_pair_distances

_FLOATS = ("F64", "F32", "F16", "BF16")


def pairwise_distances(base: Mapping[str, torch.Tensor], inputs: Sequence[Mapping[str, torch.Tensor]]
                       ) -> np.ndarray:
    """The (n, n) float64 matrix of squared Euclidean distances between the inputs' floating-point tensors."""
    n = len(inputs)
    totals = np.zeros(n * (n - 1) // 2, dtype=np.float64)
    # A whole number of distance blocks per step, so the summation order never depends on the chunk size.
    step = DIST_BLOCK * max(1, _base.chunk_size() // DIST_BLOCK)
    for name in sorted(base):
        spec = spec_of(base, name)
        if spec is None or spec.dtype not in _FLOATS or n < 2:
            continue
        # each input read by ranges (a file's, or computed for that range), a step at a time
        width = step * TORCH_DTYPES[spec.dtype].itemsize
        for slices in zip(*(ranges_of(state, name).values(width) for state in inputs), strict=True):
            typed = List()
            for x in slices:
                typed.append((x.float() if x.dtype in (torch.float16, torch.bfloat16) else x).numpy())
            if add_pair_distances(typed, totals):
                raise _base.non_finite_error(name, slices, range(n))
    distances = np.zeros((n, n), dtype=np.float64)
    rows, cols = np.triu_indices(n, k=1)  # row-major i < j: the order add_pair_distances fills ``totals`` in
    distances[rows, cols] = totals
    distances[cols, rows] = totals
    if not np.isfinite(distances).all():
        raise MergeError("squared distances between the inputs overflow float64: their values are too large to "
                         "compare")
    return distances


def krum_scores(distances: np.ndarray, members: Sequence[int], byzantine: int) -> dict[int, float]:
    """Each member's Krum score among ``members``: its ``r − f − 2`` (at least 1) smallest distances, summed."""
    closest = min(len(members) - 1, max(1, len(members) - byzantine - 2))
    scores = {}
    for i in members:
        nearest = sorted(float(distances[i, j]) for j in members if j != i)[:closest]
        total = 0.0
        for d in nearest:  # left to right, smallest first: a fixed order
            total += d
        scores[i] = total
    return scores


def krum_ranking(distances: np.ndarray, members: Sequence[int], byzantine: int) -> list[int]:
    """``members`` from the lowest Krum score to the highest; ties go to the lower index."""
    scores = krum_scores(distances, members, byzantine)
    return sorted(members, key=lambda i: (scores[i], i))


@dataclass(frozen=True)
class Krum(Strategy):
    """Krum (``keep`` = 1) or Multi-Krum tolerating ``byzantine`` arbitrary inputs; needs n ≥ 2f + 3 inputs and
    keeps at most n − f."""

    byzantine: int
    keep: int = 1
    name = "krum"

    def __post_init__(self) -> None:
        require_int(self.name, "byzantine", self.byzantine, 0)
        require_int(self.name, "keep", self.keep, 1)

    def check_count(self, n: int) -> None:
        needed = 2 * self.byzantine + 3
        if n < needed:
            raise InvalidInput(f"krum with byzantine={self.byzantine} needs at least 2f + 3 = {needed} inputs, got {n}")
        if self.keep > n - self.byzantine:
            raise InvalidInput(f"krum cannot keep {self.keep} of {n} inputs when {self.byzantine} may be Byzantine: "
                               f"keep at most n - f = {n - self.byzantine}")

    def _aggregate(self, base: StateDict, inputs: list[StateDict], weights: list[int]) -> StateDict:
        kept, shares = self._kept(base, inputs, weights)
        if self.keep == 1:  # the chosen input's tensors, the base's own where they are equal
            best = inputs[kept[0]]
            return {name: b if same_bits(best[name], b) else best[name] for name, b in base.items()}
        return {name: combine_tensor(name, b, [inputs[i][name] for i in kept], shares) for name, b in base.items()}

    def _by_ranges(self, base: Mapping[str, torch.Tensor], inputs: Sequence[Mapping[str, torch.Tensor]],
                   weights: list[int]) -> Callable[[str], Ranges]:
        kept, shares = self._kept(base, inputs, weights)
        if self.keep == 1:  # the chosen input's tensors (the base's where equal: the same bytes)
            return lambda name: ranges_of(inputs[kept[0]], name)
        return lambda name: combined(name, ranges_of(base, name), [ranges_of(inputs[i], name) for i in kept], shares)

    def _kept(self, base: Mapping[str, torch.Tensor], inputs: Sequence[Mapping[str, torch.Tensor]],
              weights: list[int]) -> tuple[list[int], list[int]]:
        """The inputs kept, in index order (the lowest-scoring ``keep``), and their weights renormalised."""
        ranking = krum_ranking(pairwise_distances(base, inputs), range(len(inputs)), self.byzantine)
        kept = sorted(ranking[: self.keep])
        return kept, normalize_weights([weights[i] for i in kept])
