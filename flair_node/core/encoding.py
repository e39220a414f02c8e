"""Canonical msgpack encoding: the bytes that ids are hashes of.

Canonical means one value has exactly one encoding: maps with string keys sorted by their UTF-8 bytes, the
smallest integer and length forms (msgpack's defaults), no floats (their text forms and NaNs differ between
writers), only str/bytes/int/bool/None/list/dict. ``decode`` refuses any input whose re-encoding differs, so
a record read back from disk or the network hashes to the id it was stored under, or is rejected.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import IntegrityError, InvalidInput

#: Upper bound on one encoded record; payloads (tensors) travel as blobs, never inside records.
MAX_RECORD_BYTES = 1 << 20

Value = None | bool | int | str | bytes | list["Value"] | dict[str, "Value"]


def _canonical(value: Any, path: str) -> Any:
    if value is None or isinstance(value, bool | str | bytes):
        return value
    if isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 64):
            raise InvalidInput(f"integer at {path or 'top'} does not fit in 64 bits")
        return value
    if isinstance(value, list | tuple):
        return [_canonical(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key in sorted(value, key=lambda k: k.encode() if isinstance(k, str) else b""):
            if not isinstance(key, str):
                raise InvalidInput(f"map key {key!r} at {path or 'top'} is not a string")
            out[key] = _canonical(value[key], f"{path}.{key}")
        return out
    if isinstance(value, float):
        raise InvalidInput(f"float at {path or 'top'}: canonical records hold no floats (use strings)")
    raise InvalidInput(f"{type(value).__name__} at {path or 'top'} cannot be encoded")


def encode(value: Any) -> bytes:
    """The canonical msgpack bytes of ``value``."""
    data: bytes = msgpack.packb(_canonical(value, ""), use_bin_type=True)
    if len(data) > MAX_RECORD_BYTES:
        raise InvalidInput(f"record of {len(data)} bytes exceeds the {MAX_RECORD_BYTES}-byte limit")
    return data


def decode(data: bytes) -> Any:
    """Decode canonical msgpack; anything oversized, malformed or non-canonical raises ``IntegrityError``."""
    if len(data) > MAX_RECORD_BYTES:
        raise IntegrityError(f"record of {len(data)} bytes exceeds the {MAX_RECORD_BYTES}-byte limit")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise IntegrityError(f"record is not valid msgpack: {exc}") from exc
    try:
        again = encode(value)
    except InvalidInput as exc:
        raise IntegrityError(f"record is not canonical: {exc}") from exc
    if again != data:
        raise IntegrityError("record is not in canonical form (key order or integer width differ)")
    return value
