"""flair_registry as the daemon speaks to it: one deployment of the program, in Flair's types.

``registry`` derives the program's addresses and builds its instructions in solders' types. ``RegistryProgram``
takes a deployment's address once, as text (``chain.registry`` in a node's config), and offers the daemon's registry
service the same in Flair's: repository ids in hex, public keys and addresses in base58, commit ids, and
instructions it only passes on to ``Wallet.transaction`` to be signed and sent. Reading the program's accounts needs
nothing of the sort: ``registry.decode_repository`` and ``registry.decode_branch`` already answer base58 text and
bytes.
"""

from __future__ import annotations

from solders.instruction import Instruction

from ...core.errors import InvalidInput
from ...core.ids import CommitId, RepoId
from . import registry
from .chain import Address, parse_address, solana_key

#: An instruction of the program, built here and signed by ``Wallet.transaction``: its callers only pass it on.
ProgramInstruction = Instruction


def _repo_id(repo: RepoId) -> bytes:
    """A repository id's 32 bytes (``registry`` checks the length)."""
    try:
        return bytes.fromhex(repo)
    except (TypeError, ValueError):
        raise InvalidInput(f"repository id {repo!r} is not hex", repo=str(repo)) from None


def _commit(commit: CommitId) -> bytes:
    try:
        return bytes.fromhex(commit)
    except (TypeError, ValueError):
        raise InvalidInput(f"commit id {commit!r} is not hex", commit=str(commit)) from None


class RegistryProgram:
    """The flair_registry program deployed at ``address`` (base58; ``InvalidInput`` if it is not an address).
    ``owner``, ``genesis_owner``, ``member`` and the like are base58 public keys."""

    def __init__(self, address: str) -> None:
        self.address: Address = parse_address(address)
        self._id = solana_key(self.address)

    def __repr__(self) -> str:
        return f"RegistryProgram({self.address})"

    # -- addresses -----------------------------------------------------------------------------------------

    def repository_address(self, repo: RepoId, genesis_owner: str) -> Address:
        """The account of repository ``repo`` created by ``genesis_owner`` (``registry.repository_address``)."""
        found, _ = registry.repository_address(self._id, _repo_id(repo), solana_key(genesis_owner))
        return Address(str(found))

    def legacy_repository_address(self, repo: RepoId) -> Address:
        """Where the program's earlier derivation kept ``repo`` (``registry.legacy_repository_address``)."""
        return Address(str(registry.legacy_repository_address(self._id, _repo_id(repo))))

    def branch_address(self, repository: str, branch: str) -> Address:
        """The account of ``branch`` of the repository account ``repository`` (``registry.branch_address``)."""
        found, _ = registry.branch_address(self._id, solana_key(repository), branch)
        return Address(str(found))

    # -- instructions --------------------------------------------------------------------------------------

    def create_repository(self, *, owner: str, repo: RepoId, policy_hash: bytes) -> ProgramInstruction:
        """``registry.create_repository``: ``owner`` signs and must be the genesis owner for nodes to read it."""
        return registry.create_repository(self._id, owner=solana_key(owner), repo_id=_repo_id(repo),
                                          policy_hash=policy_hash)

    def set_policy(self, *, owner: str, repo: RepoId, genesis_owner: str, policy_hash: bytes) -> ProgramInstruction:
        """``registry.set_policy``: replace the repository's round policy hash (``owner`` signs)."""
        return registry.set_policy(self._id, owner=solana_key(owner), repo_id=_repo_id(repo), policy_hash=policy_hash,
                                   genesis_owner=solana_key(genesis_owner))

    def add_member(self, *, owner: str, repo: RepoId, genesis_owner: str, member: str,
                   role: int) -> ProgramInstruction:
        """``registry.add_member``: add ``member`` with ``role``, or change its role (``owner`` signs)."""
        return registry.add_member(self._id, owner=solana_key(owner), repo_id=_repo_id(repo),
                                   member=solana_key(member), role=role, genesis_owner=solana_key(genesis_owner))

    def remove_member(self, *, owner: str, repo: RepoId, genesis_owner: str, member: str) -> ProgramInstruction:
        """``registry.remove_member``: remove ``member`` (``owner`` signs)."""
        return registry.remove_member(self._id, owner=solana_key(owner), repo_id=_repo_id(repo),
                                      member=solana_key(member), genesis_owner=solana_key(genesis_owner))

    def set_owner(self, *, owner: str, repo: RepoId, genesis_owner: str, new_owner: str) -> ProgramInstruction:
        """``registry.set_owner``: pass the repository's account to ``new_owner`` (``owner`` signs)."""
        return registry.set_owner(self._id, owner=solana_key(owner), repo_id=_repo_id(repo),
                                  new_owner=solana_key(new_owner), genesis_owner=solana_key(genesis_owner))

    def record_merge(self, *, repo: RepoId, genesis_owner: str, authority: str, branch: str,
                     previous: CommitId | None, commit: CommitId, round: int) -> ProgramInstruction:
        """``registry.record_merge``: record ``commit`` as ``branch``'s head at ``round`` after ``previous``, the
        head the chain holds (None for the branch's first record: 32 zero bytes, which the program does not
        compare); ``authority`` signs."""
        return registry.record_merge(self._id, repo_id=_repo_id(repo), genesis_owner=solana_key(genesis_owner),
                                     authority=solana_key(authority), branch=branch,
                                     previous=bytes(32) if previous is None else _commit(previous),
                                     commit=_commit(commit), round=round)
