"""Bitswap 1.1/1.2 messages: the protobuf Kubo and every IPFS peer exchange, as Flair's frozen records.

``decode`` parses bytes from any peer: every length is checked against the message, CIDs must be sha2-256
raw or dag-pb, and a block's CID is recomputed from its bytes (a sender never names the CID of what it sends).
Pure functions over bytes.

The schema (field numbers from the Bitswap spec)::

    Message { Wantlist wantlist = 1; repeated bytes blocks = 2 /* 1.0 */; repeated Block payload = 3;
              repeated BlockPresence blockPresences = 4; int32 pendingBytes = 5; }
    Wantlist { repeated Entry entries = 1; bool full = 2; }
    Entry { bytes block = 1; int32 priority = 2; bool cancel = 3; WantType wantType = 4; bool sendDontHave = 5; }
    Block { bytes prefix = 1; bytes data = 2; }
    BlockPresence { bytes cid = 1; BlockPresenceType type = 2 /* 0 Have, 1 DontHave */; }
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.cid import DAG_PB, ParsedCid, cid_from_prefix, parse_cid_bytes
from ..core.errors import IntegrityError
from ..core.protobuf import LENGTH_DELIMITED, bytes_field, fields, int_field, key, varint

MAX_MESSAGE = 4 << 20  # Kubo's limit for one message (go-libp2p's network.MessageSizeMax)
MAX_ENTRIES = 8192  # wants and block presences in one message: twice what a peer may have queued here
_V0_PREFIX = bytes([0, DAG_PB, 0x12, 32])  # Bitswap 1.0 blocks carry no prefix: they are CIDv0 dag-pb
_DEFAULT_PRIORITY = 1


@dataclass(frozen=True)
class Want:
    cid: ParsedCid
    cancel: bool = False
    have_only: bool = False  # wantType Have: answer with a presence, not the block
    send_dont_have: bool = False


@dataclass(frozen=True)
class Message:
    wants: tuple[Want, ...] = ()
    full: bool = False  # the wants replace the sender's whole wantlist
    blocks: tuple[tuple[ParsedCid, bytes], ...] = ()  # CID computed from the bytes, never trusted
    have: tuple[ParsedCid, ...] = ()
    dont_have: tuple[ParsedCid, ...] = ()


def frame(message: Message, *, presences: bool = True) -> bytes:
    """``message`` as it goes on a stream: varint length, then the protobuf bytes (each block copied once).

    ``presences=False`` leaves HAVE/DONT_HAVE out, for Bitswap 1.1 peers that do not know them.
    """
    parts: list[bytes] = []
    if message.wants or message.full:
        wantlist = bytearray()
        for want in message.wants:
            entry = bytes_field(1, want.cid.binary) + int_field(2, _DEFAULT_PRIORITY)
            if want.cancel:
                entry += int_field(3, 1)
            if want.have_only:
                entry += int_field(4, 1)
            if want.send_dont_have:
                entry += int_field(5, 1)
            wantlist += bytes_field(1, entry)
        if message.full:
            wantlist += int_field(2, 1)
        parts.append(bytes_field(1, bytes(wantlist)))
    for cid, data in message.blocks:
        head = bytes_field(1, cid.prefix) + key(2, LENGTH_DELIMITED) + varint(len(data))
        parts += [key(3, LENGTH_DELIMITED), varint(len(head) + len(data)), head, data]
    if presences:
        for kind, cids in ((0, message.have), (1, message.dont_have)):
            for cid in cids:
                parts.append(bytes_field(4, bytes_field(1, cid.binary) + int_field(2, kind)))
    return b"".join([varint(sum(map(len, parts))), *parts])


def decode(data: bytes | memoryview) -> Message:
    """A message from a peer (without its length prefix); ``IntegrityError`` if over ``MAX_MESSAGE`` or
    malformed. Parsed through a memoryview: each block's bytes are copied once, out of ``data``."""
    if len(data) > MAX_MESSAGE:
        raise IntegrityError(f"Bitswap message of {len(data)} bytes is over the {MAX_MESSAGE}-byte limit")
    wants: list[Want] = []
    blocks: list[tuple[ParsedCid, bytes]] = []
    have: list[ParsedCid] = []
    dont_have: list[ParsedCid] = []
    full = False
    for number, value in fields(memoryview(data)):
        if number == 1:
            for n, v in fields(_view(value)):
                if n == 1:
                    if len(wants) >= MAX_ENTRIES:
                        raise IntegrityError(f"Bitswap message wants more than {MAX_ENTRIES} blocks")
                    wants.append(_want(_view(v)))
                elif n == 2:
                    full = _int(v) == 1
        elif number == 2:
            block = bytes(_view(value))
            blocks.append((cid_from_prefix(_V0_PREFIX, block), block))
        elif number == 3:
            parts = dict(fields(_view(value)))
            prefix, block = bytes(_view(parts.get(1, b""))), bytes(_view(parts.get(2, b"")))
            blocks.append((cid_from_prefix(prefix, block), block))
        elif number == 4:
            if len(have) + len(dont_have) >= MAX_ENTRIES:
                raise IntegrityError(f"Bitswap message holds more than {MAX_ENTRIES} block presences")
            parts = dict(fields(_view(value)))
            cid = parse_cid_bytes(bytes(_view(parts.get(1, b""))))
            (dont_have if _int(parts.get(2, 0)) == 1 else have).append(cid)
    return Message(tuple(wants), full, tuple(blocks), tuple(have), tuple(dont_have))


def _want(entry: memoryview) -> Want:
    parts = dict(fields(entry))
    return Want(parse_cid_bytes(bytes(_view(parts.get(1, b"")))), cancel=_int(parts.get(3, 0)) == 1,
                have_only=_int(parts.get(4, 0)) == 1, send_dont_have=_int(parts.get(5, 0)) == 1)


def _view(value: int | bytes | memoryview) -> memoryview:
    if isinstance(value, int):
        raise IntegrityError("Bitswap message field has the wrong wire type")
    return memoryview(value)


def _int(value: int | bytes | memoryview) -> int:
    if not isinstance(value, int):
        raise IntegrityError("Bitswap message field has the wrong wire type")
    return value
