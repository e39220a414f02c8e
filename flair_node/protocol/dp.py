"""Differential privacy in a repository's rounds (``core.dp`` says what is promised and how it is accounted).

- **The contributor's node** (``prepare``) numbers the contribution (one more than the member's latest, merged or
  waiting on one of its contribution branches), refuses it if that number would spend more than the budget
  (``core.dp.BudgetExceeded``), and publishes the trained weights only clipped and noised
  (``tensors.dp_noise``), with what it spent in ``meta["dp"]``.
- **Every verifier** (``check``, from ``protocol.rounds`` wherever a contribution is judged: as pending, and in
  a merge that takes it) refuses a contribution whose ``meta["dp"]`` is missing, made with other parameters than
  the policy's, not the accountant's figures for its number, past the budget, or numbered lower than the
  member's merged contributions allow (``spent``: counted over the round merges of the branch's history).
- **Secure rounds** (``protocol.secure_rounds`` calls these): each contributor clips (``clipped``) and adds its
  share of the round's discrete Gaussian noise (``noise_std``) when it masks; a roster takes only adverts whose
  authors can afford the round however few it takes (``affordable``, over ``secure_spent``: the ρ of each merge
  that took them); the merge records what it gives each (``secure_record``).

What a verifier cannot see in a plain repository is whether the update was really clipped before the noise:
the noise hides it. ``docs/design/differential-privacy.md`` says what that leaves open.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..core import dp
from ..core.errors import IntegrityError, InvalidInput
from ..core.ids import CommitId, PublicKey, short
from ..core.objects import Commit
from ..core.round_rules import RoundPolicy
from ..storage.repo import CONTRIBUTION_PREFIX, Repository
from .rounds import RoundMemory

if TYPE_CHECKING:
    import torch

#: What the secure round functions, which take no ``RoundMemory``, remember of members' spending (``secure_spent``):
#: keyed by commit ids, which name their content, so one cache serves every repository of the process.
SHARED = RoundMemory()
MIN_NOISE_STD = 16.0  # a noise share's parameter, at least: the accounting's correction term is 0 from there


def spent(repo: Repository, head: CommitId, memory: RoundMemory) -> dict[PublicKey, tuple[int, int]]:
    """For each member, over the round merges from ``head`` back along first parents: how many of its
    contributions made under differential privacy they took, and the largest number such a contribution
    records. Remembered per commit, so a new head costs its own rounds only."""
    totals, newer = _since(repo, head, memory.dp_spent)
    for commit in newer:
        if commit.kind == "round":
            for taken in commit.parents[1:]:
                contribution = repo.commit(taken)
                number = _number(contribution)
                if number is not None:
                    merged, top = totals.get(contribution.author, (0, 0))
                    totals[contribution.author] = (merged + 1, max(top, number))
        memory.remember_dp(commit.id, totals)
    return totals


def at_least(repo: Repository, author: PublicKey, head: CommitId, memory: RoundMemory) -> int:
    """The lowest number ``author``'s next contribution on ``head`` may record."""
    merged, top = spent(repo, head, memory).get(author, (0, 0))
    return 1 + max(merged, top)


def spent_by_member(repo: Repository, memory: RoundMemory) -> dict[PublicKey, dict[str, Any]]:
    """What each member has spent of its budget as this node sees it: its latest contribution's number, over the
    round merges of every branch and the contributions waiting on contribution branches, and the ε the
    accountant gives for it (``flair members``)."""
    policy = repo.members.current().policy
    if policy.privacy == "secure":
        rounds_of: dict[PublicKey, tuple[float, ...]] = {}
        for name, cid in repo.branches().items():
            if not name.startswith(CONTRIBUTION_PREFIX):
                for author, rhos in secure_spent(repo, cid, memory).items():
                    rounds_of[author] = max(rounds_of.get(author, ()), rhos, key=len)
        return {author: {"contributions": len(rhos), "epsilon": dp.text(dp.secure_epsilon(rhos, policy.dp_delta))}
                for author, rhos in sorted(rounds_of.items())}
    counts: dict[PublicKey, int] = {}
    for name, cid in repo.branches().items():
        if name.startswith(CONTRIBUTION_PREFIX):
            commit = repo.commit(cid)
            number = _number(commit)
            if number is not None:
                counts[commit.author] = max(counts.get(commit.author, 0), number)
            continue
        for author, (merged, top) in spent(repo, cid, memory).items():
            counts[author] = max(counts.get(author, 0), merged, top)
    return {author: {"contributions": count, "epsilon": dp.text(dp.epsilon(policy.dp_noise, count,
                                                                            policy.dp_delta))}
            for author, count in sorted(counts.items())}


def prepare(repo: Repository, author: PublicKey, branch: str, start: CommitId, trained: Mapping[str, torch.Tensor],
            *, memory: RoundMemory) -> tuple[Mapping[str, torch.Tensor], dict[str, Any], float]:
    """What ``author``'s node publishes of weights ``trained`` from ``start`` for the rounds of ``branch``: the
    clipped and noised weights (each tensor computed when asked for, ``dp_noise.Clipped``), their ``meta["dp"]``,
    and the update's norm before clipping (for the caller to report, never to record). ``BudgetExceeded`` past
    the member's budget."""
    from ..tensors.dp_noise import clip_and_noise

    policy = repo.members.current().policy
    waiting = [_number(commit) for commit in (repo.commit(cid) for name, cid in repo.branches().items()
                                               if name.startswith(CONTRIBUTION_PREFIX)) if commit.author == author]
    count = max([at_least(repo, author, repo.head(branch), memory), *(1 + n for n in waiting if n is not None)])
    meta = dp.record(policy, count)
    clip = Decimal(policy.dp_clip)
    state, norm = clip_and_noise(repo.weights(start), trained, float(clip), float(clip * Decimal(policy.dp_noise)))
    return state, meta, norm


def check(repo: Repository, commit: Commit, head: CommitId, memory: RoundMemory) -> None:
    """``IntegrityError`` unless contribution ``commit``, judged on ``head``, records what the policy's
    differential privacy requires (see the module docstring)."""
    policy = repo.members.current().policy
    try:
        dp.check(commit.meta.get("dp"), policy, at_least=at_least(repo, commit.author, head, memory))
    except IntegrityError as exc:
        raise IntegrityError(f"contribution {short(commit.id)} breaks the repository's differential privacy: "
                             f"{exc}") from None


# -- secure rounds ----------------------------------------------------------------------------------------

def secure_spent(repo: Repository, head: CommitId, memory: RoundMemory) -> dict[PublicKey, tuple[float, ...]]:
    """For each member, the ρ of each secure round merge from ``head`` back along first parents that took one of
    its contributions under differential privacy (what ``core.dp.secure_epsilon`` composes). Remembered per
    commit."""
    totals, newer = _since(repo, head, memory.dp_rhos)
    for commit in newer:
        made, secure = commit.meta.get("dp"), commit.meta.get("secure")
        if commit.kind == "round" and isinstance(made, Mapping) and isinstance(secure, Mapping):
            rho = float(Decimal(made["rho"]))  # a merge this node follows re-derived to this meta
            for entry in secure["contributions"]:
                totals[entry[1]] = (*totals.get(entry[1], ()), rho)
        memory.remember_rhos(commit.id, totals)
    return totals


def affordable(repo: Repository, author: PublicKey, head: CommitId, roster: int, least_taken: int,
               memory: RoundMemory = SHARED) -> bool:
    """Whether a secure round on ``head`` whose roster takes ``roster`` adverts, ``author``'s among them, keeps
    ``author`` within its budget however few of them (down to ``least_taken``) the merge takes."""
    policy = repo.members.current().policy
    worst = dp.round_rho(policy.dp_noise, least_taken, roster)
    rhos = (*secure_spent(repo, head, memory).get(author, ()), worst)
    return dp.secure_epsilon(rhos, policy.dp_delta) <= float(Decimal(policy.dp_epsilon))


def clipped(policy: RoundPolicy, base: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
            ) -> Mapping[str, torch.Tensor]:
    """``state`` with its update clipped to the policy's norm, if it sets differential privacy."""
    from ..tensors.dp_noise import clip

    return clip(base, state, float(Decimal(policy.dp_clip))) if policy.dp else state


def noise_std(policy: RoundPolicy, count: int, roster: int) -> float:
    """The discrete Gaussian parameter of each of ``roster`` contributors' share of the noise, in the term's
    units: z · Δ / √roster, so the merge of all of them carries z · Δ (Δ: ``dp_noise.fixed_sensitivity``)."""
    from ..tensors.dp_noise import fixed_sensitivity
    from ..tensors.fixedpoint import DEFAULT_SCALE_BITS

    sensitivity = fixed_sensitivity(float(Decimal(policy.dp_clip)), count, DEFAULT_SCALE_BITS)
    std = float(Decimal(policy.dp_noise)) * sensitivity / math.sqrt(roster)
    if std < MIN_NOISE_STD:
        raise InvalidInput(f"each contributor's share of the noise would have a parameter of {std:.3g}: the "
                           f"accounting needs {MIN_NOISE_STD:g} or more (a larger dp_clip or dp_noise)")
    return std


def noise_bound(policy: RoundPolicy, count: int, least: int) -> int:
    """How far a contributor's share of the noise may reach, at most: 14 parameters of the largest share (of a
    roster of ``least``, the fewest a round takes); a draw beyond it has odds below 2^-140 a value."""
    return math.ceil(14 * noise_std(policy, count, least)) if policy.dp else 0


def secure_record(repo: Repository, policy: RoundPolicy, head: CommitId, authors: Sequence[PublicKey],
                  roster: int) -> dict[str, Any]:
    """What a secure merge taking ``authors``' contributions of a roster of ``roster`` records of differential
    privacy: its parameters, how many it took of how many, the ρ it gives each, and each one's ε in all since
    (``IntegrityError`` if one is past its budget)."""
    rho = dp.text(dp.round_rho(policy.dp_noise, len(authors), roster))
    history = secure_spent(repo, head, SHARED)
    spent = {}
    for author in authors:
        epsilon = dp.secure_epsilon((*history.get(author, ()), float(rho)), policy.dp_delta)
        if epsilon > float(Decimal(policy.dp_epsilon)):
            raise IntegrityError(f"a merge taking {short(author)}'s contribution would spend ε = "
                                 f"{dp.text(epsilon)} of its budget of {policy.dp_epsilon}")
        spent[author] = dp.text(epsilon)
    return {"clip": policy.dp_clip, "noise": policy.dp_noise, "delta": policy.dp_delta, "taken": len(authors),
            "roster": roster, "rho": rho, "spent": spent}


def _number(commit: Commit) -> int | None:
    made = commit.meta.get("dp")
    number = made.get("count") if isinstance(made, Mapping) else None
    return number if isinstance(number, int) and not isinstance(number, bool) else None


def _since(repo: Repository, head: CommitId, cache: Mapping[str, dict[PublicKey, Any]]
           ) -> tuple[dict[PublicKey, Any], list[Commit]]:
    """What ``cache`` holds for the nearest commit at or before ``head`` along first parents (empty if none), and
    the commits after it up to ``head``, oldest first."""
    walked, cursor = [], head
    while cursor not in cache:
        commit = repo.commit(cursor)
        walked.append(commit)
        if not commit.parents:
            return {}, walked[::-1]
        cursor = commit.parents[0]
    return dict(cache[cursor]), walked[::-1]
