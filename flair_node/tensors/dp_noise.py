"""The Gaussian mechanism on a whole update (``core.dp``): clip the change from the base to an L2 norm, add noise.

``clip_and_noise(base, trained, clip, std)`` returns what a contribution publishes instead of ``trained``:
``base + min(1, clip / ‖Δ‖) · Δ + N(0, std²)`` on every value of every floating tensor, where Δ = trained − base
and ‖Δ‖ is taken over all floating tensors at once, in float64. Integer and bool tensors come back as the base
holds them: nothing in them is clipped or noised, so nothing of them may be released.

The weights come back as a mapping that computes each tensor when it is asked for (``Clipped``): a contribution
streams through it a tensor at a time, whatever the model's size; only the norm is a pass over every tensor first.
The noise is drawn by numpy's PCG64 generator, one per tensor, seeded with 128 bits from the operating system
(``os.urandom``) and the tensor's name, in float64, then rounded to the tensor's dtype: a tensor asked for twice is
the same both times. Floating-point Gaussian samples are not exactly Gaussian
(Mironov, "On Significance of the Least Significant Bits for Differential Privacy", CCS 2012, shows what their
low bits can leak for the Laplace mechanism); the accounting of ``core.dp`` assumes exact samples.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping

import numpy as np
import torch

from ..core.errors import InvalidInput
from .lazy import Computed
from .safetensors_io import spec_of

Weights = Mapping[str, torch.Tensor]


def update_norm(base: Weights, trained: Weights) -> float:
    """‖trained − base‖₂ over every floating tensor, in float64, a tensor of each at a time."""
    _check_layout(base, trained)
    total = 0.0
    for name in trained:
        tensor = trained[name]
        if tensor.is_floating_point():
            total += float(torch.sum((tensor.double() - base[name].double()) ** 2))
    return float(total ** 0.5)


def clip_and_noise(base: Weights, trained: Weights, clip: float, std: float, *,
                   seed: bytes | None = None) -> tuple[Clipped, float]:
    """What a contribution of ``trained`` (trained from ``base``) publishes under the Gaussian mechanism: the
    update clipped to L2 norm ``clip``, plus noise of standard deviation ``std`` on every floating value (each
    tensor computed when asked for, ``Clipped``); and the update's norm before clipping. ``seed`` (16 bytes) fixes
    the noise, for tests only."""
    if not clip > 0 or not std >= 0:
        raise InvalidInput(f"clipping needs a norm above 0 and noise a standard deviation of 0 or more, not {clip}, "
                           f"{std}")
    norm = update_norm(base, trained)
    if not np.isfinite(norm):
        raise InvalidInput("the update holds values that are not finite: it cannot be clipped")
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return Clipped(base, trained, scale, std, seed if seed is not None else os.urandom(16)), norm


class Clipped(Computed):
    """``base`` plus ``scale`` times the update to ``trained``, plus noise of standard deviation ``std`` (seeded by
    ``seed`` and the tensor's name), on every floating tensor; the base's own on the others. Each tensor is
    computed when asked for, and none is kept."""

    def __init__(self, base: Weights, trained: Weights, scale: float, std: float, seed: bytes) -> None:
        super().__init__(trained)
        self._base, self._trained, self._scale, self._std, self._seed = base, trained, scale, std, seed

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor, start = self._trained[name], self._base[name]
        if not tensor.is_floating_point():
            return start.clone()
        change = (tensor.double() - start.double()) * self._scale
        if self._std > 0:
            key = hashlib.sha256(self._seed + name.encode()).digest()[:16]
            rng = np.random.Generator(np.random.PCG64(int.from_bytes(key, "big")))
            change += torch.from_numpy(np.asarray(rng.normal(0.0, self._std, size=tuple(tensor.shape))))
        return (start.double() + change).to(tensor.dtype)


def _check_layout(base: Weights, trained: Weights) -> None:
    """``InvalidInput`` unless both hold the same tensors (read from their headers where they have them)."""
    if set(base) != set(trained) or any(spec_of(base, n) != spec_of(trained, n) for n in trained):
        raise InvalidInput("the trained weights must have the base's tensors, shapes and dtypes to be clipped")


def clip(base: Weights, trained: Weights, norm: float) -> Clipped:
    """``trained`` with its update from ``base`` scaled down to L2 norm ``norm`` at most (no noise): the same
    bytes on every machine, so a secure round's contributor clips its weights alike when it advertises and when
    it masks."""
    return clip_and_noise(base, trained, norm, 0.0)[0]


def clip_fixed(values: np.ndarray, bound: int) -> np.ndarray:
    """``values`` (int64) scaled down, each toward zero, to an L2 norm of at most ``bound`` exactly (checked over
    Python integers, which do not overflow); ``values`` itself if it is within."""
    if bound < 0:
        raise InvalidInput("a norm bound is at least 0")
    if norm_squared(values) <= bound * bound:
        return values
    ratio = bound / math.sqrt(norm_squared(values))
    while True:  # float64 may round the ratio up by an ulp: shrink it until the integers are within
        clipped = np.trunc(values.astype(np.float64) * ratio).astype(np.int64)
        if norm_squared(clipped) <= bound * bound:
            return clipped
        ratio *= 1 - 1e-9


def norm_squared(values: np.ndarray) -> int:
    """The squared L2 norm of integer ``values``, exactly."""
    return sum(int(v) * int(v) for v in values.tolist())


def fixed_sensitivity(clip_norm: float, count: int, scale_bits: int) -> float:
    """The L2 norm a clipped update can reach in the merge's fixed point (``count`` values at ``scale_bits``
    fraction bits): its norm at that scale, plus one unit a value for the rounding of the weights and of the
    base."""
    return clip_norm * float(1 << scale_bits) + math.sqrt(count)


def discrete_gaussian(std: float, size: int, *, seed: bytes | None = None) -> np.ndarray:
    """``size`` draws of the discrete Gaussian of parameter ``std`` (int64): Canonne, Kamath and Steinke's
    sampler ("The Discrete Gaussian for Differential Privacy", NeurIPS 2020, Algorithm 3), vectorised: discrete
    Laplace proposals of scale ``floor(std) + 1``, each kept with probability
    ``exp(-(|y| - std²/t)² / (2 std²))``, computed in float64 (the paper's exact version uses rational
    arithmetic). ``seed`` (16 bytes) fixes the draws, for tests only."""
    if not 1.0 <= std <= 2.0 ** 40 or size < 0:
        raise InvalidInput(f"discrete Gaussian noise takes a parameter from 1 to 2^40 and a size >= 0, not {std}, "
                           f"{size}")
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(seed if seed is not None else os.urandom(16), "big")))
    t = float(np.floor(std) + 1)
    p = -np.expm1(-1.0 / t)  # a geometric's success probability: the discrete Laplace of scale t is G1 - G2
    out = np.empty(size, dtype=np.int64)
    filled = 0
    while filled < size:
        want = max(1024, int((size - filled) * 1.6))
        y = rng.geometric(p, want).astype(np.int64) - rng.geometric(p, want).astype(np.int64)
        keep = rng.random(want) < np.exp(-((np.abs(y) - std * std / t) ** 2) / (2 * std * std))
        kept = y[keep][:size - filled]
        out[filled:filled + len(kept)] = kept
        filled += len(kept)
    return out
