"""Canonical msgpack encoding: the bytes that ids are hashes of; and bounded JSON reading for untrusted files.

Canonical means one value has exactly one encoding: maps with string keys sorted by their UTF-8 bytes, the
smallest integer and length forms (msgpack's defaults), no floats (their text forms and NaNs differ between
writers), only str/bytes/int/bool/None/list/dict, lists and maps nested at most ``MAX_DEPTH`` deep. ``decode``
refuses any input whose re-encoding differs, so a record read back from disk or the network hashes to the id it
was stored under, or is rejected.

Bounds, so that no input makes a decoder recurse without limit: a record is at most ``MAX_RECORD_BYTES``;
msgpack's C unpacker refuses nesting past its fixed stack (1024 levels) and ``decode`` then refuses anything
nested deeper than ``MAX_DEPTH`` before it re-encodes (the re-encoding recurses once per level, so it never
goes deeper than that). ``loads_json`` measures the nesting of JSON text without parsing it (a few passes of
C-speed byte operations, no recursion) before ``json.loads``, which recurses once per level; safetensors
headers and proof bundles are read through it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import msgpack

from .errors import IntegrityError, InvalidInput

#: Upper bound on one encoded record; payloads (tensors) travel as blobs, never inside records.
MAX_RECORD_BYTES = 1 << 20
#: Deepest nesting of lists and maps in a record (a top-level map is depth 1). Flair's records nest at most
#: about 6 deep; the bound keeps every walk over a decoded value far from Python's recursion limit.
MAX_DEPTH = 32

Value = None | bool | int | str | bytes | list["Value"] | dict[str, "Value"]


def _canonical(value: Any, path: str, depth: int) -> Any:
    if value is None or isinstance(value, bool | str | bytes):
        return value
    if isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 64):
            raise InvalidInput(f"integer at {path or 'top'} does not fit in 64 bits")
        return value
    if isinstance(value, list | tuple | dict) and depth >= MAX_DEPTH:
        raise InvalidInput(f"lists and maps are nested more than {MAX_DEPTH} deep at {path[:200] or 'top'}")
    if isinstance(value, list | tuple):
        return [_canonical(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key in sorted(value, key=lambda k: k.encode() if isinstance(k, str) else b""):
            if not isinstance(key, str):
                raise InvalidInput(f"map key {key!r:.80} at {path or 'top'} is not a string")
            out[key] = _canonical(value[key], f"{path}.{key[:40]}", depth + 1)
        return out
    if isinstance(value, float):
        raise InvalidInput(f"float at {path or 'top'}: canonical records hold no floats (use strings)")
    raise InvalidInput(f"{type(value).__name__} at {path or 'top'} cannot be encoded")


def encode(value: Any) -> bytes:
    """The canonical msgpack bytes of ``value``; ``InvalidInput`` for what has none (see the module docstring)."""
    data: bytes = msgpack.packb(_canonical(value, "", 0), use_bin_type=True)
    if len(data) > MAX_RECORD_BYTES:
        raise InvalidInput(f"record of {len(data)} bytes exceeds the {MAX_RECORD_BYTES}-byte limit")
    return data


def decode(data: bytes) -> Any:
    """Decode canonical msgpack; anything oversized, too deep, malformed or non-canonical raises
    ``IntegrityError``."""
    if len(data) > MAX_RECORD_BYTES:
        raise IntegrityError(f"record of {len(data)} bytes exceeds the {MAX_RECORD_BYTES}-byte limit")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # StackError (too deep) is a ValueError
        raise IntegrityError(f"record is not valid msgpack: {exc}") from exc
    try:
        again = encode(value)
    except InvalidInput as exc:
        raise IntegrityError(f"record is not canonical: {exc}") from exc
    if again != data:
        raise IntegrityError("record is not in canonical form (key order or integer width differ)")
    return value


# -- JSON from untrusted files ---------------------------------------------------------------------------------

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # a string may hold brackets: skipped
_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth_within(data: bytes, limit: int) -> bool:
    """Whether the arrays and objects of JSON text ``data`` nest at most ``limit`` deep and balance, found
    without parsing it or recursing: each pass deletes the innermost pairs of brackets."""
    brackets = _JSON_STRING.sub(b"", data).translate(_SQUARE, _NOT_BRACKET)
    for _ in range(limit):
        if not brackets:
            return True
        brackets = brackets.replace(b"[]", b"")
    return not brackets


def loads_json(data: bytes, *, max_depth: int, what: str) -> Any:
    """``json.loads`` of untrusted ``data`` nested at most ``max_depth`` deep; ``IntegrityError`` naming ``what``
    if it is deeper, not UTF-8 or not JSON (NaN and Infinity included: JSON has no such numbers)."""
    data = bytes(data)
    if not json_depth_within(data, max_depth):
        raise IntegrityError(f"{what} is not JSON nested at most {max_depth} deep (or its brackets do not balance)")
    try:
        return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise IntegrityError(f"{what} is not JSON: {str(exc)[:200]}") from None


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is beyond a float's range")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
