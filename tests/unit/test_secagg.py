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


# -- the round's ring: r bits a value, packed ------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 7, 8, 17, 33, 37, 63, 64])
@pytest.mark.parametrize("count", [0, 1, 63, 64, 65, 1000])
def test_values_packed_to_the_ring_take_r_bits_each_and_unpack_to_themselves_cut_to_r_bits(bits, count):
    values = np.random.default_rng(bits * 1000 + count).integers(-(2**63), 2**63 - 1, count, dtype=np.int64)
    packed = masking.to_ring(values, bits)
    assert len(packed) == masking.packed_size(count, bits) == (count * bits + 7) // 8
    cut = values.view(np.uint64) & np.uint64((1 << bits) - 1) if bits < 64 else values.view(np.uint64)
    assert np.array_equal(masking.from_packed(packed, bits, count), cut)


@settings(max_examples=25, deadline=None)
@given(st.integers(3, 8), st.integers(1, 130), st.integers(0, 40), st.integers(0, 2**32))
def test_masks_cut_to_a_ring_that_holds_the_sum_cancel_there_exactly(n, count, bits, salt):
    """Each term below ``2^bits`` in magnitude: the sum of ``n`` fits ``bits + log2(n) + 1`` bits, and the masked
    terms packed to that ring, summed and freed of the self masks, give it back exactly, sign included."""
    people, links = ring(n)
    ring_bits = bits + n.bit_length() + 1
    rng = np.random.default_rng(salt)
    values = [rng.integers(-(2**bits) + 1, 2**bits, count, dtype=np.int64) for _ in people]
    published = [masking.to_ring(p.masked(v, links), ring_bits) for p, v in zip(people, values, strict=True)]
    total = masking.ring_total(published, ring_bits, count)
    plain = masking.from_ring(total, ring_bits, [masking.prg(p.self_seed, count) for p in people])
    assert np.array_equal(plain, plain_sum(values))


def test_the_ring_refuses_what_does_not_fit_it():
    with pytest.raises(InvalidInput, match="1 to 64 bits"):
        masking.to_ring(np.zeros(3, dtype=np.int64), 0)
    with pytest.raises(InvalidInput, match="1 to 64 bits"):
        masking.from_packed(b"", 65, 0)
    with pytest.raises(InvalidInput, match="pack into 14 bytes, not 15"):
        masking.ring_total([bytes(15)], 37, 3)
    with pytest.raises(InvalidInput, match="do not fit"):
        masking.ring_bits(63, 16)
    assert masking.ring_bits(20, 16) == 37 and masking.ring_bits(62, 32) == 64


# -- the merge arithmetic, cut around the masks (tensors.secure_sum) ----------------------------------------


def states(count: int, seed: int) -> tuple[dict, list[dict]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    base = {"w": torch.randn(64, 16, generator=g), "b": torch.randn(16, generator=g).half(),
            "steps": torch.tensor([7, -3], dtype=torch.int32), "same": torch.full((4,), 1e-9)}
    inputs = [{"w": base["w"] + torch.randn(64, 16, generator=g) * 0.1, "b": (base["b"] + 0.5 * i).half(),
               "steps": base["steps"] + i, "same": base["same"].clone()} for i in range(count)]
    return base, inputs


def test_a_secure_merge_of_every_contribution_is_the_plain_merge_bit_for_bit():
    from flair_node.tensors import secure_sum
    from flair_node.tensors.fixedpoint import combine, normalize_weights, same_bits

    base, inputs = states(5, 0)
    weights = normalize_weights([120, 40, 300, 7, 55])
    people, links = ring(5)
    masked = [p.masked(secure_sum.term(base, x, w), links) for p, x, w in zip(people, inputs, weights, strict=True)]
    total = masking.unmask(masking.ring_sum(masked), [p.self_seed for p in people])
    merged = secure_sum.merge_sum(base, total, sum(weights))
    plain = combine(base, inputs, weights, shortcuts=False)
    assert all(same_bits(merged[name], plain[name]) for name in base)
    assert merged["same"] is base["same"]  # no change to sum: the base's bits, 1e-9 included


def test_a_secure_merge_after_a_dropout_is_the_survivors_exact_weighted_mean():
    from flair_node.tensors import secure_sum
    from flair_node.tensors.fixedpoint import normalize_weights, same_bits

    base, inputs = states(6, 1)
    weights = normalize_weights([10, 20, 30, 40, 50, 60])
    people, links = ring(6)
    terms = [secure_sum.term(base, x, w) for x, w in zip(inputs, weights, strict=True)]
    masked = [p.masked(t, links) for p, t in zip(people, terms, strict=True)]
    gone = 4
    holders = sorted(links[people[gone].public])
    shares = dict(zip(holders, secagg.split(people[gone].secret, 3, len(holders)), strict=True))
    secret = secagg.recover([shares[h] for h in holders[:3]], 3, secagg.commitment(people[gone].secret))
    seeds = {h: secagg.pair_seed(secret, people[gone].public, h, CONTEXT) for h in holders}
    kept = [i for i in range(6) if i != gone]
    total = masking.unmask(masking.ring_sum(masked[i] for i in kept), [people[i].self_seed for i in kept],
                           [masking.pair_correction(people[gone].public, seeds, terms[0].size)])
    survivors = sum(weights[i] for i in kept)
    merged = secure_sum.merge_sum(base, total, survivors)
    reference = secure_sum.merge_sum(base, masking.ring_sum(terms[i] for i in kept), survivors)
    assert all(same_bits(merged[name], reference[name]) for name in base)
    # and it is the survivors' weighted mean: within float32's rounding of it plus the fixed point's
    expected = base["w"].double() + sum(weights[i] * (inputs[i]["w"].double() - base["w"].double())
                                        for i in kept) / survivors
    assert bool(((merged["w"].double() - expected).abs() <= expected.abs() * 2**-23 + 2**-23).all())


def test_what_a_sum_cannot_merge_is_refused():
    import torch

    from flair_node.core.errors import MergeError
    from flair_node.tensors import secure_sum

    base = {"mask": torch.tensor([True, False])}
    with pytest.raises(MergeError, match="bool"):
        secure_sum.term(base, {"mask": torch.tensor([False, False])}, 1)
    base, inputs = states(1, 2)
    with pytest.raises(InvalidInput, match="weight"):
        secure_sum.term(base, inputs[0], 1 << 17)
    with pytest.raises(MergeError, match="too large"):
        secure_sum.term(base, {**inputs[0], "w": inputs[0]["w"] * 1e9}, 1)
    with pytest.raises(InvalidInput, match="int64 values"):
        secure_sum.merge_sum(base, np.zeros(3, dtype=np.int64), 1)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4096 + 3])
def test_a_seed_expands_to_its_aes_256_ctr_keystream_as_an_independent_implementation_computes_it(size):
    """Every member must expand a seed to the same bytes, whatever library computes it: OpenSSL's (through
    ``cryptography``) against pycryptodome's, with the counter block Flair names (nonce, then a 64-bit counter)."""
    from Crypto.Cipher import AES

    seed = bytes(range(32))
    reference = AES.new(seed, AES.MODE_CTR, nonce=b"flairmsk").encrypt(bytes(size))
    assert bytes(secagg.expand(seed, size)) == reference
    assert secagg.expand(seed, size) == secagg.expand(seed, size + 9)[:size]  # a prefix of any longer stream
