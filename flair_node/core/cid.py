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
from .protobuf import bytes_field, fields, int_field, read_varint, varint

RAW = 0x55
DAG_PB = 0x70
SHA2_256 = 0x12
UNIXFS_FILE = 2
_CODECS = {RAW: "raw", DAG_PB: "dag-pb"}
_FLAIR_DAGS = "Flair reads content added with `ipfs add --cid-version=1 --raw-leaves` only"

# -- CIDs ---------------------------------------------------------------------------------------------------

def cid_for(codec: int, block: bytes) -> Cid:
    """The CIDv1 (sha2-256, base32) of ``block`` under ``codec``."""
    return ParsedCid(codec, hashlib.sha256(block).digest()).text


_SHA2_256_32 = bytes([SHA2_256, 32])


@dataclass(frozen=True)
class ParsedCid:
    codec: int
    digest: bytes
    version: int = 1

    @property
    def key(self) -> str:
        """The sha2-256 digest in hex: where the block is stored."""
        return self.digest.hex()

    def check(self, block: bytes) -> None:
        if hashlib.sha256(block).digest() != self.digest:
            raise IntegrityError(f"block does not hash to its CID {self.text}", cid=self.text)

    @property
    def text(self) -> Cid:
        """The canonical text form: CIDv1, base32 (a CIDv0 is shown as the CIDv1 of the same block)."""
        raw = varint(1) + varint(self.codec) + _SHA2_256_32 + self.digest
        return Cid("b" + base64.b32encode(raw).decode("ascii").lower().rstrip("="))

    @property
    def binary(self) -> bytes:
        """The CID's bytes as Bitswap wants and dag-pb links carry them (a CIDv0 is its bare multihash)."""
        if self.version == 0:
            return _SHA2_256_32 + self.digest
        return varint(1) + varint(self.codec) + _SHA2_256_32 + self.digest

    @property
    def prefix(self) -> bytes:
        """Version, codec and multihash type and length: what a Bitswap block carries besides its bytes."""
        return varint(self.version) + varint(self.codec) + _SHA2_256_32


def parse_cid(text: str) -> ParsedCid:
    """A CIDv1 in base32 (``b...``) or a CIDv0 (``Qm...``) with a sha2-256 multihash, raw or dag-pb."""
    try:
        if text.startswith("Qm") and len(text) == 46:
            parsed = parse_cid_bytes(base58.b58decode(text))
        elif text.startswith("b") and len(text) < 200:
            body = text[1:].upper()
            parsed = parse_cid_bytes(base64.b32decode(body + "=" * (-len(body) % 8)))
        else:
            raise ValueError("not a base32 CIDv1 or a CIDv0")
    except (ValueError, IntegrityError) as exc:
        raise InvalidInput(f"{text[:80]!r} is not a sha2-256 raw or dag-pb CID: {exc}", cid=text[:80]) from None
    if parsed.version == 0 and not text.startswith("Qm"):
        raise InvalidInput(f"{text[:80]!r} is not a CIDv1", cid=text[:80])
    return parsed


def parse_cid_bytes(raw: bytes) -> ParsedCid:
    """A binary CID (a CIDv1, or a CIDv0's bare sha2-256 multihash); ``IntegrityError`` for anything else."""
    if len(raw) == 34 and raw.startswith(_SHA2_256_32):
        return ParsedCid(DAG_PB, raw[2:], version=0)
    version, pos = read_varint(raw, 0)
    codec, pos = read_varint(raw, pos)
    if version != 1 or codec not in _CODECS or raw[pos:pos + 2] != _SHA2_256_32 or len(raw) != pos + 34:
        raise IntegrityError("not a sha2-256 raw or dag-pb CIDv1")
    return ParsedCid(codec, raw[pos + 2:])


def cid_from_prefix(prefix: bytes, block: bytes) -> ParsedCid:
    """The CID ``block`` has under a Bitswap ``prefix``: hashed here, never taken from the sender."""
    version, pos = read_varint(prefix, 0)
    codec, pos = read_varint(prefix, pos)
    if version not in (0, 1) or codec not in _CODECS or prefix[pos:] != _SHA2_256_32 \
            or (version == 0 and codec != DAG_PB):
        raise IntegrityError(f"unsupported CID prefix {prefix.hex()}")
    return ParsedCid(codec, hashlib.sha256(block).digest(), version)


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
    unixfs = int_field(1, UNIXFS_FILE) + int_field(3, node.filesize)
    for size in node.blocksizes:
        unixfs += int_field(4, size)
    out = b""
    for link in node.links:
        body = bytes_field(1, parse_cid(link.cid).binary) + bytes_field(2, b"") + int_field(3, link.tsize)
        out += bytes_field(2, body)
    return out + bytes_field(1, unixfs)


def decode_file_node(block: bytes) -> FileNode:
    """A dag-pb UnixFS file node; anything else raises ``IntegrityError``, as does a node whose declared
    ``filesize`` is not the sum of its links' blocksizes (the sizes a DAG walk holds each child to)."""
    links: list[Link] = []
    unixfs: bytes | None = None
    for number, value in fields(block):
        if number == 2 and isinstance(value, bytes):
            cid_bytes, tsize = b"", 0
            for n, v in fields(value):
                if n == 1 and isinstance(v, bytes):
                    cid_bytes = v
                elif n == 3 and isinstance(v, int):
                    tsize = v
            link = parse_cid_bytes(cid_bytes)
            if link.version != 1:
                raise IntegrityError(f"dag-pb link is not a CIDv1 ({_FLAIR_DAGS})")
            links.append(Link(link.text, tsize))
        elif number == 1 and isinstance(value, bytes):
            unixfs = value
    if unixfs is None:
        raise IntegrityError("dag-pb node carries no UnixFS data")
    kind, filesize, blocksizes = None, None, []
    for number, value in fields(unixfs):
        if number == 1 and isinstance(value, int):
            kind = value
        elif number == 3 and isinstance(value, int):
            filesize = value
        elif number == 4 and isinstance(value, int):
            blocksizes.append(value)
        elif number == 2:
            raise IntegrityError(f"UnixFS node with inline data is not a Flair payload node ({_FLAIR_DAGS})")
    if kind != UNIXFS_FILE or len(blocksizes) != len(links) or not links:
        raise IntegrityError("dag-pb node is not a UnixFS file node with one blocksize per link")
    if filesize is not None and filesize != sum(blocksizes):
        raise IntegrityError(f"UnixFS node declares {filesize} bytes but its links hold {sum(blocksizes)}")
    return FileNode(tuple(links), tuple(blocksizes))
