"""The default rule: Flair's exact fixed-point weighted mean of the updates (``fixedpoint.combine``).

``base + Σ w_i (x_i − base) / 2^WEIGHT_BITS`` with the caller's weights (examples × staleness): FedAvg computed
in int64 fixed point, the same bytes on every machine, and the arithmetic the merge proofs check.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...tensors.fixedpoint import combine
from ...tensors.safetensors_io import StateDict
from ._base import Strategy


@dataclass(frozen=True)
class Mean(Strategy):
    """Weighted mean of the updates. Not robust: one input scaled up moves the result as far as it likes."""

    name = "mean"

    def _aggregate(self, base: StateDict, inputs: list[StateDict], weights: list[int]) -> StateDict:
        return combine(base, inputs, weights)
