"""state_dict <-> safetensors bytes, and the repository's tensor layout. Never pickle, never ``torch.load``.

Untrusted bytes are checked before any parser sees them: ``check_header`` is ``safetensors_file.read_header``
(the header bounded, nested at most 3 deep, and every tensor's range exactly its bytes), so a hostile header is
``NotSafetensors``, never a ``RecursionError`` or a read out of bounds.

``state_source``, ``computed_source``, ``streamed_source`` and ``LazyState`` are the streaming side
(``safetensors_file``): tensors as the canonical file Flair stores, and tensors read back from such a file one at a
time (or a range of one at a time, ``Ranges``), never the file whole.
Writing files durably is storage's job (``storage.atomic.atomic_write(path, save_bytes(state))``).
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
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
#: A value that two ranges of files (from, to) share only if their bytes are equal, or None where that is not
#: known (``storage.pieces.Snapshot.span``, with the key it is sealed under).
Identify = Callable[[int, int], Hashable | None]


@dataclass(frozen=True)
class Ranges:
    """One tensor's bytes, read by ranges: ``readinto(offset, buffer)`` fills ``buffer`` from the tensor's byte
    ``offset``, and ``identify(start, stop)`` is what ``Identify`` is for the tensor's bytes ``start`` to ``stop``.
    A merge finds a tensor some input left unchanged by it, without reading either where both are stored in the
    same pieces, and reads the others a part at a time (``fixedpoint.combine_parts``)."""

    spec: TensorSpec
    nbytes: int
    readinto: Callable[[int, memoryview], None]
    identify: Callable[[int, int], Hashable | None]

    def tensor(self) -> torch.Tensor:
        """The whole tensor, read at once."""
        flat = torch.empty(self.nbytes, dtype=torch.uint8)
        if self.nbytes:
            self.readinto(0, flat.numpy().data)
        return flat.view(TORCH_DTYPES[self.spec.dtype]).reshape(self.spec.shape)

    def values(self, part: int) -> Iterator[torch.Tensor]:
        """The tensor's values, flat, ``part`` bytes at a time (a whole number of values), in one buffer reused
        from part to part."""
        dtype = TORCH_DTYPES[self.spec.dtype]
        buffer = torch.empty(min(part, self.nbytes), dtype=torch.uint8)
        for at in range(0, self.nbytes, part):
            n = min(part, self.nbytes - at)
            self.readinto(at, buffer.numpy().data[:n])
            yield buffer[:n].view(dtype)

    def parts(self, part: int) -> Iterator[memoryview]:
        """The tensor's bytes, ``part`` at a time, each in a buffer of its own (a reader may hold it)."""
        for at in range(0, self.nbytes, part):
            buffer = memoryview(bytearray(min(part, self.nbytes - at)))
            self.readinto(at, buffer)
            yield buffer


def computed_ranges(sources: Sequence[Ranges], compute: Callable[[list[torch.Tensor], torch.Tensor], None], *,
                    part: int, dtype: torch.dtype | None = None) -> Ranges:
    """A tensor of ``sources[0]``'s spec read by ranges, each computed by ``compute(values, out)`` from the same
    range of every source: ``values`` and ``out`` are flat views as ``dtype`` (default: the spec's), at most
    ``part`` bytes (a whole number of values) at a time, the sources read into buffers reused from range to
    range."""
    spec = sources[0].spec
    view = TORCH_DTYPES[spec.dtype] if dtype is None else dtype
    buffers = [torch.empty(part, dtype=torch.uint8) for _ in sources]

    def readinto(offset: int, buffer: memoryview) -> None:
        if not len(buffer):
            return
        out = torch.frombuffer(buffer, dtype=torch.uint8)
        for at in range(0, len(buffer), part):
            n = min(part, len(buffer) - at)
            values = []
            for source, scratch in zip(sources, buffers, strict=True):
                source.readinto(offset + at, scratch.numpy().data[:n])
                values.append(scratch[:n].view(view))
            compute(values, out[at:at + n].view(view))

    return Ranges(spec, sources[0].nbytes, readinto, lambda start, stop: None)


def ranges_of(state: Mapping[str, torch.Tensor], name: str) -> Ranges:
    """Tensor ``name`` of ``state`` read by ranges: from its file (a ``LazyState``'s), computed a range at a time
    (any mapping with a ``ranges`` method, such as a round's input moved onto the head), or from the tensor."""
    ranges = getattr(state, "ranges", None)
    if callable(ranges):
        return ranges(name)  # type: ignore[no-any-return]
    tensor = state[name]
    data = _bytes_of(tensor)

    def readinto(offset: int, buffer: memoryview) -> None:
        buffer[:] = data[offset:offset + len(buffer)]

    return Ranges(layout_of({name: tensor})[0], len(data), readinto, lambda start, stop: None)


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
    order is the file's. ``identify``, if given, tells equal ranges of files apart from others (``Identify``)."""

    def __init__(self, header: Header, readinto: ReadInto, identify: Identify | None = None) -> None:
        self.header = header
        self._entries = {entry.name: entry for entry in header.entries}
        self._readinto, self._identify = readinto, identify

    def __getitem__(self, name: str) -> torch.Tensor:
        return _tensor(self._entries[name], self._fill)

    def _fill(self, entry: Entry, buffer: memoryview) -> None:
        self._readinto(self.header.data_start + entry.begin, buffer)

    def ranges(self, name: str) -> Ranges:
        """Tensor ``name`` read by ranges of its bytes, none read until asked for."""
        entry = self._entries[name]
        start, identify = self.header.data_start + entry.begin, self._identify

        def readinto(offset: int, buffer: memoryview) -> None:
            self._readinto(start + offset, buffer)

        def identified(begin: int, end: int) -> Hashable | None:
            return None if identify is None else identify(start + begin, start + end)

        return Ranges(entry.spec, entry.nbytes, readinto, identified)

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
        super().__init__(source.header, self._read)
        self._source = source
        self._starts = [source.header.data_start + entry.begin for entry in source.header.entries]

    def _read(self, start: int, buffer: memoryview) -> None:
        """The file's bytes from ``start``, within one tensor (as ``LazyState`` reads), a MiB at a time."""
        index = bisect.bisect_right(self._starts, start) - 1
        entry, offset = self.header.entries[index], start - self._starts[index]
        for at in range(0, len(buffer), 1 << 20):
            want = min(1 << 20, len(buffer) - at)
            data = self._source.read(entry, offset + at, want)
            if len(data) != want:
                raise IntegrityError(f"tensor {entry.name} gave {len(data)} bytes where {want} were expected: its "
                                     "file changed while it was read")
            buffer[at:at + want] = data


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


def streamed_source(layout: Sequence[TensorSpec], parts: Callable[[str], Iterable[bytes | memoryview]]) -> Source:
    """The canonical file of tensors of ``layout``, each tensor's bytes given by ``parts(name)`` as the file is read
    in order (as ``storage.pieces`` reads it): nothing is computed ahead, and nothing held but the part being read
    (a reader may keep the parts it was given). A read out of that order starts the tensor's parts again. A tensor
    whose parts add up to more or fewer bytes than its spec's is an ``IntegrityError``."""
    # the tensor being read, its parts, and where
    name, at, part = "", 0, memoryview(b"")
    given: Iterator[bytes | memoryview] = iter(())

    def read(entry: Entry, offset: int, size: int) -> memoryview:
        nonlocal name, given, at, part
        if name != entry.name or offset < at:
            name, given, at, part = entry.name, iter(parts(entry.name)), 0, memoryview(b"")
        taken: list[memoryview] = []
        position, end = offset, offset + size
        while position < end:
            if position >= at + len(part):
                at += len(part)
                following = next(given, None)
                if following is None:
                    raise IntegrityError(f"tensor {entry.name} was computed as {at} bytes, not {entry.nbytes}")
                part = memoryview(following).cast("B")
                continue
            stop = min(len(part), end - at)
            taken.append(part[position - at:stop])
            position = at + stop
        if end == entry.nbytes and (at + len(part) != end or next(given, None) is not None):
            raise IntegrityError(f"tensor {entry.name} was computed as more than its {entry.nbytes} bytes")
        return taken[0] if len(taken) == 1 else memoryview(b"".join(taken))

    return Source(canonical(layout), read)
