"""The few protobuf wire-format pieces IPFS needs (dag-pb nodes, UnixFS data, Bitswap messages).

Hand-written rather than generated so every length is checked against the buffer it points into: bytes from the
network are parsed without trusting a single declared size. Pure functions over bytes.
"""

from __future__ import annotations

from typing import TypeVar

from .errors import IntegrityError

VARINT, LENGTH_DELIMITED = 0, 2
Buffer = TypeVar("Buffer", bytes, memoryview)  # a memoryview is parsed without copying what it points into


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """The unsigned varint at ``data[pos:]`` and the position after it."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise IntegrityError("truncated or oversized varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def int_field(number: int, value: int) -> bytes:
    return key(number, VARINT) + varint(value)


def bytes_field(number: int, value: bytes) -> bytes:
    return key(number, LENGTH_DELIMITED) + varint(len(value)) + value


def fields(data: Buffer) -> list[tuple[int, int | Buffer]]:
    """Protobuf fields of ``data`` in order: (number, int for varints | a slice of ``data`` for length-delimited)."""
    out: list[tuple[int, int | Buffer]] = []
    pos = 0
    while pos < len(data):
        tag, pos = read_varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == VARINT:
            value, pos = read_varint(data, pos)
            out.append((number, value))
        elif wire == LENGTH_DELIMITED:
            length, pos = read_varint(data, pos)
            if pos + length > len(data):
                raise IntegrityError("protobuf field runs past the end of its message")
            out.append((number, data[pos:pos + length]))
            pos += length
        else:
            raise IntegrityError(f"unsupported protobuf wire type {wire}")
    return out
