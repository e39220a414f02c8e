"""state_dict <-> safetensors bytes, and the repository's tensor layout. Never pickle, never ``torch.load``.

Untrusted bytes are checked before any parser sees them: ``check_header`` is ``safetensors_file.read_header``
(the header bounded, nested at most 3 deep, and every tensor's range exactly its bytes), so a hostile header is
``NotSafetensors``, never a ``RecursionError`` or a read out of bounds.

``state_source``, ``computed_source`` and ``LazyState`` are the streaming side (``safetensors_file``): tensors as
the canonical file Flair stores, and tensors read back from such a file one at a time, never the file whole.
Writing files durably is storage's job (``storage.atomic.atomic_write(path, save_bytes(state))``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import safetensors.torch
import torch

from ..core.errors import IntegrityError, NotSafetensors
from ..core.objects import TensorSpec
from . import safetensors_file
from .safetensors_file import Entry, Header, Source, canonical

StateDict = dict[str, torch.Tensor]

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
TORCH_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


def check_header(data: bytes | memoryview, source: str, *,
                 dtypes: Mapping[str, int] = safetensors_file.DTYPE_SIZES) -> Header:
    """The checked header of safetensors ``data`` (``safetensors_file.read_header``, its tensors of ``dtypes``);
    ``NotSafetensors`` if it fails a check."""
    return safetensors_file.read_header(io.BytesIO(data).read, len(data), source, dtypes=dtypes)


def load_bytes(data: bytes, source: str = "data") -> StateDict:
    """The tensors in safetensors ``data``; anything else raises ``NotSafetensors``."""
    check_header(data, source)
    try:
        state = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError and plain errors alike
        raise NotSafetensors(f"{source} is not a valid safetensors file: {exc}") from None
    return state


def load_file(path: str | Path) -> StateDict:
    path = Path(path)
    return load_bytes(path.read_bytes(), path.name)


def save_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    return bytes(safetensors.torch.save({k: v.contiguous() for k, v in state.items()}))


def layout_of(state: Mapping[str, torch.Tensor]) -> tuple[TensorSpec, ...]:
    """The specs of ``state``'s tensors sorted by name (a dtype Flair does not store keeps torch's name, which
    ``check_layout`` then refuses)."""
    return tuple(TensorSpec(name, DTYPE_NAMES.get(t.dtype, str(t.dtype)), tuple(t.shape))
                 for name, t in sorted(state.items()))


def check_layout(state: Mapping[str, torch.Tensor], layout: Sequence[TensorSpec]) -> None:
    """Raise ``LayoutMismatch`` naming the first tensor that is missing, extra, or of another dtype or shape."""
    safetensors_file.check_layout(layout_of(state), layout)


def state_source(state: Mapping[str, torch.Tensor]) -> Source:
    """``state`` as the canonical safetensors file of it (``safetensors_file.Source``), its tensors' bytes read in
    place (a tensor that is not contiguous is copied once)."""
    flat = {name: _bytes_of(t) for name, t in state.items()}

    def read(entry: Entry, offset: int, size: int) -> memoryview:
        return flat[entry.name][offset:offset + size]

    return Source(canonical(layout_of(state)), read)


#: Fills a buffer with a file's bytes from an offset (``storage.pieces.Snapshot.readinto``).
ReadInto = Callable[[int, memoryview], None]


def load_source(source: Source) -> StateDict:
    """Every tensor of ``source`` (a file or a sharded checkpoint, ``safetensors_file``), in memory."""
    return dict(SourceState(source))


def _tensor(entry: Entry, fill: Callable[[Entry, memoryview], None]) -> torch.Tensor:
    """The tensor ``entry`` describes, allocated once and its bytes filled in place by ``fill``."""
    flat = torch.empty(entry.nbytes, dtype=torch.uint8)
    if entry.nbytes:
        fill(entry, flat.numpy().data)
    return flat.view(TORCH_DTYPES[entry.dtype]).reshape(entry.shape)


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    """``tensor``'s bytes in place (copied once if it is not contiguous)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data


class LazyState(Mapping[str, torch.Tensor]):
    """The tensors of a checked ``header`` as a mapping that reads each one from the file (``readinto``) when it
    is asked for, and keeps none: iterating it holds one tensor at a time (``dict`` of it reads them all). Its
    order is the file's."""

    def __init__(self, header: Header, readinto: ReadInto) -> None:
        self.header = header
        self._entries = {entry.name: entry for entry in header.entries}
        self._readinto = readinto

    def __getitem__(self, name: str) -> torch.Tensor:
        return _tensor(self._entries[name], self._fill)

    def _fill(self, entry: Entry, buffer: memoryview) -> None:
        self._readinto(self.header.data_start + entry.begin, buffer)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:  # Mapping's own would read the tensor to find out
        return name in self._entries

    def spec(self, name: str) -> TensorSpec:
        return self._entries[name].spec


class SourceState(LazyState):
    """The tensors of ``source`` (a file or a sharded checkpoint, ``safetensors_file``) as a ``LazyState``: each
    read from its file when it is asked for."""

    def __init__(self, source: Source) -> None:
        super().__init__(source.header, self._unused)
        self._source = source

    @staticmethod
    def _unused(start: int, buffer: memoryview) -> None:
        raise AssertionError("a SourceState reads by tensor")

    def _fill(self, entry: Entry, buffer: memoryview) -> None:
        at = 0
        for part in self._source.parts(entry, 1 << 20):
            buffer[at:at + len(part)] = part
            at += len(part)


def spec_of(state: Mapping[str, torch.Tensor], name: str) -> TensorSpec | None:
    """The spec of tensor ``name`` in ``state`` (None if it has none), read from a ``LazyState``'s header (or the
    ``spec`` of any mapping that has one) without reading the tensor."""
    if name not in state:
        return None
    spec = getattr(state, "spec", None)
    if callable(spec):
        return spec(name)  # type: ignore[no-any-return]
    return layout_of({name: state[name]})[0]


def computed_source(layout: Sequence[TensorSpec], compute: Callable[[str], torch.Tensor]) -> Source:
    """The canonical file of tensors of ``layout`` computed one at a time by ``compute(name)`` as the file is
    read in order (as ``storage.pieces`` reads it): the tensor being read is held, and the next one is computed
    meanwhile on one worker thread, so reading and computing the inputs overlap with sealing and writing the
    output. ``compute`` is only ever called on that thread, one call at a time."""
    header = canonical(layout)
    order = [entry.name for entry in header.entries]
    position = {name: i for i, name in enumerate(order)}
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="computed-source")
    ahead: dict[str, Future[torch.Tensor]] = {}
    name, data = "", memoryview(b"")  # the tensor being read, and its bytes

    def start(i: int) -> None:
        if i < len(order) and order[i] not in ahead:
            ahead[order[i]] = worker.submit(compute, order[i])

    def read(entry: Entry, offset: int, size: int) -> memoryview:
        nonlocal name, data
        if name != entry.name or not data:
            i = position[entry.name]
            start(i)
            start(i + 1)
            try:
                tensor = ahead.pop(entry.name).result()
            finally:
                if i + 1 >= len(order):
                    worker.shutdown(wait=False, cancel_futures=True)
            if layout_of({entry.name: tensor}) != (entry.spec,):
                raise IntegrityError(f"tensor {entry.name} was computed as {layout_of({entry.name: tensor})}, "
                                     f"not {entry.spec}")
            name, data = entry.name, _bytes_of(tensor)
        return data[offset:offset + size]

    return Source(header, read)
