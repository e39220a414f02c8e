"""Per-tensor differences between two states (for ``flair diff`` and ``flair show``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

#: Elements compared at once: a diff's memory does not grow with its tensors.
SLICE = 1 << 20


def tensor_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """For each tensor: L2 norm and largest absolute value of ``b - a`` (in float64), and elements changed
    (whose bits differ). Each tensor of ``a`` and ``b`` is asked for once (a ``safetensors_io.LazyState`` reads
    it then), and compared ``SLICE`` elements at a time."""
    out = []
    for name in sorted(a.keys() | b.keys()):
        if name not in a or name not in b:
            continue
        x, y = a[name].reshape(-1), b[name].reshape(-1)
        squares, largest, changed = 0.0, 0.0, 0
        for start in range(0, x.numel(), SLICE):
            xs, ys = x[start:start + SLICE], y[start:start + SLICE]
            if x.dtype == torch.bool:
                differ = int((xs != ys).sum())
                squares, largest, changed = squares + differ, max(largest, float(differ > 0)), changed + differ
                continue
            d = ys.double() - xs.double()
            squares += float(torch.dot(d, d))
            most = float(d.abs().max())
            largest = most if most > largest or most != most else largest  # NaN, once met, stays
            changed += int((xs.view(torch.uint8).reshape(len(xs), -1) != ys.view(torch.uint8).reshape(len(ys), -1))
                           .any(dim=1).sum())
        out.append({"name": name, "l2": squares ** 0.5, "max_abs": largest, "changed": changed})
    return out
