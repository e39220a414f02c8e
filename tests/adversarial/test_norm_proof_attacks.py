"""A prover that cheats on a norm proof (real EZKL proofs, chunks of 64): it runs the circuits itself with
whatever it likes as inputs, and hands the checker the bundle. Each lie is refused, and the one the sample can
miss (a lie about a group no one asked about) is caught whenever that group is asked about."""

from __future__ import annotations

import copy
import json
import secrets

import pytest
import torch

from flair_node.core.errors import IntegrityError
from flair_node.protocol.proofs import ezkl_backend, norms, weighted_sum
from tests.unit.test_norm_proofs import BOUND, SIZE, norm_circuits

pytestmark = pytest.mark.slow
ALL = [0, 1]
circuits = pytest.fixture(scope="module")(norm_circuits)


def vector(norm: float, seed: int = 0) -> torch.Tensor:
    """32 chunks of fixed-point values (2 groups) of L2 norm ``norm``, nearly all of it in group 1."""
    x = 1e-3 * torch.randn(32 * SIZE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[1024:2048] += 1.0
    return (x / x.norm() * norm * (1 << norms.FRACTION_BITS)).round().to(torch.int64)


def forge(circuits, values, *, claimed=None, totals=None, bits=None):
    """The bundle a cheating prover makes: ``claimed`` sums of squares per group in its pairs (the true ones
    by default), the ``totals`` and ``bits`` it feeds the bound circuit (those that fit its claims by default);
    each group's squares proof is the honest one, the only one its circuit can make."""
    groups = norms._groups(weighted_sum.chunks(values, SIZE))
    true = [sum(v * v for chunk in group for v in chunk) for group in groups]
    claimed = true if claimed is None else claimed
    salts = [secrets.randbits(norms.SALT_BITS) for _ in groups]
    pairs = [ezkl_backend.commit(circuits.squares, [s, r]) for s, r in zip(claimed, salts, strict=True)]
    totals = totals or [sum(claimed), sum(salts)]
    rest = BOUND - totals[0]
    bits = bits or [(rest >> k) & 1 for k in range(circuits.bound.shape.inputs)]
    final = ezkl_backend.prove_bound(circuits.bound, totals, bits, 12345)
    proofs = {str(g): json.loads(ezkl_backend.prove_squares(circuits.squares, salts[g], groups[g]))
              for g in range(len(groups))}
    return {"v": 1, "pairs": pairs, "bound": json.loads(final), "proofs": proofs}


def published(circuits, values):
    return weighted_sum.commitments(values, SIZE, circuits.squares)


def test_a_pair_that_hides_a_group_s_squares_is_caught_when_that_group_is_asked_for(circuits):
    values = vector(3.0)  # nine times the bound, all but a trace of it in group 1
    sums = [sum(v * v for v in values[g * 1024:(g + 1) * 1024].tolist()) for g in range(2)]
    bundle = forge(circuits, values, claimed=[sums[0], 0])
    with pytest.raises(IntegrityError, match="group 1 is about another pair"):
        norms.check(circuits, bundle, published(circuits, values), BOUND, ALL)
    # what a sample cannot do: a checker that asks only for group 0 never sees the lie
    del bundle["proofs"]["1"]
    norms.check(circuits, bundle, published(circuits, values), BOUND, [0])


def test_totals_other_than_the_pairs_are_caught(circuits):
    values = vector(3.0)
    bundle = forge(circuits, values, totals=[BOUND // 2, 99])
    with pytest.raises(IntegrityError, match="totals are not those of its pairs"):
        norms.check(circuits, bundle, published(circuits, values), BOUND, ALL)


def test_bits_that_are_not_bits_cannot_make_up_for_an_excess(circuits):
    values = vector(3.0)
    excess = sum(v * v for v in values.tolist())
    # a "bit" of BOUND − excess (a negative number) makes S + Σ b_k 2^k come out at exactly B²
    bits = [BOUND - excess] + [0] * (circuits.bound.shape.inputs - 1)
    bundle = forge(circuits, values, bits=bits)
    with pytest.raises(IntegrityError, match="within the bound"):
        norms.check(circuits, bundle, published(circuits, values), BOUND, ALL)


def test_a_bundle_for_another_vector_or_another_bound_is_refused(circuits):
    small, other = vector(0.5, seed=1), vector(0.5, seed=2)
    bundle = norms.prove(circuits, small, BOUND)
    with pytest.raises(IntegrityError, match="other chunks than were published"):
        norms.check(circuits, bundle, published(circuits, other), BOUND, ALL)
    with pytest.raises(IntegrityError, match="within the bound"):  # B² + 1: as many bits, another number
        norms.check(circuits, bundle, published(circuits, small), BOUND + 1, ALL)


def test_damaged_or_malformed_bundles_are_refused(circuits):
    values = vector(0.5, seed=3)
    bundle, mine = norms.prove(circuits, values, BOUND), published(circuits, values)
    damaged = copy.deepcopy(bundle)
    damaged["bound"]["proof"][200] ^= 1
    with pytest.raises(IntegrityError, match="does not verify"):
        norms.check(circuits, damaged, mine, BOUND, ALL)
    off_curve = copy.deepcopy(bundle)
    off_curve["pairs"][1] = "01" * 64
    with pytest.raises(IntegrityError, match="not a point"):
        norms.check(circuits, off_curve, mine, BOUND, ALL)
    for broken in ({**bundle, "pairs": bundle["pairs"][:1]}, {**bundle, "v": 2}, {**bundle, "proofs": []},
                   {**bundle, "bound": "a proof"}):
        with pytest.raises(IntegrityError):
            norms.check(circuits, broken, mine, BOUND, ALL)
    with pytest.raises(IntegrityError):
        norms.decode(b"[" * 100_000 + b"]" * 100_000)
