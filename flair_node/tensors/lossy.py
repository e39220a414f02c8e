"""Lossy delta codecs for contributions: float16, int8 with a per-tensor scale, and top-k sparse.

A commit made with a lossy codec *is* ``base + decode(payload)``: the daemon decodes what it encoded and commits
that, so every reader materializes the same bits and history stays exact from there on. Only floating tensors
are compressed; other tensors travel whole. Elements a codec leaves at zero change keep the base's exact bits.

    float16-v1   delta as float16                                   2 bytes / parameter
    int8-v1      round(delta / scale) as int8, scale = max|delta|/127  1 byte / parameter (+4 per tensor)
    topk-v1      the k largest |delta| per tensor: int32 index + float16 value, k = ceil(ratio · n)

The error of top-k is fed back by the contributor (``ErrorFeedback``): what one commit did not carry is added to
the next one, so nothing is lost for good, only delayed. Lossy payloads are zlib-compressed (quantized deltas
cluster near zero); inflating is bounded by the layout's size.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import safetensors.torch
import torch

from ..core.errors import InvalidInput, NotSafetensors
from ..core.objects import TensorSpec
from .codec_params import DEFAULT_TOPK_RATIO as DEFAULT_TOPK_RATIO
from .codec_params import LOSSY_CODECS as LOSSY_CODECS
from .safetensors_io import StateDict, check_layout, load_bytes


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def encode_lossy(codec: str, new: StateDict, base: StateDict, *, topk_ratio: float = DEFAULT_TOPK_RATIO) -> bytes:
    if codec not in LOSSY_CODECS:
        raise InvalidInput(f"unknown lossy codec {codec!r}", codec=codec)
    if not 0 < topk_ratio <= 1:
        raise InvalidInput("topk ratio must be in (0, 1]")
    out: dict[str, torch.Tensor] = {}
    for name, x in new.items():
        b = base[name]
        if not x.is_floating_point():
            out[f"{name}::full"] = x.contiguous()
            continue
        work = _work_dtype(x.dtype)
        delta = (x.to(work) - b.to(work)).reshape(-1)
        if codec == "float16-v1":
            out[f"{name}::f16"] = delta.to(torch.float16)
        elif codec == "int8-v1":
            peak = float(delta.abs().max()) if delta.numel() else 0.0
            scale = torch.tensor(peak / 127.0 if peak > 0 else 0.0, dtype=torch.float32)
            q = torch.zeros_like(delta, dtype=torch.int8) if peak == 0 else \
                torch.round(delta / scale.to(work)).clamp_(-127, 127).to(torch.int8)
            out[f"{name}::q"] = q
            out[f"{name}::scale"] = scale
        else:
            k = min(delta.numel(), max(1, math.ceil(topk_ratio * delta.numel()))) if delta.numel() else 0
            idx = torch.topk(delta.abs(), k, sorted=False).indices.sort().values if k else \
                torch.zeros(0, dtype=torch.long)
            out[f"{name}::idx"] = idx.to(torch.int32)
            out[f"{name}::val"] = delta[idx].to(torch.float16)
    return zlib.compress(bytes(safetensors.torch.save(out)), 6)


def decode_lossy(codec: str, data: bytes, base: StateDict, layout: Sequence[TensorSpec]) -> StateDict:
    # A lossy payload never holds more than ~4 bytes per parameter plus headers: inflate no further than that,
    # so a compressed bomb from a peer cannot exhaust memory.
    limit = 8 * sum(spec.numel for spec in layout) + 64 * len(layout) * 256 + 4096
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, limit)
    except zlib.error as exc:
        raise NotSafetensors(f"lossy payload is not zlib data: {exc}") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise NotSafetensors("lossy payload inflates past its bound or is truncated")
    parts = load_bytes(raw, "payload")
    out: StateDict = {}
    for spec in layout:
        name, b = spec.name, base[spec.name]
        if f"{name}::full" in parts:
            out[name] = parts[f"{name}::full"]
            continue
        flat = b.reshape(-1)
        work = _work_dtype(b.dtype)
        if codec == "float16-v1":
            d = _part(parts, f"{name}::f16", torch.float16, (flat.numel(),)).to(work)
            changed = d != 0
        elif codec == "int8-v1":
            q = _part(parts, f"{name}::q", torch.int8, (flat.numel(),))
            scale = _part(parts, f"{name}::scale", torch.float32, ())
            d = q.to(work) * scale.to(work)
            changed = q != 0
        elif codec == "topk-v1":
            idx = _part(parts, f"{name}::idx", torch.int32, None).to(torch.long)
            val = _part(parts, f"{name}::val", torch.float16, (idx.numel(),))
            if idx.numel() and (int(idx[0]) < 0 or int(idx[-1]) >= flat.numel() or bool((idx[1:] <= idx[:-1]).any())):
                raise NotSafetensors(f"top-k payload for tensor {name} has indices out of order or range")
            result = flat.clone()
            result[idx] = (flat[idx].to(work) + val.to(work)).to(b.dtype)
            out[name] = result.reshape(b.shape)
            continue
        else:
            raise InvalidInput(f"unknown lossy codec {codec!r}", codec=codec)
        out[name] = torch.where(changed, (flat.to(work) + d).to(b.dtype), flat).reshape(b.shape)
    check_layout(out, layout)
    return out


def _part(parts: Mapping[str, torch.Tensor], key: str, dtype: torch.dtype,
          shape: tuple[int, ...] | None) -> torch.Tensor:
    t = parts.get(key)
    if t is None or t.dtype != dtype or (tuple(t.shape) != shape if shape is not None else t.dim() != 1):
        raise NotSafetensors(f"payload entry {key} is missing or malformed")
    return t


class ErrorFeedback:
    """A contributor's memory of what lossy commits did not carry, added back to the next commit.

    ``sent = feedback.apply(weights)`` before committing ``sent``; ``feedback.update(sent, committed)`` after,
    with the weights the commit actually holds. Lives in the contributor's process: it never leaves it.
    """

    def __init__(self) -> None:
        self.residual: dict[str, torch.Tensor] = {}

    def apply(self, weights: Mapping[str, torch.Tensor]) -> StateDict:
        return {k: (v + self.residual[k]).to(v.dtype) if k in self.residual else v for k, v in weights.items()}

    def update(self, sent: Mapping[str, torch.Tensor], committed: Mapping[str, torch.Tensor]) -> None:
        self.residual = {k: (v.to(_work_dtype(v.dtype)) - committed[k].to(_work_dtype(v.dtype)))
                         for k, v in sent.items() if v.is_floating_point()}
