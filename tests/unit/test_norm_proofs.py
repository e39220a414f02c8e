"""Real EZKL norm proofs (chunks of 64, KZG with a development SRS): a vector within the bound proves and checks,
whole or sampled, without revealing its sum of squares; one above it has no proof; KZG commitments add as the
check needs them to."""

from __future__ import annotations

import json

import pytest
import torch

from flair_node.core.errors import IntegrityError, InvalidInput
from flair_node.protocol.proofs import ezkl_backend, norms, points, weighted_sum
from flair_node.protocol.proofs.ezkl_backend import Shape

pytestmark = pytest.mark.slow
SIZE = 64
BOUND = norms.squared_bound(1.0)


def vector(norm: float, values: int = 40 * SIZE, seed: int = 0) -> torch.Tensor:
    """``values`` fixed-point values (24 fraction bits) of L2 norm ``norm``: 40 chunks, so 3 groups."""
    x = torch.randn(values, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (x / x.norm() * norm * (1 << norms.FRACTION_BITS)).round().to(torch.int64)


def norm_circuits(tmp_path_factory):
    """The circuits proving norms of at most 1 in chunks of 64, with a development SRS (a module's fixture)."""
    folder = tmp_path_factory.mktemp("norms")
    srs = ezkl_backend.development_srs(folder, Shape(1, SIZE).logrows)
    return norms.build(folder / "circuits", SIZE, srs, BOUND)


circuits = pytest.fixture(scope="module")(norm_circuits)


@pytest.fixture(scope="module")
def proven(circuits):
    values = vector(0.9)
    published = weighted_sum.commitments(values, SIZE, circuits.squares)
    return values, published, norms.prove(circuits, values, BOUND)


def test_a_vector_within_the_bound_proves_and_checks_group_by_group(circuits, proven):
    values, published, bundle = proven
    assert norms.group_count(len(published)) == 3 and len(bundle["pairs"]) == 3
    norms.check(circuits, bundle, published, BOUND, [0, 1, 2])
    # what travels is commitments and proofs: no sum of squares, total or per group, appears in the bundle
    text = json.dumps(bundle)
    sums = [int((values[g * 1024:(g + 1) * 1024] ** 2).sum()) for g in range(3)]
    for secret in [sum(sums), *sums]:
        assert str(secret) not in text and ezkl_backend.felt(secret) not in text
    # the bundle survives the trip through bytes a peer sends
    norms.check(circuits, norms.decode(json.dumps(bundle).encode()), published, BOUND, [0, 1, 2])


def test_a_sampled_bundle_proves_only_the_groups_asked_for(circuits):
    values = vector(0.5, seed=1)
    published = weighted_sum.commitments(values, SIZE, circuits.squares)
    bundle = norms.prove(circuits, values, BOUND, [1])
    assert set(bundle["proofs"]) == {"1"}
    norms.check(circuits, bundle, published, BOUND, [1])
    with pytest.raises(IntegrityError, match="a proof for each of groups"):
        norms.check(circuits, bundle, published, BOUND, [0, 1])


def test_a_vector_above_the_bound_has_no_proof(circuits):
    with pytest.raises(InvalidInput, match="above the bound"):
        norms.prove(circuits, vector(1.01), BOUND)
    with pytest.raises(InvalidInput, match="bounds of 49 bits"):
        norms.prove(circuits, vector(0.1), BOUND >> 1)


def test_kzg_commitments_add_as_the_check_adds_them(circuits):
    commit = lambda values: ezkl_backend.commit(circuits.squares, values)  # noqa: E731
    columns = [[5, 7], [11, -3], [2**90, 1]]
    total = [sum(c[i] for c in columns) for i in range(2)]
    assert points.commitment_of_sum([commit(c) for c in columns], circuits.zero) == commit(total)
    assert points.commitment_of_sum([commit(columns[0])], circuits.zero) == commit(columns[0])


def test_points_off_the_curve_or_malformed_are_refused():
    with pytest.raises(IntegrityError, match="not a point"):
        points.point("01" * 64)
    for bad in ("zz" * 64, "00" * 63, 7):
        with pytest.raises(IntegrityError, match="64 bytes"):
            points.point(bad)
    assert points.point("00" * 64) is None and points.text(None) == "00" * 64


def test_which_groups_are_proven():
    assert norms.squared_bound(1.0) == 1 << 48
    assert norms.groups_to_prove("seed", 4) == [0, 1, 2, 3]  # 64 chunks: proven whole
    sample = norms.groups_to_prove("seed", 245)  # 1M values in chunks of 256
    assert len(sample) == 192 and sample == norms.groups_to_prove("seed", 245) != norms.groups_to_prove("other", 245)
    with pytest.raises(InvalidInput):
        norms.squared_bound(0)
