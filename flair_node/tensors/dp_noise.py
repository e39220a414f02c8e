"""The Gaussian mechanism on a whole update (``core.dp``): clip the change from the base to an L2 norm, add noise.

``clip_and_noise(base, trained, clip, std)`` returns what a contribution publishes instead of ``trained``:
``base + min(1, clip / ‖Δ‖) · Δ + N(0, std²)`` on every value of every floating tensor, where Δ = trained − base
and ‖Δ‖ is taken over all floating tensors at once, in float64. Integer and bool tensors come back as the base
holds them: nothing in them is clipped or noised, so nothing of them may be released.

The noise is drawn by numpy's PCG64 generator seeded with 128 bits from the operating system (``os.urandom``),
in float64, then rounded to the tensor's dtype. Floating-point Gaussian samples are not exactly Gaussian
(Mironov, "On Significance of the Least Significant Bits for Differential Privacy", CCS 2012, shows what their
low bits can leak for the Laplace mechanism); the accounting of ``core.dp`` assumes exact samples.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..core.errors import InvalidInput
from .safetensors_io import StateDict


def update_norm(base: StateDict, trained: StateDict) -> float:
    """‖trained − base‖₂ over every floating tensor, in float64."""
    _check_layout(base, trained)
    total = 0.0
    for name, tensor in trained.items():
        if tensor.is_floating_point():
            total += float(torch.sum((tensor.double() - base[name].double()) ** 2))
    return float(total ** 0.5)


def clip_and_noise(base: StateDict, trained: StateDict, clip: float, std: float, *,
                   seed: bytes | None = None) -> tuple[StateDict, float]:
    """What a contribution of ``trained`` (trained from ``base``) publishes under the Gaussian mechanism: the
    update clipped to L2 norm ``clip``, plus noise of standard deviation ``std`` on every floating value; and the
    update's norm before clipping. ``seed`` (16 bytes) fixes the noise, for tests only."""
    if not clip > 0 or not std >= 0:
        raise InvalidInput(f"clipping needs a norm above 0 and noise a standard deviation of 0 or more, not {clip}, "
                           f"{std}")
    norm = update_norm(base, trained)
    if not np.isfinite(norm):
        raise InvalidInput("the update holds values that are not finite: it cannot be clipped")
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(seed if seed is not None else os.urandom(16), "big")))
    out: StateDict = {}
    for name in sorted(trained):
        tensor, start = trained[name], base[name]
        if not tensor.is_floating_point():
            out[name] = start.clone()
            continue
        change = (tensor.double() - start.double()) * scale
        noise = torch.from_numpy(np.asarray(rng.normal(0.0, std, size=tuple(tensor.shape)))) if std > 0 else 0.0
        out[name] = (start.double() + change + noise).to(tensor.dtype)
    return out, norm


def _check_layout(base: StateDict, trained: StateDict) -> None:
    if set(base) != set(trained) or any(base[n].shape != t.shape or base[n].dtype != t.dtype
                                        for n, t in trained.items()):
        raise InvalidInput("the trained weights must have the base's tensors, shapes and dtypes to be clipped")
