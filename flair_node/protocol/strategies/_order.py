"""Chunked, coordinate-wise order statistics: what median, trimmed mean and Bulyan have in common.

``merge_columns`` walks every tensor that some input changed, ``chunk_size()`` parameters at a time: it sorts
the inputs' values of each parameter (a column) with ``_kernels.sort_columns`` into one reused (n, chunk)
buffer and hands the chunk to the strategy's reducer, which writes the result slice. Extra memory is the output
plus that buffer, whatever the model size.

Dtypes. Values are sorted as they are: floats by value (−0.0 and +0.0 equal, kept in input order), integers
exactly, bools as 0/1 (through a uint8 view of the same bytes). float16 and bfloat16 are sorted as float32,
which holds them exactly and returns them unchanged. Picking a sorted value (the median of an odd count)
returns an input's value bit for bit. Averaging sorted values (``Columns.average``) is Flair's fixed-point merge
``base + Σ w_k (v_k − base) / 2^WEIGHT_BITS`` with integer weights as equal as 2^WEIGHT_BITS allows
(``equal_weights``): exact, and provable like any merge. For integer tensors that rounds the averaged update to
an integer, half to even; for bools it is a majority vote whose ties keep the base's value. When 2^WEIGHT_BITS is
not divisible by the number m averaged, some middle ranks get one unit of weight more (symmetrically, so there
is no drift up or down): the result differs from the exact mean by less than m/2^WEIGHT_BITS of the averaged
values' spread (max − min), about 1e-4 of it for m = 6. An average of a single value is that value, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from numba.typed import List

from ...tensors.fixedpoint import PART, WEIGHT_BITS, same_bits, same_ranges, weighted_sum_fixed
from ...tensors.safetensors_io import TORCH_DTYPES, Ranges, StateDict, computed_ranges
from . import _base
from ._kernels import sort_columns, sorting_network

_HALF = (torch.float16, torch.bfloat16)


def merge_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype results are computed in: the tensor's own, bools as uint8 (weighted_sum_fixed has no bools)."""
    return torch.uint8 if dtype == torch.bool else dtype


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype values are sorted in (numba has no float16 or bfloat16; float32 holds them exactly)."""
    return torch.float32 if dtype in _HALF else merge_dtype(dtype)


@lru_cache(maxsize=256)
def equal_weights(count: int) -> tuple[int, ...]:
    """Integer weights for averaging ``count`` sorted values: as equal as integers summing to 2^WEIGHT_BITS allow.

    The units left over after an even split go to the middle ranks, symmetrically (the centre rank too when an
    odd number is left over), so rounding the weights never pulls averages towards the low or the high values:
    a one-sided rule would drift every parameter the same way, round after round.
    """
    total = 1 << WEIGHT_BITS
    even, left = divmod(total, count)
    weights = [even] * count
    if left % 2:  # only when count is odd: the centre takes one unit
        weights[count // 2] += 1
    low = (count - 1) // 2 if count % 2 == 0 else count // 2 - 1
    for k in range(left // 2):  # then pairs, from the middle outwards
        weights[low - k] += 1
        weights[count - 1 - low + k] += 1
    return tuple(weights)


@dataclass
class Columns:
    """One chunk of one tensor: the inputs' values sorted column by column, and the result slice to fill."""

    name: str
    #: The base's values, in the merge dtype.
    base: torch.Tensor
    #: (inputs, chunk) sorted along dim 0, in the work dtype.
    ordered: torch.Tensor
    #: Where the result goes, in the merge dtype.
    out: torch.Tensor

    @property
    def count(self) -> int:
        return self.ordered.shape[0]

    def row(self, i: int) -> torch.Tensor:
        """Sorted row ``i`` in the merge dtype (a view unless the tensor is float16 or bfloat16)."""
        return converted(self.ordered[i], self.out.dtype)

    def take(self, i: int) -> None:
        self.out.copy_(self.ordered[i])

    def average(self, rows: Sequence[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
        """The fixed-point mean of ``rows`` (merge dtype) into ``out`` (default: the result slice)."""
        target = self.out if out is None else out
        if len(rows) == 1:
            return target.copy_(rows[0])
        return weighted_sum_fixed(self.base, rows, equal_weights(len(rows)), out=target, name=self.name)


def converted(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return values if values.dtype == dtype else values.to(dtype)


def merge_columns(base: StateDict, inputs: Sequence[StateDict], reduce: Callable[[Columns], None],
                  indices: Sequence[int] | None = None) -> StateDict:
    """Apply a coordinate-wise rule to every tensor; tensors no input changed keep the base's tensor.

    ``indices`` are the inputs' positions in the caller's list, for error messages (default: 0, 1, ...).
    """
    labels = list(range(len(inputs))) if indices is None else list(indices)
    result: StateDict = {}
    for name, b in base.items():
        xs = [state[name] for state in inputs]
        if all(same_bits(x, b) for x in xs):
            result[name] = b
            continue
        out = torch.empty(b.shape, dtype=b.dtype)  # contiguous, even when the base's tensor is a transposed view
        dtype = merge_dtype(b.dtype)
        _reduce_flat(name, b.reshape(-1).view(dtype), [x.reshape(-1).view(dtype) for x in xs], out.view(-1).view(dtype),
                     reduce, labels)
        result[name] = out
    return result


def column_ranges(name: str, b: Ranges, xs: Sequence[Ranges], reduce: Callable[[Columns], None],
                  indices: Sequence[int] | None = None, *, part: int = PART) -> Ranges:
    """``merge_columns`` of one tensor read by ranges (``Ranges``), as ranges: the base's if no input changed it
    (compared ``part`` bytes at a time), else each range asked for reduced from that range of every input, read
    into buffers reused from range to range. A column's result depends on that column alone, so the bytes are
    ``merge_columns``'s whatever the ranges asked for."""
    if all(same_ranges(x, b, part=part) for x in xs):
        return b
    labels = list(range(len(xs))) if indices is None else list(indices)
    return computed_ranges([b, *xs], lambda values, out: _reduce_flat(name, values[0], values[1:], out, reduce, labels),
                           part=part, dtype=merge_dtype(TORCH_DTYPES[b.spec.dtype]))


def _reduce_flat(name: str, base: torch.Tensor, xs: Sequence[torch.Tensor], out: torch.Tensor,
                 reduce: Callable[[Columns], None], labels: Sequence[int]) -> None:
    """``reduce`` over the columns of flat tensors of the merge dtype, a chunk of columns at a time, into ``out``."""
    step = min(_base.chunk_size(), base.numel())
    if not step:
        return
    pairs = sorting_network(len(xs))
    buffer = torch.empty(len(xs) * step, dtype=work_dtype(base.dtype))
    for start in range(0, base.numel(), step):
        stop = min(base.numel(), start + step)
        slices = [x[start:stop] for x in xs]
        ordered = buffer[: len(xs) * (stop - start)].view(len(xs), stop - start)
        if sort_columns(_numba_list(slices, ordered.dtype), pairs, ordered.numpy()):
            raise _base.non_finite_error(name, slices, labels)
        reduce(Columns(name, base[start:stop], ordered, out[start:stop]))


def _numba_list(slices: Sequence[torch.Tensor], dtype: torch.dtype) -> List:
    typed = List()
    for x in slices:
        typed.append(converted(x, dtype).numpy())
    return typed

