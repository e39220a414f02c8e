"""Coordinate-wise median of the updates, as Flower's ``aggregate_median``; weights are not used.

Each parameter takes the median of the inputs' values: with an odd count the middle value itself (bit for bit:
sorting the states orders the updates the same way, so that is ``base`` plus the median update, without a
rounding step), with an even count the mean of the two middle values, computed in Flair's fixed point (see
``_order``). Up to half the inputs minus one can be arbitrary without moving a coordinate outside the range of
the honest values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ...tensors.safetensors_io import Ranges, StateDict, ranges_of
from ._base import Strategy
from ._order import Columns, column_ranges, merge_columns


def median_columns(cols: Columns) -> None:
    n = cols.count
    if n % 2:
        cols.take(n // 2)
    else:
        cols.average([cols.row(n // 2 - 1), cols.row(n // 2)])


@dataclass(frozen=True)
class Median(Strategy):
    """Coordinate-wise median (even count: mean of the two middle values)."""

    name = "median"

    def _aggregate(self, base: StateDict, inputs: list[StateDict], weights: list[int]) -> StateDict:
        return merge_columns(base, inputs, median_columns)

    def _by_ranges(self, base: Mapping[str, torch.Tensor], inputs: Sequence[Mapping[str, torch.Tensor]],
                   weights: list[int]) -> Callable[[str], Ranges]:
        return lambda name: column_ranges(name, ranges_of(base, name), [ranges_of(x, name) for x in inputs],
                                          median_columns)
