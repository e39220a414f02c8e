"""Rounds on one shared copy of a repository (``protocol.rounds``): contributions, the entitled aggregator's
merge, and every member's re-derivation of it. The daemons that run this over gossip come next."""

from __future__ import annotations

import pytest
import torch

from flair_node.core.errors import Forbidden, IntegrityError, InvalidInput
from flair_node.core.identity import Identity, wallet
from flair_node.core.round_rules import RoundPolicy
from flair_node.protocol import round_merges, rounds
from flair_node.storage.repo import Repository
from flair_node.storage.repos import RepoSet
from flair_node.testing.commit_graph import tiny_state

OWNER = Identity.generate()
MEMBERS = [Identity.generate() for _ in range(3)]
READER = Identity.generate()


def shift(state: dict[str, torch.Tensor], by: float) -> dict[str, torch.Tensor]:
    return {k: v + by for k, v in state.items()}


def team(policy: RoundPolicy | None = None) -> tuple[RepoSet, Repository]:
    repos = RepoSet.in_memory(OWNER)
    repo = repos.create("digits", tiny_state(0))
    for member in MEMBERS:
        repo.invite(OWNER, member.public_key, "maintainer")
    repo.invite(OWNER, READER.public_key, "reader")
    if policy is not None:
        repo.set_policy(OWNER, policy)
    return repos, repo


def as_node(repos: RepoSet, repo: Repository, identity: Identity) -> Repository:
    """The repository as a member's node holds it (the same records and blocks, read with its key)."""
    return Repository.open(repo.id, repos.objects, repos.blocks, repo.refs, reader=identity)


def by_key(key: str) -> Identity:
    return next(i for i in [OWNER, *MEMBERS] if i.public_key == key)


def two_contributions(examples: tuple[int, int] = (50, 50)):
    """A team with K = 2 whose first two members contributed: the repository, its round, what merging gives."""
    memory = rounds.RoundMemory()
    repos, repo = team(RoundPolicy(buffer=2))
    for i, member in enumerate(MEMBERS[:2]):
        as_node(repos, repo, member).contribute(member, shift(tiny_state(0), i + 1.0), examples=examples[i])
    current = rounds.view(repo, "main", memory=memory)
    state, meta = round_merges.derive(repo, current, current.pending, memory=memory)
    return repos, repo, current, state, meta


def write_round(repos: RepoSet, repo: Repository, who: Identity, state, current: rounds.RoundView, meta, message: str):
    """A round commit on main written by ``who`` as given, whatever the rules say."""
    return as_node(repos, repo, who).write_round(who, state, branch="main",
                                                 parents=(current.head, *round_merges.meta_parents(meta)), meta=meta,
                                                 message=message)


def test_contributions_wait_then_the_entitled_aggregator_merges_and_every_member_re_derives_it():
    memory = rounds.RoundMemory()
    repos, repo = team(RoundPolicy(buffer=3))
    start = repo.head("main")
    for i, member in enumerate(MEMBERS):
        as_node(repos, repo, member).contribute(member, shift(repo.materialize(start), 0.1 * (i + 1)),
                                                examples=100 * (i + 1))
    assert repo.head("main") == start  # contributions do not move the branch
    current = rounds.view(repo, "main", memory=memory)
    assert (current.number, current.head, len(current.pending)) == (0, start, 3)
    assert sorted(current.ranked) == sorted([OWNER.public_key, *(m.public_key for m in MEMBERS)])
    assert current.ready(current.opened_ms)

    aggregator = by_key(current.aggregator(current.opened_ms + 1))
    others = [i for i in [OWNER, *MEMBERS] if i != aggregator]
    with pytest.raises(InvalidInput, match="not the aggregator"):
        rounds.merge(as_node(repos, repo, others[0]), others[0], "main", memory=memory)
    merged = rounds.merge(as_node(repos, repo, aggregator), aggregator, "main", memory=memory)

    assert repo.head("main") == merged.id and merged.kind == "round" and merged.author == aggregator.public_key
    assert merged.parents == (start, *sorted(c.commit for c in current.pending))
    assert merged.meta["round"] == 1 and merged.meta["strategy"] == {"name": "mean", "params": {}}
    assert [entry[1:3] for entry in merged.meta["contributions"]] == \
        [[c.examples, 0] for c in current.pending]
    assert sum(entry[3] for entry in merged.meta["contributions"]) == 1 << 16
    # examples-weighted mean of the shifts 0.1, 0.2, 0.3 with 100, 200, 300 examples
    expected = shift(repo.materialize(start), (0.1 * 100 + 0.2 * 200 + 0.3 * 300) / 600)
    for name, tensor in repo.materialize(merged.id).items():
        assert torch.allclose(tensor, expected[name], atol=1e-5)
    for other in others:
        assert rounds.verify(as_node(repos, repo, other), merged, memory=memory).number == 0
    after = rounds.view(repo, "main", memory=memory)
    assert (after.number, after.head, after.pending) == (1, merged.id, ())  # merged ones are not pending again


def test_a_round_waits_for_k_contributions_or_the_deadline():
    memory = rounds.RoundMemory()
    repos, repo = team(RoundPolicy(buffer=3, deadline_s=30))
    member = MEMBERS[0]
    as_node(repos, repo, member).contribute(member, shift(tiny_state(0), 1.0), examples=10)
    current = rounds.view(repo, "main", memory=memory)
    assert not current.ready(current.opened_ms + 29_999)
    assert current.ready(current.opened_ms + 30_000)
    aggregator = by_key(current.aggregator(current.opened_ms))
    with pytest.raises(InvalidInput, match="not ready"):
        rounds.merge(as_node(repos, repo, aggregator), aggregator, "main", memory=memory)


def test_a_stale_contribution_weighs_less_and_a_too_stale_one_waits_no_more():
    memory = rounds.RoundMemory()
    repos, repo = team(RoundPolicy(buffer=1, alpha="1", max_staleness=1))
    first_base = repo.head("main")
    early, late = MEMBERS[0], MEMBERS[1]
    as_node(repos, repo, early).contribute(early, shift(tiny_state(0), 1.0), examples=100)
    node = as_node(repos, repo, late)
    node.contribute(late, shift(tiny_state(0), 2.0), examples=100)  # both on the first head
    current = rounds.view(repo, "main", memory=memory)
    # round 1 merges only the late member's (as if the early one's had not arrived yet)
    state, meta = round_merges.derive(repo, current, [c for c in current.pending if c.author == late.public_key],
                                memory=memory)
    aggregator = by_key(current.aggregator(current.opened_ms + 1))
    one = as_node(repos, repo, aggregator).write_round(aggregator, state, branch="main",
                                                       parents=(current.head, *round_merges.meta_parents(meta)),
                                                       meta=meta, message="round 1")
    rounds.verify(repo, one, memory=memory)
    second = rounds.view(repo, "main", memory=memory)
    (pending,) = second.pending
    assert (pending.author, pending.base, pending.staleness) == (early.public_key, first_base, 1)
    fresh = MEMBERS[2]
    as_node(repos, repo, fresh).contribute(fresh, shift(repo.materialize(one.id), 0.5), examples=100)
    weights = {entry[0]: (entry[2], entry[3]) for entry in round_merges.derive(
        repo, rounds.view(repo, "main", memory=memory), rounds.view(repo, "main", memory=memory).pending,
        memory=memory)[1]["contributions"]}
    assert sorted(weights.values()) == [(0, 43691), (1, 21845)]  # 100 x 1 against 100 x 1/2, out of 2^16

    aggregator = by_key(second.aggregator(second.opened_ms + 1))
    two = rounds.merge(as_node(repos, repo, aggregator), aggregator, "main", memory=memory)
    rounds.verify(repo, two, memory=memory)
    # and the round, half stale, steps (100 x 1/2 + 100 x 1) / 200 = 3/4 of the way: the head moves by
    # (100 x 1/2 x 1.0 + 100 x 1 x 0.5) / 200 = 0.5, not by the 2/3 : 1/3 mean of the changes (0.667)
    assert two.meta["step"] == 3 << 14
    moved = {k: repo.materialize(two.id)[k] - repo.materialize(one.id)[k] for k in tiny_state(0)}
    assert all(torch.allclose(d, torch.full_like(d, 0.5), atol=1e-6) for d in moved.values() if d.is_floating_point())
    as_node(repos, repo, late).contribute(late, shift(tiny_state(0), 3.0), examples=5, base=first_base)
    # two merges behind: past max_staleness
    assert [c.author for c in rounds.view(repo, "main", memory=memory).pending] == []


def test_forged_or_unentitled_merges_are_refused_by_every_member():
    memory = rounds.RoundMemory()
    repos, repo, current, state, meta = two_contributions()
    aggregator = by_key(current.aggregator(current.opened_ms + 1))
    bad = write_round(repos, repo, aggregator, shift(state, 0.001), current, meta, "valid signature, wrong bytes")
    for member in [OWNER, *MEMBERS]:
        with pytest.raises(IntegrityError, match="not what its inputs merge to"):
            rounds.verify(as_node(repos, repo, member), bad, memory=memory)

    repos, repo, current, state, meta = two_contributions()
    intruder = next(i for i in [OWNER, *MEMBERS] if i.public_key != current.aggregator(current.opened_ms + 1))
    unentitled = write_round(repos, repo, intruder, state, current, meta, "not my turn")
    with pytest.raises(IntegrityError, match="entitled"):
        rounds.verify(repo, unentitled, memory=memory)


def test_recorded_weights_must_follow_the_policy():
    memory = rounds.RoundMemory()
    repos, repo, current, state, meta = two_contributions(examples=(10, 20))
    meta["contributions"] = [[c, e, s, w] for (c, e, s, _), w in zip(meta["contributions"], (32768, 32768),
                                                                      strict=True)]
    skewed = write_round(repos, repo, by_key(current.aggregator(current.opened_ms + 1)), state, current, meta,
                         "equal weights")
    with pytest.raises(IntegrityError, match="weights"):
        rounds.verify(repo, skewed, memory=memory)


def test_a_robust_strategy_keeps_a_byzantine_contribution_out():
    memory = rounds.RoundMemory()
    repos, repo = team(RoundPolicy(strategy="median", buffer=3))
    honest = tiny_state(0)
    for member, delta in zip(MEMBERS, (0.10, 0.12, 100.0), strict=True):  # the third scaled x1000
        as_node(repos, repo, member).contribute(member, shift(honest, delta), examples=100)
    current = rounds.view(repo, "main", memory=memory)
    aggregator = by_key(current.aggregator(current.opened_ms + 1))
    merged = rounds.merge(as_node(repos, repo, aggregator), aggregator, "main", memory=memory)
    for name, tensor in repo.materialize(merged.id).items():
        assert torch.allclose(tensor, honest[name] + 0.12, atol=1e-5)  # the median of 0.10, 0.12, 100
    rounds.verify(repo, merged, memory=memory)


def test_readers_cannot_contribute_and_contributions_name_their_branch():
    repos, repo = team()
    with pytest.raises(Forbidden):
        as_node(repos, repo, READER).contribute(READER, tiny_state(1), examples=1)
    with pytest.raises(InvalidInput):
        as_node(repos, repo, MEMBERS[0]).contribute(MEMBERS[0], tiny_state(1), examples=-1)
    commit = as_node(repos, repo, MEMBERS[0]).contribute(MEMBERS[0], tiny_state(1), examples=7)
    assert (commit.kind, commit.meta) == ("contribution", {"examples": 7, "branch": "main",  # and where its NFT goes
                                                           "wallet": wallet(MEMBERS[0], repo.id).public_key})
    assert repo.branches()[f"contrib/main/{MEMBERS[0].public_key[:16]}"] == commit.id


def test_the_aggregator_role_goes_round_every_eligible_member():
    memory = rounds.RoundMemory()
    repos, repo = team(RoundPolicy(buffer=1))
    authors = []
    for i in range(8):
        member = MEMBERS[i % len(MEMBERS)]
        as_node(repos, repo, member).contribute(member, shift(repo.materialize(repo.head("main")), 0.01),
                                                examples=10)
        current = rounds.view(repo, "main", memory=memory)
        aggregator = by_key(current.aggregator(current.opened_ms + 1))
        authors.append(rounds.merge(as_node(repos, repo, aggregator), aggregator, "main", memory=memory).author)
    eligible = {OWNER.public_key, *(m.public_key for m in MEMBERS)}
    assert set(authors[:4]) == eligible and set(authors[4:]) == eligible  # four turns each time round


def test_a_merge_whose_window_ends_while_it_is_derived_is_not_written(monkeypatch):
    memory = rounds.RoundMemory()
    repos, repo, current, _, _ = two_contributions()
    first = by_key(current.ranked[0])
    node = as_node(repos, repo, first)
    heads = dict(node.branches())
    late = current.opened_ms + (current.policy.deadline_s + current.policy.timeout_s) * 1000  # the next one's turn
    monkeypatch.setattr("flair_node.storage.clock.now_ms", lambda: late)
    with pytest.raises(InvalidInput, match="ended while it merged"):
        rounds.merge(node, first, "main", at_ms=current.opened_ms + 1, memory=memory)  # entitled when it started
    assert node.branches() == heads  # nothing moved, nothing to gossip


@pytest.mark.parametrize("strategy", ["mean", "median", "trimmed_mean"])
def test_a_round_reads_its_inputs_a_range_at_a_time_and_merges_what_whole_tensors_give(strategy, monkeypatch):
    from flair_node.protocol.strategies import build_strategy
    from flair_node.tensors import fixedpoint
    from flair_node.tensors.safetensors_io import LazyState, Ranges

    g = torch.Generator().manual_seed(5)
    start = {"embed": torch.randn(300_000, generator=g), "h": torch.randn(70_000, generator=g).to(torch.bfloat16),
             "steps": torch.tensor([7])}  # 1.2 MB, 140 kB and a counter: three 512 KiB ranges, one, one

    def trained(by):
        return {"embed": start["embed"] + by * torch.randn(300_000, generator=g),
                "h": (start["h"].float() + by).to(torch.bfloat16), "steps": start["steps"] + 1}

    memory = rounds.RoundMemory()
    repos = RepoSet.in_memory(OWNER)
    repo = repos.create("big", start)
    for member in MEMBERS:
        repo.invite(OWNER, member.public_key, "maintainer")
    repo.set_policy(OWNER, RoundPolicy(strategy=strategy, buffer=2, alpha="1", max_staleness=1))
    early, late, fresh = MEMBERS
    as_node(repos, repo, early).contribute(early, trained(0.1), examples=100)
    as_node(repos, repo, late).contribute(late, trained(0.2), examples=300)
    first = rounds.view(repo, "main", memory=memory)
    state, meta = round_merges.derive(repo, first, [c for c in first.pending if c.author == late.public_key],
                                memory=memory)
    one = write_round(repos, repo, by_key(first.aggregator(first.opened_ms + 1)), state, first, meta, "round 1")
    # round 2: early's contribution, based on the first head, is moved onto round 1's, beside a fresh one
    as_node(repos, repo, fresh).contribute(fresh, {k: v.clone() for k, v in repo.materialize(one.id).items()}
                                           | {"embed": repo.materialize(one.id)["embed"] - 0.05}, examples=200)
    second = rounds.view(repo, "main", memory=memory)
    assert sorted(c.staleness for c in second.pending) == [0, 1]
    head, whole = repo.materialize(one.id), 1 << fixedpoint.WEIGHT_BITS
    moved = [fixedpoint.combine(repo.materialize(c.base), [head, repo.materialize(c.commit)], [whole, whole])
             for c in second.pending]

    def whole_tensor(*args, **kwargs):
        raise AssertionError("a round read a tensor whole")

    monkeypatch.setattr(LazyState, "__getitem__", whole_tensor)
    monkeypatch.setattr(Ranges, "tensor", whole_tensor)
    aggregator = by_key(second.aggregator(second.opened_ms + 1))
    two = rounds.merge(as_node(repos, repo, aggregator), aggregator, "main", memory=memory)
    rounds.verify(as_node(repos, repo, fresh), two, memory=rounds.RoundMemory())
    monkeypatch.undo()
    weights = [entry[3] for entry in two.meta["contributions"]]
    result = build_strategy(strategy).aggregate(head, moved, weights)
    expected = fixedpoint.combine(head, [result], [two.meta["step"]])
    got = repo.materialize(two.id)
    assert two.meta["step"] < whole and all(fixedpoint.same_bits(got[k], expected[k]) for k in expected)
