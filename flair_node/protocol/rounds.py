"""Rounds on a branch, as every member derives them from its own copy of the repository.

A **contribution** is a commit of kind ``contribution`` (``Repository.contribute``): weights a member trained from a
commit of the branch (its base), with the number of examples, kept on the member's own branch
``contrib/<branch>/<key>``. A **round merge** is a commit of kind ``round`` on the branch: parents are the head
it extends, then the contributions it takes (by id, sorted); its ``meta`` records the round number, the strategy
and its parameters, for each contribution it merges its examples, staleness and integer weight, and the step
(out of 2^WEIGHT_BITS) the merge takes from the head towards the strategy's result (``core.rounds.step_weight``).

One member, one contribution: a contribution counts only on its author's own branch (``contribution_branch``),
at most one per member, and only while its author holds the contributor role or more at the merge's key epoch
and time, so a member removed or expired since it contributed is not counted, whatever the date it signed.

A contribution a round cannot use is **excluded**, not merged (``round_inputs``): one whose payload does not
decode (not safetensors, another layout, a header nested too deep, altered ciphertext), that holds NaN or
infinite values, or whose values (moved onto the head) are beyond ``round_inputs.MAX_VALUE``. It is still a
parent of the merge, so it leaves the pending set, and ``meta["excluded"]`` lists it with the reason
(``undecodable``, ``non-finite``, ``out of range``): every member re-derives the same exclusions from the same
bytes. If the contributions left are too few for the strategy, the merge takes only the excluded ones and
changes no weight (the others stay pending), so one bad contribution never stalls a branch.

``view`` is the state of the current round: the head, when the round opened (the head's timestamp), the ranked
aggregators (``core.rounds.ranking`` over the members allowed to move the branch), and the pending
contributions (the latest of each member, not merged yet, at most ``max_staleness`` round merges behind, signed
by now). ``merge`` is what the entitled aggregator runs; ``verify`` is what every other member runs on a round
merge it receives, before it moves its branch: the merge is not dated ahead of the node's clock (beyond
``MAX_CLOCK_SKEW_MS``: a merge signed for a window that has not begun would leave the branch without an
aggregator until then), the author was entitled at the merge's signed time (windows from the signed times of
the contributions it takes: ``core.rounds.filled_at``), every contribution is valid, pending, its member's only
one and signed before the merge, the round was ready (K contributions, or the deadline passed), the recorded
weights and exclusions follow the policy, and re-deriving the merge from the same inputs gives the same bytes.

**Pending merges.** A peer's round merge takes seconds to pull and re-derive; meanwhile the next window may
open. ``note_merge`` (called by the peer-to-peer side when a round merge's record arrives, before it is pulled)
holds this node's own merge of that round while a signed merge of it by an entitled member is being checked:
until ``check_move`` settles it, or for ``HOLD_TIMEOUTS`` policy timeouts at most, and once per author and
round, so a member cannot hold a round up for long with merges that never arrive.

**What a node remembers.** ``RoundMemory`` is one node's: the merges it verified or refused, the contributions it
screened and whose commitments it checked (each named by its hash, so the answer never changes), the merges it
holds its own for, and the circuits it commits and proves with. The node makes one (the daemon's ``Node``; a test,
one per ``RepoSet``) and passes it, as ``memory``, to every function here that needs it: the peer-to-peer side
notes merges in the same memory the round service reads.

A contribution based on an older merge is moved onto the head first, exactly: ``head + (x − base)`` in the
fixed-point merge arithmetic, so every member computes the same input.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..core.errors import FlairError, IntegrityError, InvalidInput, MergeError, NotAMember
from ..core.ids import CommitId, PublicKey, short
from ..core.membership import PROTECTED_BRANCHES, ROLES, Membership
from ..core.objects import Commit
from ..core.refs import MAX_CLOCK_SKEW_MS, BranchMove, check_branch_name
from ..core.round_rules import RoundPolicy, entitled, filled_at, ranking, turn_ends
from ..storage import adapters
from ..storage.clock import now_ms
from ..storage.repo import CONTRIBUTION_PREFIX, Repository, contribution_branch
from .proofs.circuits import Circuits
from .round_inputs import remember, screen_key
from .round_merges import commit_chunks, derive_lazily, merge_parents, most_inputs

if TYPE_CHECKING:

    from ..tensors.safetensors_io import StateDict

MAX_EXCLUDED_REASON = 32
HOLD_TIMEOUTS = 2  # a peer's merge being checked holds this node's own for at most this many policy timeouts
_MAX_HELD = 1024


class RoundMemory:
    """What one node's rounds remember between calls, and the circuits they commit and prove with (see the module
    docstring). The caches are read and written by this module's functions from worker threads: each single
    operation on them is atomic, and at worst two threads compute the same answer. The held merges are noted by
    the peer-to-peer side's threads and read by the round service's, under a lock."""

    def __init__(self, circuits: Circuits | None = None) -> None:
        self._circuits = circuits
        #: Round merge id -> None (verified) or why it does not re-derive: every input is named by its hash, so
        #: neither changes.
        self.checked: OrderedDict[str, str | None] = OrderedDict()
        #: "<contribution id>:<chunk>:<scheme>:<srs>" -> whether it publishes the commitments of its own delta.
        self.committed: OrderedDict[str, bool] = OrderedDict()
        #: "<contribution id>:<head id>:<proven|moved>" -> why a round on that head excludes it, or None if it
        #: can be merged.
        self.screened: OrderedDict[str, str | None] = OrderedDict()
        #: Commit id -> per member, what the round merges up to it took of its differentially private
        #: contributions (``protocol.dp.spent``).
        self.dp_spent: OrderedDict[str, dict[PublicKey, tuple[int, int]]] = OrderedDict()
        #: Commit id -> per member, the ρ of each secure round merge up to it that took it (``protocol.dp``).
        self.dp_rhos: OrderedDict[str, dict[PublicKey, tuple[float, ...]]] = OrderedDict()
        #: "<masked update id>:<policy>" -> the chunk commitments its norm proof publishes, and None if the proof
        #: checks out or why it does not (``protocol.norm_bounds``).
        self.norm_proofs: OrderedDict[str, tuple[tuple[str, ...], str | None]] = OrderedDict()
        #: "<contribution id>:<bounds>" -> None if its update is within them, else why not (``norm_bounds``).
        self.bounded: OrderedDict[str, str | None] = OrderedDict()
        #: (repo, branch, head, author) -> (the author's merge of that round, held until ms; 0 once settled).
        self._held: OrderedDict[tuple[str, str, str, str], tuple[CommitId, int]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def circuits(self) -> Circuits:
        """The circuits this node commits and proves with: those it was given, else a temporary folder's, made
        when first needed."""
        with self._lock:
            if self._circuits is None:
                self._circuits = Circuits.in_temporary_folder()
            return self._circuits

    def remember_dp(self, commit: CommitId, totals: dict[PublicKey, tuple[int, int]]) -> None:
        remember(self.dp_spent, commit, dict(totals))

    def remember_rhos(self, commit: CommitId, totals: dict[PublicKey, tuple[float, ...]]) -> None:
        remember(self.dp_rhos, commit, dict(totals))

    def hold(self, key: tuple[str, str, str, str], merge_id: CommitId, until_ms: int, at_ms: int) -> bool:
        """Hold the round ``key`` names for ``merge_id`` until ``until_ms``, unless its author held it before:
        whether the round is held for ``merge_id`` at ``at_ms``."""
        with self._lock:
            if key in self._held:
                held, until = self._held[key]
                return held == merge_id and until > at_ms
            self._held[key] = (merge_id, until_ms)
            while len(self._held) > _MAX_HELD:
                self._held.popitem(last=False)
        return True

    def held(self, repo: str, branch: str, head: str, at_ms: int) -> CommitId | None:
        """The merge holding the round ``head`` opened on ``branch`` of ``repo`` at ``at_ms``, if any."""
        with self._lock:
            for (repo_id, held_branch, held_head, _), (merge_id, until) in self._held.items():
                if (repo_id, held_branch, held_head) == (repo, branch, head) and until > at_ms:
                    return merge_id
        return None

    def settle(self, merge_id: CommitId) -> None:
        """``merge_id`` was checked (taken or refused for good): it holds no round any more."""
        with self._lock:
            for key, (held, _) in list(self._held.items()):
                if held == merge_id:
                    self._held[key] = (held, 0)


class MergeMismatch(IntegrityError):
    """A round merge whose recorded rounds, strategy or weights, or whose bytes, differ from what its inputs give:
    final, unlike a merge whose inputs have not all arrived yet."""


@dataclass(frozen=True)
class Contribution:
    commit: CommitId
    author: PublicKey
    base: CommitId
    examples: int
    staleness: int  # round merges the branch advanced since ``base``
    timestamp_ms: int  # when its author signed it


@dataclass(frozen=True)
class RoundView:
    branch: str
    head: CommitId
    number: int  # round merges on the branch's first-parent chain so far: the next merge is round number + 1
    opened_ms: int
    policy: RoundPolicy
    ranked: tuple[PublicKey, ...]
    pending: tuple[Contribution, ...]
    #: When the round filled up (its K-th pending contribution's signed time; None: fewer than K wait).
    filled_ms: int | None = None
    #: Pending contributions this node found a merge on this head would exclude, and why; and those the merge
    #: that made the head excluded (round ``number``).
    excluded: tuple[tuple[CommitId, str, int], ...] = ()

    def aggregator(self, at_ms: int) -> PublicKey | None:
        """Who may merge at ``at_ms``."""
        return entitled(self.ranked, self.opened_ms, at_ms, self.policy, filled_ms=self.filled_ms)

    def turn_ends(self, at_ms: int) -> int:
        """When the window of whoever may merge at ``at_ms`` ends (Unix ms)."""
        return turn_ends(self.opened_ms, at_ms, self.policy, filled_ms=self.filled_ms)

    def taking(self, contributions: Sequence[Contribution]) -> RoundView:
        """This round as a merge of ``contributions`` sees it: windows from their signed times."""
        return replace(self, pending=tuple(contributions),
                       filled_ms=filled_at([c.timestamp_ms for c in contributions], self.opened_ms, self.policy))

    def ready(self, at_ms: int) -> bool:
        """Whether the round may merge at ``at_ms``: K contributions wait, or the deadline passed with one."""
        deadline = self.opened_ms + self.policy.deadline_s * 1000
        return len(self.pending) >= self.policy.buffer or bool(self.pending) and at_ms >= deadline

    def json(self) -> dict[str, Any]:
        now = now_ms()
        return {"branch": self.branch, "head": self.head, "round": self.number + 1, "opened_ms": self.opened_ms,
                "policy": self.policy.as_dict(), "ranked": list(self.ranked), "aggregator": self.aggregator(now),
                "ready": self.ready(now), "filled_ms": self.filled_ms, "pending": [vars(c) for c in self.pending],
                "excluded": [{"commit": c, "reason": why, "round": number} for c, why, number in self.excluded]}


def view(repo: Repository, branch: str, *, memory: RoundMemory, at_ms: int | None = None) -> RoundView:
    """The current round of ``branch`` as this node sees it, its members' roles judged at ``at_ms`` (default:
    now). A contribution signed after this node's clock is not pending yet: a merge is dated after what it takes."""
    target = check_branch_name(branch)
    clock = now_ms()
    at = clock if at_ms is None else at_ms
    head = repo.head(target)
    membership = repo.members.current()
    chain = _chain(repo, head, membership.policy.max_staleness)
    latest: dict[PublicKey, Contribution] = {}
    prefix = f"{CONTRIBUTION_PREFIX}{target}/"
    for name, cid in sorted(repo.branches().items()):
        if not name.startswith(prefix):
            continue
        try:
            commit = repo.commit(cid)
            if contribution_branch(target, commit.author) != name or commit.timestamp_ms > clock:
                continue  # on another member's branch (it counts only on its author's), or signed in the future
            found = _contribution(memory, repo, commit, target, chain, membership, epoch=membership.epoch, at_ms=at)
        except IntegrityError:
            continue  # merged already, too stale, its author no longer a contributor, or not one to this branch
        mine = latest.get(found.author)
        if mine is None or (found.timestamp_ms, found.commit) > (mine.timestamp_ms, mine.commit):
            latest[found.author] = found  # one per member
    pending = tuple(sorted(latest.values(), key=lambda c: c.commit))
    head_commit, number = repo.commit(head), _rounds_before(repo, head)
    excluded = [(c.commit, why, number + 1) for c in pending
                if (why := memory.screened.get(screen_key(c.commit, head, membership.policy)))]
    if head_commit.kind == "round":
        excluded += [(CommitId(c), why, number) for c, why in _excluded_meta(head_commit)]
    return RoundView(branch=target, head=head, number=number,
                     opened_ms=head_commit.timestamp_ms, policy=membership.policy,
                     ranked=tuple(_ranked(repo, membership, target, head, head_commit.timestamp_ms)),
                     pending=pending, filled_ms=filled_at([c.timestamp_ms for c in pending],
                                                          head_commit.timestamp_ms, membership.policy),
                     excluded=tuple(excluded))


def staleness(repo: Repository, branch: str, base: CommitId) -> int:
    """How many round merges ``branch`` advanced since ``base``: what a contribution trained from ``base`` would
    count now. ``InvalidInput`` if the round would not take it (not on the branch's first-parent chain, or more
    than ``max_staleness`` merges behind), so a contributor hears it at once instead of waiting in vain."""
    target = check_branch_name(branch)
    policy = repo.members.current().policy
    behind = 0
    for link in _chain(repo, repo.head(target), policy.max_staleness):
        if link.id == base and behind <= policy.max_staleness:
            return behind
        if link.kind == "round":
            behind += 1
    raise InvalidInput(f"commit {short(base)} is not among the last {policy.max_staleness} round merges of "
                       f"{target} or the commits since: a round would not take weights trained from it; train from "
                       f"the head ({short(repo.head(target))})")


def merge(repo: Repository, identity: Any, branch: str, *, memory: RoundMemory, at_ms: int | None = None) -> Commit:
    """Merge the pending contributions of ``branch``'s round as its entitled aggregator (``identity``).

    ``InvalidInput`` if this node is not entitled now, the round is not ready, or a peer's merge of this round
    is being checked (``note_merge``)."""
    at = now_ms() if at_ms is None else at_ms
    seen = view(repo, branch, memory=memory, at_ms=at)
    current = seen.taking(seen.pending[:most_inputs(seen.policy)])  # a proof circuit takes so many
    if current.aggregator(at) != identity.public_key:
        raise InvalidInput(f"{short(identity.public_key)} is not the aggregator of round {current.number + 1} of "
                           f"{branch} now (it is {current.aggregator(at)})")
    if not current.ready(at):
        raise InvalidInput(f"round {current.number + 1} of {branch} is not ready: {len(current.pending)} of "
                           f"{current.policy.buffer} contributions, deadline not passed")
    held = held_by(repo, current.branch, current.head, at, memory=memory)
    if held is not None:
        raise InvalidInput(f"round merge {short(held)} of round {current.number + 1} of {branch}, by an entitled "
                           "member, is being checked: this node does not merge the round again meanwhile")
    try:
        merged, meta = derive_lazily(repo, current, current.pending, memory=memory)
    except InvalidInput:  # too few usable ones for the strategy: take out only those no round can use
        unusable = [c for c in current.pending
                    if memory.screened.get(screen_key(c.commit, current.head, current.policy)) is not None]
        if not unusable:
            raise
        current = current.taking(unusable)  # the windows as a merge of these alone gives them
        if current.aggregator(at) != identity.public_key:
            raise InvalidInput(f"round {current.number + 1} of {branch} has too few usable contributions for "
                               f"{current.policy.strategy}, and taking out the unusable ones is "
                               f"{short(current.aggregator(at) or '') or 'nobody'}'s turn now") from None
        merged, meta = derive_lazily(repo, current, unusable, memory=memory)

    def still_entitled(timestamp_ms: int) -> None:  # merging took long: a merge signed after the window is void
        if current.aggregator(timestamp_ms) != identity.public_key:
            raise InvalidInput(f"the window of {short(identity.public_key)} for round {current.number + 1} of "
                               f"{branch} ended while it merged; the next aggregator takes the round")
        membership = repo.members.current()
        for c in current.pending:  # a role that ended while it merged: verifiers would not count the contribution
            _require_contributor(membership, c.author, c.commit, epoch=membership.epoch, at_ms=timestamp_ms)

    left_out = f", {len(meta['excluded'])} excluded" if meta.get("excluded") else ""
    message = f"round {meta['round']} of {branch}: {len(meta['contributions'])} contributions{left_out}, " \
              f"{meta['strategy']['name']}"
    return repo.write_round(identity, merged.source(), branch=current.branch,
                            parents=(current.head, *merge_parents(meta)), meta=meta, message=message,
                            check_time=still_entitled)


def verify(repo: Repository, commit: Commit, *, memory: RoundMemory) -> RoundView:
    """Check round merge ``commit`` against this node's copy of the repository (see the module docstring);
    ``IntegrityError`` saying what is wrong. Returns the round it closes."""
    if commit.kind != "round" or len(commit.parents) < 2:
        raise IntegrityError(f"commit {short(commit.id)} is not a round merge")
    branch = commit.meta.get("branch")
    if not isinstance(branch, str):
        raise IntegrityError(f"round merge {short(commit.id)} names no branch")
    ahead = commit.timestamp_ms - (now_ms() + MAX_CLOCK_SKEW_MS)
    if ahead > 0:
        raise IntegrityError(f"round merge {short(commit.id)} is signed for a window that has not begun: its time "
                             f"is {ahead // 1000 + MAX_CLOCK_SKEW_MS // 1000} s ahead of this node's clock (at most "
                             f"{MAX_CLOCK_SKEW_MS // 60_000} minutes are allowed)")
    if list(commit.parents[1:]) != sorted(set(commit.parents[1:])):
        raise MergeMismatch(f"round merge {short(commit.id)} lists its contributions out of order or twice")
    at = _view_at(memory, repo, branch, commit.parents[0])
    if len(commit.parents) - 1 > most_inputs(at.policy):
        raise IntegrityError(f"round merge {short(commit.id)} takes {len(commit.parents) - 1} contributions, more "
                             f"than one proof takes ({most_inputs(at.policy)})")
    membership = repo.members.current()
    chain = _chain(repo, at.head, at.policy.max_staleness)
    merged = [_contribution(memory, repo, repo.commit(c), at.branch, chain, membership,
                            epoch=commit.payload.key_epoch, at_ms=commit.timestamp_ms) for c in commit.parents[1:]]
    if len({c.author for c in merged}) != len(merged):
        raise MergeMismatch(f"round merge {short(commit.id)} takes two contributions of one member")
    late = next((c for c in merged if c.timestamp_ms > commit.timestamp_ms), None)
    if late is not None:
        raise MergeMismatch(f"round merge {short(commit.id)} takes contribution {short(late.commit)}, signed after "
                            "it")
    current = at.taking(merged)
    author = current.aggregator(commit.timestamp_ms)
    if author != commit.author:
        raise IntegrityError(f"round merge {short(commit.id)} is by {short(commit.author)}, but the aggregator "
                             f"entitled at its time is {short(author) if author else 'nobody'}")
    early = commit.timestamp_ms < current.opened_ms + current.policy.deadline_s * 1000
    if early and len(merged) < current.policy.buffer and commit.meta.get("contributions") != []:
        raise IntegrityError(f"round merge {short(commit.id)} merges {len(merged)} contributions before the "
                             f"deadline (the policy waits for {current.policy.buffer})")
    derived, meta = derive_lazily(repo, current, merged, memory=memory)
    if dict(commit.meta) != meta:
        raise MergeMismatch(f"round merge {short(commit.id)} records other rounds, strategy or weights than the "
                             "policy gives")
    if repo.record.adapter is not None:
        same = adapters.same(repo, repo.materialize(commit.id), derived.state(), str(meta.get("lora")))
    else:  # a range at a time, as it was merged
        from ..tensors.fixedpoint import same_ranges
        from ..tensors.safetensors_io import ranges_of

        committed = repo.weights(commit.id)
        same = repo.layout(commit.id) == derived.layout and all(
            same_ranges(ranges_of(committed, spec.name), derived.ranges(spec.name)) for spec in derived.layout)
    if not same:
        raise MergeMismatch(f"round merge {short(commit.id)} is not what its inputs merge to")
    return current


def check_move(repo: Repository, move: BranchMove, *, memory: RoundMemory) -> None:
    """Before a node takes ``move`` from a peer (gossip or a pull): moving a branch to one of its round merges needs a
    merge that ``verify`` accepts, or ``secure_merges.verify`` for a secure round's (``IntegrityError``
    otherwise), so a node never follows a forged or unentitled merge. Any other move is left to the role checks
    of ``Ingest.accept_move``. A merge verified, or found not to match its inputs, is remembered (they never
    change: every one is named by its hash), so a forger cannot make a node re-derive the same merge at every
    catch-up."""
    commit = repo.commit(move.commit)
    if commit.kind != "round" or commit.meta.get("branch") != move.branch:
        return
    checked = memory.checked  # what this node checked itself
    if commit.id in checked:
        reason = checked[commit.id]
        if reason is None:
            return
        raise MergeMismatch(reason)
    try:
        if isinstance(commit.meta.get("secure"), dict):
            from .secure_merges import verify as verify_secure

            verify_secure(repo, commit, repo.secure, memory=memory)
        else:
            verify(repo, commit, memory=memory)
    except MergeMismatch as exc:
        remember(checked, commit.id, str(exc))
        memory.settle(commit.id)
        raise
    except IntegrityError:
        raise  # perhaps only for now: a contribution it names may not have arrived yet
    except FlairError as exc:  # a strategy that cannot run on these inputs, a layout that does not fit, ...
        memory.settle(commit.id)
        raise IntegrityError(f"round merge {short(commit.id)} does not re-derive: {exc}") from None
    remember(checked, commit.id, None)
    memory.settle(commit.id)


def note_merge(repo: Repository, commit: Commit, *, memory: RoundMemory, at_ms: int | None = None) -> bool:
    """A peer offers round merge ``commit`` (its record arrived, signed; its payload and contributions may not
    have): if it is a merge of the current round of its branch, signed by a member entitled at its time (judged
    from the contributions it takes when this node holds them all, else by the author being ranked at all),
    this node's own merge of that round waits until ``check_move`` settles it, or ``HOLD_TIMEOUTS`` policy
    timeouts at most; each author holds a round once. True if the round is held now. Never raises for bad
    input: it is a hint, judged again in full by ``check_move``."""
    branch = commit.meta.get("branch")
    if commit.kind != "round" or len(commit.parents) < 2 or not isinstance(branch, str):
        return False
    at = now_ms() if at_ms is None else at_ms
    try:
        commit.verify()
        current = view(repo, branch, memory=memory, at_ms=at)
        if commit.parents[0] != current.head or not current.opened_ms <= commit.timestamp_ms \
                <= at + MAX_CLOCK_SKEW_MS or commit.author not in current.ranked:
            return False
        if all(repo.objects.has(c) for c in commit.parents[1:]):
            taken = [repo.commit(c) for c in commit.parents[1:]]
            filled = filled_at([c.timestamp_ms for c in taken], current.opened_ms, current.policy)
            if entitled(current.ranked, current.opened_ms, commit.timestamp_ms, current.policy,
                        filled_ms=filled) != commit.author:
                return False
    except (FlairError, ValueError):
        return False
    key = (str(repo.id), current.branch, str(current.head), str(commit.author))
    return memory.hold(key, commit.id, at + HOLD_TIMEOUTS * current.policy.timeout_s * 1000, at)


def held_by(repo: Repository, branch: str, head: CommitId, at_ms: int, *, memory: RoundMemory) -> CommitId | None:
    """A peer's merge of the round ``head`` opened on ``branch`` that this node is still checking at ``at_ms``
    (``note_merge``), if any."""
    return memory.held(repo.id, branch, head, at_ms)


# -- internals -----------------------------------------------------------------------------------------


def _committed(memory: RoundMemory, repo: Repository, commit: Commit, policy: RoundPolicy) -> bool:
    """Whether contribution ``commit`` publishes the commitments of its own delta as ``policy`` makes them;
    computed once per contribution, policy and node (its record and payload never change). ``IntegrityError``
    while this node cannot tell yet (the SRS has not arrived)."""
    known = memory.committed
    key = f"{commit.id}:{policy.proof_chunk}:{policy.proof_scheme}:{policy.proof_srs}"
    if key not in known:
        from .proofs import weighted_sum
        from .proofs.ezkl_backend import ProofError

        published = commit.meta.get("commitments")
        try:
            delta = weighted_sum.fixed_delta(repo.materialize(commit.id), repo.materialize(commit.parents[0]))
        except NotAMember:
            return True  # a node without the key cannot look: it neither merges nor re-derives
        except (IntegrityError, InvalidInput, MergeError, RecursionError):  # undecodable or non-finite: the same
            remember(known, key, False)  # bytes fail the same way on every node, so it is never pending
            return False
        try:
            own = commit_chunks(repo, delta, memory.circuits)
        except ProofError as exc:
            raise IntegrityError(f"cannot check the commitments of contribution {short(commit.id)} yet: {exc}"
                                 ) from None
        remember(known, key, isinstance(published, list) and published == own)
    return known[key]


def _view_at(memory: RoundMemory, repo: Repository, branch: str, head: CommitId) -> RoundView:
    """The round that ``head`` (a commit of ``branch``) opened, whatever the branch's head is now (or before this
    node holds the branch at all: a clone checking the move that makes it)."""
    target = check_branch_name(branch)
    moved = repo.branch_move(target)
    if moved is not None and moved.commit == head:
        return view(repo, target, memory=memory)
    membership = repo.members.current()
    head_commit = repo.commit(head)
    return RoundView(branch=target, head=head, number=_rounds_before(repo, head),
                     opened_ms=head_commit.timestamp_ms, policy=membership.policy,
                     ranked=tuple(_ranked(repo, membership, target, head, head_commit.timestamp_ms)),
                     pending=())


def _ranked(repo: Repository, membership: Membership, branch: str, head: CommitId, at_ms: int) -> list[PublicKey]:
    """The members who may move ``branch`` at ``at_ms``, ranked for the round after ``head``: who merged one of
    the last (as many as there are eligible members) rounds ranks after who did not, the longest ago first."""
    least = ROLES.index("maintainer" if branch in PROTECTED_BRANCHES else "contributor")
    eligible = [m.key for m in membership.current()
                if ROLES.index(m.role) >= least and m.active(epoch=membership.epoch, at_ms=at_ms)]
    last_turn: dict[str, int] = {}
    seen, cursor = 0, head
    while seen < len(eligible):
        commit = repo.commit(cursor)
        if commit.kind == "round":
            seen += 1
            last_turn.setdefault(commit.author, _rounds_before(repo, cursor))
        if not commit.parents:
            break
        cursor = commit.parents[0]
    return ranking(eligible, head, last_turn)


def _chain(repo: Repository, head: CommitId, max_staleness: int) -> list[Commit]:
    """The branch's first-parent chain from ``head`` back through ``max_staleness`` round merges (and to the
    commit before the next one), newest first: where a pending contribution's base must be."""
    chain, rounds, cursor = [], 0, head
    while True:
        commit = repo.commit(cursor)
        chain.append(commit)
        if commit.kind == "round":
            rounds += 1
            if rounds > max_staleness:
                return chain
        if not commit.parents:
            return chain
        cursor = commit.parents[0]


def _contribution(memory: RoundMemory, repo: Repository, commit: Commit, branch: str, chain: list[Commit],
                  membership: Membership, *, epoch: int, at_ms: int) -> Contribution:
    """``commit`` as a pending contribution to ``branch`` for a merge of key ``epoch`` signed at ``at_ms``;
    ``IntegrityError`` if it is none (its author's role is judged then, by ``membership``)."""
    examples = commit.meta.get("examples")
    if commit.kind != "contribution" or commit.meta.get("branch") != branch or len(commit.parents) != 1 \
            or not isinstance(examples, int) or isinstance(examples, bool) or examples < 0:
        raise IntegrityError(f"commit {short(commit.id)} is not a contribution to {branch}")
    _require_contributor(membership, commit.author, commit.id, epoch=epoch, at_ms=at_ms)
    policy = membership.policy
    base, staleness = commit.parents[0], 0
    for link in chain:
        if link.id == base:
            if staleness > policy.max_staleness:
                break
            if policy.proof_chunk and not _committed(memory, repo, commit, policy):
                raise IntegrityError(f"contribution {short(commit.id)} does not publish the commitments of its "
                                     f"delta in chunks of {policy.proof_chunk}, which proven merges need")
            if policy.dp:
                from . import dp

                dp.check(repo, commit, chain[0].id, memory)
            if policy.dp or policy.norm_bound:
                from .norm_bounds import check_plain

                check_plain(repo, commit, memory)
            return Contribution(commit.id, commit.author, base, examples, staleness, commit.timestamp_ms)
        if link.kind == "round":
            if commit.id in link.parents[1:]:
                raise IntegrityError(f"contribution {short(commit.id)} was taken by round merge {short(link.id)}")
            staleness += 1
    raise IntegrityError(f"contribution {short(commit.id)} is based more than {policy.max_staleness} round merges "
                         f"behind the head of {branch}, or not on it")


def _require_contributor(membership: Membership, author: PublicKey, commit: CommitId, *, epoch: int,
                         at_ms: int) -> None:
    """``IntegrityError`` unless ``author`` holds the contributor role or more for a merge of key ``epoch``
    signed at ``at_ms``: a member removed or expired since it contributed is not counted."""
    role = membership.role(author, epoch=epoch, at_ms=at_ms)
    if role is None or ROLES.index(role) < ROLES.index("contributor"):
        raise IntegrityError(f"contribution {short(commit)} is by {short(author)}, who holds no contributor role "
                             "now (removed, expired or a reader): a round does not count it")


def _excluded_meta(commit: Commit) -> list[tuple[str, str]]:
    """What round merge ``commit`` recorded as excluded: (contribution, reason) pairs, malformed entries left out."""
    found = commit.meta.get("excluded")
    if not isinstance(found, list):
        return []
    return [(entry[0], entry[1]) for entry in found[:1 << 16] if isinstance(entry, list) and len(entry) == 2
            and isinstance(entry[0], str) and isinstance(entry[1], str) and len(entry[1]) <= MAX_EXCLUDED_REASON]


def _rounds_before(repo: Repository, head: CommitId) -> int:
    """The number of the last round merge on the first-parent chain up to ``head`` (0 if there is none): each
    round merge records its number (checked when it was taken), so the walk stops at the first one."""
    cursor = head
    while True:
        commit = repo.commit(cursor)
        number = commit.meta.get("round")
        if commit.kind == "round" and isinstance(number, int) and not isinstance(number, bool):
            return number
        if not commit.parents:
            return 0
        cursor = commit.parents[0]


def _same_state(a: StateDict, b: StateDict) -> bool:
    from ..tensors.fixedpoint import same_bits

    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype
                                        and same_bits(a[k], b[k]) for k in a)
