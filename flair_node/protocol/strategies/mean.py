"""The default rule: Flair's exact fixed-point weighted mean of the updates (``fixedpoint.combine``).

``base + Σ w_i (x_i − base) / 2^WEIGHT_BITS`` with the caller's weights (examples × staleness): FedAvg computed
in int64 fixed point, the same bytes on every machine, and the arithmetic the merge proofs check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ...tensors.fixedpoint import combine, combined
from ...tensors.safetensors_io import Ranges, StateDict, ranges_of
from ._base import Strategy


@dataclass(frozen=True)
class Mean(Strategy):
    """Weighted mean of the updates. Not robust: one input scaled up moves the result as far as it likes."""

    name = "mean"

    def _aggregate(self, base: StateDict, inputs: list[StateDict], weights: list[int]) -> StateDict:
        return combine(base, inputs, weights)

    def _by_ranges(self, base: Mapping[str, torch.Tensor], inputs: Sequence[Mapping[str, torch.Tensor]],
                   weights: list[int]) -> Callable[[str], Ranges]:
        return lambda name: combined(name, ranges_of(base, name), [ranges_of(x, name) for x in inputs], weights)
