"""Rounds on a branch, as every member derives them from its own copy of the repository.

A **contribution** is a commit of kind ``contribution`` (``Repo.contribute``): weights a member trained from a
commit of the branch (its base), with the number of examples, kept on the member's own branch
``contrib/<branch>/<key>``. A **round merge** is a commit of kind ``round`` on the branch: parents are the head
it extends, then the contributions it merges (by id); its ``meta`` records the round number, the strategy and
its parameters, for each contribution its examples, staleness and integer weight, and the step (out of
2^WEIGHT_BITS) the merge takes from the head towards the strategy's result (``core.rounds.step_weight``).

``view`` is the state of the current round: the head, when the round opened (the head's timestamp), the ranked
aggregators (``core.rounds.ranking`` over the members allowed to move the branch), and the pending
contributions (the latest of each member, not merged yet, at most ``max_staleness`` round merges behind).
``merge`` is what the entitled aggregator runs; ``verify`` is what every other member runs on a round merge it
receives, before it moves its branch: the author was entitled at the merge's signed time, every contribution is
valid and pending, the round was ready (K contributions, or the deadline passed), the recorded weights follow the
policy, and re-deriving the merge from the same inputs gives the same bytes.

A contribution based on an older merge is moved onto the head first, exactly: ``head + (x − base)`` in the
fixed-point merge arithmetic, so every member computes the same input.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from ..core.errors import FlairError, IntegrityError, InvalidInput, NotAMember
from ..core.ids import CommitId, PublicKey, short
from ..core.membership import PROTECTED_BRANCHES, ROLES, Membership
from ..core.objects import Commit
from ..core.refs import BranchMove, check_branch_name
from ..core.rounds import RoundPolicy, entitled, ranking, step_weight, weight_counts
from ..storage.repo import CONTRIBUTION_PREFIX, Repo, now_ms

if TYPE_CHECKING:
    from ..tensors.safetensors_io import StateDict

_CHECKED_SIZE = 4096  # round merges remembered as verified or mismatched, per object store (one per node)
#: commit id -> None (verified) or why it does not re-derive: every input is named by its hash, so neither changes.
_CHECKED: WeakKeyDictionary[Any, OrderedDict[str, str | None]] = WeakKeyDictionary()


#: "<contribution id>:<chunk>:<scheme>:<srs>" -> whether it publishes the commitments of its own delta.
_COMMITTED: WeakKeyDictionary[Any, OrderedDict[str, bool]] = WeakKeyDictionary()


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


@dataclass(frozen=True)
class RoundView:
    branch: str
    head: CommitId
    number: int  # round merges on the branch's first-parent chain so far: the next merge is round number + 1
    opened_ms: int
    policy: RoundPolicy
    ranked: tuple[PublicKey, ...]
    pending: tuple[Contribution, ...]

    def aggregator(self, at_ms: int) -> PublicKey | None:
        """Who may merge at ``at_ms``."""
        return entitled(self.ranked, self.opened_ms, at_ms, self.policy)

    def turn_ends(self, at_ms: int) -> int:
        """When the window of whoever may merge at ``at_ms`` ends (Unix ms)."""
        first_end = self.opened_ms + (self.policy.deadline_s + self.policy.timeout_s) * 1000
        if at_ms < first_end:
            return first_end
        step = self.policy.timeout_s * 1000
        return first_end + ((at_ms - first_end) // step + 1) * step

    def ready(self, at_ms: int) -> bool:
        """Whether the round may merge at ``at_ms``: K contributions wait, or the deadline passed with one."""
        deadline = self.opened_ms + self.policy.deadline_s * 1000
        return len(self.pending) >= self.policy.buffer or bool(self.pending) and at_ms >= deadline

    def json(self) -> dict[str, Any]:
        now = now_ms()
        return {"branch": self.branch, "head": self.head, "round": self.number + 1, "opened_ms": self.opened_ms,
                "policy": self.policy.as_dict(), "ranked": list(self.ranked), "aggregator": self.aggregator(now),
                "ready": self.ready(now), "pending": [vars(c) for c in self.pending]}


def view(repo: Repo, branch: str) -> RoundView:
    """The current round of ``branch`` as this node sees it."""
    target = check_branch_name(branch)
    head = repo.head(target)
    membership = repo.members.current()
    chain = _chain(repo, head, membership.policy.max_staleness)
    pending = []
    prefix = f"{CONTRIBUTION_PREFIX}{target}/"
    for name, cid in sorted(repo.branches().items()):
        if name.startswith(prefix):
            try:
                pending.append(_contribution(repo, repo.commit(cid), target, chain, membership.policy))
            except IntegrityError:
                continue  # merged already, too stale, or not a contribution to this branch
    head_commit = repo.commit(head)
    return RoundView(branch=target, head=head, number=_rounds_before(repo, head),
                     opened_ms=head_commit.timestamp_ms, policy=membership.policy,
                     ranked=tuple(_ranked(repo, membership, target, head, head_commit.timestamp_ms)),
                     pending=tuple(sorted(pending, key=lambda c: c.commit)))


def staleness(repo: Repo, branch: str, base: CommitId) -> int:
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


def commitments(repo: Repo, state: StateDict, base: CommitId, codec: str = "bitdelta-v1") -> list[str]:
    """What a contribution of ``state`` trained from ``base`` publishes when the repository's merges are proven:
    the commitments of its delta's chunks (none when they are not). A lossy codec would store other values than
    those committed: ``InvalidInput``."""
    if not repo.members.current().policy.proof_chunk:
        return []
    if codec != "bitdelta-v1":
        raise InvalidInput(f"this repository's merges are proven: contributions are stored exactly, not as {codec}")
    from .proofs import weighted_sum

    return _commit_chunks(repo, weighted_sum.fixed_delta(state, repo.materialize(base)))


def merge(repo: Repo, identity: Any, branch: str, *, at_ms: int | None = None) -> Commit:
    """Merge the pending contributions of ``branch``'s round as its entitled aggregator (``identity``).

    ``InvalidInput`` if this node is not entitled now or the round is not ready."""
    current = view(repo, branch)
    at = now_ms() if at_ms is None else at_ms
    if current.aggregator(at) != identity.public_key:
        raise InvalidInput(f"{short(identity.public_key)} is not the aggregator of round {current.number + 1} of "
                           f"{branch} now (it is {current.aggregator(at)})")
    if not current.ready(at):
        raise InvalidInput(f"round {current.number + 1} of {branch} is not ready: {len(current.pending)} of "
                           f"{current.policy.buffer} contributions, deadline not passed")
    chosen = current.pending[:most_inputs(current.policy)]  # a proof circuit takes so many
    state, meta = derive(repo, current, chosen)

    def still_entitled(timestamp_ms: int) -> None:  # merging took long: a merge signed after the window is void
        if current.aggregator(timestamp_ms) != identity.public_key:
            raise InvalidInput(f"the window of {short(identity.public_key)} for round {current.number + 1} of "
                               f"{branch} ended while it merged; the next aggregator takes the round")

    return repo.write_round(identity, state, branch=current.branch, parents=(current.head, *meta_parents(meta)),
                            meta=meta, message=f"round {meta['round']} of {branch}: {len(chosen)} "
                                                f"contributions, {meta['strategy']['name']}",
                            check_time=still_entitled)


def verify(repo: Repo, commit: Commit) -> RoundView:
    """Check round merge ``commit`` against this node's copy of the repository (see the module docstring);
    ``IntegrityError`` saying what is wrong. Returns the round it closes."""
    if commit.kind != "round" or len(commit.parents) < 2:
        raise IntegrityError(f"commit {short(commit.id)} is not a round merge")
    branch = commit.meta.get("branch")
    if not isinstance(branch, str):
        raise IntegrityError(f"round merge {short(commit.id)} names no branch")
    current = _view_at(repo, branch, commit.parents[0])
    author = current.aggregator(commit.timestamp_ms)
    if author != commit.author:
        raise IntegrityError(f"round merge {short(commit.id)} is by {short(commit.author)}, but the aggregator "
                             f"entitled at its time is {short(author) if author else 'nobody'}")
    chain = _chain(repo, current.head, current.policy.max_staleness)
    merged = [_contribution(repo, repo.commit(c), current.branch, chain, current.policy) for c in commit.parents[1:]]
    if list(commit.parents[1:]) != sorted(set(commit.parents[1:])):
        raise IntegrityError(f"round merge {short(commit.id)} lists its contributions out of order or twice")
    if len(merged) > most_inputs(current.policy):
        raise IntegrityError(f"round merge {short(commit.id)} merges {len(merged)} contributions, more than one "
                             f"proof takes ({most_inputs(current.policy)})")
    early = commit.timestamp_ms < current.opened_ms + current.policy.deadline_s * 1000
    if early and len(merged) < current.policy.buffer:
        raise IntegrityError(f"round merge {short(commit.id)} merges {len(merged)} contributions before the "
                             f"deadline (the policy waits for {current.policy.buffer})")
    state, meta = derive(repo, current, merged)
    if dict(commit.meta) != meta:
        raise MergeMismatch(f"round merge {short(commit.id)} records other rounds, strategy or weights than the "
                             "policy gives")
    if not _same_state(repo.materialize(commit.id), state):
        raise MergeMismatch(f"round merge {short(commit.id)} is not what its inputs merge to")
    return current


def check_move(repo: Repo, move: BranchMove) -> None:
    """Before a node takes ``move`` from a peer (gossip or a pull): moving a branch to one of its round merges
    needs a merge that ``verify`` accepts (``IntegrityError`` otherwise), so a node never follows a forged or
    unentitled merge. Any other move is left to the role checks of ``Repo.accept_move``. A merge verified, or
    found not to match its inputs, is remembered (they never change: every one is named by its hash), so a forger
    cannot make a node re-derive the same merge at every catch-up."""
    commit = repo.commit(move.commit)
    if commit.kind != "round" or commit.meta.get("branch") != move.branch:
        return
    checked = _CHECKED.setdefault(repo.objects, OrderedDict())  # per node: what it checked itself
    if commit.id in checked:
        reason = checked[commit.id]
        if reason is None:
            return
        raise MergeMismatch(reason)
    try:
        verify(repo, commit)
    except MergeMismatch as exc:
        _remember(checked, commit.id, str(exc))
        raise
    except IntegrityError:
        raise  # perhaps only for now: a contribution it names may not have arrived yet
    except FlairError as exc:  # a strategy that cannot run on these inputs, a layout that does not fit, ...
        raise IntegrityError(f"round merge {short(commit.id)} does not re-derive: {exc}") from None
    _remember(checked, commit.id, None)


def derive(repo: Repo, current: RoundView, contributions: Sequence[Contribution]
           ) -> tuple[StateDict, dict[str, Any]]:
    """The merged state and the ``meta`` a round merge of ``contributions`` records. With proofs on (the policy's
    ``proof_chunk``), the merge is exactly ``head + Σ e_i (x_i − base_i) / 2^16`` in fixed point, with the
    effective weights ``e = proof_weights(meta)``, and ``meta["sums"]`` holds the commitments of the
    chunks of ``Σ e_i (x_i − base_i)``: what an EZKL proof of the merge binds to."""
    from ..tensors.fixedpoint import WEIGHT_BITS, combine, normalize_weights
    from .strategies import build_strategy

    if not contributions:
        raise InvalidInput("a round merges at least one contribution")
    strategy = build_strategy(current.policy.strategy, current.policy.strategy_params)
    strategy.check_count(len(contributions))
    weights = normalize_weights(weight_counts([(c.examples, c.staleness) for c in contributions], current.policy))
    whole = 1 << WEIGHT_BITS
    step = step_weight([(c.examples, c.staleness) for c in contributions], current.policy, whole)
    meta = {"branch": current.branch, "round": current.number + 1, "strategy": strategy.describe(),
            "contributions": [[c.commit, c.examples, c.staleness, w] for c, w in zip(contributions, weights,
                                                                                    strict=True)],
            "examples": sum(c.examples for c in contributions), "step": step}
    head = repo.materialize(current.head)
    if current.policy.proof_chunk:
        state, sums = _provable(repo, head, contributions, proof_weights(meta))
        return state, {**meta, "sums": sums}
    inputs = [repo.materialize(c.commit) if c.base == current.head else
              combine(repo.materialize(c.base), [head, repo.materialize(c.commit)], [whole, whole])
              for c in contributions]
    state = strategy.aggregate(head, inputs, weights)
    if step != whole:  # stale contributions: a shorter step from the head towards the strategy's result
        state = combine(head, [state], [step])
    return state, meta


def most_inputs(policy: RoundPolicy) -> int:
    """How many contributions one round merge takes: as many as wait, unless merges are proven, when one proof
    circuit must take them all."""
    if not policy.proof_chunk:
        return 1 << 30
    from .proofs.ezkl_backend import KZG_INPUTS, MAX_INPUTS

    return KZG_INPUTS if policy.proof_scheme == "kzg" else MAX_INPUTS


def proof_weights(meta: dict[str, Any]) -> list[int]:
    """The integer weights a proven merge applies to its contributions' deltas: each recorded weight times the
    merge's step, out of 2^16, rounded down (the head keeps the rest)."""
    from ..tensors.fixedpoint import WEIGHT_BITS

    return [int(entry[3]) * int(meta["step"]) >> WEIGHT_BITS for entry in meta["contributions"]]


def proof_statement(repo: Repo, commit: Commit) -> tuple[list[int], list[list[str]], list[str]]:
    """What a proof of round merge ``commit`` must bind, from the records alone (no payload is read, so any
    holder of the records can check proofs): the effective weights, each contribution's chunk commitments in
    the merge's order, and the commitments of the merged sums. ``IntegrityError`` if the merge is not proven."""
    sums = commit.meta.get("sums")
    if commit.kind != "round" or not isinstance(sums, list) or not sums:
        raise IntegrityError(f"commit {short(commit.id)} is not a proven round merge")
    published = []
    for contribution in meta_parents(dict(commit.meta)):
        chunks = repo.commit(contribution).meta.get("commitments")
        if not isinstance(chunks, list) or len(chunks) != len(sums):
            raise IntegrityError(f"contribution {short(contribution)} publishes no commitment for each chunk")
        published.append(chunks)
    return proof_weights(dict(commit.meta)), published, sums


def meta_parents(meta: dict[str, Any]) -> list[CommitId]:
    return [CommitId(entry[0]) for entry in meta["contributions"]]


# -- internals -----------------------------------------------------------------------------------------


def _remember(cache: OrderedDict[str, Any], key: str, value: Any) -> None:
    cache[key] = value
    if len(cache) > _CHECKED_SIZE:
        cache.popitem(last=False)


def _commit_chunks(repo: Repo, values: Any) -> list[str]:
    """The commitments of the chunks of ``values`` (an int64 vector) under ``repo``'s policy."""
    from .proofs import circuits, weighted_sum

    chunk = repo.members.current().policy.proof_chunk
    return weighted_sum.commitments(values, chunk, circuits.for_repo(repo).committer(repo))


def _provable(repo: Repo, head: StateDict, contributions: Sequence[Contribution], weights: Sequence[int]
              ) -> tuple[StateDict, list[str]]:
    """``head + Σ e_i (x_i − base_i)`` with no shortcut (each contribution enters as its own state with weight
    ``e_i`` and its base with ``−e_i``), and the commitments of the chunks of the sums."""
    from ..tensors.fixedpoint import combine
    from .proofs import weighted_sum

    states, signed, deltas = [], [], []
    for c, e in zip(contributions, weights, strict=True):
        x, base = repo.materialize(c.commit), repo.materialize(c.base)
        states += [x, base]
        signed += [e, -e]
        deltas.append(weighted_sum.fixed_delta(x, base))
    merged = combine(head, states, signed, shortcuts=False)
    return merged, _commit_chunks(repo, weighted_sum.weighted_sums(weights, deltas))


def _committed(repo: Repo, commit: Commit, policy: RoundPolicy) -> bool:
    """Whether contribution ``commit`` publishes the commitments of its own delta as ``policy`` makes them;
    computed once per contribution, policy and node (its record and payload never change). ``IntegrityError``
    while this node cannot tell yet (the SRS has not arrived)."""
    known = _COMMITTED.setdefault(repo.objects, OrderedDict())
    key = f"{commit.id}:{policy.proof_chunk}:{policy.proof_scheme}:{policy.proof_srs}"
    if key not in known:
        from .proofs import weighted_sum
        from .proofs.ezkl_backend import ProofError

        published = commit.meta.get("commitments")
        try:
            delta = weighted_sum.fixed_delta(repo.materialize(commit.id), repo.materialize(commit.parents[0]))
        except NotAMember:
            return True  # a node without the key cannot look: it neither merges nor re-derives
        try:
            own = _commit_chunks(repo, delta)
        except ProofError as exc:
            raise IntegrityError(f"cannot check the commitments of contribution {short(commit.id)} yet: {exc}"
                                 ) from None
        _remember(known, key, isinstance(published, list) and published == own)
    return known[key]


def _view_at(repo: Repo, branch: str, head: CommitId) -> RoundView:
    """The round that ``head`` (a commit of ``branch``) opened, whatever the branch's head is now."""
    current = view(repo, branch)
    if current.head == head:
        return current
    membership = repo.members.current()
    head_commit = repo.commit(head)
    return RoundView(branch=current.branch, head=head, number=_rounds_before(repo, head),
                     opened_ms=head_commit.timestamp_ms, policy=membership.policy,
                     ranked=tuple(_ranked(repo, membership, current.branch, head, head_commit.timestamp_ms)),
                     pending=())


def _ranked(repo: Repo, membership: Membership, branch: str, head: CommitId, at_ms: int) -> list[PublicKey]:
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


def _chain(repo: Repo, head: CommitId, max_staleness: int) -> list[Commit]:
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


def _contribution(repo: Repo, commit: Commit, branch: str, chain: list[Commit], policy: RoundPolicy
                  ) -> Contribution:
    """``commit`` as a pending contribution to ``branch``; ``IntegrityError`` if it is none."""
    examples = commit.meta.get("examples")
    if commit.kind != "contribution" or commit.meta.get("branch") != branch or len(commit.parents) != 1 \
            or not isinstance(examples, int) or isinstance(examples, bool) or examples < 0:
        raise IntegrityError(f"commit {short(commit.id)} is not a contribution to {branch}")
    base, staleness = commit.parents[0], 0
    for link in chain:
        if link.id == base:
            if staleness > policy.max_staleness:
                break
            if policy.proof_chunk and not _committed(repo, commit, policy):
                raise IntegrityError(f"contribution {short(commit.id)} does not publish the commitments of its "
                                     f"delta in chunks of {policy.proof_chunk}, which proven merges need")
            return Contribution(commit.id, commit.author, base, examples, staleness)
        if link.kind == "round":
            if commit.id in link.parents[1:]:
                raise IntegrityError(f"contribution {short(commit.id)} was merged in round merge {short(link.id)}")
            staleness += 1
    raise IntegrityError(f"contribution {short(commit.id)} is based more than {policy.max_staleness} round merges "
                         f"behind the head of {branch}, or not on it")


def _rounds_before(repo: Repo, head: CommitId) -> int:
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
