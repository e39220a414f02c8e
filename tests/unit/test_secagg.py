"""Secure aggregation's key material and masks (``core.secagg``, ``tensors.masking``): masks cancel exactly in the
int64 ring, a masked update says nothing of the update, a dropped contributor's pair masks are removed with the
shares of its ephemeral secret, and a wrong share is caught."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flair_node.core import secagg
from flair_node.core.errors import IntegrityError, InvalidInput
from flair_node.tensors import masking

CONTEXT = b"repo 7f3a / main / round 4"
INT64 = st.integers(-(2**63), 2**63 - 1)


class Contributor:
    """One contributor of a round, as the protocol has it: an ephemeral key pair, a self seed, its shares."""

    def __init__(self) -> None:
        self.secret, self.public = secagg.ephemeral_keypair()
        self.self_seed = os.urandom(32)

    def masked(self, values: np.ndarray, links: dict[bytes, frozenset[bytes]]) -> np.ndarray:
        seeds = secagg.pair_seeds(self.secret, self.public, links, CONTEXT)
        return masking.mask(values, self.self_seed, self.public, seeds)


def ring(n: int) -> tuple[list[Contributor], dict[bytes, frozenset[bytes]]]:
    people = [Contributor() for _ in range(n)]
    return people, secagg.neighbours([p.public for p in people], seed=b"head 91c2")


def plain_sum(vectors: list[np.ndarray]) -> np.ndarray:
    return np.array([sum(int(v[i]) for v in vectors) for i in range(vectors[0].size)], dtype=np.int64)


def test_two_contributors_agree_on_their_pair_seed_and_no_other_round_does():
    a, b = Contributor(), Contributor()
    seed = secagg.pair_seed(a.secret, a.public, b.public, CONTEXT)
    assert seed == secagg.pair_seed(b.secret, b.public, a.public, CONTEXT)
    assert seed != secagg.pair_seed(a.secret, a.public, b.public, CONTEXT + b"5")
    assert secagg.sign_of(a.public, b.public) == -secagg.sign_of(b.public, a.public)
    assert secagg.public_of(a.secret) == a.public


def test_a_low_order_or_malformed_key_is_refused():
    a = Contributor()
    with pytest.raises(InvalidInput, match="not a usable X25519"):
        secagg.pair_seed(a.secret, a.public, bytes(32), CONTEXT)
    with pytest.raises(InvalidInput, match="32 bytes"):
        secagg.pair_seed(a.secret, a.public, b"short", CONTEXT)
    with pytest.raises(InvalidInput, match="itself"):
        secagg.pair_seed(a.secret, a.public, a.public, CONTEXT)


@pytest.mark.parametrize("n", [2, 3, 8, 9, 12, 40])
def test_the_neighbour_graph_is_symmetric_and_logarithmic(n):
    keys = [os.urandom(32) for _ in range(n)]
    links = secagg.neighbours(keys, seed=b"head")
    assert set(links) == set(keys)
    for key, linked in links.items():
        assert key not in linked and linked
        assert all(key in links[other] for other in linked)
    degree = secagg.degree_for(n)
    assert all(len(linked) == degree for linked in links.values())
    assert degree == n - 1 if n <= 8 else degree <= 2 * (n - 1).bit_length()
    assert links == secagg.neighbours(list(reversed(keys)), seed=b"head")  # the order given does not matter
    with pytest.raises(InvalidInput, match="own key"):
        secagg.neighbours([*keys, keys[0]], seed=b"head")


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 12), st.lists(INT64, min_size=1, max_size=40), st.integers(0, 2**32))
def test_masks_cancel_exactly_in_the_ring(n, base, salt):
    people, links = ring(n)
    rng = np.random.default_rng(salt)
    # updates near the int64 bounds whose true sum still fits: each term wraps when masked, the sum must not care
    values = [np.array(base, dtype=np.int64) // (n + 1) + rng.integers(-5, 5, len(base)) for _ in people]
    masked = [p.masked(v, links) for p, v in zip(people, values, strict=True)]
    total = masking.unmask(masking.ring_sum(masked), [p.self_seed for p in people])
    assert np.array_equal(total, plain_sum(values))


def test_a_masked_update_is_uncorrelated_with_the_update():
    people, links = ring(5)
    update = (np.random.default_rng(1).standard_normal(100_000) * 2**20).astype(np.int64)
    masked = people[0].masked(update, links)
    assert abs(np.corrcoef(update.astype(np.float64), masked.astype(np.float64))[0, 1]) < 0.01
    # and what any other member could strip (its own pair mask with this one) leaves it masked still
    seed = secagg.pair_seed(people[1].secret, people[1].public, people[0].public, CONTEXT)
    partly = masked.copy()
    masking._add(partly, masking.prg(seed, update.size), secagg.sign_of(people[0].public, people[1].public))
    assert abs(np.corrcoef(update.astype(np.float64), partly.astype(np.float64))[0, 1]) < 0.01


@pytest.mark.parametrize("n", [6, 12])
def test_a_contributor_who_drops_after_masking_is_recovered_from_shares_of_its_ephemeral_secret(n):
    people, links = ring(n)
    threshold = max(2, len(links[people[0].public]) // 2 + 1)
    values = [np.arange(1_000, dtype=np.int64) * (i + 1) - 500 for i in range(n)]
    masked = {p.public: p.masked(v, links) for p, v in zip(people, values, strict=True)}
    dropped = people[2]
    # before masking, the dropped one shared its ephemeral secret with its neighbours (sealed to each)
    holders = sorted(links[dropped.public])
    shares = dict(zip(holders, secagg.split(dropped.secret, threshold, len(holders)), strict=True))
    committed = secagg.commitment(dropped.secret)
    survivors = [p for p in people if p is not dropped]
    arrived = masking.ring_sum(masked[p.public] for p in survivors)
    recovered = secagg.recover([shares[h] for h in holders[:threshold]], threshold, committed)
    assert recovered == dropped.secret
    seeds = {s: secagg.pair_seed(recovered, dropped.public, s, CONTEXT) for s in holders}
    correction = masking.pair_correction(dropped.public, seeds, arrived.size)
    total = masking.unmask(arrived, [p.self_seed for p in survivors], [correction])
    assert np.array_equal(total, plain_sum([v for p, v in zip(people, values, strict=True) if p is not dropped]))


def test_shamir_any_threshold_of_shares_recovers_and_fewer_or_a_wrong_one_do_not():
    secret = os.urandom(32)
    committed = secagg.commitment(secret)
    shares = secagg.split(secret, 3, 5)
    assert {s.x for s in shares} == {1, 2, 3, 4, 5}
    assert secagg.recover(shares[2:], 3, committed) == secret
    assert secagg.recover([shares[4], shares[0], shares[2]], 3, committed) == secret
    with pytest.raises(InvalidInput, match="2 distinct shares"):
        secagg.recover([shares[0], shares[1], shares[1]], 3, committed)
    lying = secagg.Share(shares[1].x, bytes(b ^ 1 for b in shares[1].y))
    with pytest.raises(IntegrityError, match="committed"):
        secagg.recover([shares[0], lying, shares[2]], 3, committed)
    assert secagg.recover(secagg.split(secret, 1, 3)[1:2], 1, committed) == secret
    for threshold, holders in ((0, 3), (4, 3), (2, 256)):
        with pytest.raises(InvalidInput, match="threshold"):
            secagg.split(secret, threshold, holders)


def test_masks_are_bounded_and_typed():
    with pytest.raises(InvalidInput, match="32 bytes"):
        masking.prg(b"x", 4)
    with pytest.raises(InvalidInput, match="values"):
        masking.prg(bytes(32), -1)
    with pytest.raises(InvalidInput, match="int64"):
        masking.mask(np.zeros(3, dtype=np.float32), bytes(32), bytes(32), {})
    with pytest.raises(InvalidInput, match="cannot be summed"):
        masking.ring_sum([np.zeros(3, dtype=np.int64), np.zeros(4, dtype=np.int64)])
    assert np.array_equal(masking.prg(bytes(32), 8), masking.prg(bytes(32), 8))
