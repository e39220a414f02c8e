"""The pure round rules (``core.round_rules``): ranking, windows, staleness weights, the policy record."""

from __future__ import annotations

from collections import Counter

import pytest

from flair_node.core.cid import RAW, cid_for
from flair_node.core.errors import IntegrityError, InvalidInput
from flair_node.core.identity import Identity
from flair_node.core.ids import sha256_hex
from flair_node.core.round_rules import RoundPolicy, discount, entitled, ranking, step_weight, weight_counts, window

KEYS = [Identity.generate().public_key for _ in range(5)]


def test_every_member_ranks_alike_whatever_order_it_lists_the_members_in():
    previous = sha256_hex(b"merged commit 7")
    assert ranking(KEYS, previous) == ranking(list(reversed(KEYS)), previous) == ranking(KEYS + KEYS[:2], previous)
    assert sorted(ranking(KEYS, previous)) == sorted(KEYS)


def test_the_first_ranked_aggregator_rotates_round_by_round():
    firsts = Counter(ranking(KEYS, sha256_hex(b"merge %d" % i))[0] for i in range(500))
    assert set(firsts) == set(KEYS)
    assert min(firsts.values()) > 500 / 5 / 2  # roughly uniform: each first about 100 times in 500 rounds


def test_a_member_leaving_moves_only_its_own_slot():
    previous = sha256_hex(b"merge")
    before = ranking(KEYS, previous)
    leaving = before[1]
    assert ranking([k for k in KEYS if k != leaving], previous) == [k for k in before if k != leaving]


def test_windows_follow_each_other_and_name_one_aggregator_at_a_time():
    policy = RoundPolicy(deadline_s=30, timeout_s=10)
    opened = 1_000_000
    assert window(0, opened, policy) == (opened, opened + 40_000)
    assert window(1, opened, policy) == (opened + 40_000, opened + 50_000)
    assert window(2, opened, policy) == (opened + 50_000, opened + 60_000)
    ranked = ranking(KEYS, sha256_hex(b"x"))
    assert entitled(ranked, opened, opened - 1, policy) is None
    assert entitled(ranked, opened, opened, policy) == ranked[0]
    assert entitled(ranked, opened, opened + 39_999, policy) == ranked[0]
    assert entitled(ranked, opened, opened + 40_000, policy) == ranked[1]
    assert entitled(ranked, opened, opened + 50_000, policy) == ranked[2]
    assert entitled(ranked, opened, opened + 40_000 + 4 * 10_000, policy) == ranked[0]  # every window passed:
    assert entitled(ranked, opened, opened + 40_000 + 5 * 10_000, policy) == ranked[1]  # the turns come round again
    assert entitled([], opened, opened, policy) is None
    with pytest.raises(InvalidInput):
        window(-1, opened, policy)


def test_staleness_discounts_examples_and_past_the_limit_refuses():
    policy = RoundPolicy(alpha="0.5", max_staleness=3)
    assert discount(0, "0.5") == 1
    assert discount(3, "0.5") == pytest.approx(0.5)
    assert discount(3, "0") == 1
    counts = weight_counts([(100, 0), (100, 1), (50, 3)], policy)
    assert counts == [100_000_000_000, 70_710_678_118, 25_000_000_000]
    with pytest.raises(InvalidInput, match="staler"):
        weight_counts([(100, 4)], policy)
    with pytest.raises(InvalidInput):
        weight_counts([(-1, 0)], policy)


def test_the_policy_travels_as_a_plain_map_and_refuses_anything_else():
    policy = RoundPolicy(strategy="trimmed_mean", strategy_params={"fraction": "0.2"}, buffer=4,
                         deadline_s=20, alpha="1", max_staleness=2, timeout_s=15)
    assert RoundPolicy.from_dict(policy.as_dict()) == policy
    assert RoundPolicy.from_dict(RoundPolicy().as_dict()) == RoundPolicy()
    with pytest.raises(IntegrityError):
        RoundPolicy.from_dict({**policy.as_dict(), "extra": 1})
    with pytest.raises(IntegrityError):
        RoundPolicy.from_dict({**policy.as_dict(), "buffer": 0})
    for bad in ({"buffer": 0}, {"deadline_s": 1.5}, {"alpha": "-1"}, {"alpha": 0.5}, {"alpha": "nan"},
                {"alpha": "one"}, {"strategy": ""}, {"timeout_s": True}, {"strategy_params": {"x": [1]}},
                {"strategy_params": {"x": 0.2}}, {"max_staleness": 1001}):
        with pytest.raises(InvalidInput):
            RoundPolicy(**bad)


def test_who_merged_longest_ago_ranks_first_so_every_member_takes_a_turn():
    previous = sha256_hex(b"merge 9")
    plain = ranking(KEYS, previous)
    assert ranking(KEYS, previous, {}) == plain
    turns = {plain[0]: 9, plain[1]: 7}  # the two first by hash merged rounds 9 and 7
    ranked = ranking(KEYS, previous, turns)
    assert ranked[:3] == [k for k in plain if k not in turns]  # who never merged, in hash order
    assert ranked[3:] == [plain[1], plain[0]]  # then round 7's aggregator, then round 9's


def test_a_stale_round_takes_a_shorter_step():
    policy = RoundPolicy(alpha="1")
    whole = 1 << 16
    assert step_weight([(100, 0), (300, 0)], policy, whole) == whole  # all fresh: the whole way
    assert step_weight([(100, 1), (100, 0)], policy, whole) == 3 << 14  # (100/2 + 100) / 200
    assert step_weight([(100, 3), (300, 3)], policy, whole) == whole // 4  # all 3 behind: a quarter
    assert step_weight([(0, 1), (0, 0)], policy, whole) == 3 << 14  # no examples counted: the discounts' mean
    assert step_weight([(100, 5)], RoundPolicy(alpha="0"), whole) == whole  # alpha 0: staleness costs nothing
    with pytest.raises(InvalidInput):
        step_weight([], policy, whole)


def test_proof_fields_are_checked_and_left_out_of_records_while_unset():
    srs = cid_for(RAW, b"an srs")
    policy = RoundPolicy(proof_chunk=64, proof_scheme="kzg", proof_srs=srs)
    assert RoundPolicy.from_dict(policy.record()) == policy and policy.record()["proof_srs"] == srs
    assert not {"proof_chunk", "proof_scheme", "proof_srs"} & RoundPolicy().record().keys()
    assert RoundPolicy.from_dict(RoundPolicy().record()) == RoundPolicy()
    for bad in ("ABC", srs.upper(), srs[:-1], sha256_hex(b"an srs")):
        with pytest.raises(InvalidInput, match="proof_srs"):
            RoundPolicy(proof_chunk=64, proof_scheme="kzg", proof_srs=bad)
