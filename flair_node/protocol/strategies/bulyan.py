"""Bulyan (El Mhamdi et al., ICML 2018) with Krum as the selection rule, as Flower's ``aggregate_bulyan``.

With n ≥ 4f + 3 inputs: Krum picks θ = n − 2f of them one at a time (each time among those not yet picked);
then, parameter by parameter, the β = θ − 2f picked values nearest their median are averaged. Weights are not
used (nor are they by Flower).

Determinism. The distances are computed once (``krum.pairwise_distances``, fixed summation order) and each
selection round ranks the remaining inputs on them, ties to the lower index. The β values nearest the median
form a contiguous run of the sorted column, found by dropping the end farther from the median, the upper one on
a tie (Flower's ``argpartition`` leaves ties unspecified); the median of an even θ, used only for that ranking,
is the float64 midpoint of the two middle values (``_kernels.closest_window``). The average of the β values is
Flair's fixed-point mean (``_order``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...core.errors import InvalidInput
from ...tensors.safetensors_io import Ranges, StateDict, ranges_of
from ._base import Strategy, require_int
from ._kernels import closest_window
from ._order import Columns, column_ranges, converted, merge_columns
from .krum import krum_ranking, pairwise_distances


def bulyan_select(distances: np.ndarray, n: int, byzantine: int) -> list[int]:
    """The θ = n − 2f inputs Krum picks one after another, in index order."""
    members = list(range(n))
    picked = []
    for _ in range(n - 2 * byzantine):
        best = krum_ranking(distances, members, byzantine)[0]
        picked.append(best)
        members.remove(best)
    return sorted(picked)


def nearest_mean_columns(cols: Columns, width: int) -> None:
    """Average, per column, the ``width`` values nearest the column's median."""
    if width == cols.count:
        cols.average([cols.row(i) for i in range(width)])
        return
    window = torch.empty((width, cols.ordered.shape[1]), dtype=cols.ordered.dtype)
    closest_window(cols.ordered.numpy(), window.numpy())
    cols.average([converted(window[j], cols.out.dtype) for j in range(width)])


@dataclass(frozen=True)
class Bulyan(Strategy):
    """Bulyan over Krum tolerating ``byzantine`` arbitrary inputs; needs n ≥ 4f + 3 inputs."""

    byzantine: int
    name = "bulyan"

    def __post_init__(self) -> None:
        require_int(self.name, "byzantine", self.byzantine, 0)

    def check_count(self, n: int) -> None:
        needed = 4 * self.byzantine + 3
        if n < needed:
            raise InvalidInput(f"bulyan with byzantine={self.byzantine} needs at least 4f + 3 = {needed} inputs, "
                               f"got {n}")

    def _aggregate(self, base: StateDict, inputs: list[StateDict], weights: list[int]) -> StateDict:
        picked, reduce = self._picked(base, inputs)
        return merge_columns(base, [inputs[i] for i in picked], reduce, indices=picked)

    def _by_ranges(self, base: Mapping[str, torch.Tensor], inputs: Sequence[Mapping[str, torch.Tensor]],
                   weights: list[int]) -> Callable[[str], Ranges]:
        picked, reduce = self._picked(base, inputs)
        return lambda name: column_ranges(name, ranges_of(base, name), [ranges_of(inputs[i], name) for i in picked],
                                          reduce, indices=picked)

    def _picked(self, base: Mapping[str, torch.Tensor], inputs: Sequence[Mapping[str, torch.Tensor]]
                ) -> tuple[list[int], Callable[[Columns], None]]:
        """The inputs Krum selects, one at a time, and the rule on a chunk of their columns."""
        picked = bulyan_select(pairwise_distances(base, inputs), len(inputs), self.byzantine)
        width = len(picked) - 2 * self.byzantine
        return picked, lambda cols: nearest_mean_columns(cols, width)
