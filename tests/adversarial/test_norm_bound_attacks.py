"""A member whose modified software skips the clip in a plain repository: its contribution is written straight
into its stores with its own key, its update far beyond the bound, with honest-looking figures otherwise. No
round takes it, and a merge that does is refused by every member, who reads each delta and checks its norm
(``protocol.norm_bounds.check_plain``): against ``norm_bound`` exactly, and, with differential privacy, against
the clip plus what the noise reaches."""

from __future__ import annotations

import pytest
import torch

from flair_node.core import dp
from flair_node.core.errors import IntegrityError
from flair_node.core.round_rules import RoundPolicy
from flair_node.protocol import norm_bounds, rounds
from flair_node.tensors.dp_noise import update_norm
from tests.adversarial.test_dp_attacks import EVERYONE, MEMBERS, POLICY, as_node, honest, merge, team

BOUNDED = RoundPolicy(buffer=2, deadline_s=600, norm_bound="0.5")


def refused_everywhere(repos, repo, memory, forged, cheat) -> None:
    current = rounds.view(repo, "main", memory=memory)
    assert forged.id not in [c.commit for c in current.pending]  # no round takes it
    forced = current.taking([*current.pending, rounds.Contribution(forged.id, cheat.public_key, current.head, 10, 0,
                                                                   forged.timestamp_ms)])
    taking = merge(repos, repo, forced, memory)
    for member in EVERYONE:
        with pytest.raises(IntegrityError, match="beyond the .* the repository's bound allows"):
            rounds.verify(as_node(repos, repo, member), taking, memory=rounds.RoundMemory())


def test_a_norm_bound_is_clipped_to_by_each_contributor_and_checked_exactly_by_every_member():
    memory, repos, repo = team(BOUNDED)
    cheat, other = MEMBERS[0], MEMBERS[1]
    node = as_node(repos, repo, other)
    base = node.materialize(node.head("main"))
    trained = {k: v + 1.0 for k, v in base.items()}  # a change of norm sqrt(15), clipped to 0.5 by its node
    clipped = norm_bounds.clipped(BOUNDED, base, trained)
    assert update_norm(base, clipped) == pytest.approx(0.5)
    node.contribute(other, clipped, examples=10)
    forged = as_node(repos, repo, cheat).contribute(cheat, {k: v + 0.2 for k, v in base.items()}, examples=10)
    assert update_norm(base, repo.materialize(forged.id)) == pytest.approx(0.2 * 15 ** 0.5, rel=1e-5)  # 0.77
    refused_everywhere(repos, repo, memory, forged, cheat)


def test_with_differential_privacy_an_update_beyond_the_clip_and_the_noise_s_reach_is_refused():
    """The figures it records are the accountant's own for its first contribution; only the update is wrong: not
    clipped and not noised, and far beyond what clipping to 0.5 and noise of 2 x 0.5 reach on 15 values (14.4).
    One within that reach would pass: noise cannot be told from an update."""
    memory, repos, repo = team(POLICY)
    cheat, other = MEMBERS[0], MEMBERS[1]
    honest(repos, repo, other, memory)
    node = as_node(repos, repo, cheat)
    forged = node.contribute(cheat, {k: v + 50.0 for k, v in node.materialize(node.head("main")).items()},
                             examples=10, dp=dp.record(POLICY, 1))
    refused_everywhere(repos, repo, memory, forged, cheat)


def test_honest_contributions_with_noise_pass_the_check():
    memory, repos, repo = team(POLICY)
    for member in MEMBERS:
        honest(repos, repo, member, memory)
    assert len(rounds.view(repo, "main", memory=memory).pending) == 3


def test_the_limit_adds_the_noise_s_reach_and_an_ulp_a_value():
    state = {"w": torch.ones(100), "n": torch.ones(3, dtype=torch.int64)}
    assert norm_bounds.plain_limit(BOUNDED, state) == pytest.approx(0.5 + 2.0 ** -23 * 10)
    assert norm_bounds.plain_limit(POLICY, state) == pytest.approx(0.5 + 1.0 * (10 + 10) + 2.0 ** -23 * 10)
