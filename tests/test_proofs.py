"""Real EZKL proofs of a round's weighted sum (K = 2 and 3 contributions, chunks of 64 values), bound to the
commitments each contributor published: a correct merge verifies; a tampered merged chunk, a swapped or
substituted contributor commitment, a changed weight and a damaged proof each fail."""

from __future__ import annotations

import json

import pytest
import torch

from flair_node.core.errors import IntegrityError, InvalidInput
from flair_node.core.identity import Identity
from flair_node.core.rounds import RoundPolicy
from flair_node.protocol import rounds
from flair_node.protocol.proofs import ezkl_backend, weighted_sum, worker
from flair_node.protocol.proofs.ezkl_backend import FIELD, ProofError, Shape, felt, felt_value
from flair_node.storage.repo import Repo
from flair_node.storage.repos import RepoSet
from flair_node.tensors.fixedpoint import normalize_weights

pytestmark = pytest.mark.slow
SIZE = 64


def state(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"layer.weight": scale * torch.randn(10, 9, generator=g), "layer.bias": scale * torch.randn(10, generator=g),
            "steps": torch.tensor([seed], dtype=torch.int64), "mask": torch.ones(3, dtype=torch.bool)}


@pytest.fixture(scope="module")
def circuits(tmp_path_factory):
    """Circuits for 2 and 3 contributions sharing one development SRS, built once for the module."""
    cache = tmp_path_factory.mktemp("circuits")
    shapes = [Shape(2, SIZE), Shape(3, SIZE)]
    srs = ezkl_backend.development_srs(cache / "srs", max(s.logrows for s in shapes))
    return {s.inputs: ezkl_backend.build(cache, s, srs) for s in shapes}


@pytest.fixture(scope="module")
def merge():
    """A head, three contributions trained from it, their deltas, commitments and merge weights."""
    head = state(0)
    contributions = [{k: v + 0.01 * state(i)[k] if v.is_floating_point() else v if v.dtype == torch.bool else v + i
                      for k, v in head.items()} for i in (1, 2, 3)]
    deltas = [weighted_sum.fixed_delta(c, head) for c in contributions]
    return {"deltas": deltas, "published": [weighted_sum.commitments(d, SIZE) for d in deltas],
            "weights": normalize_weights([100, 300, 50])}


def test_deltas_are_the_merge_fixed_point_and_chunks_pad_with_zeros(merge):
    (delta, *_), published = merge["deltas"], merge["published"][0]
    assert delta.dtype == torch.int64 and delta.numel() == 10 * 9 + 10 + 1  # the bool mask is not averaged
    cut = weighted_sum.chunks(delta, SIZE)
    assert len(cut) == 2 == len(published) and cut[1][101 - 64:] == [0] * (128 - 101)
    assert published[0] == ezkl_backend.poseidon(cut[0]) != published[1]
    assert weighted_sum.commitments(delta, SIZE) == published  # the same values, the same commitments
    assert weighted_sum.chunks(torch.zeros(0, dtype=torch.int64), 4) == [[0, 0, 0, 0]]
    with pytest.raises(InvalidInput):
        weighted_sum.fixed_delta(state(1), {"layer.weight": torch.zeros(10, 9)})


def test_field_elements_round_trip_signed_values():
    for value in (0, 1, -1, 2**47, -(2**47)):
        assert felt_value(felt(value)) == value
    with pytest.raises(IntegrityError):
        felt_value(FIELD.to_bytes(32, "little").hex())


@pytest.mark.parametrize("k", [2, 3])
def test_a_correct_merge_verifies_against_the_published_commitments(circuits, merge, k):
    circuit, deltas = circuits[k], merge["deltas"][:k]
    weights = normalize_weights([100, 300, 50][:k])
    sums = weighted_sum.weighted_sums(weights, deltas)
    published_sums = weighted_sum.commitments(sums, SIZE)
    proofs = weighted_sum.prove(circuit, weights, deltas, [0, 1])
    for j, proof in proofs.items():
        weighted_sum.check(circuit, proof, weights=weights, contributions=[p[j] for p in merge["published"][:k]],
                           sums=published_sums[j])
    assert circuit.vk_sha256 and circuit.srs_sha256  # what a repository will record as accepted


def test_every_kind_of_lie_fails(circuits, merge):
    circuit, deltas, weights = circuits[2], merge["deltas"][:2], normalize_weights([100, 300])
    sums = weighted_sum.weighted_sums(weights, deltas)
    published = [p[0] for p in merge["published"][:2]]
    (proof,) = weighted_sum.prove(circuit, weights, deltas, [0]).values()
    honest = weighted_sum.commitments(sums, SIZE)[0]
    weighted_sum.check(circuit, proof, weights=weights, contributions=published, sums=honest)

    tampered = sums.clone()
    tampered[5] += 1  # the merged chunk published is not the proven one
    with pytest.raises(IntegrityError, match="other sums"):
        weighted_sum.check(circuit, proof, weights=weights, contributions=published,
                           sums=weighted_sum.commitments(tampered, SIZE)[0])
    with pytest.raises(IntegrityError, match="contribution 0"):  # the contributors swapped
        weighted_sum.check(circuit, proof, weights=weights, contributions=published[::-1], sums=honest)
    with pytest.raises(IntegrityError, match="contribution 1"):  # another member's delta in its place
        weighted_sum.check(circuit, proof, weights=weights, contributions=[published[0], merge["published"][2][0]],
                           sums=honest)
    with pytest.raises(IntegrityError, match="other weights"):
        weighted_sum.check(circuit, proof, weights=[weights[0] + 1, weights[1] - 1], contributions=published,
                           sums=honest)

    # A proof of a falsified sum cannot be made to verify: its public values are fixed by the proof itself.
    forged = json.loads(proof)
    forged["instances"][0][-1] = weighted_sum.commitments(tampered, SIZE)[0]
    with pytest.raises(IntegrityError, match="does not verify"):
        weighted_sum.check(circuit, json.dumps(forged).encode(), weights=weights, contributions=published,
                           sums=forged["instances"][0][-1])
    with pytest.raises(IntegrityError):
        weighted_sum.check(circuit, b"not a proof", weights=weights, contributions=published, sums=honest)


def test_a_proof_for_wrong_inputs_is_about_their_commitments(circuits, merge):
    """An aggregator that merges something else than the contributions proves a statement about that something
    else: its public values are not the contributors' commitments."""
    circuit, weights = circuits[2], normalize_weights([1, 1])
    other = [d + 1 for d in merge["deltas"][:2]]
    (proof,) = weighted_sum.prove(circuit, weights, other, [0]).values()
    sums = weighted_sum.commitments(weighted_sum.weighted_sums(weights, other), SIZE)[0]
    with pytest.raises(IntegrityError, match="contribution 0"):
        weighted_sum.check(circuit, proof, weights=weights, contributions=[p[0] for p in merge["published"][:2]],
                           sums=sums)


def test_sampled_chunks_depend_only_on_the_seed_and_catch_falsification_often_enough():
    picked = weighted_sum.sample("ab" * 32, 100, 10)
    assert picked == weighted_sum.sample("ab" * 32, 100, 10) and len(set(picked)) == 10
    assert picked != weighted_sum.sample("cd" * 32, 100, 10)
    assert weighted_sum.detection_probability(100, 0, 10) == 0.0
    assert weighted_sum.detection_probability(100, 1, 100) == 1.0
    assert weighted_sum.detection_probability(100, 10, 10) == pytest.approx(1 - 0.3305, abs=1e-3)
    with pytest.raises(InvalidInput):
        weighted_sum.sample("x", 5, 6)


# -- proven rounds: contributions and merges publish the commitments, anyone with the records checks proofs --

OWNER, ANA, BEN, CY = (Identity.generate() for _ in range(4))


def proven_team(chunk: int = SIZE) -> tuple[RepoSet, Repo]:
    repos = RepoSet.in_memory(OWNER)
    repo = repos.create("proven", state(0))
    for member in (ANA, BEN, CY):
        repo.invite(OWNER, member.public_key, "maintainer")
    repo.set_policy(OWNER, RoundPolicy(buffer=2, proof_chunk=chunk))
    return repos, repo


def node(repos: RepoSet, repo: Repo, identity: Identity | None) -> Repo:
    return Repo.open(repo.id, repos.objects, repos.blocks, repo.refs, reader=identity)


def contribute(repos, repo, who, seed, examples, commitments=None):
    mine = node(repos, repo, who)
    base = mine.head("main")
    trained = {k: v + 0.01 * state(seed)[k] if v.is_floating_point() else v if v.dtype == torch.bool else v + 1
               for k, v in mine.materialize(base).items()}
    published = rounds.commitments(mine, trained, base) if commitments is None else commitments
    return mine.contribute(who, trained, examples=examples, base=base, commitments=published)


def test_a_proven_round_is_checked_from_the_records_alone(circuits):
    repos, repo = proven_team()
    contribute(repos, repo, ANA, 1, 100)
    contribute(repos, repo, BEN, 2, 300)
    current = rounds.view(repo, "main")
    who = next(i for i in (OWNER, ANA, BEN, CY) if i.public_key == current.aggregator(current.opened_ms + 1))
    merged = rounds.merge(node(repos, repo, who), who, "main")
    rounds.verify(node(repos, repo, CY), merged)  # a member re-derives it, sums' commitments included

    # the aggregator proves every chunk from the deltas it merged ...
    aggregator = node(repos, repo, who)
    weights = rounds.proof_weights(dict(merged.meta))
    deltas = [weighted_sum.fixed_delta(aggregator.materialize(c), aggregator.materialize(current.head))
              for c in rounds.meta_parents(dict(merged.meta))]
    assert len(merged.meta["sums"]) == 2 and weights == [e[3] for e in merged.meta["contributions"]]  # all fresh
    proofs = weighted_sum.prove(circuits[2], weights, deltas, range(len(merged.meta["sums"])))

    # ... and a node that cannot read a single payload checks them against the records
    outsider = node(repos, repo, None)
    weights, published, sums = rounds.proof_statement(outsider, outsider.commit(merged.id))
    for j, proof in proofs.items():
        weighted_sum.check(circuits[2], proof, weights=weights, contributions=[p[j] for p in published], sums=sums[j])

    # the merged weights are the head plus the proven sums, divided by 2^16, in the merge's fixed point
    total = weighted_sum.weighted_sums(weights, deltas)
    moved = weighted_sum.fixed_delta(repo.materialize(merged.id), repo.materialize(current.head))
    assert (moved - torch.round(total.double() / 2**16).long()).abs().max() <= 16  # float32 keeps 24 bits


def test_contributions_that_do_not_commit_to_their_delta_wait_in_vain():
    repos, repo = proven_team()
    contribute(repos, repo, ANA, 1, 100, commitments=[])  # none
    contribute(repos, repo, BEN, 2, 100, commitments=["00" * 32, "00" * 32])  # not its delta's
    good = contribute(repos, repo, CY, 3, 100)
    assert [c.commit for c in rounds.view(repo, "main").pending] == [good.id]
    with pytest.raises(InvalidInput, match="stored exactly"):
        rounds.commitments(repo, state(5), repo.head("main"), "int8-v1")


def test_a_merge_publishing_other_sums_is_refused_and_proofs_need_a_mean():
    repos, repo = proven_team()
    contribute(repos, repo, ANA, 1, 100)
    contribute(repos, repo, BEN, 2, 300)
    current = rounds.view(repo, "main")
    state_, meta = rounds.derive(repo, current, current.pending)
    who = next(i for i in (OWNER, ANA, BEN, CY) if i.public_key == current.aggregator(current.opened_ms + 1))
    meta["sums"] = meta["sums"][::-1]
    lying = node(repos, repo, who).write_round(who, state_, branch="main",
                                               parents=(current.head, *rounds.meta_parents(meta)), meta=meta,
                                               message="round 1")
    with pytest.raises(IntegrityError, match="records other"):
        rounds.verify(node(repos, repo, CY), lying)
    with pytest.raises(InvalidInput, match="mean"):
        RoundPolicy(strategy="median", proof_chunk=64)
    assert "proof_chunk" not in RoundPolicy().record() and RoundPolicy(proof_chunk=8).record()["proof_chunk"] == 8


def test_a_worker_process_proves_and_a_memory_cap_stops_it_with_a_clear_error(circuits, merge):
    circuit, deltas, weights = circuits[2], merge["deltas"][:2], normalize_weights([100, 300])
    proofs = worker.prove_chunks(circuit, weights, deltas, [1], memory_mb=4096, timeout_s=300)
    sums = weighted_sum.commitments(weighted_sum.weighted_sums(weights, deltas), SIZE)
    weighted_sum.check(circuit, proofs[1], weights=weights, contributions=[p[1] for p in merge["published"][:2]],
                       sums=sums[1])
    with pytest.raises(ProofError, match="memory cap"):
        worker.prove_chunks(circuit, weights, deltas, [0], memory_mb=64, timeout_s=60)
    with pytest.raises(ProofError, match="within 0.01 s"):
        worker.prove_chunks(circuit, weights, deltas, [0], timeout_s=0.01)


def test_values_ezkl_would_round_are_refused_before_proving(circuits):
    exact = [1 << 24] + [0] * (SIZE - 1)
    proof = ezkl_backend.prove(circuits[2], [1, 1], [exact, exact])
    weighted_sum.check(circuits[2], proof, weights=[1, 1], contributions=[ezkl_backend.poseidon(exact)] * 2,
                       sums=ezkl_backend.poseidon([2 << 24] + [0] * (SIZE - 1)))
    with pytest.raises(InvalidInput, match="float32"):
        ezkl_backend.prove(circuits[2], [1, 1], [exact, [(1 << 24) + 1] + [0] * (SIZE - 1)])
    assert [Shape(2, 64).logrows, Shape(4, 64).logrows, Shape(4, 1024).logrows] == [14, 14, 18]


def test_keys_are_built_only_from_the_srs_the_repository_accepts(circuits, tmp_path):
    circuit = circuits[2]
    again = ezkl_backend.build(circuit.folder.parent, circuit.shape, circuit.srs, accepted_srs=circuit.srs_sha256)
    assert again.folder == circuit.folder and again.vk_sha256 == circuit.vk_sha256  # cached, the same keys
    assert ezkl_backend.sha256_file(circuit.srs) == circuit.srs_sha256
    with pytest.raises(ProofError, match="not the one the repository accepts"):
        ezkl_backend.build(circuit.folder.parent, circuit.shape, circuit.srs, accepted_srs="ab" * 32)
