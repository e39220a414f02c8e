"""Typed ids. Every id is lower-case hex of a SHA-256 digest; the types keep them apart between layers."""

from __future__ import annotations

import hashlib
import re
from typing import NewType

from .errors import InvalidInput

#: Id of a commit: SHA-256 of the commit's canonical encoding (without its signature).
CommitId = NewType("CommitId", str)
#: Id of a repository: SHA-256 of its genesis record's canonical encoding.
RepoId = NewType("RepoId", str)
#: Id of a stored payload (a delta or initial weights): SHA-256 of its bytes.
BlobId = NewType("BlobId", str)
#: Base58 Ed25519 public key: the node's peer id, commit author and Solana address.
PublicKey = NewType("PublicKey", str)
#: An IPFS content identifier in text form (CIDv1 base32), see ``core.cid``.
Cid = NewType("Cid", str)
#: A branch name, validated by ``refs.check_branch_name``.
BranchName = NewType("BranchName", str)
#: A libp2p peer id as text (base58 multihash of the peer's public key), as gossip and the network report it.
PeerId = NewType("PeerId", str)
#: Id of the signed record a ref points at (a branch move, a membership change): SHA-256 of its encoding.
RecordId = NewType("RecordId", str)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX_PREFIX = re.compile(r"^[0-9a-f]{4,64}$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_full_id(text: str) -> bool:
    return bool(_HEX64.fullmatch(text))


def check_id_prefix(text: str, what: str = "id") -> str:
    """An id or an unambiguous-looking prefix of one (4 to 64 hex digits), lower-cased."""
    lowered = text.strip().lower()
    if not _HEX_PREFIX.fullmatch(lowered):
        raise InvalidInput(f"{what} {text!r} is not a hex id (4 to 64 hex digits)", id=text)
    return lowered


def short(text: str) -> str:
    """The first 10 characters of an id, for messages."""
    return text[:10]
