"""Per-tensor differences between two states (for ``flair diff`` and ``flair show``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..core.objects import TensorSpec
from .safetensors_io import TORCH_DTYPES, ranges_of, spec_of

#: Elements compared at once (1 MiB of float32, and its float64 differences): a diff's memory does not grow with its
#: tensors.
SLICE = 1 << 18


def tensor_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """For each tensor: L2 norm and largest absolute value of ``b - a`` (in float64), and elements changed
    (whose bits differ), under ``"change": "values"``. A tensor only in ``b`` is ``"added"``, only in ``a``
    ``"removed"``, and one whose shape or dtype differs ``"layout"``: each with its ``before`` and ``after`` spec
    (``[dtype, shape]``, None where it has none) and no figures. Each tensor of ``a`` and ``b`` is read by ranges
    (``safetensors_io.ranges_of``: a ``LazyState``'s from its file), ``SLICE`` elements at a time into a buffer
    reused from range to range: a diff holds two ranges, never a tensor."""
    out: list[dict[str, Any]] = []
    for name in sorted(a.keys() | b.keys()):
        before, after = spec_of(a, name), spec_of(b, name)
        if before != after:
            change = "added" if before is None else "removed" if after is None else "layout"
            out.append({"name": name, "change": change, "before": _spec_json(before), "after": _spec_json(after)})
            continue
        x, y = ranges_of(a, name), ranges_of(b, name)
        width = SLICE * TORCH_DTYPES[x.spec.dtype].itemsize
        squares, largest, changed = 0.0, 0.0, 0
        for xs, ys in zip(x.values(width), y.values(width), strict=True):
            if xs.dtype == torch.bool:
                differ = int((xs != ys).sum())
                squares, largest, changed = squares + differ, max(largest, float(differ > 0)), changed + differ
                continue
            d = ys.double() - xs.double()
            squares += float(torch.dot(d, d))
            most = float(d.abs().max())
            largest = most if most > largest or most != most else largest  # NaN, once met, stays
            changed += int((xs.view(torch.uint8).reshape(len(xs), -1) != ys.view(torch.uint8).reshape(len(ys), -1))
                           .any(dim=1).sum())
        out.append({"name": name, "change": "values", "l2": squares ** 0.5, "max_abs": largest, "changed": changed})
    return out


def _spec_json(spec: TensorSpec | None) -> list[Any] | None:
    return None if spec is None else [spec.dtype, list(spec.shape)]
