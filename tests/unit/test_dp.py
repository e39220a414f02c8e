"""Differential privacy of contributions: the policy's fields, the accounting (``core.dp``, against
dp-accounting itself), the Gaussian mechanism on a whole update (``tensors.dp_noise``), and the contributor's
node numbering, clipping and refusing past the budget (``protocol.dp``)."""

from __future__ import annotations

import dp_accounting
import pytest
import torch
from dp_accounting.rdp import RdpAccountant

from flair_node.core import dp
from flair_node.core.errors import IntegrityError, InvalidInput
from flair_node.core.identity import Identity
from flair_node.core.round_rules import RoundPolicy
from flair_node.protocol import dp as protocol_dp
from flair_node.protocol import rounds
from flair_node.storage.repo import Repository
from flair_node.storage.repos import RepoSet
from flair_node.tensors.dp_noise import clip_and_noise, update_norm
from flair_node.testing.commit_graph import tiny_state

DP = {"dp_clip": "0.5", "dp_noise": "2", "dp_delta": "1e-5", "dp_epsilon": "3.5"}  # two contributions fit, not 3
POLICY = RoundPolicy(buffer=1, **DP)
OWNER = Identity.generate()
MEMBERS = [Identity.generate() for _ in range(2)]


def team(policy: RoundPolicy) -> tuple[RepoSet, Repository]:
    repos = RepoSet.in_memory(OWNER)
    repo = repos.create("digits", tiny_state(0))
    for member in MEMBERS:
        repo.invite(OWNER, member.public_key, "maintainer")
    repo.set_policy(OWNER, policy)
    return repos, repo


def as_node(repos: RepoSet, repo: Repository, identity: Identity) -> Repository:
    return Repository.open(repo.id, repos.objects, repos.blocks, repo.refs, reader=identity)


def test_the_policy_takes_all_four_fields_or_none():
    assert POLICY.dp and not RoundPolicy().dp
    assert RoundPolicy.from_dict(POLICY.record()) == POLICY
    assert "dp_clip" not in RoundPolicy().record()  # records made before the fields are unchanged
    with pytest.raises(InvalidInput, match="dp_epsilon missing"):
        RoundPolicy(**{**DP, "dp_epsilon": ""})
    for name, bad in (("dp_clip", "0"), ("dp_noise", "-1"), ("dp_delta", "0.5"), ("dp_epsilon", "lots")):
        with pytest.raises(InvalidInput, match=name):
            RoundPolicy(**{**DP, name: bad})
    assert RoundPolicy(privacy="secure", max_staleness=0, **DP).dp  # the noise is shared out in the ring there


@pytest.mark.parametrize(("noise", "count", "delta"), [("2", 1, "1e-5"), ("1.1", 7, "1e-6"), ("0.8", 100, "0.001")])
def test_epsilon_is_the_rdp_accountants_for_count_compositions_of_the_gaussian_mechanism(noise, count, delta):
    accountant = RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(float(noise)), count)
    assert dp.epsilon(noise, count, delta) == pytest.approx(accountant.get_epsilon(float(delta)), rel=1e-12)
    assert dp.epsilon(noise, 0, delta) == 0.0
    assert dp.epsilon(noise, count + 1, delta) > dp.epsilon(noise, count, delta)


def test_a_record_is_what_the_accountant_gives_and_check_refuses_any_other():
    first = dp.record(POLICY, 1)
    one = dp.text(dp.epsilon("2", 1, "1e-5"))
    assert first == {"clip": "0.5", "noise": "2", "delta": "1e-5", "count": 1, "epsilon_step": one, "epsilon": one}
    assert dp.check(first, POLICY, at_least=1) == 1
    second = dp.record(POLICY, 2)
    assert float(second["epsilon"]) == pytest.approx(3.189, abs=1e-3)
    with pytest.raises(dp.BudgetExceeded, match="past the repository's budget of 3.5"):
        dp.record(POLICY, 3)
    forged = [({**second, "count": 1}, "at least 1 times before"),  # spending its budget again
              ({**second, "epsilon": "1"}, "records epsilon"), ({**second, "noise": "20"}, "the policy says"),
              ({k: v for k, v in second.items() if k != "delta"}, "records"), (None, "records"),
              ({**dp.record(RoundPolicy(buffer=1, **{**DP, "dp_epsilon": "99"}), 3)}, "past the budget of 3.5")]
    for meta, why in forged:
        with pytest.raises(IntegrityError, match=why):
            dp.check(meta, POLICY, at_least=2)


def test_clipping_bounds_the_whole_updates_norm_and_integer_tensors_stay_the_bases():
    base = {"w": torch.zeros(1000), "b": torch.ones(10, dtype=torch.float64), "n": torch.tensor([3])}
    trained = {"w": torch.full((1000,), 0.1), "b": torch.ones(10, dtype=torch.float64) * 2, "n": torch.tensor([9])}
    norm = update_norm(base, trained)
    assert norm == pytest.approx((1000 * 0.01 + 10) ** 0.5, rel=1e-6)
    clipped, before = clip_and_noise(base, trained, 1.0, 0.0)
    assert before == pytest.approx(norm)
    assert update_norm(base, clipped) == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(clipped["n"], base["n"]) and clipped["b"].dtype == torch.float64
    # its direction is kept: every value scaled by the same factor
    scale = 1.0 / norm
    assert torch.allclose(clipped["w"], torch.full((1000,), 0.1 * scale), rtol=1e-5)
    assert torch.allclose(clipped["b"], base["b"] + scale, rtol=1e-9)
    small, _ = clip_and_noise(base, {**trained, "w": torch.zeros(1000), "b": base["b"] + 0.01}, 1.0, 0.0)
    assert torch.allclose(small["b"], base["b"] + 0.01)  # within the norm: unchanged


def test_the_noise_has_the_policys_standard_deviation_and_is_fresh_each_time():
    base = {"w": torch.zeros(200_000)}
    one, _ = clip_and_noise(base, base, 0.5, 1.0)
    two, _ = clip_and_noise(base, base, 0.5, 1.0)
    assert float(one["w"].std()) == pytest.approx(1.0, abs=0.01) and abs(float(one["w"].mean())) < 0.01
    assert not torch.equal(one["w"], two["w"])
    fixed = [clip_and_noise(base, base, 0.5, 1.0, seed=bytes(16))[0]["w"] for _ in range(2)]
    assert torch.equal(*fixed)
    with pytest.raises(InvalidInput, match="not finite"):
        clip_and_noise(base, {"w": torch.full((200_000,), float("nan"))}, 0.5, 1.0)
    with pytest.raises(InvalidInput, match="base's tensors"):
        clip_and_noise(base, {"v": torch.zeros(200_000)}, 0.5, 1.0)


def contribute(repos, repo, member, memory, by=1.0):
    node = as_node(repos, repo, member)
    start = node.head("main")
    trained = {k: v + by for k, v in node.materialize(start).items()}
    state, spent, norm = protocol_dp.prepare(node, member.public_key, "main", start, trained, memory=memory)
    return node.contribute(member, state, examples=10, dp=spent), norm


def merge_round(repos, repo, memory):
    current = rounds.view(repo, "main", memory=memory)
    aggregator = next(i for i in [OWNER, *MEMBERS] if i.public_key == current.aggregator(current.opened_ms))
    return rounds.merge(as_node(repos, repo, aggregator), aggregator, "main", memory=memory)


def test_a_members_contributions_are_numbered_clipped_and_refused_past_its_budget():
    memory = rounds.RoundMemory()
    repos, repo = team(POLICY)
    member = MEMBERS[0]
    first, norm = contribute(repos, repo, member, memory)
    assert first.meta["dp"] == dp.record(POLICY, 1) and norm > 0.5
    start = repo.commit(first.parents[0])
    assert update_norm(repo.materialize(start.id), repo.materialize(first.id)) > 0.5  # noised, so not 0.5 exactly
    # a second one before the first is merged replaces it on the member's branch, and still counts
    second, _ = contribute(repos, repo, member, memory, by=2.0)
    assert second.meta["dp"]["count"] == 2
    merged = merge_round(repos, repo, memory)
    assert merged.parents[1:] == (second.id,)
    assert protocol_dp.spent(repo, merged.id, memory)[member.public_key] == (1, 2)
    assert protocol_dp.at_least(repo, member.public_key, merged.id, memory) == 3
    with pytest.raises(dp.BudgetExceeded, match="contribution 3 of this member would spend"):
        contribute(repos, repo, member, memory)
    # another member has a budget of its own
    other, _ = contribute(repos, repo, MEMBERS[1], memory)
    assert other.meta["dp"]["count"] == 1
