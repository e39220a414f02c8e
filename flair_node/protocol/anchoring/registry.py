"""Flair's client for ``flair_registry``, the on-chain repository registry (``anchor_program/``).

The program keeps, per repository, its owner, the hash of its round policy and its members with their roles, and
per branch the head merged commit and its round; ``anchor_program/README.md`` is its full interface. It speaks
Anchor's conventions (8-byte discriminators, borsh), and ``anchor_program/idl/flair_registry.json`` describes it in
the IDL format anchorpy 0.21 reads, so the bytes here are anchorpy's: instruction data from its instruction coder
with the IDL's account order and flags, account data through its accounts coder.

A repository's account is the PDA of ``["repository", repo_id, genesis_owner]``, where ``genesis_owner`` is the
owner named in the repository's genesis record (``core.objects.RepositoryRecord``, whose hash is the repo_id), and
the program derives it from the key that signs ``create_repository``. So only that owner can create the account
the nodes read: anyone else who calls ``create_repository`` for the same id, first or not, creates an account at
an address of its own, which no node derives, and the owner's creation still succeeds. (Recomputing the id on
chain from the genesis record instead would not fit: the record carries the model's whole tensor layout, far past
a transaction's 1,232 bytes, and the program would have to parse msgpack.) The builders therefore take the
genesis owner: the owner's instructions as ``genesis_owner`` (default: the signing owner, right until a handover),
``record_merge`` always. Before this derivation the address was ``["repository", repo_id]`` alone and went to
whoever created it first; ``legacy_repository_address`` finds such an account, so a node can say it is there and
ignore it.

Nothing here talks to a network: the builders return solders ``Instruction``s for the caller to sign and send,
and the decoders read account data as an RPC node (or LiteSVM) returns it, refusing anything malformed with
``IntegrityError``. The program id is a parameter, not a constant: each deployment (a test's, a cluster's) has
its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from functools import cache
from pathlib import Path
from typing import Any

from anchorpy.coder.coder import Coder
from anchorpy_core.idl import Idl, IdlAccount, IdlInstruction
from pyheck import snake
from solders.instruction import AccountMeta, Instruction
from solders.pubkey import Pubkey
from solders.system_program import ID as SYSTEM_PROGRAM_ID

from ...core.errors import FlairError, IntegrityError, InvalidInput

#: The program's IDL (legacy Anchor format), kept beside the program's sources.
IDL_PATH = Path(__file__).parents[3] / "anchor_program" / "idl" / "flair_registry.json"

REPOSITORY_SEED = b"repository"
BRANCH_SEED = b"branch"
MAX_MEMBERS = 32
MAX_BRANCH_NAME_BYTES = 32
MAX_ROUND = 2**64 - 1
#: Account sizes, discriminator included (the README's tables).
REPOSITORY_SIZE = 8 + 32 + 32 + 32 + 32 + 1 + 1 + MAX_MEMBERS * (32 + 1)  # 1,194
#: A Repository account as the program laid it out before ``genesis_owner`` (found only at legacy addresses).
LEGACY_REPOSITORY_SIZE = REPOSITORY_SIZE - 32  # 1,162
BRANCH_SIZE = 8 + 32 + 1 + MAX_BRANCH_NAME_BYTES + 32 + 8 + 8 + 32 + 1  # 154

#: Anchor's framework error codes the program uses for its account checks (the README's list), by code.
ANCHOR_ERRORS: dict[int, str] = {
    100: "InstructionMissing",
    101: "InstructionFallbackNotFound",
    102: "InstructionDidNotDeserialize",
    2000: "ConstraintMut",
    2002: "ConstraintSigner",
    2006: "ConstraintSeeds",
    2012: "ConstraintAddress",
    3001: "AccountDiscriminatorNotFound",
    3002: "AccountDiscriminatorMismatch",
    3005: "AccountNotEnoughKeys",
    3007: "AccountOwnedByWrongProgram",
    3008: "InvalidProgramId",
    3012: "AccountNotInitialized",
}


class Role(IntEnum):
    """A member's role; the owner is the repository's ``owner`` field, not a member."""

    READER = 0
    CONTRIBUTOR = 1
    MAINTAINER = 2


@dataclass(frozen=True)
class RepositoryState:
    """A ``Repository`` account: keys as base58 strings, ids and hashes as bytes."""

    repo_id: bytes
    #: The key that created the account (a seed of its address); it never changes, unlike ``owner``.
    genesis_owner: str
    owner: str
    policy_hash: bytes
    bump: int
    #: The members in use, in the account's order, as (key, role).
    members: tuple[tuple[str, int], ...]

    @property
    def member_count(self) -> int:
        return len(self.members)

    def role_of(self, key: Pubkey | str) -> int | None:
        """The role of ``key``, or None if it is not a member (the owner is not one)."""
        wanted = str(key)
        return next((role for member, role in self.members if member == wanted), None)


@dataclass(frozen=True)
class BranchState:
    """A ``Branch`` account: the head merged commit of one branch of one repository, and its round."""

    repository: str
    name: str
    head: bytes
    round: int
    merges: int
    last_author: str
    bump: int


# -- the IDL ------------------------------------------------------------------------------------------------

@cache
def load_idl() -> Idl:
    """The program's IDL, parsed by anchorpy (read once)."""
    try:
        text = IDL_PATH.read_text(encoding="utf-8")
    except OSError as exc:
        raise FlairError(f"cannot read the registry's IDL at {IDL_PATH} (it ships in the source tree, "
                         f"anchor_program/idl): {exc}", path=str(IDL_PATH)) from exc
    return Idl.from_json(text)


@cache
def _coder() -> Coder:
    return Coder(load_idl())


@cache
def _instructions() -> dict[str, IdlInstruction]:
    return {snake(ix.name): ix for ix in load_idl().instructions}


@cache
def _error_names() -> dict[int, str]:
    return {**ANCHOR_ERRORS, **{error.code: error.name for error in load_idl().errors or ()}}


def registry_error(code: int) -> str:
    """The name of a custom program error the registry returned (its own from 6000, or Anchor's)."""
    return _error_names().get(code, f"custom program error {code:#x}")


def instruction_discriminator(name: str) -> bytes:
    """Anchor's discriminator of an instruction (``sha256("global:<name>")[:8]``), by its snake_case name."""
    return bytes(_coder().instruction.sighashes[name])


def account_discriminator(name: str) -> bytes:
    """Anchor's discriminator of an account (``sha256("account:<Name>")[:8]``): ``Repository`` or ``Branch``."""
    return bytes(_coder().accounts.acc_name_to_discriminator[name])


# -- addresses ----------------------------------------------------------------------------------------------

def _check_repo_id(repo_id: bytes) -> bytes:
    if not isinstance(repo_id, bytes) or len(repo_id) != 32:
        raise InvalidInput(f"a repository id is 32 bytes, not {repo_id!r}")
    return repo_id


def _check_hash(what: str, value: bytes) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise InvalidInput(f"{what} is 32 bytes, not {value!r}")
    return value


def _branch_name_bytes(name: str) -> bytes:
    encoded = name.encode("utf-8")
    if not 1 <= len(encoded) <= MAX_BRANCH_NAME_BYTES:
        raise InvalidInput(f"a branch name is 1 to {MAX_BRANCH_NAME_BYTES} UTF-8 bytes; {name!r} is {len(encoded)}",
                           branch=name)
    return encoded


def _check_key(what: str, key: Pubkey) -> Pubkey:
    if not isinstance(key, Pubkey):
        raise InvalidInput(f"{what} is a Pubkey, not {key!r}")
    return key


def repository_address(program_id: Pubkey, repo_id: bytes, genesis_owner: Pubkey) -> tuple[Pubkey, int]:
    """The repository's account (PDA of ``["repository", repo_id, genesis_owner]``) and its canonical bump.
    ``genesis_owner`` is the owner the repository's genesis record names, whoever owns the repository now."""
    return Pubkey.find_program_address(
        [REPOSITORY_SEED, _check_repo_id(repo_id), bytes(_check_key("a genesis owner", genesis_owner))], program_id)


def legacy_repository_address(program_id: Pubkey, repo_id: bytes) -> Pubkey:
    """Where the program kept a repository before the genesis owner joined the seeds (PDA of ``["repository",
    repo_id]``): anyone could create it first. No instruction uses it now; nodes only look there to report an
    account someone else made."""
    return Pubkey.find_program_address([REPOSITORY_SEED, _check_repo_id(repo_id)], program_id)[0]


def branch_address(program_id: Pubkey, repository: Pubkey, name: str) -> tuple[Pubkey, int]:
    """A branch's account (PDA of ``["branch", repository, name]``) and its canonical bump."""
    return Pubkey.find_program_address([BRANCH_SEED, bytes(repository), _branch_name_bytes(name)], program_id)


# -- instructions -------------------------------------------------------------------------------------------

def _instruction(program_id: Pubkey, name: str, args: dict[str, Any], accounts: dict[str, Pubkey]) -> Instruction:
    """``name``'s instruction: anchorpy's encoding of ``args``, the accounts in the IDL's order with its flags."""
    metas = []
    for item in _instructions()[name].accounts:
        assert isinstance(item, IdlAccount)  # the IDL has no nested account groups
        metas.append(AccountMeta(accounts[snake(item.name)], is_signer=item.is_signer, is_writable=item.is_mut))
    return Instruction(program_id, bytes(_coder().instruction.encode(name, args)), metas)


def create_repository(program_id: Pubkey, *, owner: Pubkey, repo_id: bytes, policy_hash: bytes) -> Instruction:
    """Create the repository's account, owned by ``owner`` (who signs and pays its rent) and at the address of
    ``(repo_id, owner)``: ``owner`` must be the owner the genesis record names for nodes to read the account."""
    repository, _ = repository_address(program_id, repo_id, owner)
    return _instruction(program_id, "create_repository",
                        {"repo_id": repo_id, "policy_hash": _check_hash("a policy hash", policy_hash)},
                        {"repository": repository, "owner": owner, "system_program": SYSTEM_PROGRAM_ID})


def _owned(program_id: Pubkey, repo_id: bytes, owner: Pubkey, genesis_owner: Pubkey | None) -> Pubkey:
    """The account an owner's instruction changes: the one ``genesis_owner`` created (the owner's own when None:
    an owner that has not handed the repository over)."""
    return repository_address(program_id, repo_id, owner if genesis_owner is None else genesis_owner)[0]


def set_policy(program_id: Pubkey, *, owner: Pubkey, repo_id: bytes, policy_hash: bytes,
               genesis_owner: Pubkey | None = None) -> Instruction:
    """Replace the repository's round policy hash (the owner signs)."""
    repository = _owned(program_id, repo_id, owner, genesis_owner)
    return _instruction(program_id, "set_policy", {"policy_hash": _check_hash("a policy hash", policy_hash)},
                        {"repository": repository, "owner": owner})


def add_member(program_id: Pubkey, *, owner: Pubkey, repo_id: bytes, member: Pubkey, role: int,
               genesis_owner: Pubkey | None = None) -> Instruction:
    """Add ``member`` with ``role``, or change its role (the owner signs)."""
    if isinstance(role, bool) or role not in set(Role):
        raise InvalidInput(f"a role is 0 (reader), 1 (contributor) or 2 (maintainer), not {role!r}")
    repository = _owned(program_id, repo_id, owner, genesis_owner)
    return _instruction(program_id, "add_member", {"member": member, "role": int(role)},
                        {"repository": repository, "owner": owner})


def remove_member(program_id: Pubkey, *, owner: Pubkey, repo_id: bytes, member: Pubkey,
                  genesis_owner: Pubkey | None = None) -> Instruction:
    """Remove ``member`` (the owner signs)."""
    repository = _owned(program_id, repo_id, owner, genesis_owner)
    return _instruction(program_id, "remove_member", {"member": member}, {"repository": repository, "owner": owner})


def set_owner(program_id: Pubkey, *, owner: Pubkey, repo_id: bytes, new_owner: Pubkey,
              genesis_owner: Pubkey | None = None) -> Instruction:
    """Pass the repository to ``new_owner`` (the owner signs); if ``new_owner`` was a member, it leaves the members.
    The program refuses the owner itself (``SameOwner``) and the all-zero key (``InvalidOwner``); so does this."""
    if not isinstance(new_owner, Pubkey):
        raise InvalidInput(f"a new owner is a Pubkey, not {new_owner!r}")
    if new_owner == Pubkey.default():
        raise InvalidInput("the new owner cannot be the all-zero key (the System Program's id): nobody holds it")
    if new_owner == owner:
        raise InvalidInput(f"{new_owner} owns the repository already; name the key it passes to",
                           owner=str(owner))
    repository = _owned(program_id, repo_id, owner, genesis_owner)
    return _instruction(program_id, "set_owner", {"new_owner": new_owner}, {"repository": repository, "owner": owner})


def record_merge(program_id: Pubkey, *, repo_id: bytes, genesis_owner: Pubkey, authority: Pubkey, branch: str,
                 previous: bytes, commit: bytes, round: int) -> Instruction:
    """Record ``commit`` as ``branch``'s head at ``round``; ``authority`` signs (on ``main`` the owner or a
    maintainer, elsewhere a contributor or more) and pays for a new branch's account. ``previous`` must be the
    current head and ``round`` the next one; a branch's first merge may name any round from 1 (and its
    ``previous`` is not compared)."""
    if isinstance(round, bool) or not isinstance(round, int) or not 1 <= round <= MAX_ROUND:
        raise InvalidInput(f"a round is an integer from 1 to 2**64 - 1, not {round!r}")
    repository, _ = repository_address(program_id, repo_id, genesis_owner)
    branch_account, _ = branch_address(program_id, repository, branch)
    args = {"branch": branch, "previous": _check_hash("a previous commit", previous),
            "commit": _check_hash("a commit", commit), "round": round}
    return _instruction(program_id, "record_merge", args,
                        {"repository": repository, "branch": branch_account, "authority": authority,
                         "system_program": SYSTEM_PROGRAM_ID})


# -- accounts -----------------------------------------------------------------------------------------------

def _decode(name: str, size: int, data: bytes) -> Any:
    data = bytes(data)
    if len(data) != size:
        raise IntegrityError(f"a {name} account is {size} bytes, not {len(data)}")
    expected = account_discriminator(name)
    if data[:8] != expected:
        raise IntegrityError(f"not a {name} account: discriminator {data[:8].hex()}, expected {expected.hex()}")
    return _coder().accounts.decode(data)


def decode_repository(data: bytes) -> RepositoryState:
    """A ``Repository`` account's data, checked: its discriminator, size, member count and roles."""
    state = _decode("Repository", REPOSITORY_SIZE, data)
    repo_id = bytes(state.repo_id)
    if state.member_count > MAX_MEMBERS:
        raise IntegrityError(f"repository {repo_id.hex()} claims {state.member_count} members (at most "
                             f"{MAX_MEMBERS})", repo=repo_id.hex())
    members = tuple((str(m.key), int(m.role)) for m in state.members[:state.member_count])
    if any(role > max(Role) for _, role in members):
        raise IntegrityError(f"repository {repo_id.hex()} has a member with an unknown role", repo=repo_id.hex())
    return RepositoryState(repo_id=repo_id, genesis_owner=str(state.genesis_owner), owner=str(state.owner),
                           policy_hash=bytes(state.policy_hash), bump=int(state.bump), members=members)


def decode_legacy_owner(data: bytes) -> str:
    """The owner of a ``Repository`` account in the program's earlier layout (no ``genesis_owner``: discriminator,
    repo_id, owner, ... in ``LEGACY_REPOSITORY_SIZE`` bytes), as found at a ``legacy_repository_address``."""
    data = bytes(data)
    if len(data) != LEGACY_REPOSITORY_SIZE or data[:8] != account_discriminator("Repository"):
        raise IntegrityError(f"not a Repository account of the earlier layout ({len(data)} bytes, discriminator "
                             f"{data[:8].hex()})")
    return str(Pubkey.from_bytes(data[40:72]))


def decode_branch(data: bytes) -> BranchState:
    """A ``Branch`` account's data, checked: its discriminator, size and name (UTF-8, zero-padded)."""
    state = _decode("Branch", BRANCH_SIZE, data)
    raw = bytes(state.name)
    if not 1 <= state.name_len <= MAX_BRANCH_NAME_BYTES or any(raw[state.name_len:]):
        raise IntegrityError(f"a branch account with a malformed name ({state.name_len} bytes: {raw.hex()})")
    try:
        name = raw[:state.name_len].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IntegrityError(f"a branch account whose name is not UTF-8: {raw.hex()}") from exc
    return BranchState(repository=str(state.repository), name=name, head=bytes(state.head), round=int(state.round),
                       merges=int(state.merges), last_author=str(state.last_author), bump=int(state.bump))
