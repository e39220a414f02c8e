"""Branches: names (git's rules made stricter) and signed branch moves.

A branch points at its latest ``BranchMove``: a record, signed by whoever moved it, saying which commit the
branch points at now. Moves travel between nodes as they are; every node checks the mover's role and keeps, per
branch, the move that comes last in one total order (timestamp, then mover, then id), so nodes that have seen
the same moves agree on every head however the moves arrived.

A **contribution branch** ``contrib/<branch>/<key>`` holds one member's pending contribution to the rounds of
``<branch>``; ``<key>`` is the first ``CONTRIBUTION_KEY_CHARS`` characters of that member's public key, and only
that member moves it (``contribution_holder`` reads the name; ``core.membership`` enforces it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from . import encoding, schema
from .errors import IntegrityError, InvalidInput
from .ids import BranchName, CommitId, PublicKey, RecordId, RepoId
from .schema import RECORD_VERSION
from .signed import SignedRecord

DEFAULT_BRANCH = BranchName("main")
#: How far ahead of a node's clock a received move may be dated.
MAX_CLOCK_SKEW_MS = 10 * 60_000
#: Branches holding members' pending contributions: ``contrib/<branch>/<key>``.
CONTRIBUTION_PREFIX = "contrib/"
#: How much of its holder's public key (base58) a contribution branch's name carries: about 93 bits, so no one
#: can make a key that another member's branch names.
CONTRIBUTION_KEY_CHARS = 16
_ALLOWED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")


def check_branch_name(name: str) -> BranchName:
    """``name`` as a ``BranchName``, or ``InvalidInput`` saying which rule it breaks."""
    if not _ALLOWED.fullmatch(name):
        raise InvalidInput(
            f"branch name {name!r} is not allowed: use 1-100 of A-Z a-z 0-9 . _ / -, starting with a letter or digit",
            branch=name,
        )
    if ".." in name or "//" in name or name.endswith(("/", ".", ".lock")) or "/." in name:
        raise InvalidInput(f"branch name {name!r} is not allowed: no '..', '//', '/.', or trailing '/', '.', '.lock'",
                           branch=name)
    return BranchName(name)


def contribution_branch(branch: str, key: str) -> str:
    """Where the member with public key ``key`` keeps its pending contribution to the rounds of ``branch``."""
    return f"{CONTRIBUTION_PREFIX}{branch}/{key[:CONTRIBUTION_KEY_CHARS]}"


def contribution_holder(branch: str) -> str | None:
    """The key part of contribution branch ``branch`` (``contrib/<branch>/<key>``); None for any other branch,
    and "" for a name under ``contrib/`` that is not of that form (no key holds it, so no one moves it)."""
    if not branch.startswith(CONTRIBUTION_PREFIX):
        return None
    target, _, key = branch[len(CONTRIBUTION_PREFIX):].rpartition("/")
    return key if target and len(key) == CONTRIBUTION_KEY_CHARS else ""


def holds_branch(key: str, branch: str) -> bool:
    """Whether ``key`` may hold ``branch``: any branch but a contribution branch, and its own one of those."""
    holder = contribution_holder(branch)
    return holder is None or bool(holder) and holder == key[:CONTRIBUTION_KEY_CHARS]


@dataclass(frozen=True)
class BranchMove(SignedRecord):
    """``branch`` of ``repo`` points at ``commit`` (it pointed at ``previous``, "" if new), moved by ``author``
    while the membership was at key ``epoch``."""

    TAG: ClassVar[bytes] = b"flair/branch-move/v1\0"
    KIND: ClassVar[str] = "branch move"

    repo: RepoId
    branch: BranchName
    commit: CommitId
    previous: str
    author: PublicKey
    epoch: int
    timestamp_ms: int
    signature: bytes = b""

    def body(self) -> dict[str, Any]:
        return {"v": RECORD_VERSION, "type": "branch-move", "repo": self.repo, "branch": self.branch,
                "commit": self.commit, "previous": self.previous, "author": self.author, "epoch": self.epoch,
                "timestamp_ms": self.timestamp_ms}

    @property
    def id(self) -> RecordId:
        return RecordId(self.digest)

    def comes_after(self, other: BranchMove) -> bool:
        """Whether this move wins over ``other``: the one total order every node applies."""
        return (self.timestamp_ms, self.author, self.id) > (other.timestamp_ms, other.author, other.id)

    @classmethod
    def decode(cls, data: bytes) -> BranchMove:
        body, sig = schema.outer(encoding.decode(data), "branch-move")
        try:
            previous = schema.text(body["previous"], "previous", 64)
            move = cls(
                repo=RepoId(schema.hex_id(body["repo"], "repo")),
                branch=check_branch_name(schema.text(body["branch"], "branch", 100)),
                commit=CommitId(schema.hex_id(body["commit"], "commit")),
                previous=schema.hex_id(previous, "previous") if previous else "",
                author=PublicKey(schema.text(body["author"], "author", 64)),
                epoch=schema.natural(body["epoch"], "epoch"),
                timestamp_ms=schema.natural(body["timestamp_ms"], "timestamp_ms"),
                signature=sig,
            )
        except (KeyError, TypeError, ValueError, InvalidInput) as exc:
            raise IntegrityError(f"branch move is missing or mistypes a field: {exc}") from exc
        if move.body() != body:
            raise IntegrityError("branch move has unknown fields")
        return move
