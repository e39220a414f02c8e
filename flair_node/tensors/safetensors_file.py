"""Safetensors files read and written in pieces, without torch: a header parsed and checked on its own, then each
tensor's bytes as ranges of the file. This is how weights stream through a node (``storage.pieces``): a commit
reads a file range by range and a checkout writes one piece by piece, so memory does not grow with the model.

A file is untrusted until ``read_header`` has checked it: its header length bounded and within the file, the
header a JSON object nested at most 3 deep, every tensor of a known dtype with a shape whose bytes are exactly its
range, and the ranges in order, back to back, covering the data to its last byte (what the safetensors library
itself requires), so a range read later can never point outside the tensor it belongs to.

``canonical`` gives the one header Flair writes for a set of tensors: tensors ordered by the width of their dtype,
widest first, then by name (the order the safetensors library uses, which keeps every tensor aligned to its
width), offsets back to back, no metadata, padded with spaces to 8 bytes. Equal weights give equal bytes, which is
what lets unchanged pieces of two commits be the same blocks.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from ..core.encoding import loads_json
from ..core.errors import IntegrityError, LayoutMismatch, NotSafetensors
from ..core.objects import TensorSpec

#: Bytes of each dtype's elements, by its safetensors name: the dtypes a model Flair stores may hold.
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
#: And the unsigned ones, which only ``bitdelta-v1`` payloads hold (``tensors.codec``).
ALL_DTYPE_SIZES = {**DTYPE_SIZES, "U16": 2, "U32": 4, "U64": 8}
#: Largest header accepted (the format's own limit is 100 MB).
MAX_HEADER_BYTES = 100_000_000
#: Deepest nesting in a header: the format's is 3 (the header object, a tensor's entry, its shape or offsets).
MAX_HEADER_DEPTH = 3
#: Most dimensions a tensor may have (torch's own limit is 64; no model layer has more than a handful).
MAX_DIMS = 16
#: Longest tensor name accepted, in characters.
MAX_NAME = 1024


@dataclass(frozen=True)
class Entry:
    """A tensor of a file: its spec and its bytes' range in the data section (after the header)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.dtype, self.shape)


@dataclass(frozen=True)
class Header:
    """A checked header: its bytes as found (length prefix included) and its tensors in data order."""

    raw: bytes
    entries: tuple[Entry, ...]

    @property
    def data_start(self) -> int:
        return len(self.raw)

    @property
    def size(self) -> int:
        """Bytes of the whole file: header and data."""
        return self.data_start + (self.entries[-1].end if self.entries else 0)

    def layout(self) -> tuple[TensorSpec, ...]:
        """Its tensors' specs sorted by name: a repository's layout (``safetensors_io.layout_of``)."""
        return tuple(sorted((e.spec for e in self.entries), key=lambda s: s.name))


def read_header(read: Callable[[int], bytes], size: int | None, source: str, *,
                dtypes: Mapping[str, int] = DTYPE_SIZES, header_at_most: int | None = None) -> Header:
    """The header of a safetensors file of ``size`` bytes (None: as many as its header says) whose bytes
    ``read(n)`` gives in order (fewer than ``n`` only at the end); ``NotSafetensors`` naming ``source`` unless it
    passes every check in the module docstring. A tensor's dtype must be one of ``dtypes``; the header, its
    length prefix included, at most ``header_at_most`` bytes where that is given."""
    prefix = read(8)
    if len(prefix) < 8:
        raise NotSafetensors(f"{source} is not a safetensors file: only {len(prefix)} bytes")
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_BYTES or size is not None and 8 + length > size \
            or header_at_most is not None and 8 + length > header_at_most:
        raise NotSafetensors(f"{source} is not a safetensors file: header length {length} does not fit the file")
    text = read(length)
    if len(text) < length:
        raise NotSafetensors(f"{source} is not a safetensors file: it ends inside its header")
    try:
        header = loads_json(text, max_depth=MAX_HEADER_DEPTH, what="header")
    except IntegrityError as exc:
        raise NotSafetensors(f"{source} is not a safetensors file: {exc}") from None
    if not isinstance(header, dict):
        raise NotSafetensors(f"{source} is not a safetensors file: header is not a JSON object")
    entries = sorted((_entry(name, value, source, dtypes) for name, value in header.items() if name != "__metadata__"),
                     key=lambda e: (e.begin, e.end))
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise NotSafetensors(f"{source}: __metadata__ is not an object of strings")
    at = 0
    for e in entries:
        if e.begin != at:
            raise NotSafetensors(f"{source}: tensor {e.name} starts at byte {e.begin} of the data, where the one "
                                 f"before it ends at {at} (tensors lie back to back)")
        at = e.end
    if size is not None and 8 + length + at != size:
        raise NotSafetensors(f"{source}: its tensors hold {at} bytes, the file has {size - 8 - length} after its "
                             "header")
    return Header(prefix + text, tuple(entries))


def _entry(name: str, value: object, source: str, dtypes: Mapping[str, int]) -> Entry:
    if not name or len(name) > MAX_NAME:
        raise NotSafetensors(f"{source}: a tensor name is 1 to {MAX_NAME} characters")
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise NotSafetensors(f"{source}: tensor {name} is not described by dtype, shape and data_offsets")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if dtype not in dtypes:
        raise NotSafetensors(f"{source}: tensor {name} has unsupported dtype {dtype!r} (Flair stores "
                             f"{', '.join(dtypes)})")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_natural(d) for d in shape):
        raise NotSafetensors(f"{source}: tensor {name} has shape {shape!r}: a list of at most {MAX_DIMS} "
                             "non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_natural(o) for o in offsets) \
            or offsets[0] > offsets[1]:
        raise NotSafetensors(f"{source}: tensor {name} has data_offsets {offsets!r}: [begin, end], begin <= end")
    entry = Entry(name, dtype, tuple(shape), offsets[0], offsets[1])
    if entry.spec.numel * dtypes[dtype] != entry.nbytes:
        raise NotSafetensors(f"{source}: tensor {name} of shape {tuple(shape)} and dtype {dtype} would hold "
                             f"{entry.spec.numel * dtypes[dtype]} bytes, its offsets give {entry.nbytes}")
    return entry


def _natural(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 62


def canonical(specs: Iterable[TensorSpec]) -> Header:
    """The header Flair writes for tensors ``specs`` (see the module docstring)."""
    ordered = sorted(specs, key=lambda s: (-DTYPE_SIZES[s.dtype], s.name))
    entries, at = [], 0
    for spec in ordered:
        size = spec.numel * DTYPE_SIZES[spec.dtype]
        entries.append(Entry(spec.name, spec.dtype, spec.shape, at, at + size))
        at += size
    text = json.dumps({e.name: {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [e.begin, e.end]}
                       for e in entries}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return Header(struct.pack("<Q", len(text)) + text, tuple(entries))


#: Reads up to n bytes of an entry's range from an offset within it.
RangeReader = Callable[[Entry, int, int], "bytes | memoryview"]


@dataclass(frozen=True)
class Source:
    """Tensors to store, as the canonical safetensors file of them: ``header`` (``canonical``) and ``read``, which
    gives bytes of a tensor's range (an entry of ``header``) from an offset within it."""

    header: Header
    read: RangeReader

    def layout(self) -> tuple[TensorSpec, ...]:
        return self.header.layout()

    def segments(self, part: int) -> Iterator[Iterator[bytes | memoryview]]:
        """The file as segments (its header, then each tensor in file order), each in parts of ``part`` bytes
        (the last part of a segment may be shorter): how ``storage.pieces`` cuts it."""
        raw = memoryview(self.header.raw)
        yield (raw[at:at + part] for at in range(0, len(raw), part))
        for entry in self.header.entries:
            yield self.parts(entry, part)

    def parts(self, entry: Entry, part: int) -> Iterator[bytes | memoryview]:
        """``entry``'s bytes in parts of ``part`` bytes (the last may be shorter)."""
        for at in range(0, entry.nbytes, part):
            want = min(part, entry.nbytes - at)
            data = self.read(entry, at, want)
            if len(data) != want:
                raise IntegrityError(f"tensor {entry.name} gave {len(data)} bytes where {want} were expected: its "
                                     "file changed while it was read")
            yield data


class _Opened:
    """A ``Source`` over files this holds open: ``with ... as source``, closed at the end."""

    source: Source

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Source:
        return self.source

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileSource(_Opened):
    """The tensors of the safetensors file at ``path`` as a ``Source`` (``source``), read range by range with
    ``pread``; a context manager that holds the file open. ``NotSafetensors`` (from ``read_header``) if the file
    is not one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 (closed by __exit__ or close)
        try:
            size = os.fstat(self._file.fileno()).st_size
            found = read_header(self._file.read, size, os.path.basename(self.path))
        except BaseException:
            self._file.close()
            raise
        self._start = {e.name: found.data_start + e.begin for e in found.entries}
        self.source = Source(canonical(e.spec for e in found.entries), self._read)

    def _read(self, entry: Entry, offset: int, size: int) -> bytes:
        return os.pread(self._file.fileno(), size, self._start[entry.name] + offset)

    def close(self) -> None:
        self._file.close()


#: The index of a Hugging Face sharded checkpoint, in its folder.
INDEX_NAME = "model.safetensors.index.json"
#: Largest index accepted, and most shards.
MAX_INDEX_BYTES = 64 << 20
MAX_SHARDS = 10_000


class ShardedSource(_Opened):
    """The tensors of a Hugging Face sharded checkpoint (``index``: its ``model.safetensors.index.json``, whose
    ``weight_map`` names the shard of each tensor, each a safetensors file in the same folder) as one ``Source``
    (``source``), the file Flair stores. Every shard's header is checked (``read_header``) and must hold exactly
    the tensors the index maps to it; shard names are plain file names ending in ``.safetensors``, so an index
    cannot point outside its folder. Shards are opened one at a time as tensors are read. A context manager, like
    ``FileSource``."""

    def __init__(self, index: str | os.PathLike[str]) -> None:
        self.index = os.fspath(index)
        folder = os.path.dirname(self.index)
        what = os.path.basename(self.index)
        if os.path.getsize(self.index) > MAX_INDEX_BYTES:
            raise NotSafetensors(f"{what} is larger than {MAX_INDEX_BYTES >> 20} MiB")
        with open(self.index, "rb") as f:
            try:
                document = loads_json(f.read(), max_depth=4, what=what)
            except IntegrityError as exc:
                raise NotSafetensors(f"{what} is not a sharded checkpoint's index: {exc}") from None
        weight_map = document.get("weight_map") if isinstance(document, dict) else None
        if not isinstance(weight_map, dict) or not weight_map \
                or not all(isinstance(v, str) for v in weight_map.values()):
            raise NotSafetensors(f"{what} has no weight_map of tensor names to shard files")
        shards = sorted(set(weight_map.values()))
        if len(shards) > MAX_SHARDS:
            raise NotSafetensors(f"{what} names {len(shards)} shards, more than {MAX_SHARDS}")
        self._where: dict[str, tuple[str, int]] = {}  # tensor -> (shard path, its data's offset in the shard)
        specs = []
        for shard in shards:
            if shard != os.path.basename(shard) or shard in (".", "..") or "\\" in shard \
                    or not shard.endswith(".safetensors"):
                raise NotSafetensors(f"{what} names shard {shard!r}: a file name in its folder, ending in "
                                     ".safetensors")
            path = os.path.join(folder, shard)
            try:
                with open(path, "rb") as f:
                    header = read_header(f.read, os.fstat(f.fileno()).st_size, shard)
            except FileNotFoundError:
                raise NotSafetensors(f"{what} names shard {shard}, which is not in {folder}") from None
            mapped = {name for name, file in weight_map.items() if file == shard}
            held = {e.name for e in header.entries}
            if held != mapped:
                odd = sorted(held ^ mapped)[0]
                where = "holds" if odd in held else "lacks"
                raise NotSafetensors(f"shard {shard} {where} tensor {odd}, which {what} maps "
                                     f"{'elsewhere' if odd in held else 'to it'}")
            for e in header.entries:
                self._where[e.name] = (path, header.data_start + e.begin)
                specs.append(e.spec)
        self._open: tuple[str, BinaryIO] | None = None
        self.source = Source(canonical(specs), self._read)

    def _read(self, entry: Entry, offset: int, size: int) -> bytes:
        path, start = self._where[entry.name]
        if self._open is None or self._open[0] != path:
            self.close()
            self._open = (path, open(path, "rb"))  # noqa: SIM115 (closed by close)
        return os.pread(self._open[1].fileno(), size, start + offset)

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None


def open_source(path: str | os.PathLike[str]) -> FileSource | ShardedSource:
    """The weights at ``path``: a safetensors file, a sharded checkpoint's index, or a folder holding either
    (``model.safetensors.index.json`` first, then ``model.safetensors``). ``NotSafetensors`` if none is there."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in (INDEX_NAME, "model.safetensors"):
            if os.path.isfile(os.path.join(path, name)):
                return open_source(os.path.join(path, name))
        raise NotSafetensors(f"folder {path} holds neither {INDEX_NAME} nor model.safetensors")
    if path.endswith(".index.json"):
        return ShardedSource(path)
    return FileSource(path)


def shard_plan(header: Header, max_bytes: int) -> list[list[Entry]]:
    """``header``'s tensors split, in order, into shards of at most ``max_bytes`` of data each (a tensor larger
    than that alone in its own): how a checkout writes a sharded checkpoint."""
    shards: list[list[Entry]] = [[]]
    size = 0
    for entry in header.entries:
        if shards[-1] and size + entry.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    return shards


def check_layout(found: Iterable[TensorSpec], layout: Iterable[TensorSpec], *,
                 of: str = "the commit it applies to") -> None:
    """``LayoutMismatch`` naming the first tensor that is missing, extra, or of another dtype or shape than in
    ``layout``, which is that ``of`` (in the message)."""
    expected = {spec.name: spec for spec in layout}
    given = {spec.name: spec for spec in found}
    for name in sorted(expected):
        if name not in given:
            raise LayoutMismatch(f"tensor {name} is missing ({of} has it)", tensor=name)
    for name, spec in sorted(given.items()):
        want = expected.get(name)
        if want is None:
            raise LayoutMismatch(f"tensor {name} is not in {of}", tensor=name)
        if spec.dtype != want.dtype:
            raise LayoutMismatch(f"tensor {name} has dtype {spec.dtype}, {of} has {want.dtype}", tensor=name)
        if spec.shape != want.shape:
            raise LayoutMismatch(f"tensor {name} has shape {spec.shape}, {of} has {want.shape}", tensor=name)


__all__ = ["ALL_DTYPE_SIZES", "DTYPE_SIZES", "INDEX_NAME", "Entry", "FileSource", "Header", "ShardedSource", "Source",
           "canonical", "check_layout", "open_source", "read_header", "shard_plan"]
