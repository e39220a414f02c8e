"""The anchor record: one line of ASCII that an SPL Memo instruction writes into a Solana transaction.

When a round's aggregator merges a commit, the transaction that mints the commit's NFT also carries this record
as a memo, so the chain holds, under the aggregator's signature and the slot's timestamp, which commit became the
head of which branch in which round, and which proof backs it::

    flair:2:<repository id>:<branch>:<round>:<merged commit id>[:<proof CID>]

The chain is public, so the daemon never writes a branch's name there: the ``branch`` field holds the branch's
tag (``storage.keys.PayloadKeys.tag``, 32 hex digits keyed with the merge's payload key), which members recompute
to check the memo and nobody else can tell from random. (Version 1 wrote the name; it is refused.)

Ids are 64 lower-case hex digits, the round is decimal without leading zeros, the proof is a CIDv1 in base32.
Branch names cannot hold ``:`` (``core.refs``), so the fields split unambiguously, and every value has one
spelling, so a record has exactly one memo and ``parse_anchor_memo`` refuses every other byte string. The longest
record (a 100-character branch, the largest round, a proof) is 309 bytes: well inside what SPL Memo logs and
what one transaction can carry beside the NFT's instructions.

The repository's ownership token (``ownership``) writes three more kinds, each with one spelling and a parser
that refuses every other byte string::

    flair:1:own:<repository id>                                  the token's minting
    flair:1:handover:<repository id>:<new owner's public key>    a transfer of the token (base58 Solana key)
    flair:1:member:<repository id>:<seq>:<membership change id>  a membership change, at its position

None can be read as an anchor (whose third field is a 64-hex-digit repository id), nor as one another: the third
field names the kind and the field count is fixed per kind.

The memo instruction lists the signer whose key it names as an account: SPL Memo v2 then fails unless that key
signed, so the memo is attributable to the aggregator (or the token's holder) even when read on its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from solders.instruction import AccountMeta, Instruction
from solders.pubkey import Pubkey

from ...core.cid import parse_cid
from ...core.errors import FlairError, IntegrityError, InvalidInput
from ...core.ids import BranchName, Cid, CommitId, PublicKey, RepoId, short
from ...core.refs import check_branch_name
from .chain import parse_address

#: SPL Memo v2 (checks its data is UTF-8 and that every account it is given signed).
MEMO_PROGRAM_ID = Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr")
MEMO_PREFIX = "flair"
MEMO_VERSION = 1
ANCHOR_VERSION = 2  # version 1 anchors named the branch
#: Rounds are numbered from 1. Ten digits (a round a second for 300 years) keep the largest anchor transaction
#: inside Solana's packet size (``commit_nft``).
MAX_ROUND = 10**10 - 1
#: Longer than any record ``anchor_memo`` makes (309 bytes); a parser refuses anything longer unread.
MAX_MEMO_BYTES = 400
#: Membership changes are numbered from 1; their position is a u64 in the signed record.
MAX_SEQ = 2**64 - 1
_ROUND = re.compile(r"[1-9][0-9]{0,9}")
_SEQ = re.compile(r"[1-9][0-9]{0,19}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
OWNERSHIP_KIND, HANDOVER_KIND, MEMBERSHIP_KIND = "own", "handover", "member"


@dataclass(frozen=True)
class AnchorRecord:
    """A merged commit as the chain records it. Construction validates every field (``InvalidInput``)."""

    repo: RepoId
    branch: BranchName  # as the chain shows it: the daemon writes the branch's tag, never its name
    round: int
    commit: CommitId
    proof: Cid | None = None  # the merge's proof record on IPFS, when the repository proves its rounds

    def __post_init__(self) -> None:
        # core's checks use re.match with "$", which lets a trailing newline through: fullmatch here
        if not isinstance(self.repo, str) or not _HEX64.fullmatch(self.repo):
            raise InvalidInput(f"repository id {self.repo!r} is not 64 lower-case hex digits", repo=str(self.repo))
        if not isinstance(self.commit, str) or not _HEX64.fullmatch(self.commit):
            raise InvalidInput(f"commit id {self.commit!r} is not 64 lower-case hex digits", commit=str(self.commit))
        if not isinstance(self.branch, str) or not self.branch.isprintable():
            raise InvalidInput(f"branch {self.branch!r} is not a branch name", branch=str(self.branch))
        check_branch_name(self.branch)
        if isinstance(self.round, bool) or not isinstance(self.round, int) or not 1 <= self.round <= MAX_ROUND:
            raise InvalidInput(f"round {self.round!r} is not an integer from 1 to {MAX_ROUND}", round=str(self.round))
        if self.proof is not None:
            if not isinstance(self.proof, str):
                raise InvalidInput(f"proof CID {self.proof!r} is not a string")
            parsed = parse_cid(self.proof)
            if parsed.version != 1 or parsed.text != self.proof:
                raise InvalidInput(f"proof CID {self.proof!r} is not a CIDv1 in base32 (use {parsed.text})",
                                   cid=self.proof)


def anchor_memo(record: AnchorRecord) -> bytes:
    """The memo bytes for ``record``: ASCII, canonical, at most 309 bytes."""
    fields = [MEMO_PREFIX, str(ANCHOR_VERSION), record.repo, record.branch, str(record.round), record.commit]
    if record.proof is not None:
        fields.append(record.proof)
    return ":".join(fields).encode("ascii")


def parse_anchor_memo(data: bytes) -> AnchorRecord:
    """The record ``data`` spells; ``IntegrityError`` for anything ``anchor_memo`` would not have written."""
    if len(data) > MAX_MEMO_BYTES:
        raise IntegrityError(f"memo of {len(data)} bytes is longer than any Flair anchor ({MAX_MEMO_BYTES})")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise IntegrityError("memo is not ASCII, so not a Flair anchor") from None
    fields = text.split(":")
    if len(fields) not in (6, 7) or fields[0] != MEMO_PREFIX:
        raise IntegrityError(f"memo {text[:80]!r} is not a Flair anchor (flair:2:repo:branch:round:commit[:proof])")
    if fields[1] != str(ANCHOR_VERSION):
        raise IntegrityError(f"anchor memo version {fields[1][:10]!r} is not {ANCHOR_VERSION}: upgrade flair-node?")
    if not _ROUND.fullmatch(fields[4]):
        raise IntegrityError(f"anchor memo round {fields[4][:24]!r} is not a canonical decimal number")
    try:
        record = AnchorRecord(repo=RepoId(fields[2]), branch=BranchName(fields[3]), round=int(fields[4]),
                              commit=CommitId(fields[5]), proof=Cid(fields[6]) if len(fields) == 7 else None)
    except FlairError as exc:  # the fields' own checks, raised as InvalidInput for callers building a record
        raise IntegrityError(f"anchor memo does not check out: {exc}") from None
    if anchor_memo(record) != data:
        raise IntegrityError(f"anchor memo for commit {short(record.commit)} is not in canonical form")
    return record


def memo_instruction(memo: bytes, signer: Pubkey) -> Instruction:
    """An SPL Memo v2 instruction writing ``memo``, which fails on chain unless ``signer`` signed."""
    if len(memo) > MAX_MEMO_BYTES:
        raise InvalidInput(f"memo of {len(memo)} bytes is longer than {MAX_MEMO_BYTES}")
    return Instruction(MEMO_PROGRAM_ID, memo, [AccountMeta(signer, is_signer=True, is_writable=False)])


# -- the ownership token's memos --------------------------------------------------------------------------

def _check_repo(repo: object) -> RepoId:
    if not isinstance(repo, str) or not _HEX64.fullmatch(repo):
        raise InvalidInput(f"repository id {repo!r} is not 64 lower-case hex digits", repo=str(repo))
    return RepoId(repo)


def _check_key(key: object) -> PublicKey:
    """A Solana public key in its one base58 spelling."""
    try:
        canonical = parse_address(key) == key
    except InvalidInput:
        canonical = False
    if not canonical:
        raise InvalidInput(f"{key!r} is not a Solana public key in base58", key=str(key))
    return PublicKey(str(key))


def _check_seq(seq: object) -> int:
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_SEQ:
        raise InvalidInput(f"membership change position {seq!r} is not an integer from 1 to {MAX_SEQ}", seq=str(seq))
    return seq


def ownership_memo(repo: RepoId) -> bytes:
    """The memo of the transaction minting ``repo``'s ownership token: ``flair:1:own:<repo>``."""
    return ":".join([MEMO_PREFIX, str(MEMO_VERSION), OWNERSHIP_KIND, _check_repo(repo)]).encode("ascii")


def handover_memo(repo: RepoId, new_owner: PublicKey) -> bytes:
    """The memo of the transaction moving ``repo``'s ownership token to ``new_owner`` (a base58 Solana key)."""
    fields = [MEMO_PREFIX, str(MEMO_VERSION), HANDOVER_KIND, _check_repo(repo), _check_key(new_owner)]
    return ":".join(fields).encode("ascii")


def membership_memo(repo: RepoId, seq: int, change: str) -> bytes:
    """The memo naming membership change ``change`` (its id, ``MembershipChange.id``), the ``seq``-th of
    ``repo``'s (numbered from 1)."""
    if not isinstance(change, str) or not _HEX64.fullmatch(change):
        raise InvalidInput(f"membership change id {change!r} is not 64 lower-case hex digits", change=str(change))
    fields = [MEMO_PREFIX, str(MEMO_VERSION), MEMBERSHIP_KIND, _check_repo(repo), str(_check_seq(seq)), change]
    return ":".join(fields).encode("ascii")


def _memo_fields(data: bytes, kind: str, count: int, spelling: str) -> list[str]:
    """The ``count`` fields of a ``kind`` memo (``spelling`` shows its form in errors); ``IntegrityError``
    for anything that is not one."""
    if len(data) > MAX_MEMO_BYTES:
        raise IntegrityError(f"memo of {len(data)} bytes is longer than any Flair {kind} memo ({MAX_MEMO_BYTES})")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise IntegrityError(f"memo is not ASCII, so not a Flair {kind} memo") from None
    fields = text.split(":")
    if len(fields) != count or fields[0] != MEMO_PREFIX or fields[2] != kind:
        raise IntegrityError(f"memo {text[:80]!r} is not a Flair {kind} memo ({spelling})")
    if fields[1] != str(MEMO_VERSION):
        raise IntegrityError(f"{kind} memo version {fields[1][:10]!r} is not {MEMO_VERSION}: upgrade flair-node?")
    return fields


def _reparsed(data: bytes, kind: str, build: Callable[[], bytes]) -> None:
    """``IntegrityError`` unless ``build`` (the memo's fields, checked as a writer checks them) spells ``data``."""
    try:
        canonical = build()
    except FlairError as exc:  # the fields' own checks, raised as InvalidInput for callers writing a memo
        raise IntegrityError(f"{kind} memo does not check out: {exc}") from None
    if canonical != data:
        raise IntegrityError(f"{kind} memo is not in canonical form")


def parse_ownership_memo(data: bytes) -> RepoId:
    """The repository an ``ownership_memo`` names; ``IntegrityError`` for any other bytes."""
    fields = _memo_fields(data, OWNERSHIP_KIND, 4, "flair:1:own:repo")
    _reparsed(data, OWNERSHIP_KIND, lambda: ownership_memo(RepoId(fields[3])))
    return RepoId(fields[3])


def parse_handover_memo(data: bytes) -> tuple[RepoId, PublicKey]:
    """The repository and new owner a ``handover_memo`` names; ``IntegrityError`` for any other bytes."""
    fields = _memo_fields(data, HANDOVER_KIND, 5, "flair:1:handover:repo:new-owner")
    _reparsed(data, HANDOVER_KIND, lambda: handover_memo(RepoId(fields[3]), PublicKey(fields[4])))
    return RepoId(fields[3]), PublicKey(fields[4])


def parse_membership_memo(data: bytes) -> tuple[RepoId, int, str]:
    """The repository, position and change id a ``membership_memo`` names; ``IntegrityError`` for any other
    bytes (a position with leading zeros, a sign or spaces, upper-case hex, trailing bytes...)."""
    fields = _memo_fields(data, MEMBERSHIP_KIND, 6, "flair:1:member:repo:seq:change")
    if not _SEQ.fullmatch(fields[4]):
        raise IntegrityError(f"membership memo position {fields[4][:24]!r} is not a canonical decimal number")
    seq = int(fields[4])
    _reparsed(data, MEMBERSHIP_KIND, lambda: membership_memo(RepoId(fields[3]), seq, fields[5]))
    return RepoId(fields[3]), seq, fields[5]
