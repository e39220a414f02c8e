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

from collections.abc import Iterator, Sequence

import torch

from ..core.errors import InvalidInput, MergeError
from .safetensors_io import TORCH_DTYPES, Ranges, StateDict, computed_ranges

DEFAULT_SCALE_BITS = 24
WEIGHT_BITS = 16
#: Elements per step: keeps temporaries small (a few MB) whatever the model size.
CHUNK = 1 << 16
#: Values per step of a bfloat16 or float16 merge through the fused kernel: float32 copies of that many values of
#: each input (4 MiB each), whatever the tensor's size.
HALF_CHUNK = 1 << 20
#: Bytes of each input a merge by ranges (``combined``) compares or computes at a time.
PART = 1 << 19
#: The largest magnitude a merge accumulator reaches: sums of weighted changes stay below it, in int64.
ACC_LIMIT = 1 << 62


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


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (NaN equals itself, −0.0 differs from +0.0). Stops at the first difference."""
    if a.dtype == torch.bool or a.element_size() == 1:
        return torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.view(view), b.view(view))


def fixed(x: torch.Tensor, scale_bits: int = DEFAULT_SCALE_BITS, *, name: str = "tensor") -> torch.Tensor:
    """``x`` as the merge sees it: int64 with ``scale_bits`` fraction bits if floating (round half to even),
    as is if integer; ``MergeError`` for NaN, infinities or magnitudes of 2^53 and beyond."""
    return to_fixed_within(x, scale_bits, (1 << 53) - 1, name)


def to_fixed_within(x: torch.Tensor, scale_bits: int, limit: int, name: str) -> torch.Tensor:
    """``x`` in fixed point as a new int64 tensor (callers modify it in place; the input is never touched);
    ``MergeError`` for NaN, infinities or a magnitude beyond ``limit``."""
    if x.is_floating_point():
        if not bool(torch.isfinite(x).all()):
            raise MergeError(f"tensor {name} holds NaN or infinite values: it cannot be merged", tensor=name)
        y = x.to(torch.float64, copy=True).mul_(float(1 << scale_bits)).round_()
        if bool((y.abs() > limit).any()):
            raise MergeError(f"tensor {name} has values too large for an exact merge at scale 2^-{scale_bits}",
                             tensor=name)
        return y.to(torch.int64)
    y = x.to(torch.int64, copy=True)
    if bool((y.abs() > limit).any()):
        raise MergeError(f"tensor {name} has integers too large for an exact merge", tensor=name)
    return y


def weighted_sum_fixed(base: torch.Tensor, inputs: Sequence[torch.Tensor], weights: Sequence[int], *,
                       scale_bits: int = DEFAULT_SCALE_BITS, weight_bits: int = WEIGHT_BITS,
                       out: torch.Tensor | None = None, name: str = "tensor",
                       wide: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """The fixed-point ``base + Σ w_i (x_i − base) / 2^weight_bits`` of 1-D tensors of one dtype.

    float32 and float64 go through the fused kernel (``_kernel``: each input read once) when every value is in
    its exact range, and so do bfloat16 and float16, widened to float32 (exactly) a chunk at a time and the
    result narrowed back; other dtypes, NaNs (refused there) and huge values go through int64 torch arithmetic
    chunk by chunk. Both compute the same integers, so the bytes never depend on the path: the int64 path
    narrows float64 to a half type through float32, as torch does (``_half_through_float32``). ``wide``, if
    given, is where a half type is widened: float32 buffers of ``HALF_CHUNK`` values (or of ``base``'s, if fewer),
    one for the result, the base and each input with a nonzero weight.
    """
    if out is None:
        out = torch.empty_like(base)
    taking = [(x, w) for x, w in zip(inputs, weights, strict=True) if w != 0]
    magnitude = max(1, sum(abs(w) for _, w in taking))
    scale = scale_bits if base.is_floating_point() else 0
    if base.dtype in (torch.float32, torch.float64) and taking:
        from ._kernel import fused_merge

        # In the kernel's exact range |out| < 2^53 / 2^scale: always finite in float32 and float64.
        if fused_merge(base.numpy(), [x.numpy() for x, _ in taking], [w for _, w in taking], scale, weight_bits,
                       out.numpy()):
            return out
    if base.dtype in (torch.bfloat16, torch.float16) and taking and \
            _half_through_float32(base, taking, scale, weight_bits, out, wide):
        return out
    for start in range(0, base.numel(), CHUNK):
        stop = min(base.numel(), start + CHUNK)
        out[start:stop] = _int64_chunk(base, taking, start, stop, scale, weight_bits, magnitude, name)
    return out


def _half_through_float32(base: torch.Tensor, taking: Sequence[tuple[torch.Tensor, int]], scale_bits: int,
                          weight_bits: int, out: torch.Tensor, wide: Sequence[torch.Tensor] = ()) -> bool:
    """The fused kernel on bfloat16 or float16 tensors, ``HALF_CHUNK`` values at a time: each input widened to
    float32 (exact), the kernel's float32 result narrowed to ``out``'s dtype. That is the bytes of the int64 path,
    whose float64 result torch narrows through float32 (round to nearest even twice, as here: checked in
    ``tests/unit/test_merge_kernel.py``). False, with ``out`` partly written, if a value is out of the kernel's
    exact range or not finite, or a float16 result overflows: the caller then takes the int64 path for the whole
    tensor, which refuses what it must. numba has no
    bfloat16: by the int64 path, a merge of two 2 GB bfloat16 branches ran at 97 MB/s of inputs."""
    from ._kernel import fused_merge

    n = min(HALF_CHUNK, base.numel())
    buffers = list(wide) or [torch.empty(n, dtype=torch.float32) for _ in range(2 + len(taking))]
    weights = [w for _, w in taking]
    for start in range(0, base.numel(), HALF_CHUNK):
        stop = min(base.numel(), start + HALF_CHUNK)
        result, *widened = (buffer[: stop - start] for buffer in buffers)
        for buffer, tensor in zip(widened, [base, *(x for x, _ in taking)], strict=True):
            buffer.copy_(tensor[start:stop])
        if not fused_merge(widened[0].numpy(), [x.numpy() for x in widened[1:]], weights, scale_bits, weight_bits,
                           result.numpy()):
            return False
        out[start:stop] = result
        if base.dtype == torch.float16 and not bool(torch.isfinite(out[start:stop]).all()):
            return False  # beyond float16's 65504: the int64 path says so
    return True


def _int64_chunk(base: torch.Tensor, taking: Sequence[tuple[torch.Tensor, int]], start: int, stop: int,
                 scale_bits: int, weight_bits: int, magnitude: int, name: str) -> torch.Tensor:
    # |x_i - base| <= 2 * limit, so |acc| <= 2 * limit * Σ|w| stays below 2^62.
    limit = ACC_LIMIT // (2 * magnitude)
    fixed_base = to_fixed_within(base[start:stop], scale_bits, limit, name)
    acc = torch.zeros_like(fixed_base)
    for x, w in taking:
        acc.add_(to_fixed_within(x[start:stop], scale_bits, limit, name).sub_(fixed_base).mul_(w))
    quotient = acc >> weight_bits
    remainder = acc & ((1 << weight_bits) - 1)
    half = 1 << (weight_bits - 1)
    quotient += (remainder > half) | ((remainder == half) & ((quotient & 1) == 1))
    quotient += fixed_base
    if base.is_floating_point():
        result = quotient.to(torch.float64).div_(float(1 << scale_bits)).to(base.dtype)
        if not bool(torch.isfinite(result).all()):
            raise MergeError(f"tensor {name} overflows {base.dtype} after merging", tensor=name)
        return result
    info = torch.iinfo(base.dtype)
    if bool(((quotient < info.min) | (quotient > info.max)).any()):
        raise MergeError(f"tensor {name} overflows {base.dtype} after merging", tensor=name)
    return quotient.to(base.dtype)


def check_inputs(base: StateDict, inputs: Sequence[StateDict]) -> None:
    """Every input holds exactly the base's tensors, each of the base's shape and dtype."""
    for i, state in enumerate(inputs):
        for name, b in base.items():
            x = state.get(name)
            if x is None or x.shape != b.shape or x.dtype != b.dtype:
                raise MergeError(f"input {i} has no tensor {name} of the base's shape and dtype", tensor=name,
                                 input=str(i))
        extra = sorted(state.keys() - base.keys())
        if extra:
            raise MergeError(f"input {i} has tensor {extra[0]}, which is not in the base", tensor=extra[0],
                             input=str(i))


def combine(base: StateDict, inputs: Sequence[StateDict], weights: Sequence[int], *,
            scale_bits: int = DEFAULT_SCALE_BITS, weight_bits: int = WEIGHT_BITS, shortcuts: bool = True) -> StateDict:
    """``base + Σ w_i (x_i − base) / 2^weight_bits`` tensor by tensor, exactly (see the module docstring).
    ``shortcuts=False`` skips the rule that takes a lone changed input with the whole weight bit for bit, so
    every floating tensor is exactly the fixed-point formula (what a proof of the sum can speak for)."""
    if len(inputs) != len(weights) or not inputs:
        raise InvalidInput("combine needs one weight per input, and at least one input")
    check_inputs(base, inputs)
    return {name: combine_tensor(name, b, [state[name] for state in inputs], weights, scale_bits=scale_bits,
                                 weight_bits=weight_bits, shortcuts=shortcuts) for name, b in base.items()}


def combine_tensor(name: str, b: torch.Tensor, xs: Sequence[torch.Tensor], weights: Sequence[int], *,
                   scale_bits: int = DEFAULT_SCALE_BITS, weight_bits: int = WEIGHT_BITS,
                   shortcuts: bool = True) -> torch.Tensor:
    """``combine`` of one tensor ``name``: its base ``b`` and its value ``xs[i]`` in each input, checked to be of
    ``b``'s shape and dtype already. What a merge computes one tensor at a time (``storage.merging``)."""
    whole = 1 << weight_bits
    changed = [(x, w) for x, w in zip(xs, weights, strict=True) if w != 0 and not same_bits(x, b)]
    if not changed:
        return b
    if shortcuts and len(changed) == 1 and changed[0][1] == whole:
        return changed[0][0]
    if b.dtype == torch.bool:
        return max(changed, key=lambda xw: xw[1])[0]
    flat = weighted_sum_fixed(b.reshape(-1), [x.reshape(-1) for x in xs], weights, scale_bits=scale_bits,
                              weight_bits=weight_bits, name=name)
    return flat.reshape(b.shape)


def combine_parts(name: str, b: Ranges, xs: Sequence[Ranges], weights: Sequence[int], *,
                  part: int, scale_bits: int = DEFAULT_SCALE_BITS,
                  weight_bits: int = WEIGHT_BITS) -> Iterator[memoryview]:
    """``combine_tensor``'s bytes, ``part`` bytes at a time, each in a buffer of its own: ``combined``'s parts."""
    return combined(name, b, xs, weights, part=part, scale_bits=scale_bits, weight_bits=weight_bits).parts(part)


def combined(name: str, b: Ranges, xs: Sequence[Ranges], weights: Sequence[int], *, part: int = PART,
             scale_bits: int = DEFAULT_SCALE_BITS, weight_bits: int = WEIGHT_BITS) -> Ranges:
    """``combine_tensor`` of tensors read by ranges (``Ranges``) of one spec, as ranges: the same per-tensor rules,
    decided first (each input compared with the base ``part`` bytes at a time until they differ, ranges stored
    alike equal without being read), then each range asked for computed from that range of the base and of every
    input with a nonzero weight, read into buffers reused from range to range (``part`` bytes each). A merge so
    holds ``part`` bytes of each input, never a whole tensor, and its memory stays warm in the cache where fresh
    tensors would each be faulted in. A tensor the rules take whole (the base's, or one input's) is that input's
    ranges, so what it stores alike stays known. Ranges are asked for at whole values (a ``part`` of 8 bytes'
    multiple is, for any dtype)."""
    if part % 8:
        raise InvalidInput("a merge's part is a whole number of values of any dtype")
    whole = 1 << weight_bits
    buffers = [torch.empty(part, dtype=torch.uint8) for _ in range(2)]
    changed = [(x, w) for x, w in zip(xs, weights, strict=True) if w != 0 and not _same(x, b, buffers, part)]
    if not changed:
        return b
    if len(changed) == 1 and changed[0][1] == whole:
        return changed[0][0]
    if b.spec.dtype == "BOOL":
        return max(changed, key=lambda xw: xw[1])[0]
    dtype = TORCH_DTYPES[b.spec.dtype]
    taking = [(x, w) for x, w in zip(xs, weights, strict=True) if w != 0]
    count = min(part // dtype.itemsize, HALF_CHUNK)  # a half type's values, widened: once, not at every range
    wide = [torch.empty(count, dtype=torch.float32) for _ in range(2 + len(taking))] \
        if dtype in (torch.bfloat16, torch.float16) else []

    def compute(values: list[torch.Tensor], out: torch.Tensor) -> None:
        weighted_sum_fixed(values[0], values[1:], [w for _, w in taking], scale_bits=scale_bits,
                           weight_bits=weight_bits, out=out, name=name, wide=wide)

    return computed_ranges([b, *(x for x, _ in taking)], compute, part=part)


def same_ranges(a: Ranges, b: Ranges, *, part: int = PART) -> bool:
    """``same_bits`` of two tensors of one spec read by ranges, ``part`` bytes at a time."""
    return _same(a, b, [torch.empty(part, dtype=torch.uint8) for _ in range(2)], part)


def _same(x: Ranges, b: Ranges, buffers: Sequence[torch.Tensor], part: int) -> bool:
    """``same_bits`` of two tensors of one spec read by ranges, a part at a time."""
    for at in range(0, b.nbytes, part):
        stop = min(b.nbytes, at + part)
        known = x.identify(at, stop)
        if known is not None and known == b.identify(at, stop):
            continue
        x.readinto(at, buffers[0].numpy().data[:stop - at])
        b.readinto(at, buffers[1].numpy().data[:stop - at])
        if not torch.equal(buffers[0][:stop - at], buffers[1][:stop - at]):
            return False
    return True


def warm_up() -> None:
    """Load what a process's first merge would otherwise load while its user waits (about 2 s on this machine's
    cores, ``docs/benchmarks.md``): torch (imported with this module), and the fused kernel, whose compiled code
    numba reads from its cache and whose threads it starts at the first call, by merging a few values of each
    dtype it takes."""
    for dtype in (torch.float32, torch.float64):
        base = torch.zeros(8, dtype=dtype)
        weighted_sum_fixed(base, [base + 1, base], [1 << (WEIGHT_BITS - 1)] * 2)
