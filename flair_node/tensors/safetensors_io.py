"""state_dict <-> safetensors bytes, and the repository's tensor layout. Never pickle, never ``torch.load``.

Untrusted bytes are checked before any parser sees them (``check_header``): the header's length at most
``MAX_HEADER_BYTES`` and within the data, and its JSON nested at most ``MAX_HEADER_DEPTH`` deep (measured without
recursing, ``core.encoding.loads_json``), so a hostile header is ``NotSafetensors``, never a ``RecursionError``.

Writing files durably is storage's job (``storage.atomic.atomic_write(path, save_bytes(state))``).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import safetensors.torch
import torch

from ..core.encoding import loads_json
from ..core.errors import IntegrityError, LayoutMismatch, NotSafetensors
from ..core.objects import TensorSpec

StateDict = dict[str, torch.Tensor]

#: Largest safetensors header accepted (the format's own limit is 100 MB).
MAX_HEADER_BYTES = 100_000_000
#: Deepest nesting in a header: the format's is 3 (the header object, a tensor's entry, its shape or offsets).
MAX_HEADER_DEPTH = 3

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def check_header(data: bytes | memoryview, source: str) -> None:
    """Raise ``NotSafetensors`` unless ``data`` starts with a bounded header of a JSON object (see the module
    docstring)."""
    if len(data) < 8:
        raise NotSafetensors(f"{source} is not a safetensors file: only {len(data)} bytes")
    (size,) = struct.unpack("<Q", bytes(data[:8]))
    if size > MAX_HEADER_BYTES or 8 + size > len(data):
        raise NotSafetensors(f"{source} is not a safetensors file: header length {size} does not fit the file")
    try:
        header = loads_json(bytes(data[8 : 8 + size]), max_depth=MAX_HEADER_DEPTH, what="header")
    except IntegrityError as exc:
        raise NotSafetensors(f"{source} is not a safetensors file: {exc}") from None
    if not isinstance(header, dict):
        raise NotSafetensors(f"{source} is not a safetensors file: header is not a JSON object")


def load_bytes(data: bytes, source: str = "data") -> StateDict:
    """The tensors in safetensors ``data``; anything else raises ``NotSafetensors``."""
    check_header(data, source)
    try:
        state = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError and plain errors alike
        raise NotSafetensors(f"{source} is not a valid safetensors file: {exc}") from None
    unknown = [name for name, t in state.items() if t.dtype not in DTYPE_NAMES]
    if unknown:
        raise NotSafetensors(f"{source}: tensor {unknown[0]} has unsupported dtype {state[unknown[0]].dtype}")
    return state


def load_file(path: str | os.PathLike[str]) -> StateDict:
    path = Path(path)
    return load_bytes(path.read_bytes(), path.name)


def save_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    return bytes(safetensors.torch.save({k: v.contiguous() for k, v in state.items()}))


def layout_of(state: Mapping[str, torch.Tensor]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(name, DTYPE_NAMES[t.dtype], tuple(t.shape)) for name, t in sorted(state.items()))


def check_layout(state: Mapping[str, torch.Tensor], layout: Sequence[TensorSpec]) -> None:
    """Raise ``LayoutMismatch`` naming the first tensor that is missing, extra, or of another dtype or shape."""
    expected = {spec.name: spec for spec in layout}
    for name in sorted(expected):
        if name not in state:
            raise LayoutMismatch(f"tensor {name} is missing (the repository's model has it)", tensor=name)
    for name, tensor in sorted(state.items()):
        spec = expected.get(name)
        if spec is None:
            raise LayoutMismatch(f"tensor {name} is not in the repository's model", tensor=name)
        dtype = DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype))
        if dtype != spec.dtype:
            raise LayoutMismatch(f"tensor {name} has dtype {dtype}, the repository expects {spec.dtype}", tensor=name)
        if tuple(tensor.shape) != spec.shape:
            raise LayoutMismatch(f"tensor {name} has shape {tuple(tensor.shape)}, the repository expects "
                                 f"{spec.shape}", tensor=name)
