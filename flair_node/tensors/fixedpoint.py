"""Exact, deterministic merge arithmetic in int64 fixed point.

    result = base + Σ_i w_i · (x_i − base) / 2^weight_bits

Floating tensors are converted to int64 with ``scale_bits`` fraction bits (round half to even); the weighted
sum is accumulated in int64 and divided by 2^weight_bits with an integer shift that rounds half to even; the
result goes back through float64 (exact below 2^53) to the tensor's dtype. Integer tensors use scale 0. Every
step is integer arithmetic or an exactly rounded conversion, so the same inputs give the same bytes on any
machine: that is what lets peers re-derive a merge.

Two per-tensor rules keep unchanged tensors exact: if no input with a nonzero weight differs from the base,
the base's tensor is kept bit for bit; if exactly one differs and its weight is 2^weight_bits (the whole
change), that input's tensor is taken bit for bit. Reverting the head commit relies on the second rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.errors import InvalidInput, MergeError
from .safetensors_io import StateDict

DEFAULT_SCALE_BITS = 24
WEIGHT_BITS = 16
#: Elements per step: keeps temporaries small (a few MB) whatever the model size.
CHUNK = 1 << 18
_ACC_LIMIT = 1 << 62


def normalize_weights(counts: Sequence[int], weight_bits: int = WEIGHT_BITS) -> list[int]:
    """Integer weights proportional to ``counts`` summing to exactly 2^weight_bits (largest remainder).

    Ties in the remainders go to the lower index; all-zero counts give equal weights.
    """
    if not counts:
        raise InvalidInput("no inputs to weigh")
    if any(c < 0 for c in counts):
        raise InvalidInput("example counts must be >= 0")
    total = 1 << weight_bits
    values = list(counts) if sum(counts) else [1] * len(counts)
    whole = sum(values)
    floors = [c * total // whole for c in values]
    remainders = [c * total % whole for c in values]
    for i in sorted(range(len(values)), key=lambda i: (-remainders[i], i))[: total - sum(floors)]:
        floors[i] += 1
    return floors


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype == torch.bool or a.element_size() == 1:
        return torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.view(view), b.view(view))


def _to_fixed(x: torch.Tensor, scale_bits: int, limit: int, name: str) -> torch.Tensor:
    if x.is_floating_point():
        if not bool(torch.isfinite(x).all()):
            raise MergeError(f"tensor {name} holds NaN or infinite values: it cannot be merged", tensor=name)
        y = x.to(torch.float64).mul_(float(1 << scale_bits)).round_()
        if bool((y.abs() > limit).any()):
            raise MergeError(f"tensor {name} has values too large for an exact merge at scale 2^-{scale_bits}",
                             tensor=name)
        return y.to(torch.int64)
    y = x.to(torch.int64)
    if bool((y.abs() > limit).any()):
        raise MergeError(f"tensor {name} has integers too large for an exact merge", tensor=name)
    return y


def weighted_sum_fixed(base: torch.Tensor, inputs: Sequence[torch.Tensor], weights: Sequence[int], *,
                       scale_bits: int = DEFAULT_SCALE_BITS, weight_bits: int = WEIGHT_BITS,
                       out: torch.Tensor | None = None, name: str = "tensor") -> torch.Tensor:
    """The fixed-point ``base + Σ w_i (x_i − base) / 2^weight_bits`` of 1-D tensors, chunk by chunk."""
    if out is None:
        out = torch.empty_like(base)
    n = base.numel()
    scale = scale_bits if base.is_floating_point() else 0
    # |x_i - base| <= 2 * limit, so |acc| <= 2 * limit * Σ|w| stays below 2^62.
    limit = _ACC_LIMIT // (2 * max(1, sum(abs(w) for w in weights)))
    half = 1 << (weight_bits - 1)
    mask = (1 << weight_bits) - 1
    taking = [(x, w) for x, w in zip(inputs, weights, strict=True) if w != 0]
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        fixed_base = _to_fixed(base[start:stop], scale, limit, name)
        acc = torch.zeros_like(fixed_base)
        for x, w in taking:
            term = _to_fixed(x[start:stop], scale, limit, name).sub_(fixed_base)
            acc.add_(term.mul_(w))
        quotient = acc >> weight_bits
        remainder = acc & mask
        quotient += (remainder > half) | ((remainder == half) & ((quotient & 1) == 1))
        quotient += fixed_base
        if base.is_floating_point():
            result = quotient.to(torch.float64).div_(float(1 << scale)).to(base.dtype)
            if not bool(torch.isfinite(result).all()):
                raise MergeError(f"tensor {name} overflows {base.dtype} after merging", tensor=name)
        else:
            info = torch.iinfo(base.dtype)
            if bool(((quotient < info.min) | (quotient > info.max)).any()):
                raise MergeError(f"tensor {name} overflows {base.dtype} after merging", tensor=name)
            result = quotient.to(base.dtype)
        out[start:stop] = result
    return out


def combine(base: StateDict, inputs: Sequence[StateDict], weights: Sequence[int], *,
            scale_bits: int = DEFAULT_SCALE_BITS, weight_bits: int = WEIGHT_BITS) -> StateDict:
    """``base + Σ w_i (x_i − base) / 2^weight_bits`` tensor by tensor, exactly (see the module docstring)."""
    if len(inputs) != len(weights) or not inputs:
        raise InvalidInput("combine needs one weight per input, and at least one input")
    whole = 1 << weight_bits
    result: StateDict = {}
    for name, b in base.items():
        xs = []
        for i, state in enumerate(inputs):
            x = state.get(name)
            if x is None or x.shape != b.shape or x.dtype != b.dtype:
                raise MergeError(f"input {i} has no tensor {name} of the base's shape and dtype", tensor=name)
            xs.append(x)
        changed = [(x, w) for x, w in zip(xs, weights, strict=True) if w != 0 and not _same_bits(x, b)]
        if not changed:
            result[name] = b
        elif len(changed) == 1 and changed[0][1] == whole:
            result[name] = changed[0][0]
        elif b.dtype == torch.bool:
            result[name] = max(changed, key=lambda xw: xw[1])[0]
        else:
            flat = weighted_sum_fixed(b.reshape(-1), [x.reshape(-1) for x in xs], weights, scale_bits=scale_bits,
                                      weight_bits=weight_bits, name=name)
            result[name] = flat.reshape(b.shape)
    extra = set().union(*(s.keys() for s in inputs)) - base.keys()
    if extra:
        raise MergeError(f"tensor {sorted(extra)[0]} is not in the base", tensor=sorted(extra)[0])
    return result
