"""Structure-aware mutations: bytes, msgpack and JSON values, protobuf, JSON-RPC requests, safetensors files,
re-signed records and announcements (see the package's docstring)."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from ...core import encoding
from ...core.errors import IntegrityError
from ...core.identity import Identity
from ...core.protobuf import LENGTH_DELIMITED, VARINT, bytes_field, fields, int_field, key, varint

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
    result: bytes = pattern.sub(lambda m: bytes(parts[int(m.group(1))]), out)
    return result


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


