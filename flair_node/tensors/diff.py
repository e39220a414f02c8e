"""Per-tensor differences between two states (for ``flair diff`` and ``flair show``)."""

from __future__ import annotations

from typing import Any

import torch

from .safetensors_io import StateDict


def tensor_diff(a: StateDict, b: StateDict) -> list[dict[str, Any]]:
    """For each tensor: L2 norm and largest absolute value of ``b - a`` (in float64), and elements changed."""
    out = []
    for name in sorted(a.keys() | b.keys()):
        if name not in a or name not in b:
            continue
        x, y = a[name], b[name]
        if x.dtype == torch.bool:
            changed = int((x != y).sum())
            out.append({"name": name, "l2": float(changed) ** 0.5, "max_abs": float(changed > 0),
                        "changed": changed})
            continue
        if x.numel() == 0:  # nothing to compare (and nothing a per-element view can be shaped from)
            out.append({"name": name, "l2": 0.0, "max_abs": 0.0, "changed": 0})
            continue
        d = y.double() - x.double()
        bits_differ = x.reshape(-1).view(torch.uint8).reshape(x.numel(), -1) != \
            y.reshape(-1).view(torch.uint8).reshape(y.numel(), -1)
        out.append({"name": name, "l2": float(torch.linalg.vector_norm(d)), "max_abs": float(d.abs().max()),
                    "changed": int(bits_differ.any(dim=1).sum())})
    return out
