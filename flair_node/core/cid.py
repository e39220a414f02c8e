"""Content identifiers as IPFS makes them: CIDv1 (raw or dag-pb, sha2-256, base32) and the dag-pb/UnixFS
protobuf encodings Kubo uses for files, so a payload's CID equals ``ipfs add --cid-version=1 --raw-leaves``.

Pure functions over bytes; nothing here stores or fetches anything.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import base58

from .errors import IntegrityError, InvalidInput
from .ids import Cid

RAW = 0x55
DAG_PB = 0x70
SHA2_256 = 0x12
UNIXFS_FILE = 2
_CODECS = {RAW: "raw", DAG_PB: "dag-pb"}


# -- varints and protobuf fields ----------------------------------------------------------------------------

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


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
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


def _field(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def _bytes_field(number: int, value: bytes) -> bytes:
    return _field(number, 2) + varint(len(value)) + value


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """Protobuf fields of ``data`` in order: (number, int for varints | bytes for length-delimited)."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            length, pos = read_varint(data, pos)
            if pos + length > len(data):
                raise IntegrityError("protobuf field runs past the end of its block")
            out.append((number, data[pos:pos + length]))
            pos += length
        else:
            raise IntegrityError(f"unsupported protobuf wire type {wire}")
    return out


# -- CIDs ---------------------------------------------------------------------------------------------------

def cid_for(codec: int, block: bytes) -> Cid:
    """The CIDv1 (sha2-256, base32) of ``block`` under ``codec``."""
    raw = varint(1) + varint(codec) + bytes([SHA2_256, 32]) + hashlib.sha256(block).digest()
    return Cid("b" + base64.b32encode(raw).decode("ascii").lower().rstrip("="))


@dataclass(frozen=True)
class ParsedCid:
    codec: int
    digest: bytes

    @property
    def key(self) -> str:
        """The sha2-256 digest in hex: where the block is stored."""
        return self.digest.hex()

    def check(self, block: bytes) -> None:
        if hashlib.sha256(block).digest() != self.digest:
            raise IntegrityError(f"block does not hash to its CID {self.text}", cid=self.text)

    @property
    def text(self) -> Cid:
        raw = varint(1) + varint(self.codec) + bytes([SHA2_256, 32]) + self.digest
        return Cid("b" + base64.b32encode(raw).decode("ascii").lower().rstrip("="))


def parse_cid(text: str) -> ParsedCid:
    """A CIDv1 in base32 (``b...``) or a CIDv0 (``Qm...``) with a sha2-256 multihash, raw or dag-pb."""
    try:
        if text.startswith("Qm") and len(text) == 46:
            raw = base58.b58decode(text)
            version, codec, pos = 0, DAG_PB, 0
        elif text.startswith("b") and len(text) < 200:
            body = text[1:].upper()
            raw = base64.b32decode(body + "=" * (-len(body) % 8))
            version, pos = read_varint(raw, 0)
            codec, pos = read_varint(raw, pos)
        else:
            raise ValueError("not a base32 CIDv1 or a CIDv0")
    except (ValueError, IntegrityError) as exc:
        raise InvalidInput(f"{text[:80]!r} is not a CID: {exc}", cid=text[:80]) from None
    if version not in (0, 1) or codec not in _CODECS or raw[pos:pos + 2] != bytes([SHA2_256, 32]) \
            or len(raw) != pos + 34:
        raise InvalidInput(f"{text[:80]!r} is not a sha2-256 raw or dag-pb CID", cid=text[:80])
    return ParsedCid(codec, raw[pos + 2:])


# -- dag-pb nodes holding UnixFS file data ------------------------------------------------------------------

@dataclass(frozen=True)
class Link:
    cid: Cid
    tsize: int  # cumulative size of the linked block and everything below it


@dataclass(frozen=True)
class FileNode:
    links: tuple[Link, ...]
    blocksizes: tuple[int, ...]  # file bytes under each link

    @property
    def filesize(self) -> int:
        return sum(self.blocksizes)


def encode_file_node(node: FileNode) -> bytes:
    """The dag-pb bytes Kubo writes for a UnixFS file node over ``links`` (links first, then Data)."""
    unixfs = _field(1, 0) + varint(UNIXFS_FILE) + _field(3, 0) + varint(node.filesize)
    for size in node.blocksizes:
        unixfs += _field(4, 0) + varint(size)
    out = b""
    for link in node.links:
        cid = parse_cid(link.cid)
        cid_bytes = varint(1) + varint(cid.codec) + bytes([SHA2_256, 32]) + cid.digest
        body = _bytes_field(1, cid_bytes) + _bytes_field(2, b"") + _field(3, 0) + varint(link.tsize)
        out += _bytes_field(2, body)
    return out + _bytes_field(1, unixfs)


def decode_file_node(block: bytes) -> FileNode:
    """A dag-pb UnixFS file node; anything else raises ``IntegrityError``."""
    links: list[Link] = []
    unixfs: bytes | None = None
    for number, value in _fields(block):
        if number == 2 and isinstance(value, bytes):
            cid_bytes, tsize = b"", 0
            for n, v in _fields(value):
                if n == 1 and isinstance(v, bytes):
                    cid_bytes = v
                elif n == 3 and isinstance(v, int):
                    tsize = v
            version, pos = read_varint(cid_bytes, 0)
            codec, pos = read_varint(cid_bytes, pos)
            if version != 1 or codec not in _CODECS or cid_bytes[pos:pos + 2] != bytes([SHA2_256, 32]) \
                    or len(cid_bytes) != pos + 34:
                raise IntegrityError("dag-pb link is not a sha2-256 CIDv1")
            links.append(Link(ParsedCid(codec, cid_bytes[pos + 2:]).text, tsize))
        elif number == 1 and isinstance(value, bytes):
            unixfs = value
    if unixfs is None:
        raise IntegrityError("dag-pb node carries no UnixFS data")
    kind, blocksizes = None, []
    for number, value in _fields(unixfs):
        if number == 1 and isinstance(value, int):
            kind = value
        elif number == 4 and isinstance(value, int):
            blocksizes.append(value)
        elif number == 2:
            raise IntegrityError("UnixFS node with inline data is not a Flair payload node")
    if kind != UNIXFS_FILE or len(blocksizes) != len(links) or not links:
        raise IntegrityError("dag-pb node is not a UnixFS file node with one blocksize per link")
    return FileNode(tuple(links), tuple(blocksizes))
