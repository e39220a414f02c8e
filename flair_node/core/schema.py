"""Checks for fields of records decoded from untrusted bytes: each returns the value or raises ``IntegrityError``
naming the field. Shared by every record type (``objects``, ``membership``)."""

from __future__ import annotations

import re
from typing import Any

from .cid import parse_cid
from .errors import IntegrityError, InvalidInput
from .ids import Cid, is_full_id

RECORD_VERSION = 1
_BASE58 = re.compile(r"[1-9A-HJ-NP-Za-km-z]+")


def outer(value: Any, kind: str) -> tuple[dict[str, Any], bytes]:
    if not isinstance(value, dict) or set(value) != {"body", "sig"}:
        raise IntegrityError(f"{kind} record must be a map of body and sig")
    body, sig = value["body"], value["sig"]
    version = body.get("v") if isinstance(body, dict) else None
    if not isinstance(body, dict) or body.get("type") != kind or type(version) is not int or version != RECORD_VERSION:
        raise IntegrityError(f"record is not a version-{RECORD_VERSION} {kind}")
    if not isinstance(sig, bytes) or len(sig) != 64:
        raise IntegrityError(f"{kind} record has no 64-byte signature")
    return body, sig


def text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise IntegrityError(f"{what} must be a string of at most {limit} characters")
    return value


def blob(value: Any, what: str, limit: int) -> bytes:
    if not isinstance(value, bytes) or len(value) > limit:
        raise IntegrityError(f"{what} must be at most {limit} bytes")
    return value


def natural(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise IntegrityError(f"{what} must be a non-negative integer")
    return value


def hex_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not is_full_id(value):
        raise IntegrityError(f"{what} must be a 64-digit hex id")
    return value


def cid(value: Any, what: str) -> Cid:
    if not isinstance(value, str):
        raise IntegrityError(f"{what} must be a CID")
    try:
        canonical = parse_cid(value).text
    except InvalidInput as exc:
        raise IntegrityError(f"{what}: {exc}") from None
    if canonical != value:
        raise IntegrityError(f"{what} must be a CIDv1 in base32, as Flair writes them")
    return canonical


def listing(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise IntegrityError(f"{what} must be a list")
    return value


def fixed(value: Any, what: str, size: int) -> list[Any]:
    """A list of exactly ``size`` elements (to unpack: ``a, b = fixed(value, "pair", 2)``)."""
    if not isinstance(value, list) or len(value) != size:
        raise IntegrityError(f"{what} must be a list of {size} elements")
    return value


def mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise IntegrityError(f"{what} must be a map")
    return value


def choice(value: Any, what: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise IntegrityError(f"{what} {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def base58(value: Any, what: str, limit: int) -> str:
    """A Solana address, hash or signature: 1 to ``limit`` base58 characters."""
    text_ = text(value, what, limit)
    if not _BASE58.fullmatch(text_):
        raise IntegrityError(f"{what} must be base58")
    return text_
