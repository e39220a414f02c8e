"""Payload codecs: the lossless ones here, the lossy ones in ``lossy``.

``full-v1``: the weights themselves, as safetensors. ``bitdelta-v1``: per tensor, the wrapping integer
difference of the bit patterns (new minus base, on an unsigned view of the same width), as safetensors.
Adding it back to the base's bits gives the new tensor bit for bit (NaN payloads, -0.0, denormals included),
so any commit materializes exactly, however long its history.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import safetensors.numpy
import torch

from ..core.errors import InvalidInput, NotSafetensors
from ..core.objects import TensorSpec
from .codec_params import DEFAULT_TOPK_RATIO, LOSSY_CODECS
from .lossy import decode_lossy, encode_lossy
from .safetensors_file import ALL_DTYPE_SIZES
from .safetensors_io import StateDict, check_header, check_layout, load_bytes, save_bytes

_SIGNED = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _bits(t: torch.Tensor) -> np.ndarray:
    """The tensor's bit patterns as an unsigned numpy array of the same width (a view, no copy)."""
    width = t.element_size()
    src = t.contiguous().reshape(-1)
    if src.dtype == torch.bool:
        src = src.view(torch.uint8)
    elif src.dtype != torch.uint8:
        src = src.view(_SIGNED[width])
    return src.numpy().view(_UNSIGNED[width])


def _from_bits(bits: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    width = like.element_size()
    if like.dtype in (torch.uint8, torch.bool):
        out = torch.from_numpy(bits.view(np.uint8).copy())
    else:
        out = torch.from_numpy(bits.view(np.dtype(f"i{width}")).copy()).view(like.dtype)
    return out.view(like.dtype).reshape(like.shape)


def encode_payload(codec: str, new: StateDict, base: StateDict | None, *, topk_ratio: float = DEFAULT_TOPK_RATIO
                   ) -> bytes:
    if codec in LOSSY_CODECS:
        if base is None:
            raise InvalidInput(f"{codec} needs a base")
        return encode_lossy(codec, new, base, topk_ratio=topk_ratio)
    if codec == "full-v1":
        return save_bytes(new)
    if codec == "bitdelta-v1":
        if base is None:
            raise InvalidInput("bitdelta-v1 needs a base")
        return bytes(safetensors.numpy.save({name: _bits(t) - _bits(base[name]) for name, t in new.items()}))
    raise InvalidInput(f"unknown payload codec {codec!r}", codec=codec)


def decode_payload(codec: str, data: bytes, base: StateDict | None, layout: Sequence[TensorSpec]) -> StateDict:
    if codec in LOSSY_CODECS:
        if base is None:
            raise InvalidInput(f"{codec} needs a base")
        return decode_lossy(codec, data, base, layout)
    if codec == "full-v1":
        state = load_bytes(data, "payload")
    elif codec == "bitdelta-v1":
        if base is None:
            raise InvalidInput("bitdelta-v1 needs a base")
        check_header(data, "payload", dtypes=ALL_DTYPE_SIZES)  # bounds checks before numpy sees the bytes
        try:
            deltas = safetensors.numpy.load(data)
        except Exception as exc:  # safetensors raises its own SafetensorError and plain errors alike
            raise NotSafetensors(f"payload is not a valid bit-delta: {exc}") from None
        state = {}
        for name, delta in deltas.items():
            if name not in base:
                raise NotSafetensors(f"bit-delta has tensor {name} that its base lacks")
            ref = base[name]
            bits = _bits(ref)
            if delta.dtype != bits.dtype or delta.size != bits.size:
                raise NotSafetensors(f"bit-delta for tensor {name} does not match its base")
            state[name] = _from_bits(bits + delta.reshape(-1), ref)
    else:
        raise InvalidInput(f"unknown payload codec {codec!r}", codec=codec)
    check_layout(state, layout)
    return state
