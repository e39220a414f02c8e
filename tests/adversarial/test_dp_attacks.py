"""A member whose modified software cheats at differential privacy (issue 19): its contributions are written
straight into its stores with its own key, un-noised, with whatever ``meta["dp"]`` it likes. No round takes
them, and a merge that does (an aggregator colluding or modified) is refused by every member.

- numbered again from 1 once an earlier contribution of it was merged (its budget spent again);
- with no record of what it spent;
- made with a smaller noise multiplier than the policy's;
- recording less privacy loss than the accountant gives for its number;
- past the budget, with the accountant's own figures.
"""

from __future__ import annotations

import pytest
import torch

from flair_node.core import dp
from flair_node.core.errors import IntegrityError
from flair_node.core.identity import Identity
from flair_node.core.round_rules import RoundPolicy
from flair_node.protocol import dp as protocol_dp
from flair_node.protocol import round_merges, rounds
from flair_node.storage.repo import Repository, now_ms
from flair_node.storage.repos import RepoSet
from flair_node.testing.commit_graph import tiny_state

OWNER = Identity.generate()
MEMBERS = [Identity.generate() for _ in range(3)]
EVERYONE = [OWNER, *MEMBERS]
POLICY = RoundPolicy(buffer=2, deadline_s=600, dp_clip="0.5", dp_noise="2", dp_delta="1e-5", dp_epsilon="3.5")


def as_node(repos: RepoSet, repo: Repository, identity: Identity) -> Repository:
    return Repository.open(repo.id, repos.objects, repos.blocks, repo.refs, reader=identity)


def team(policy: RoundPolicy) -> tuple[rounds.RoundMemory, RepoSet, Repository]:
    """A node's round memory, its repositories, and one of them the owner shares with every member, under
    ``policy``."""
    repos = RepoSet.in_memory(OWNER)
    repo = repos.create("digits", tiny_state(0))
    for member in MEMBERS:
        repo.invite(OWNER, member.public_key, "maintainer")
    repo.set_policy(OWNER, policy)
    return rounds.RoundMemory(), repos, repo


def honest(repos: RepoSet, repo: Repository, member: Identity, memory: rounds.RoundMemory):
    node = as_node(repos, repo, member)
    start = node.head("main")
    trained = {k: v + 1.0 for k, v in node.materialize(start).items()}
    state, spent, _ = protocol_dp.prepare(node, member.public_key, "main", start, trained, memory=memory)
    return node.contribute(member, state, examples=10, dp=spent)


def merge(repos: RepoSet, repo: Repository, current: rounds.RoundView, memory: rounds.RoundMemory):
    state, meta = round_merges.derive(repo, current, current.pending, memory=memory)
    aggregator = next(i for i in EVERYONE if i.public_key == current.aggregator(now_ms()))
    return as_node(repos, repo, aggregator).write_round(
        aggregator, state, branch="main", parents=(current.head, *round_merges.merge_parents(meta)), meta=meta,
        message="round")


@pytest.mark.parametrize(("forge", "why"), [
    (lambda good: {**good, "count": 1, "epsilon": dp.text(dp.epsilon("2", 1, "1e-5"))}, "contributed at least 1"),
    (lambda good: None, "records"),
    (lambda good: {**good, "noise": "0.1"}, "the policy says"),
    (lambda good: {**good, "epsilon": "0.5"}, "the accountant gives"),
    (lambda good: {**good, "count": 3, "epsilon": dp.text(dp.epsilon("2", 3, "1e-5"))}, "past the budget"),
], ids=["budget-spent-again", "no-record", "less-noise", "understated-loss", "past-the-budget"])
def test_no_round_takes_a_contribution_cheating_at_differential_privacy_and_every_member_refuses_one_that_does(
        forge, why):
    memory, repos, repo = team(POLICY)
    cheat, other = MEMBERS[0], MEMBERS[1]
    for member in (cheat, other):
        honest(repos, repo, member, memory)
    first = merge(repos, repo, rounds.view(repo, "main", memory=memory), memory)
    assert len(first.parents) == 3  # each spent its first contribution

    good = dp.record(POLICY, 2)
    node = as_node(repos, repo, cheat)
    unclipped = {k: v + 5.0 for k, v in node.materialize(node.head("main")).items()}  # and no noise
    forged = node.contribute(cheat, unclipped, examples=10, dp=forge(good))
    honest(repos, repo, other, memory)
    current = rounds.view(repo, "main", memory=memory)
    assert [c.author for c in current.pending] == [other.public_key]  # no round takes it

    forced = current.taking([*current.pending, rounds.Contribution(forged.id, cheat.public_key, current.head, 10, 0,
                                                                   forged.timestamp_ms)])
    taking = merge(repos, repo, forced, memory)
    assert forged.id in taking.parents
    for member in EVERYONE:
        with pytest.raises(IntegrityError, match=f"breaks the repository's differential privacy: .*{why}"):
            rounds.verify(as_node(repos, repo, member), taking, memory=rounds.RoundMemory())


def test_an_honest_contribution_is_refused_once_the_policy_s_parameters_change():
    """The owner changing the noise or the clip makes waiting contributions, made with the old ones, pending no
    more: a round merges only contributions made under the policy in force."""
    memory = rounds.RoundMemory()
    repos = RepoSet.in_memory(OWNER)
    repo = repos.create("digits", {"w": torch.zeros(4)})
    for member in MEMBERS:
        repo.invite(OWNER, member.public_key, "maintainer")
    repo.set_policy(OWNER, POLICY)
    honest(repos, repo, MEMBERS[0], memory)
    assert len(rounds.view(repo, "main", memory=memory).pending) == 1
    repo.set_policy(OWNER, RoundPolicy(**{**POLICY.as_dict(), "dp_noise": "3"}))
    assert rounds.view(repo, "main", memory=memory).pending == ()
