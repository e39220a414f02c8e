"""Coordinate-wise trimmed mean of the updates, as Flower's ``aggregate_trimmed_avg``; weights are not used.

For n inputs, ``cut = int(fraction · n)`` values are dropped at each end of every parameter's sorted values and
the remaining ``n − 2·cut`` are averaged with equal weights, in Flair's fixed point (see ``_order``).
``int(fraction · n)`` is the same float expression Flower (and scipy's ``trim_mean``) evaluate, so both cut
the same number of values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ...tensors.safetensors_io import Ranges, StateDict, ranges_of
from ._base import Strategy, require_fraction
from ._order import Columns, column_ranges, merge_columns


def trim_count(fraction: float, n: int) -> int:
    """How many values are cut at each end."""
    return int(fraction * n)


@dataclass(frozen=True)
class TrimmedMean(Strategy):
    """Mean of each parameter's values after cutting ``fraction`` of them at each end (Flower's proportiontocut,
    FedTrimmedAvg's beta). ``fraction`` is in [0, 0.5): 0 is the unweighted mean."""

    fraction: float = 0.2
    name = "trimmed_mean"

    def __post_init__(self) -> None:
        if isinstance(self.fraction, int) and not isinstance(self.fraction, bool):
            object.__setattr__(self, "fraction", float(self.fraction))
        require_fraction(self.name, "fraction", self.fraction, 0.5)

    def _aggregate(self, base: StateDict, inputs: list[StateDict], weights: list[int]) -> StateDict:
        return merge_columns(base, inputs, self._reduce(len(inputs)))

    def _by_ranges(self, base: Mapping[str, torch.Tensor], inputs: Sequence[Mapping[str, torch.Tensor]],
                   weights: list[int]) -> Callable[[str], Ranges]:
        reduce = self._reduce(len(inputs))
        return lambda name: column_ranges(name, ranges_of(base, name), [ranges_of(x, name) for x in inputs], reduce)

    def _reduce(self, n: int) -> Callable[[Columns], None]:
        """The rule on one chunk of columns of ``n`` inputs."""
        cut = trim_count(self.fraction, n)

        def reduce(cols: Columns) -> None:
            cols.average([cols.row(i) for i in range(cut, cols.count - cut)])

        return reduce
