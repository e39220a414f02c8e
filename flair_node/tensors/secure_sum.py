"""The exact merge arithmetic of ``tensors.fixedpoint``, split so that contributions can be masked in between.

A plain merge computes ``base + Σ w_i (x_i − base) / 2^weight_bits`` tensor by tensor. Secure aggregation needs the
sum without the terms, so the same arithmetic is cut in two:

- each contributor computes its ``term``: ``w_i · (fixed(x_i) − fixed(base))`` for every tensor, by name (so
  every node lays it out the same, whatever order its copy of the base holds the tensors in), flattened into
  one int64 vector -- what it masks (``tensors.masking``) and publishes;
- whoever holds the (unmasked) sum of the terms and the total weight ``W`` of the contributions in it computes
  ``merge_sum``: ``base + round_half_even(sum / W)``, tensor by tensor.

When every weighted contribution arrives, ``W`` is ``2^weight_bits`` and the result is bit for bit
``fixedpoint.combine(base, inputs, weights, shortcuts=False)``: the same integers, divided by the same power of two
with the same rounding. When some drop out after masking, ``W`` is the survivors' weight, so the result is the
survivors' weighted mean, still exact and the same on every machine.

What needs individual values cannot be computed from a sum, so it is refused here: bool tensors (a plain merge
takes the heaviest changed input's) and the plain merge's shortcuts (an input that is the only change, taken bit
for bit). A tensor whose summed change is exactly zero keeps the base's bits, as an unchanged tensor does in a
plain merge.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.errors import InvalidInput, MergeError
from .fixedpoint import ACC_LIMIT, DEFAULT_SCALE_BITS, WEIGHT_BITS, check_inputs, to_fixed_within
from .safetensors_io import StateDict


def term_size(base: StateDict) -> int:
    """How many int64 values a term of ``base``'s layout holds."""
    return sum(t.numel() for t in base.values())


def term(base: StateDict, state: StateDict, weight: int, *, scale_bits: int = DEFAULT_SCALE_BITS,
         weight_bits: int = WEIGHT_BITS) -> np.ndarray:
    """``weight · (fixed(state) − fixed(base))``, every tensor in the order of their names, as one flat int64
    vector.

    Values are bounded as a plain merge bounds them when the weights of all inputs sum to ``2^weight_bits``, so the
    sum of every contribution's term fits in int64 (``MergeError`` otherwise, naming the tensor).
    """
    if not 0 <= weight <= 1 << weight_bits:
        raise InvalidInput(f"a weight is from 0 to 2^{weight_bits}, not {weight}")
    check_inputs(base, [state])
    limit = ACC_LIMIT // (2 << weight_bits)
    parts = []
    for name, b in sorted(base.items()):
        if b.dtype == torch.bool:
            raise MergeError(f"tensor {name} is bool: a secure merge sums changes, and a bool has none to sum",
                             tensor=name)
        scale = scale_bits if b.is_floating_point() else 0
        fixed_base = to_fixed_within(b.reshape(-1), scale, limit, name)
        change = to_fixed_within(state[name].reshape(-1), scale, limit, name).sub_(fixed_base).mul_(weight)
        parts.append(change.numpy())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def merge_sum(base: StateDict, total: np.ndarray, weight: int, *, scale_bits: int = DEFAULT_SCALE_BITS) -> StateDict:
    """``base + round_half_even(total / weight)`` tensor by tensor, where ``total`` is the sum of the terms of
    contributions whose weights add up to ``weight``."""
    if total.dtype != np.int64 or total.shape != (term_size(base),):
        raise InvalidInput(f"the sum of terms must be {term_size(base)} int64 values")
    if weight < 1:
        raise InvalidInput("a merge needs contributions of positive total weight")
    result: StateDict = {}
    at = 0
    for name, b in sorted(base.items()):
        count = b.numel()
        acc = torch.from_numpy(total[at:at + count].copy())
        at += count
        if not bool(acc.any()):
            result[name] = b
            continue
        quotient = torch.div(acc, weight, rounding_mode="floor")
        twice = (acc - quotient * weight) * 2
        quotient += (twice > weight) | ((twice == weight) & ((quotient & 1) == 1))
        scale = scale_bits if b.is_floating_point() else 0
        quotient += to_fixed_within(b.reshape(-1), scale, ACC_LIMIT, name)
        if b.is_floating_point():
            merged = quotient.to(torch.float64).div_(float(1 << scale)).to(b.dtype)
            if not bool(torch.isfinite(merged).all()):
                raise MergeError(f"tensor {name} overflows {b.dtype} after merging", tensor=name)
        else:
            info = torch.iinfo(b.dtype)
            if bool(((quotient < info.min) | (quotient > info.max)).any()):
                raise MergeError(f"tensor {name} overflows {b.dtype} after merging", tensor=name)
            merged = quotient.to(b.dtype)
        result[name] = merged.reshape(b.shape)
    return result
