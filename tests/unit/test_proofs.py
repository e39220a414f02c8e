"""Real EZKL proofs of a round's weighted sum (K = 2 and 3 contributions, chunks of 64 values), bound to the
commitments each contributor published, with both commitment schemes (KZG and Poseidon): a correct merge
verifies; a tampered merged chunk, a swapped or substituted contributor commitment, a changed weight and a
damaged proof each fail."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from flair_node.core.errors import IntegrityError, InvalidInput
from flair_node.core.identity import Identity
from flair_node.core.objects import ProofRecord
from flair_node.core.round_rules import RoundPolicy
from flair_node.protocol import round_merges, rounds
from flair_node.protocol.proofs import circuits as node_circuits
from flair_node.protocol.proofs import ezkl_backend, merges, weighted_sum, worker
from flair_node.protocol.proofs.ezkl_backend import FIELD, ProofError, Shape, felt, felt_value
from flair_node.storage import unixfs
from flair_node.storage.repo import Repository
from flair_node.storage.repos import RepoSet
from flair_node.tensors.fixedpoint import normalize_weights

pytestmark = pytest.mark.slow
SIZE = 64


def state(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"layer.weight": scale * torch.randn(10, 9, generator=g), "layer.bias": scale * torch.randn(10, generator=g),
            "steps": torch.tensor([seed], dtype=torch.int64), "mask": torch.ones(3, dtype=torch.bool)}


@pytest.fixture(scope="module")
def srs_files(tmp_path_factory):
    """Development SRS files: for exactly the rows of KZG circuits of chunks of 64, and one large enough for
    every Poseidon circuit here."""
    folder = tmp_path_factory.mktemp("srs")
    return {"kzg": ezkl_backend.development_srs(folder, Shape(1, SIZE).logrows),
            "poseidon": ezkl_backend.development_srs(folder, Shape(3, SIZE, "poseidon").logrows)}


@pytest.fixture(scope="module")
def srs(srs_files):
    return srs_files["kzg"]


@pytest.fixture(scope="module")
def all_circuits(tmp_path_factory, srs_files):
    """Circuits for 1 (committing), 2 and 3 contributions in both schemes, built once for the module."""
    cache = tmp_path_factory.mktemp("circuits")
    return {scheme: {k: ezkl_backend.build(cache, Shape(k, SIZE, scheme), srs_files[scheme]) for k in (1, 2, 3)}
            for scheme in ezkl_backend.SCHEMES}


@pytest.fixture(scope="module", params=ezkl_backend.SCHEMES)
def scheme(request):
    return request.param


@pytest.fixture(scope="module")
def circuits(all_circuits, scheme):
    return all_circuits[scheme]


@pytest.fixture(scope="module")
def merge(circuits):
    """A head, three contributions trained from it, their deltas, commitments and merge weights."""
    head = state(0)
    contributions = [{k: v + 0.01 * state(i)[k] if v.is_floating_point() else v if v.dtype == torch.bool else v + i
                      for k, v in head.items()} for i in (1, 2, 3)]
    deltas = [weighted_sum.fixed_delta(c, head) for c in contributions]
    return {"deltas": deltas, "published": [commitments(circuits, d) for d in deltas],
            "weights": normalize_weights([100, 300, 50])}


def commitments(circuits, values):
    """What a contributor publishes for ``values`` in the scheme of ``circuits``."""
    committer = circuits[1] if circuits[1].shape.scheme == "kzg" else None
    return weighted_sum.commitments(values, SIZE, committer)


def test_deltas_are_the_merge_fixed_point_and_chunks_pad_with_zeros(circuits, merge):
    (delta, *_), published = merge["deltas"], merge["published"][0]
    assert delta.dtype == torch.int64 and delta.numel() == 10 * 9 + 10 + 1  # the bool mask is not averaged
    cut = weighted_sum.chunks(delta, SIZE)
    assert len(cut) == 2 == len(published) and cut[1][101 - 64:] == [0] * (128 - 101)
    assert published[0] == ezkl_backend.commit(circuits[3], cut[0]) != published[1]  # any circuit commits alike
    assert commitments(circuits, delta) == published  # the same values, the same commitments
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
    published_sums = commitments(circuits, sums)
    proofs = weighted_sum.prove(circuit, weights, deltas, [0, 1])
    for j, proof in proofs.items():
        weighted_sum.check(circuit, proof, weights=weights, contributions=[p[j] for p in merge["published"][:k]],
                           sums=published_sums[j])


def test_every_kind_of_lie_fails(circuits, merge):
    circuit, deltas, weights = circuits[2], merge["deltas"][:2], normalize_weights([100, 300])
    sums = weighted_sum.weighted_sums(weights, deltas)
    published = [p[0] for p in merge["published"][:2]]
    (proof,) = weighted_sum.prove(circuit, weights, deltas, [0]).values()
    honest = commitments(circuits, sums)[0]
    weighted_sum.check(circuit, proof, weights=weights, contributions=published, sums=honest)

    tampered = sums.clone()
    tampered[5] += 1  # the merged chunk published is not the proven one
    with pytest.raises(IntegrityError, match="other sums"):
        weighted_sum.check(circuit, proof, weights=weights, contributions=published,
                           sums=commitments(circuits, tampered)[0])
    with pytest.raises(IntegrityError, match="contribution 0"):  # the contributors swapped
        weighted_sum.check(circuit, proof, weights=weights, contributions=published[::-1], sums=honest)
    with pytest.raises(IntegrityError, match="contribution 1"):  # another member's delta in its place
        weighted_sum.check(circuit, proof, weights=weights, contributions=[published[0], merge["published"][2][0]],
                           sums=honest)
    with pytest.raises(IntegrityError, match="other weights"):
        weighted_sum.check(circuit, proof, weights=[weights[0] + 1, weights[1] - 1], contributions=published,
                           sums=honest)

    # A proof cannot be edited to carry the commitment of a falsified sum and still verify.
    forged, lie = json.loads(proof), commitments(circuits, tampered)[0]
    if circuit.shape.scheme == "kzg":
        forged["proof"][64 * 3:64 * 4] = list(bytes.fromhex(lie))
    else:
        forged["instances"][0][-1] = lie
    with pytest.raises(IntegrityError, match="does not verify"):
        weighted_sum.check(circuit, json.dumps(forged).encode(), weights=weights, contributions=published, sums=lie)
    with pytest.raises(IntegrityError):
        weighted_sum.check(circuit, b"not a proof", weights=weights, contributions=published, sums=honest)


def test_a_proof_for_wrong_inputs_is_about_their_commitments(circuits, merge):
    """An aggregator that merges something else than the contributions proves a statement about that something
    else: its public values are not the contributors' commitments."""
    circuit, weights = circuits[2], normalize_weights([1, 1])
    other = [d + 1 for d in merge["deltas"][:2]]
    (proof,) = weighted_sum.prove(circuit, weights, other, [0]).values()
    sums = commitments(circuits, weighted_sum.weighted_sums(weights, other))[0]
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


@pytest.fixture(scope="module")
def node_cache(tmp_path_factory):
    """The circuit cache of the node the tests below run (``Circuits``), built into once for the module."""
    return node_circuits.Circuits(tmp_path_factory.mktemp("node-circuits"))


@pytest.fixture
def memory(node_cache):
    """What that node's rounds remember, proving with its circuit cache."""
    return rounds.RoundMemory(node_cache)


@pytest.fixture(scope="module")
def team(srs):
    """Makes a repository of four maintainers whose merges are proven with KZG commitments (the SRS in its
    blocks, named by the policy)."""

    def make() -> tuple[RepoSet, Repository]:
        repos = RepoSet.in_memory(OWNER)
        repo = repos.create("proven", state(0))
        for member in (ANA, BEN, CY):
            repo.invite(OWNER, member.public_key, "maintainer")
        cid = node_circuits.add_srs(repos.blocks, srs.read_bytes())
        repo.set_policy(OWNER, RoundPolicy(buffer=2, proof_chunk=SIZE, proof_scheme="kzg", proof_srs=cid))
        return repos, repo
    return make


def node(repos: RepoSet, repo: Repository, identity: Identity | None) -> Repository:
    return Repository.open(repo.id, repos.objects, repos.blocks, repo.refs, reader=identity)


def contribute(repos, repo, who, seed, examples, commitments=None, *, memory):
    mine = node(repos, repo, who)
    base = mine.head("main")
    trained = {k: v + 0.01 * state(seed)[k] if v.is_floating_point() else v if v.dtype == torch.bool else v + 1
               for k, v in mine.materialize(base).items()}
    if commitments is None:
        commitments = round_merges.commitments(mine, trained, base, circuits=memory.circuits)
    return mine.contribute(who, trained, examples=examples, base=base, commitments=commitments)


def merged_round(team, memory):
    """A proven round of two contributions, merged by its entitled aggregator: (repos, repo, merge, aggregator)."""
    repos, repo = team()
    contribute(repos, repo, ANA, 1, 100, memory=memory)
    contribute(repos, repo, BEN, 2, 300, memory=memory)
    current = rounds.view(repo, "main", memory=memory)
    who = next(i for i in (OWNER, ANA, BEN, CY) if i.public_key == current.aggregator(current.opened_ms + 1))
    return repos, repo, rounds.merge(node(repos, repo, who), who, "main", memory=memory), who


def test_a_proven_round_is_checked_from_the_records_alone(team, memory):
    repos, repo, merged, who = merged_round(team, memory)
    rounds.verify(node(repos, repo, CY), merged, memory=memory)  # a member re-derives it, sums' commitments included

    # the aggregator proves every chunk from the deltas it merged ...
    aggregator = node(repos, repo, who)
    weights = round_merges.proof_weights(dict(merged.meta))
    deltas = [weighted_sum.fixed_delta(aggregator.materialize(c), aggregator.materialize(merged.parents[0]))
              for c in round_merges.meta_parents(dict(merged.meta))]
    assert len(merged.meta["sums"]) == 2 and weights == [e[3] for e in merged.meta["contributions"]]  # all fresh
    circuit = memory.circuits.circuit(aggregator, 2)
    proofs = weighted_sum.prove(circuit, weights, deltas, range(len(merged.meta["sums"])))

    # ... and a node that cannot read a single payload checks them against the records
    outsider = node(repos, repo, None)
    weights, published, sums = round_merges.proof_statement(outsider, outsider.commit(merged.id))
    for j, proof in proofs.items():
        weighted_sum.check(circuit, proof, weights=weights, contributions=[p[j] for p in published], sums=sums[j])

    # the merged weights are the head plus the proven sums, divided by 2^16, in the merge's fixed point
    total = weighted_sum.weighted_sums(weights, deltas)
    moved = weighted_sum.fixed_delta(repo.materialize(merged.id), repo.materialize(merged.parents[0]))
    assert (moved - torch.round(total.double() / 2**16).long()).abs().max() <= 16  # float32 keeps 24 bits


def test_contributions_that_do_not_commit_to_their_delta_wait_in_vain(team, memory):
    repos, repo = team()
    contribute(repos, repo, ANA, 1, 100, commitments=[], memory=memory)  # none
    contribute(repos, repo, BEN, 2, 100, commitments=["00" * 64, "00" * 64], memory=memory)  # not its delta's
    good = contribute(repos, repo, CY, 3, 100, memory=memory)
    assert [c.commit for c in rounds.view(repo, "main", memory=memory).pending] == [good.id]
    with pytest.raises(InvalidInput, match="stored exactly"):
        round_merges.commitments(repo, state(5), repo.head("main"), "int8-v1", circuits=memory.circuits)


def test_a_merge_publishing_other_sums_is_refused_and_proofs_need_a_mean(team, memory):
    repos, repo = team()
    contribute(repos, repo, ANA, 1, 100, memory=memory)
    contribute(repos, repo, BEN, 2, 300, memory=memory)
    current = rounds.view(repo, "main", memory=memory)
    state_, meta = round_merges.derive(repo, current, current.pending, memory=memory)
    who = next(i for i in (OWNER, ANA, BEN, CY) if i.public_key == current.aggregator(current.opened_ms + 1))
    meta["sums"] = meta["sums"][::-1]
    lying = node(repos, repo, who).write_round(who, state_, branch="main",
                                               parents=(current.head, *round_merges.meta_parents(meta)), meta=meta,
                                               message="round 1")
    with pytest.raises(IntegrityError, match="records other"):
        rounds.verify(node(repos, repo, CY), lying, memory=memory)
    with pytest.raises(InvalidInput, match="mean"):
        RoundPolicy(strategy="median", proof_chunk=64, proof_scheme="poseidon")
    with pytest.raises(InvalidInput, match="need proof_srs"):
        RoundPolicy(proof_chunk=64, proof_scheme="kzg")
    with pytest.raises(InvalidInput, match="one of kzg, poseidon"):
        RoundPolicy(proof_chunk=64)
    with pytest.raises(InvalidInput, match="go with proof_chunk"):
        RoundPolicy(proof_scheme="poseidon")
    assert "proof_chunk" not in RoundPolicy().record() and "proof_scheme" not in RoundPolicy().record()
    assert RoundPolicy(proof_chunk=8, proof_scheme="poseidon").record()["proof_chunk"] == 8


def test_a_worker_process_proves_and_a_memory_cap_stops_it_with_a_clear_error(circuits, merge):
    circuit, deltas, weights = circuits[2], merge["deltas"][:2], normalize_weights([100, 300])
    proofs = worker.prove_chunks(circuit, weights, deltas, [1], memory_mb=4096, timeout_s=300)
    sums = commitments(circuits, weighted_sum.weighted_sums(weights, deltas))
    weighted_sum.check(circuit, proofs[1], weights=weights, contributions=[p[1] for p in merge["published"][:2]],
                       sums=sums[1])
    with pytest.raises(ProofError, match="memory cap"):
        worker.prove_chunks(circuit, weights, deltas, [0], memory_mb=64, timeout_s=60)
    with pytest.raises(ProofError, match="within 0.01 s"):
        worker.prove_chunks(circuit, weights, deltas, [0], timeout_s=0.01)


def test_values_beyond_float32_are_proven_exactly(circuits):
    """Inputs go to EZKL as field elements: a change of 1.0 (2^24 at 24 fraction bits) or far more in one weight
    is proven exactly, not rounded as float32 would."""
    big = [(1 << 40) + 1, -(1 << 40) - 3] + [0] * (SIZE - 2)
    other = [(1 << 24) + 1, 7] + [0] * (SIZE - 2)
    proof = ezkl_backend.prove(circuits[2], [3, 1 << 16], [big, other])
    sums = [3 * a + (1 << 16) * b for a, b in zip(big, other, strict=True)]
    commit = circuits[1] if circuits[1].shape.scheme == "kzg" else circuits[2]
    weighted_sum.check(circuits[2], proof, weights=[3, 1 << 16],
                       contributions=[ezkl_backend.commit(commit, big), ezkl_backend.commit(commit, other)],
                       sums=ezkl_backend.commit(commit, sums))
    with pytest.raises(InvalidInput, match="below 2"):
        ezkl_backend.prove(circuits[2], [1, 1 << 32], [big, other])


def test_circuit_sizes_follow_the_scheme():
    poseidon = [Shape(k, n, "poseidon").logrows for k, n in ((2, 64), (4, 64), (4, 1024))]
    assert poseidon == [14, 14, 18]
    # KZG circuits of one chunk size have one size, whatever K, so their commitments agree
    assert [Shape(k, n).logrows for k, n in ((1, 64), (16, 64), (2, 256), (2, 1024))] == [12, 12, 13, 15]
    with pytest.raises(InvalidInput, match="1 to 16 inputs"):
        Shape(17, 64)


def test_kzg_circuits_need_an_srs_for_exactly_their_rows(srs_files, tmp_path):
    with pytest.raises(ProofError, match="exactly 2.12"):  # commitments would not be the ones proofs carry
        ezkl_backend.build(tmp_path, Shape(2, SIZE), srs_files["poseidon"])
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ProofError, match="not an SRS"):
        ezkl_backend.build(tmp_path, Shape(2, SIZE), tmp_path / "empty")


def test_a_node_takes_the_srs_its_repository_names_from_blocks(team, srs, node_cache):
    repos, repo = team()
    found = node_cache
    path = found.srs(repo)
    assert path.read_bytes() == srs.read_bytes() and path.name == repo.members.current().policy.proof_srs
    first = found.circuit(repo, 2)
    assert found.circuit(repo, 2) == first and first.srs_sha256 == ezkl_backend.sha256_file(srs)  # cached

    bare = RepoSet.in_memory(OWNER)  # a node whose blocks hold no SRS yet
    bare_circuits = node_circuits.Circuits(found.cache.parent / "bare")
    other = bare.create("other", state(0))
    other.set_policy(OWNER, RoundPolicy(proof_chunk=SIZE, proof_scheme="kzg",
                                        proof_srs=repo.members.current().policy.proof_srs))
    with pytest.raises(ProofError, match="has not arrived"):
        bare_circuits.circuit(other, 2)
    with pytest.raises(InvalidInput, match="1 to 64 MiB"):
        node_circuits.add_srs(bare.blocks, b"")


# -- proofs of whole merges: the bundle an aggregator publishes, the check every node makes -------------------


def test_an_aggregator_proves_its_whole_merge_and_anyone_with_the_records_checks_it(team, memory):
    repos, repo, merge, who = merged_round(team, memory)
    circuits = memory.circuits
    with pytest.raises(InvalidInput, match="only the author"):
        merges.prove_merge(node(repos, repo, CY), CY if who != CY else ANA, merge.id, circuits=circuits)
    record = merges.prove_merge(node(repos, repo, who), who, merge.id, circuits=circuits, memory_mb=4096,
                                timeout_s=300)
    assert record.chunks == (0, 1) and record.author == who.public_key
    outsider = node(repos, repo, None)  # reads no payload
    assert outsider.merges.proof(merge.id) == record
    assert merges.check_merge(outsider, record, circuits=circuits) == {"chunks": 2, "total": 2, "detection": 1.0}
    assert not outsider.ingest.accept_proof(record)  # one record per merge: the first is kept
    repos.gc()  # the proofs are pinned: still there to check
    assert merges.check_merge(outsider, record, circuits=circuits)["chunks"] == 2

    # a bundle whose proofs are swapped between chunks, or that covers other chunks, fails the check
    bundle = json.loads(unixfs.cat(repo.blocks, record.proofs, max_size=record.size))
    bundle["proofs"]["0"], bundle["proofs"]["1"] = bundle["proofs"]["1"], bundle["proofs"]["0"]
    swapped = replace(record, proofs=unixfs.add(repo.blocks, json.dumps(bundle).encode()),
                      size=len(json.dumps(bundle).encode())).signed(who)
    with pytest.raises(IntegrityError, match="chunk 0 of"):
        merges.check_merge(outsider, swapped, circuits=circuits)
    with pytest.raises(IntegrityError, match="other chunks"):
        merges.check_merge(outsider, replace(record, chunks=(0,)).signed(who), circuits=circuits)
    with pytest.raises(IntegrityError, match="another verifying key"):  # keys not built from the SRS named
        merges.check_merge(outsider, replace(record, vk="ab" * 32).signed(who), circuits=circuits)


def test_a_proof_record_is_kept_only_from_the_merge_author(team, memory):
    repos, repo, merge, who = merged_round(team, memory)
    other = next(i for i in (OWNER, ANA, BEN, CY) if i != who)
    proofs = unixfs.add(repo.blocks, b"{}")
    forged = ProofRecord(repo=repo.id, commit=merge.id, chunks=(0, 1), proofs=proofs, size=2, vk="ab" * 32,
                         author=other.public_key, timestamp_ms=merge.timestamp_ms).signed(other)
    with pytest.raises(IntegrityError, match="not by the author"):
        node(repos, repo, None).ingest.accept_proof(forged)
    assert ProofRecord.decode(forged.encode()) == forged
    with pytest.raises(IntegrityError, match="ascending"):
        ProofRecord.decode(replace(forged, chunks=(1, 0)).signed(other).encode())


def test_big_merges_are_proven_on_a_sample_drawn_from_the_merge_id():
    assert merges.chunks_to_prove("ab" * 32, merges.PROVE_ALL) == list(range(merges.PROVE_ALL))
    picked = merges.chunks_to_prove("ab" * 32, 3907)  # a 1M-parameter model in chunks of 256
    assert len(picked) == merges.sample_size(3907) == 423 and picked == weighted_sum.sample("ab" * 32, 3907, 423)
    assert weighted_sum.detection_probability(3907, 40, 423) >= 0.99 > weighted_sum.detection_probability(3907, 40, 422)


def test_a_temporary_circuit_cache_is_removed_with_its_cache() -> None:
    import gc

    from flair_node.protocol.proofs.circuits import Circuits

    circuits = Circuits.in_temporary_folder()
    folder = circuits.cache
    (folder / "circuit.bin").write_bytes(b"keys and circuits: about 200 MB once proofs were made")
    del circuits
    gc.collect()
    assert not folder.exists()  # test runs left 741 such folders (6.8 GB) in /tmp before
