"""The daemon's side of flair_registry, Flair's own program (``chain.registry``): the repository's owner, policy and
members, and each branch's round merges, kept on chain so the chain enforces them too.

Every ``every`` seconds, for each repository, the node reads the program's accounts and brings them to what its
membership chain and branches say. Reading first makes every step safe to repeat after a crash or a race: a
transaction that another node (or an earlier attempt) already made simply finds nothing left to do.

- **The account** is the program's PDA of the repository id and the owner its genesis record names
  (``protocol.anchoring.registry.repository_address``): only that key can create it, so nobody can take a
  repository's account by creating it first. An account someone made for this repository at another address is
  never read; one at the address of the program's earlier derivation (the repository id alone, which anyone could
  take first) is looked for once per run, and if it is not the owner's the node says so (log, ``status``'s
  ``notices``, ``describe``) and goes on with its own.
- **The genesis owner's node** creates the repository's account (``create_repository``); **the owner's node**
  then keeps its policy hash (the SHA-256 of the policy's canonical record) and its members and roles equal to the
  membership chain's current members (readers, contributors, maintainers; at most 32, by role then key). After a
  handover, the old owner's node moves the account's owner to the new one (``set_owner``), whose node takes over
  from there; a repository handed over before its account existed has it created by its genesis owner's node,
  which passes it on at once (the new owner's node cannot create it, and says so).
- **Every member whose role moves a branch** (on ``main`` the owner or a maintainer, elsewhere a contributor or
  more) records the branch's round merges that are missing on chain, oldest first, each naming the head the
  chain holds (``record_merge``): the program refuses one that does not extend it or skips a round. A node
  records its own merges at once, and others' once they are ``GRACE_MS`` old, so their aggregator goes first.

A failure (RPC error, a refusal) is logged and kept in ``status``; the next pass tries again. ``describe``
(API ``repo.registry``, ``flair registry REPO``) compares the chain's accounts with this node's view, with
explorer links.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio

from ..core import encoding
from ..core.errors import FlairError, IntegrityError, InvalidInput
from ..core.identity import Identity
from ..core.ids import CommitId, short
from ..core.membership import PROTECTED_BRANCHES, ROLES, Membership
from ..storage.repo import Repository, now_ms
from ..storage.repos import RepoSet
from .anchor_service import confirmed, each_pass, fund
from .round_service import round_branches

if TYPE_CHECKING:
    from ..core.objects import Commit
    from ..protocol.anchoring.chain import Address, Chain
    from ..protocol.anchoring.registry import BranchState, RepositoryState
    from ..protocol.anchoring.registry_program import ProgramInstruction

log = logging.getLogger(__name__)

RECENT = 32  # round merges back from each branch head that are recorded
GRACE_MS = 30_000  # how long a merge's own aggregator has to record it before other members do
MAX_INSTRUCTIONS = 6  # membership instructions sent in one transaction
_ROLE = {"reader": 0, "contributor": 1, "maintainer": 2}


def policy_hash(membership: Membership) -> bytes:
    """What the registry holds of a repository's round policy: the SHA-256 of its canonical record."""
    return hashlib.sha256(encoding.encode(membership.policy.record())).digest()


def desired_members(membership: Membership, *, at_ms: int) -> dict[str, int]:
    """The members the registry should hold (key -> role), the owner aside: at most 32, by role then key."""
    live = [m for m in membership.current() if m.key != membership.owner
            and membership.role(m.key, epoch=membership.epoch, at_ms=at_ms) is not None]
    live.sort(key=lambda m: (-ROLES.index(m.role), m.key))
    from ..protocol.anchoring.registry import MAX_MEMBERS

    return {m.key: _ROLE[m.role] for m in live[:MAX_MEMBERS]}


class RegistryService:
    def __init__(self, repos: RepoSet, identity: Identity, *, cluster: str, program: str,
                 commitment: str = "confirmed", every: float = 2.0) -> None:
        from ..protocol.anchoring.registry_program import RegistryProgram
        from ..protocol.anchoring.wallet import Wallet

        self.repos, self.identity, self.cluster = repos, identity, cluster
        self.wallet = Wallet(identity)  # the node's key, signing and paying for its registry transactions
        self.commitment, self.every = commitment, every
        self.program = RegistryProgram(program)
        self.counts: Counter[str] = Counter()  # transactions, merges_recorded, failures
        self.errors: dict[str, str] = {}  # repository id -> the last failure, until a pass succeeds
        self.notices: dict[str, str] = {}  # repository id -> what sits at its legacy address, if not the owner's
        self._looked: set[str] = set()  # repositories whose legacy address was read in this run

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await each_pass(self.repos, self.cluster, self.every, self.sync, task_status=task_status)

    def status(self) -> dict[str, Any]:
        return {"program": self.program.address, **self.counts, "failing": len(self.errors),
                "notices": len(self.notices)}

    async def sync(self, chain: Chain, repo: Repository) -> None:
        """One pass over ``repo``: the owner's account, then the branches' merges; a failure is kept, not raised."""
        try:
            membership = await trio.to_thread.run_sync(repo.members.current)
            if repo.id not in self._looked:
                await self._legacy(chain, repo, membership)
                self._looked.add(repo.id)
            state = await self._repository(chain, repo)
            me = self.identity.public_key
            if (membership.owner == me or state is not None and state.owner == me
                    or state is None and repo.record.owner == me):
                state = await self._mirror(chain, repo, membership, state)
            if state is not None:
                await self._record_merges(chain, repo, membership, state)
            self.errors.pop(repo.id, None)
        except FlairError as exc:
            self.counts["failures"] += 1
            if self.errors.get(repo.id) != str(exc):
                log.warning("the registry of %s on %s: %s", short(repo.id), self.cluster, exc)
            self.errors[repo.id] = str(exc)

    # -- the repository's account ------------------------------------------------------------------------------

    def _address(self, repo: Repository) -> Address:
        """The repository's account: the PDA of its id and the owner its genesis record names."""
        return self.program.repository_address(repo.id, repo.record.owner)

    async def _repository(self, chain: Chain, repo: Repository) -> RepositoryState | None:
        from ..protocol.anchoring.registry import decode_repository

        account = await chain.account(self._address(repo))
        if account is None or not account.data:
            return None
        if account.owner != self.program.address:
            raise InvalidInput(f"the registry address of {short(repo.id)} is held by another program")
        state = decode_repository(account.data)
        if (state.repo_id.hex(), state.genesis_owner) != (repo.id, repo.record.owner):  # the program makes neither
            raise IntegrityError(f"the registry account of {short(repo.id)} names repository "
                                 f"{short(state.repo_id.hex())} created by {state.genesis_owner}: not this one")
        return state

    async def _legacy(self, chain: Chain, repo: Repository, membership: Membership) -> dict[str, Any] | None:
        """The account at the repository's address under the program's earlier derivation (its id alone), if the
        program holds one there: its address, owner and whether that is this repository's owner. One that is not
        is noted (and logged once); nothing here ever writes to or reads members from it."""
        from ..protocol.anchoring.registry import decode_legacy_owner

        address = self.program.legacy_repository_address(repo.id)
        account = await chain.account(address)
        if account is None or not account.data or account.owner != self.program.address:
            self.notices.pop(repo.id, None)
            return None  # lamports anyone may send, or another program's: nothing this program would read
        try:
            holder: str | None = decode_legacy_owner(account.data)
        except IntegrityError:
            holder = None
        ours = holder in (membership.owner, repo.record.owner)
        if ours:
            self.notices.pop(repo.id, None)
        else:
            notice = (f"an account at the earlier registry address of {short(repo.id)} ({address}) names "
                      f"{holder or 'no readable owner'}, not the repository's owner {membership.owner}: someone "
                      f"created it first under the old derivation (the repository id alone); it is ignored, the "
                      f"registry account is {self._address(repo)}, which only the genesis owner "
                      f"{repo.record.owner} can create")
            if self.notices.get(repo.id) != notice:
                log.warning("%s", notice)
            self.notices[repo.id] = notice
        return {"address": address, "owner": holder, "ours": ours}

    async def _mirror(self, chain: Chain, repo: Repository, membership: Membership,
                      state: RepositoryState | None) -> RepositoryState | None:
        """Bring the repository's account to the membership chain (owner's node, or the old owner's after a
        handover); the account as it is then."""
        program, me, repo_id, genesis = self.program, self.identity.public_key, repo.id, repo.record.owner
        want_policy = policy_hash(membership)
        if state is None:
            if me != genesis:
                raise InvalidInput(f"the registry account of {short(repo.id)} does not exist, and only the owner "
                                   f"its genesis record names, {genesis}, can create it (the key is a seed of its "
                                   f"address): that key's node creates it and passes it on to {membership.owner}")
            await self._send(chain, [program.create_repository(owner=me, repo=repo_id, policy_hash=want_policy)])
            log.info("created the registry account of %s", short(repo.id))
            state = await self._repository(chain, repo)
            if state is None:
                raise InvalidInput(f"the registry account of {short(repo.id)} is not there after its creation")
        if state.owner != membership.owner:  # handed over: the old owner passes the account on
            if state.owner == me:
                await self._send(chain, [program.set_owner(owner=me, repo=repo_id, genesis_owner=genesis,
                                                           new_owner=membership.owner)])
            return await self._repository(chain, repo)
        instructions = []
        if state.policy_hash != want_policy:
            instructions.append(program.set_policy(owner=me, repo=repo_id, genesis_owner=genesis,
                                                   policy_hash=want_policy))
        want = desired_members(membership, at_ms=now_ms())
        held = dict(state.members)
        for key in held.keys() - want.keys():  # removals first: they free places
            instructions.append(program.remove_member(owner=me, repo=repo_id, genesis_owner=genesis, member=key))
        for key, role in want.items():
            if held.get(key) != role:
                instructions.append(program.add_member(owner=me, repo=repo_id, genesis_owner=genesis, member=key,
                                                       role=role))
        for start in range(0, len(instructions), MAX_INSTRUCTIONS):
            await self._send(chain, instructions[start:start + MAX_INSTRUCTIONS])
        return await self._repository(chain, repo) if instructions else state

    # -- the branches' merges ------------------------------------------------------------------------------

    async def _record_merges(self, chain: Chain, repo: Repository, membership: Membership,
                             state: RepositoryState) -> None:
        me, now = self.identity.public_key, now_ms()
        for branch in await trio.to_thread.run_sync(round_branches, repo):
            least = "maintainer" if branch in PROTECTED_BRANCHES else "contributor"
            role = state.role_of(me)
            if me != state.owner and (role is None or role < _ROLE[least]):
                continue  # the program would refuse this node's record
            recorded = await self._branch(chain, repo, branch)
            for merge in await trio.to_thread.run_sync(self._missing, repo, branch, recorded):
                if merge.author != me and now - merge.timestamp_ms < GRACE_MS:
                    break  # its aggregator records it first
                previous = CommitId(recorded.head.hex()) if recorded is not None else None
                await self._send(chain, [self.program.record_merge(
                    repo=repo.id, genesis_owner=repo.record.owner, authority=me, branch=branch,
                    previous=previous, commit=merge.id, round=int(merge.meta["round"]))])
                self.counts["merges_recorded"] += 1
                recorded = await self._branch(chain, repo, branch)

    async def _branch(self, chain: Chain, repo: Repository, branch: str) -> BranchState | None:
        from ..protocol.anchoring.registry import decode_branch

        account = await chain.account(self.program.branch_address(self._address(repo), branch))
        return decode_branch(account.data) if account is not None and account.data else None

    def _missing(self, repo: Repository, branch: str, recorded: BranchState | None) -> list[Commit]:
        """The round merges of ``branch`` (the latest ``RECENT``) after the one the chain records, oldest first;
        none if the chain's head is not one of them (another history: nothing here extends it)."""
        merges: list[Commit] = []
        cursor: CommitId | None = repo.head(branch)
        while cursor is not None and len(merges) < RECENT:
            commit = repo.commit(cursor)
            if recorded is not None and commit.id == recorded.head.hex():
                return merges[::-1]
            if commit.kind == "round":
                merges.append(commit)
            cursor = commit.parents[0] if commit.parents else None
        return merges[::-1][-1:] if recorded is None else []  # a branch's first record: its latest merge

    async def _send(self, chain: Chain, instructions: Sequence[ProgramInstruction]) -> None:
        await fund(chain, self.wallet.address)
        tx = await self.wallet.transaction(chain, instructions)
        signature = await chain.send(tx.raw)
        await confirmed(chain, signature, self.commitment, "registry transaction")
        self.counts["transactions"] += 1

    # -- what a person sees --------------------------------------------------------------------------------

    async def describe(self, repo: Repository, chain: Chain | None = None) -> dict[str, Any]:
        """The registry's accounts for ``repo`` next to this node's view of it (read through ``chain``, or a
        client of this service's cluster). ``legacy`` is an account at the program's earlier address for it, and
        ``notice`` says so when it is not the owner's."""
        from ..protocol.anchoring.chain import Chain, explorer_url

        membership = await trio.to_thread.run_sync(repo.members.current)
        address = self._address(repo)
        own = chain is None
        chain = Chain(self.cluster) if chain is None else chain
        try:
            legacy = await self._legacy(chain, repo, membership)
            state = await self._repository(chain, repo)
            shown: dict[str, Any] = {"program": self.program.address, "cluster": self.cluster, "address": address,
                                     "explorer": explorer_url(self.cluster, address=address),
                                     "genesis_owner": repo.record.owner, "exists": state is not None,
                                     "error": self.errors.get(repo.id), "legacy": legacy,
                                     "notice": self.notices.get(repo.id)}
            if state is None:
                return shown
            shown.update(owner=state.owner, owner_matches=state.owner == membership.owner,
                         policy_matches=state.policy_hash == policy_hash(membership),
                         members=[{"key": k, "role": ROLES[r]} for k, r in state.members],
                         members_match=dict(state.members) == desired_members(membership, at_ms=now_ms()),
                         branches={})
            for branch in await trio.to_thread.run_sync(round_branches, repo):
                recorded = await self._branch(chain, repo, branch)
                if recorded is not None:
                    head = CommitId(recorded.head.hex())
                    known = await trio.to_thread.run_sync(repo.objects.has, head)
                    shown["branches"][branch] = {"head": head, "round": recorded.round, "merges": recorded.merges,
                                                 "last_author": recorded.last_author, "known_here": known}
            return shown
        finally:
            if own:
                await chain.close()
