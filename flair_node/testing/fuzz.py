"""Mutations of what peers and local clients send, for fuzzing Flair's decoders and services (``bench/fuzz.py``,
``tests/integration/test_fuzz.py``).

Structure-aware: besides random bytes, a valid message is decoded and changed where its structure is -- fields
swapped, dropped or added, values of another type, extreme integers, huge lengths and long lists, deep nesting,
repeated items and links, duplicated map keys, invalid UTF-8, truncation -- and encoded again *without* the
canonical checks a decoder makes, so the decoder sees exactly what a hostile sender could write. A signed record
can be changed and then signed again by a key of the attacker's choosing (a stranger, a member of too low a
role): it carries a valid signature and must still be refused. Every choice comes from the ``random.Random``
given, so a seed replays a campaign's choices.

    mutate_bytes(rng, data)              flip bits, cut, splice, overwrite, insert, repeat
    mutate_value(rng, value)             one change somewhere in a decoded msgpack or JSON value (a copy)
    pack(value) / dump_json(value)       encode a mutated value (``Raw`` parts go in as written)
    mutate_msgpack(rng, data)            decode, change 1-3 times, pack; or mutate_bytes
    mutate_json(rng, data)               the same for JSON text
    mutate_protobuf(rng, data)           field-level: drop, repeat, swap, renumber, retype, lie about a length
    resign(rng, record, cls, signer)     a signed record whose body was changed, signed by ``signer``
    mutate_announcement(rng, data, ...)  any of the above, on an announcement and the records inside it
    mutate_jsonrpc(rng, seeds, token)    a JSON-RPC request: body, token or path
    mutate_safetensors(rng, seeds)       a safetensors file: header as JSON, its length, deep nesting, bytes

Sizes are bounded (a growing mutation stays within ``BUDGET`` bytes; nesting 100,000 deep exists only as bytes,
never as Python objects), so a campaign of 10,000 inputs runs in memory that stays flat.

For campaigns (``bench/fuzz.py``) and tests, the same module holds what the inputs are mutations of (``World``:
a repository with history and members, its genuine records, a member's node), hostile peers (``Publisher``:
validly signed pubsub messages with mutated fields; ``HostileSource``: a sync source that lies in its heads,
records or blocks, with ``lie``) and the bookkeeping (``Campaign``: refused, accepted, forged, crashes by kind,
hangs).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import trio

from ..core import encoding
from ..core.errors import FlairError, IntegrityError, RemoteError
from ..core.identity import Identity
from ..core.membership import MembershipChange
from ..core.objects import AnchorClaim, Commit, ProofRecord, RepositoryRecord
from ..core.protobuf import LENGTH_DELIMITED, VARINT, bytes_field, fields, int_field, key, read_varint, varint
from ..core.refs import BranchMove
from ..protocol import announce
from ..storage.repos import RepoSet
from .graph import tiny_state

EXTREME_INTS = (0, 1, -1, 2, 255, 256, 65_535, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**64 - 1, -(2**63))
VARINTS = tuple(n for n in EXTREME_INTS if n >= 0)  # a varint is unsigned
NEST_DEPTHS = (64, 200, 600, 1_000, 3_000, 100_000)
HUGE_LENGTHS = (1_000, 65_537, 1 << 20, (1 << 20) + 1)
LONG_LISTS = (300, 1_025, 5_000, 70_000)
REPEATS = (1, 2, 10, 200, 5_000)
MAX_SLOTS = 4_096  # places in one value a mutation may pick from
BUDGET = 2 << 20  # bytes one growing mutation (a repeat, a long list) may make a value take


@dataclass(frozen=True)
class Raw:
    """A part of a mutated value written as is: ``msgpack`` bytes in ``pack``, ``json`` bytes in ``dump_json``."""

    msgpack: bytes
    json: bytes


def deep(depth: int, as_map: bool) -> Raw:
    """``depth`` nested arrays (or one-key maps) around a nil, as bytes: no Python object this deep exists."""
    if as_map:
        return Raw(b"\x81\xa1a" * depth + b"\xc0", b'{"a":' * depth + b"0" + b"}" * depth)
    return Raw(b"\x91" * depth + b"\xc0", b"[" * depth + b"]" * depth)


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """One of: flip bits, cut, splice a run elsewhere, overwrite a run with noise, insert noise, repeat."""
    b = bytearray(data)
    kind = rng.randrange(6)
    at = rng.randrange(max(len(b), 1))
    if kind == 0 and b:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del b[at:]
    elif kind == 2:
        run = b[at:at + rng.randint(1, 64)]
        where = rng.randrange(len(b) + 1)
        b[where:where] = run
    elif kind == 3:
        b[at:at + rng.randint(1, 16)] = rng.randbytes(rng.randint(1, 16))
    elif kind == 4 or not b:
        b[at:at] = rng.randbytes(rng.randint(1, 32))
    else:
        b = b * rng.randint(2, 3)
    return bytes(b)


# -- values (msgpack, JSON) -----------------------------------------------------------------------------------


def _slots(root: list[Any]) -> list[tuple[Any, Any]]:
    """(container, key) of every place in ``root[0]``, the root itself first (breadth first, bounded)."""
    slots: list[tuple[Any, Any]] = [(root, 0)]
    i = 0
    while i < len(slots) and len(slots) < MAX_SLOTS:
        container, k = slots[i]
        value = container[k]
        if isinstance(value, dict):
            slots.extend((value, key_) for key_ in list(value))
        elif isinstance(value, list):
            slots.extend((value, j) for j in range(len(value)))
        i += 1
    return slots[:MAX_SLOTS]


def _other_type(rng: random.Random, value: Any) -> Any:
    choices: list[Any] = [None, True, False, 0, -1, 2**64 - 1, 1.5, float("nan"), "", "x", b"", b"\x00" * 32,
                          [], {}, [value], {"k": value}, str(value)[:64]]
    return rng.choice([c for c in choices if type(c) is not type(value)])


def _extreme(rng: random.Random, value: Any) -> Any:
    if isinstance(value, str):
        return rng.choice(["", "\x00", "é" * 64, "../" * 20, "a" * 65, "\u202e" + value, value.upper(), " " + value])
    if isinstance(value, bytes):
        return rng.choice([b"", b"\x00", b"\xff" * 64, value[:1], value + value])
    return rng.choice(EXTREME_INTS)


def _approx(value: Any) -> int:
    """Bytes ``value`` takes encoded, as msgpack or as JSON, whichever is more (at least 1)."""
    if isinstance(value, str | bytes):
        return len(value) + 1
    try:
        return max(1, len(pack(value, canonical=False)), len(dump_json(value)))
    except Exception:  # a value with no encoding: count it small
        return 1


def _times(rng: random.Random, choices: Sequence[int], value: Any) -> int:
    """One of ``choices``, at most as many copies of ``value`` as fit the ``BUDGET``."""
    return max(1, min(rng.choice(choices), BUDGET // _approx(value)))


def _huge(rng: random.Random, value: Any) -> Any:
    n = rng.choice(HUGE_LENGTHS)
    if isinstance(value, bytes):
        return (value or b"\x00") * (n // max(len(value), 1) + 1)
    if isinstance(value, list) and value:
        return value * (_times(rng, LONG_LISTS, value) // len(value) + 1)
    if isinstance(value, dict):
        return {**value, **{f"k{i}": i for i in range(rng.choice(LONG_LISTS))}}
    return "a" * n if rng.random() < 0.5 else [0] * rng.choice(LONG_LISTS)


def _invalid_utf8(rng: random.Random, text: str) -> Raw:
    raw = bytearray(text.encode())
    raw[rng.randrange(len(raw) + 1):0] = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\x80"])
    header = msgpack.packb(bytes(raw), use_bin_type=False)[: -len(raw) or None]  # a str header of that length
    return Raw(header + bytes(raw), b'"' + bytes(raw) + b'"')


def _duplicate_keys(rng: random.Random, value: dict[Any, Any]) -> Raw:
    """The map ``value`` with one key written twice (msgpack and JSON both allow writing it; readers differ)."""
    items = list(value.items())
    k, v = rng.choice(items)
    twice = [*items, (k, _other_type(rng, v))]
    packed = b"".join(pack(a) + pack(b) for a, b in twice)
    header = b"\xde" + len(twice).to_bytes(2, "big")
    text = b"{" + b",".join(dump_json(str(a)) + b":" + dump_json(b) for a, b in twice) + b"}"
    return Raw(header + packed, text)


def _lying_length(rng: random.Random) -> Raw:
    """A header claiming far more elements or bytes than follow."""
    return Raw(rng.choice([b"\xdd\x7f\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xf0abc",
                           b"\xc6\x7f\xff\xff\xff\x00", b"\xdc\xff\xff"]),
               rng.choice([b'"' + b"a" * 10, b"[1,2", b'{"a":', b"1e999999", b"-" + b"9" * 5000]))


def mutate_value(rng: random.Random, value: Any) -> Any:
    """``value`` (a copy) with one change at a random place: see the module docstring for the kinds."""
    root = [_copy(value)]
    slots = _slots(root)
    container, k = rng.choice(slots)
    current = container[k]
    op = rng.randrange(12)
    if op == 0:
        container[k] = _other_type(rng, current)  # type confusion
    elif op == 1:
        container[k] = _extreme(rng, current)
    elif op == 2:
        container[k] = _huge(rng, current)
    elif op == 3:
        container[k] = deep(rng.choice(NEST_DEPTHS), rng.random() < 0.5)
    elif op == 4 and container is not root:  # drop a field or an item
        del container[k]
    elif op == 5 and isinstance(container, list) and container is not root:  # repeat an item (repeated links)
        container[k + 1:k + 1] = [current] * _times(rng, REPEATS, current)
    elif op == 6 and isinstance(container, dict):  # swap two fields' values, or rename a field
        other = rng.choice(list(container))
        if other != k and rng.random() < 0.6:
            container[k], container[other] = container[other], current
        else:
            container[rng.choice([k + "_", k[:-1], k.upper(), 1, ""]) if isinstance(k, str) else "k"] = \
                container.pop(k)
    elif op == 7 and isinstance(current, dict) and current:
        container[k] = _duplicate_keys(rng, current)
    elif op == 8 and isinstance(current, str | bytes | list) and current:  # truncate
        container[k] = current[:rng.randrange(len(current))]
    elif op == 9 and isinstance(current, bytes):  # change bytes, as msgpack when they are msgpack (records)
        container[k] = mutate_msgpack(rng, current) if _is_msgpack(current) else mutate_bytes(rng, current)
    elif op == 9 and isinstance(current, str) and current:
        container[k] = _invalid_utf8(rng, current)
    elif op == 10:
        container[k] = _lying_length(rng)
    elif op == 11 and isinstance(container, list | dict):  # add an item or an unknown field
        extra = _other_type(rng, current)
        if isinstance(container, list):
            container.insert(rng.randrange(len(container) + 1), extra)
        else:
            container[rng.choice(["x", "v", "sig", "body", "__proto__", "a" * 300])] = extra
    else:
        container[k] = _other_type(rng, current)
    return root[0]


def _copy(value: Any) -> Any:
    """A copy of ``value`` in which no list or map appears twice (``copy.deepcopy`` keeps shared parts shared: a
    later change to an item repeated 5,000 times would then count 5,000 times, past every size bound)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and maps in ``value`` nest deeper than ``limit`` (found without recursing)."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth >= limit:
                return True
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return False


def _is_msgpack(data: bytes) -> bool:
    if not data or data[0] not in range(0x80, 0xA0) and data[0] not in (0xDE, 0xDF, 0xDC, 0xDD):
        return False
    try:
        msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:  # any way of not being msgpack
        return False
    return True


def _with_raw(value: Any, encode: Any, to_bytes: Any, *, sort: bool = False) -> bytes:
    """Encode ``value`` with ``encode``, each ``Raw`` first standing in as a placeholder string of one width, then
    put in its place in one pass (thousands of parts in megabytes stay linear); ``sort``: map keys in canonical
    order (by their UTF-8 bytes)."""
    parts: list[bytes] = []

    def swap(v: Any) -> Any:
        if isinstance(v, Raw):
            parts.append(to_bytes(v))
            return f"{_MARK}{len(parts) - 1:08d}"
        if isinstance(v, dict):
            items = sorted(v.items(), key=lambda kv: kv[0].encode() if isinstance(kv[0], str) else b"") if sort \
                else v.items()
            return {a: swap(b) for a, b in items}
        if isinstance(v, list | tuple):
            return [swap(x) for x in v]
        return v

    out: bytes = encode(swap(value))
    if not parts:
        return out
    blank = encode(f"{_MARK}{0:08d}")
    at = blank.rindex(b"00000000")
    pattern = re.compile(re.escape(blank[:at]) + rb"(\d{8})" + re.escape(blank[at + 8:]))
    return pattern.sub(lambda m: parts[int(m.group(1))], out)


_MARK = "\x00fuzz-raw-5f0c9e\x00"


def pack(value: Any, *, canonical: bool = True) -> bytes:
    """msgpack bytes of a (mutated) value, without canonical checks: floats and ``Raw`` parts kept. ``canonical``
    writes map keys in canonical order, so that a decoder judges the value rather than its key order."""
    return _with_raw(value, lambda v: msgpack.packb(v, use_bin_type=True), lambda r: r.msgpack, sort=canonical)


def dump_json(value: Any) -> bytes:
    """JSON bytes of a (mutated) value; bytes become latin-1 text, NaN stays NaN (what a careless client sends)."""
    def encode(v: Any) -> bytes:
        return json.dumps(v, default=lambda b: b.decode("latin-1") if isinstance(b, bytes) else str(b)).encode()
    return _with_raw(value, encode, lambda r: r.json)


def _bounded(rng: random.Random, out: bytes, data: bytes) -> bytes:
    """``out``, unless mutations piled up past 4 x ``BUDGET`` bytes: then only the bytes of ``data`` mutated."""
    return out if len(out) <= 4 * BUDGET else mutate_bytes(rng, data)


def mutate_msgpack(rng: random.Random, data: bytes) -> bytes:
    """``data`` (msgpack) decoded, changed 1-3 times and packed again; a quarter of the time, only its bytes."""
    if rng.random() < 0.25:
        return mutate_bytes(rng, data)
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:  # not msgpack after all
        return mutate_bytes(rng, data)
    if _deeper_than(value, 64):  # nested by an earlier mutation: its bytes will do
        return mutate_bytes(rng, data)
    for _ in range(rng.choice((1, 1, 2, 3))):
        value = mutate_value(rng, value)
    return _bounded(rng, pack(value, canonical=rng.random() < 0.9), data)


def mutate_json(rng: random.Random, data: bytes) -> bytes:
    """``data`` (JSON) decoded, changed 1-3 times and dumped again; a quarter of the time, only its bytes."""
    if rng.random() < 0.25:
        return mutate_bytes(rng, data)
    value = json.loads(data)
    if _deeper_than(value, 64):
        return mutate_bytes(rng, data)
    for _ in range(rng.choice((1, 1, 2, 3))):
        value = mutate_value(rng, value)
    return _bounded(rng, dump_json(value), data)


# -- protobuf -------------------------------------------------------------------------------------------------


def mutate_protobuf(rng: random.Random, data: bytes, depth: int = 0) -> bytes:
    """``data`` (a protobuf message) with one field-level change, possibly inside an embedded message."""
    try:
        parsed: list[tuple[int, int | bytes] | bytes] = [(n, v if isinstance(v, int) else bytes(v))
                                                         for n, v in fields(data)]
    except IntegrityError:
        return mutate_bytes(rng, data)
    if not parsed or rng.random() < 0.15:
        return mutate_bytes(rng, data)
    i = rng.randrange(len(parsed))
    item = parsed[i]
    assert isinstance(item, tuple)
    number, value = item
    op = rng.randrange(9)
    if op == 0:
        del parsed[i]
    elif op == 1:  # a repeated field: links, wants, blocks, topics, control entries
        parsed[i + 1:i + 1] = [item] * _times(rng, REPEATS, value)
    elif op == 2:
        j = rng.randrange(len(parsed))
        other = parsed[j]
        if isinstance(other, tuple):
            parsed[i], parsed[j] = (number, other[1]), (other[0], value)
    elif op == 3:
        parsed[i] = (rng.choice([number + 1, max(number - 1, 1), rng.randint(1, 20), 2**29 - 1]), value)
    elif op == 4:  # the other wire type
        parsed[i] = (number, varint(value) if isinstance(value, int) else int.from_bytes(value[:9] or b"\0", "big"))
    elif op == 5:
        parsed[i] = (number, rng.choice(VARINTS) if isinstance(value, int) else _huge(rng, value))
    elif op == 6 and isinstance(value, bytes) and depth < 4:
        parsed[i] = (number, mutate_protobuf(rng, value, depth + 1))
    elif op == 7:  # a length that lies
        body = value if isinstance(value, bytes) else b"x"
        parsed[i] = key(number, LENGTH_DELIMITED) + varint(rng.choice([len(body) + 1, 2**31, 2**40, 2**63])) + body
    else:  # a wire type the parsers do not know, or an overlong varint
        parsed.insert(i, rng.choice([key(number, 5) + b"\0\0\0\0", key(number, 1) + b"\0" * 8,
                                     key(number, VARINT) + b"\xff" * 11, b"\x80" * 10 + b"\x01"]))
    out = bytearray()
    for entry in parsed:
        if isinstance(entry, bytes):
            out += entry
        elif isinstance(entry[1], int):
            out += int_field(entry[0], entry[1])
        else:
            out += bytes_field(entry[0], entry[1])
    return bytes(out)


# -- requests and files -------------------------------------------------------------------------------------------


def mutate_jsonrpc(rng: random.Random, seeds: list[dict[str, Any]], token: str) -> tuple[bytes, str, str]:
    """A JSON-RPC request to a server holding ``token``, from one of ``seeds`` (request objects): (body,
    Authorization header, path), the body mutated most of the time (a batch of two, sometimes), the token or
    the path sometimes."""
    seed = rng.choice(seeds) if rng.random() < 0.9 else [rng.choice(seeds), rng.choice(seeds)]
    body = mutate_json(rng, json.dumps(seed).encode()) if rng.random() < 0.9 else json.dumps(seed).encode()
    auth, path = f"Bearer {token}", "/"
    r = rng.random()
    if r < 0.06:
        auth = rng.choice(["", "Bearer", f"Bearer {token[:-1]}", f"Basic {token}", f"Bearer {token}x",
                           "Bearer " + mutate_bytes(rng, token.encode()).decode("latin-1")])
        auth = "".join(ch for ch in auth if " " <= ch <= "~" or "\x80" <= ch <= "\xff").strip()  # a header value
    elif r < 0.08:
        path = rng.choice(["/x", "//", "/?a=1", "*"])
    return body, auth, path


def mutate_safetensors(rng: random.Random, seeds: list[bytes]) -> bytes:
    """One of the safetensors files ``seeds``, its header mutated as JSON (with its length right), its header
    length lying, its header nothing but deep nesting, or its bytes mutated."""
    data = rng.choice(seeds)
    size = int.from_bytes(data[:8], "little")
    header, rest = data[8:8 + size], data[8 + size:]
    r = rng.random()
    if r < 0.5:
        new = mutate_json(rng, header)
        return len(new).to_bytes(8, "little") + new + rest
    if r < 0.65:
        wrong = rng.choice([0, 1, 7, size - 1, size + 1, len(data), 2**31, 2**63, 2**64 - 1])
        return (wrong % 2**64).to_bytes(8, "little") + data[8:]
    if r < 0.75:  # a header of nothing but nesting, as in finding 5 of issue 16
        nested = b'{"a":' + deep(rng.choice(NEST_DEPTHS), rng.random() < 0.5).json + b"}"
        return len(nested).to_bytes(8, "little") + nested + rest
    return mutate_bytes(rng, data)


# -- signed records and announcements -------------------------------------------------------------------------


def resign(rng: random.Random, record: bytes, cls: Any, signer: Identity, *, changes: int | None = None) -> bytes:
    """``record`` (a signed record of class ``cls``) with its body changed ``changes`` times (0-2 if not given)
    and signed by ``signer`` as its author: a validly signed record its signer was not entitled to make.
    Falls back to the changed record unsigned when the change leaves no canonical body to sign."""
    outer = msgpack.unpackb(record, raw=False)
    body = outer["body"]
    for _ in range(rng.choice((0, 1, 1, 2)) if changes is None else changes):
        body = mutate_value(rng, body)
    if isinstance(body, dict):
        body[cls.SIGNER] = signer.public_key
    try:
        digest = hashlib.sha256(encoding.encode(body)).digest()
    except Exception:  # a Raw part or a float: nothing canonical to sign
        return pack({"body": body, "sig": outer.get("sig", b"")})
    return encoding.encode({"body": body, "sig": signer.sign(cls.TAG + digest)})


def membership_ahead(rng: random.Random, change: bytes, cls: Any, signer: Identity) -> bytes:
    """A membership change self-signed by ``signer``, its sequence number ahead of the chain (finding 1 of
    issue 16: the node must judge it before pulling from whoever forwarded it)."""
    outer = msgpack.unpackb(change, raw=False)
    body = dict(outer["body"])
    body["seq"] = body.get("seq", 1) + rng.choice((2, 3, 100, 2**31))
    body["previous"] = rng.randbytes(32).hex()
    body[cls.SIGNER] = signer.public_key
    return encoding.encode({"body": body, "sig": signer.sign(cls.TAG + hashlib.sha256(encoding.encode(body)).digest())})


def mutate_announcement(rng: random.Random, data: bytes, classes: dict[str, Any],
                        signers: Sequence[Identity]) -> bytes:
    """A mutation of announcement ``data`` (canonical ``{v, repo, items}``): its bytes, its structure, or one of
    its records (changed, re-signed by one of ``signers``, or a membership change from ahead of the chain).
    ``classes`` maps each item kind to its record class (``Commit``, ``BranchMove``, ...)."""
    choice = rng.random()
    if choice < 0.2:
        return mutate_bytes(rng, data)
    if choice < 0.45:
        return mutate_msgpack(rng, data)
    value = msgpack.unpackb(data, raw=False)
    items = value["items"]
    at = rng.randrange(len(items))
    kind, record = items[at]
    if choice < 0.65:
        items[at] = [kind, mutate_msgpack(rng, record)]
    elif choice < 0.92 or kind != "membership":
        items[at] = [kind, resign(rng, record, classes[kind], rng.choice(signers))]
    else:
        items[at] = [kind, membership_ahead(rng, record, classes[kind], rng.choice(signers))]
    if rng.random() < 0.2:
        value = mutate_value(rng, value)
    return _bounded(rng, pack(value, canonical=rng.random() < 0.95), data)


# -- what inputs are mutations of ---------------------------------------------------------------------------------

#: Record classes by announcement item kind, and by the ``type`` field of their body.
CLASSES = {"commit": Commit, "move": BranchMove, "membership": MembershipChange, "proof": ProofRecord,
           "anchor": AnchorClaim}
BY_TYPE = {"commit": Commit, "branch-move": BranchMove, "membership": MembershipChange, "proof": ProofRecord,
           "anchor": AnchorClaim, "repository": RepositoryRecord}


def seeded_identity(rng: random.Random) -> Identity:
    """An identity whose key comes from ``rng``: the same seed, the same keys."""
    import nacl.signing

    key = nacl.signing.SigningKey(rng.randbytes(32))
    return Identity.from_keypair_bytes(bytes(key) + bytes(key.verify_key))


class World:
    """What inputs are mutations of: an owner's repository with history and members (a contributor, alice, and
    a reader), its genuine records and announcements, and alice's node holding only the genesis. The attacker's
    keys (``signers``) are the reader's and a stranger's."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.owner, self.alice, self.reader, self.stranger = (seeded_identity(rng) for _ in range(4))
        # The attacker's keys: neither may author a commit, a branch move or a membership change, so every record
        # they sign that a node accepts is forged (alice, a contributor, is the node's own key).
        self.signers = [self.stranger, self.reader]
        self.owner_set = RepoSet.on_disk(root / "owner", self.owner)
        repo = self.repo = self.owner_set.create("fuzzed", tiny_state(0))
        repo.create_branch(self.owner, "exp", repo.head("main"))
        repo.commit_weights(self.owner, tiny_state(1), message="one", branch="exp")
        repo.commit_weights(self.owner, tiny_state(2), message="two", branch="main")
        repo.invite(self.owner, self.alice.public_key, "contributor")
        repo.invite(self.owner, self.reader.public_key, "reader")
        self.genuine_keys = set(self.owner_set.objects.keys())
        commits = [repo.commit(repo.head(b)) for b in ("exp", "main")]
        moves = [repo.branch_move(b) for b in ("exp", "main")]
        changes = repo.members.changes()
        self.records = [("commit", c.encode()) for c in commits] + [("move", m.encode()) for m in moves] + \
            [("membership", c.encode()) for c in changes]
        self.genuine_ids = {hashlib.sha256(encoding.encode(msgpack.unpackb(r, raw=False)["body"])).hexdigest()
                            for _, r in self.records}
        self.announcements = [announce.pack(repo.id, [item], 60_000)[0] for item in self.records] + \
            announce.pack(repo.id, self.records, 60_000)
        self.node_set = RepoSet.in_memory(self.alice)
        self.node = self.node_set.adopt(repo.record)  # a member's node that holds only the genesis

    def verdict(self, data: bytes) -> str:
        """What an announcement a node accepted holds: ``"forged"`` if any record in it is not one of the genuine
        records (by id: a record whose id is genuine carries its author's valid signature), ``"noncanonical"``
        if a genuine record came in other bytes than its canonical encoding (the same signed record, written
        another way), else ``"accepted"``."""
        taken = announce.decode(data, self.repo.id)
        decoded = [*taken.changes, *taken.commits, *taken.moves, *taken.proofs, *taken.anchors]
        if any(record.digest not in self.genuine_ids for record in decoded):
            return "forged"
        if any(CLASSES[kind].decode(raw).encode() != raw for kind, raw in taken.items):
            return "noncanonical"
        return "accepted"


# -- hostile peers -------------------------------------------------------------------------------------------------


class Publisher:
    """Pubsub messages signed with one host's key (StrictSign), and valid RPC frames holding them."""

    def __init__(self, origin: bytes, key: Any, topic: str, rng: random.Random) -> None:
        self.origin, self.key, self.topic, self.rng = origin, key, topic, rng
        self._seqno = rng.getrandbits(48) << 16

    def signed(self, data: bytes, *, mutate: bool = False) -> bytes:
        """A message of ``data`` on the topic, signed; ``mutate``: its fields changed first (then signed, so the
        signature holds) and, sometimes, after (so it does not)."""
        from dataclasses import replace

        from flair_node.network import gossipsub_wire as wire

        rng = self.rng
        self._seqno += 1
        message = wire.Message(self.origin, data, self._seqno.to_bytes(8, "big"), (self.topic,))
        if mutate:
            message = replace(message, **rng.choice([
                {"topics": rng.choice([(), (self.topic,) * 20, (self.topic, "other"), ("x" * 2000,)])},
                {"seqno": rng.choice([b"", b"\x00" * 200, rng.randbytes(3)])},
                {"origin": rng.choice([b"", self.origin[:-1], rng.randbytes(38), self.origin + b"\x00"])},
                {"key": rng.choice([b"\x08\x01", rng.randbytes(36)])}]))
        message = replace(message, signature=self.key.sign(message.signed_part()))
        encoded = message.encode()
        if mutate and rng.random() < 0.3:
            encoded = mutate_protobuf(rng, encoded)  # after signing: the signature no longer holds
        return encoded

    def seeds(self, announcements: list[bytes]) -> list[bytes]:
        """Valid RPC frames (without their length): subscriptions, messages and every kind of control entry."""
        from flair_node.network import gossipsub_wire as wire

        topic, some_id = self.topic, self.origin + b"\x00" * 8
        return [wire.subscription(topic, True) + wire.publish(self.signed(announcements[0])) + wire.graft(topic),
                wire.ihave(topic, [some_id, b"\x01" * 40]) + wire.iwant([some_id]),
                wire.prune(topic, 60) + wire.subscription(topic, False) + wire.subscription(topic, True),
                wire.publish(self.signed(announcements[-1])) + wire.graft(topic) + wire.prune(topic, 1)]


class HostileSource:
    """A ``sync.Source`` that answers honestly from the owner's node except where it was told to lie: in the
    heads reply, the records replies, or the blocks. Replies pass through msgpack as over the wire (a
    non-canonical reply is refused there, as ``rpc.request`` refuses it)."""

    def __init__(self, world: World, into: RepoSet, rng: random.Random, mode: str) -> None:
        from flair_node.protocol.sync import SyncServer

        self.world, self.into, self.rng, self.mode = world, into, rng, mode
        self.server = SyncServer(world.owner_set)

    async def heads(self, repo: Any) -> Any:
        reply = await self.server.handle(self.world.alice.public_key, {"op": "heads", "repo": repo})
        return self._lie(reply) if self.mode == "heads" else reply

    async def records(self, repo: Any, ids: list[str]) -> list[bytes]:
        reply = await self.server.handle(self.world.alice.public_key, {"op": "records", "repo": repo, "ids": ids})
        if self.mode == "records" and self.rng.random() < 0.7:
            reply = self._lie(reply)
        records = reply.get("records") if isinstance(reply, dict) else None
        if not isinstance(records, list):
            raise RemoteError("the peer sent a malformed records reply")
        return records

    async def blocks(self, cid: Any, max_size: int) -> None:
        from flair_node.storage import unixfs

        if self.mode == "blocks":
            how = self.rng.randrange(3)
            if how == 0:
                raise RemoteError(f"the peer does not have block {cid}")
            if how == 1:
                return  # says nothing, sends nothing
            for block_cid, block in unixfs.walk(self.world.owner_set.blocks, cid, max_size=max_size):
                self.into.blocks.put(block_cid, mutate_bytes(self.rng, block)
                                     if self.rng.random() < 0.5 else block)  # put re-hashes: refused or kept
            return
        for block_cid, block in unixfs.walk(self.world.owner_set.blocks, cid, max_size=max_size):
            self.into.blocks.put(block_cid, block)

    def _lie(self, value: Any) -> Any:
        return encoding.decode(pack(lie(self.rng, value, self.world)))  # what rpc.request would refuse


def records_in(value: Any) -> list[tuple[Any, Any]]:
    """Where signed records (bytes) sit in a heads or records reply: (container, key)."""
    found: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, bytes):
                found.append((value, k))
            elif isinstance(v, list):
                found.extend((v, i) for i, x in enumerate(v) if isinstance(x, bytes))
    return found


def lie(rng: random.Random, value: Any, world: World) -> Any:
    """A sync reply (heads or records) changed: one record in it re-signed, mutated, nested 600+ deep or
    replaced by a membership change from ahead of the chain; or the reply's structure mutated."""
    records = records_in(value)
    if records and rng.random() < 0.55:
        container, k = rng.choice(records)
        record = container[k]
        try:
            cls = BY_TYPE.get(msgpack.unpackb(record, raw=False)["body"].get("type"), Commit)
        except Exception:  # not a record after all: any class will do for re-signing garbage
            cls = Commit
        container[k] = rng.choice([
            lambda: resign(rng, record, cls, rng.choice(world.signers)),
            lambda: mutate_msgpack(rng, record),
            lambda: deep(rng.choice((600, 1_000, 3_000)), rng.random() < 0.5).msgpack,
            lambda: membership_ahead(rng, world.records[-1][1], MembershipChange, rng.choice(world.signers))])()
        return value
    return mutate_value(rng, value)


# -- counting what came of each input -------------------------------------------------------------------------------

#: An input still running after this many seconds is abandoned (and counted as a hang).
HARD_S = 60.0


@dataclass
class Tally:
    """What came of one target's inputs."""

    inputs: int = 0
    refused: int = 0
    accepted: int = 0
    crashes: int = 0
    hangs: int = 0
    accepted_forged: int = 0
    accepted_noncanonical: int = 0  # genuine records accepted in other bytes than their canonical encoding
    sent: int = 0  # sent to the daemon without an answer to judge (gossip, Bitswap): the daemon's state is judged
    slowest_ms: float = 0.0
    slowest: str = ""
    seconds: float = 0.0
    refusals: dict[str, int] = field(default_factory=dict)  # by refusal, shortened: how deep inputs got


@dataclass
class Campaign:
    """Runs inputs through handlers and counts outcomes per target; each distinct crash (target, exception, the
    innermost frame of Flair's code) is kept once with an example, and printed on stderr. A handler returns
    ``"accepted"``, ``"forged"`` (accepted though not validly signed by an entitled member), ``"noncanonical"``
    (a genuine record accepted in other bytes than its own), ``"refused"`` or ``"sent"`` (no answer to judge);
    a ``FlairError`` is a refusal, any other exception a crash, and taking over ``hang_s`` seconds a hang
    (``HARD_S`` abandons the input)."""

    hang_s: float
    save: Path | None = None
    tallies: dict[str, Tally] = field(default_factory=dict)
    crash_kinds: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)

    def tally(self, target: str) -> Tally:
        return self.tallies.setdefault(target, Tally())

    async def one(self, target: str, data: Any, handle: Callable[[Any], Awaitable[str]], *,
                  hang_s: float | None = None) -> str:
        """Run ``handle(data)`` and count what came of it: refused, accepted, forged, crash, hang."""
        tally = self.tally(target)
        tally.inputs += 1
        start = time.perf_counter()
        outcome = "crash"
        try:
            with trio.fail_after(HARD_S):
                outcome = await handle(data)
        except trio.TooSlowError:
            outcome = "hang"
        except FlairError as exc:
            outcome = "refused"
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split()[:4])[:48]}"
            if reason in tally.refusals or len(tally.refusals) < 200:
                tally.refusals[reason] = tally.refusals.get(reason, 0) + 1
        except Exception as exc:  # what the campaign looks for: recorded, never raised
            self.crash(target, exc, data)
        elapsed = time.perf_counter() - start
        tally.seconds += elapsed
        if 1000 * elapsed > tally.slowest_ms:
            tally.slowest_ms, tally.slowest = round(1000 * elapsed, 1), _describe(data)[:120]
        if outcome == "hang" or elapsed > (self.hang_s if hang_s is None else hang_s):
            tally.hangs += 1
            print(f"fuzz: {target}: an input took {elapsed:.1f} s ({_describe(data)})", file=sys.stderr)
        if outcome == "refused":
            tally.refused += 1
        elif outcome == "accepted":
            tally.accepted += 1
        elif outcome == "sent":
            tally.sent += 1
        elif outcome == "noncanonical":
            tally.accepted += 1
            tally.accepted_noncanonical += 1
            if tally.accepted_noncanonical == 1:
                print(f"fuzz: {target}: a genuine record accepted in non-canonical bytes ({_describe(data)})",
                      file=sys.stderr)
        elif outcome == "forged":
            tally.accepted += 1
            tally.accepted_forged += 1
            print(f"fuzz: {target}: FORGED input accepted ({_describe(data)})", file=sys.stderr)
            self._save(target, "forged", data)
        return outcome

    async def run(self, target: str, n: int, make: Callable[[], Any], handle: Callable[[Any], Awaitable[str]]) -> None:
        """``n`` inputs from ``make`` through ``handle``, with progress on stderr."""
        for i in range(n):
            await self.one(target, make(), handle)
            progress(target, i, n)

    def crash(self, target: str, exc: BaseException, data: Any) -> None:
        self.tally(target).crashes += 1
        where = _where(exc)
        kind = (target, type(exc).__name__, where)
        seen = self.crash_kinds.get(kind)
        if seen is None:
            seen = self.crash_kinds[kind] = {"target": target, "exception": type(exc).__name__, "where": where,
                                             "message": str(exc)[:200], "example": _describe(data), "count": 0}
            print(f"fuzz: {target}: CRASH {type(exc).__name__} at {where}: {str(exc)[:200]} ({_describe(data)})",
                  file=sys.stderr)
        seen["count"] += 1
        self._save(target, "crash", data)

    def _save(self, target: str, what: str, data: Any) -> None:
        if self.save is None:
            return
        self.save.mkdir(parents=True, exist_ok=True)
        n = self.tally(target).inputs
        raw = data if isinstance(data, bytes) else json.dumps(data, default=repr).encode()
        (self.save / f"{target}-{n}-{what}.bin").write_bytes(raw)


def _where(exc: BaseException) -> str:
    """The innermost frame of Flair's own code the exception passed (else the innermost of all), or what the
    exception says of itself (``where``)."""
    if isinstance(getattr(exc, "where", None), str):
        return str(exc.where)  # type: ignore[attr-defined]
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if "flair_node" in f.filename] or frames
    if not own:
        return "?"
    frame = own[-1]
    return f"{frame.filename.split('flair_node/')[-1]}:{frame.lineno} {frame.name}"


def _describe(data: Any) -> str:
    if isinstance(data, bytes | bytearray):
        return f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}, starting {bytes(data[:48])!r}"
    return repr(data)[:160]


_last_progress = [0.0]


def progress(target: str, i: int, n: int) -> None:
    """``target: i/n`` on stderr, at most every 5 seconds and at the end."""
    now = time.monotonic()
    if i + 1 == n or now - _last_progress[0] > 5:
        _last_progress[0] = now
        print(f"fuzz: {target}: {i + 1}/{n}", file=sys.stderr)


def unframe(framed: bytes) -> bytes:
    """A length-prefixed message's bytes without the varint length in front (as a Bitswap stream frames them)."""
    _, start = read_varint(framed, 0)
    return framed[start:]
