"""Secure rounds with norm proofs (``norm_bound``; real EZKL proofs, KZG in chunks of 64 with a development SRS):
each contributor clips its update to the bound in the merge's fixed point and proves what it masks within it;
every member checks each proof and that the unmasked sum is the sum of what was proven."""

from __future__ import annotations

import pytest

from flair_node.core.errors import InvalidInput
from flair_node.core.round_messages import Masked
from flair_node.core.round_rules import RoundPolicy
from flair_node.protocol import norm_bounds, rounds, secure_merges, secure_rounds
from flair_node.protocol.proofs import circuits as node_circuits
from flair_node.protocol.proofs import ezkl_backend
from flair_node.protocol.proofs.ezkl_backend import Shape
from flair_node.storage.repos import RepoSet
from flair_node.tensors.fixedpoint import combine, normalize_weights
from tests.unit.test_secure_rounds import EVERYONE, MEMBERS, NODES, OWNER, Round, as_node, model, same_state

pytestmark = pytest.mark.slow
SIZE = 64
PARAMETERS = 1000  # 16 chunks of 64: one group
BOUND = "0.5"  # a trained() update's norm is about 0.01 x sqrt(1000) = 0.32


@pytest.fixture(scope="module")
def srs(tmp_path_factory):
    return ezkl_backend.development_srs(tmp_path_factory.mktemp("srs"), Shape(1, SIZE).logrows)


def proven_team(srs, **dp_fields):
    repos = RepoSet.in_memory(OWNER)
    repo = repos.create("bounded", model(0, PARAMETERS))
    NODES[repo.id] = repos
    for member in MEMBERS:
        repo.invite(OWNER, member.public_key, "contributor")
    cid = node_circuits.add_srs(repos.blocks, srs.read_bytes())
    repo.set_policy(OWNER, RoundPolicy(privacy="secure", buffer=5, max_staleness=0, proof_chunk=SIZE,
                                       proof_scheme="kzg", proof_srs=cid, norm_bound=BOUND, **dp_fields))
    return repo


#: The circuits every member here builds: the same keys (``ezkl_backend.build``), built once for the module.
CIRCUITS = node_circuits.Circuits.in_temporary_folder()


def checked_by_everyone(repo, r, merged) -> None:
    for member in EVERYONE:  # each with a memory of its own: every proof checked again
        secure_merges.verify(as_node(repo, member), merged, r.book, memory=rounds.RoundMemory(CIRCUITS))


def test_every_masked_update_proves_its_norm_and_the_merge_is_the_plain_one(srs):
    repo = proven_team(srs)
    r = Round(repo, EVERYONE)
    r.memory = rounds.RoundMemory(CIRCUITS)
    roster = r.roster()
    r.mask(roster, EVERYONE)
    masked = r.book.of_round(repo.id, "main", r.head, "masked")
    assert all(isinstance(m.content, Masked) and m.content.proof is not None for m in masked)
    unmask = r.unmask(roster)
    r.reveal(unmask, EVERYONE)
    merged = r.merge(unmask)
    order = [next(i for i in EVERYONE if i.public_key == r.book.message(a).author) for a in roster.content.adverts]
    plan = secure_rounds.make_plan(repo, r.book, roster)
    weights = normalize_weights([r.examples[c.public_key] for c in order])
    assert list(plan.weights.values()) == weights
    plain = combine(r.base, [r.states[c.public_key] for c in order], weights, shortcuts=False)
    assert same_state(repo.materialize(merged.id), plain)  # nobody's update was above the bound: nothing clipped
    checked_by_everyone(repo, r, merged)


def test_a_contributor_s_node_clips_its_update_to_the_bound_exactly_in_fixed_point(srs):
    repo = proven_team(srs)
    policy = repo.members.current().policy
    base = repo.materialize(repo.head("main"))
    far = {k: v + 10 * (v - v.roll(1)) for k, v in base.items()}  # an update far above the bound
    change = norm_bounds.update(policy, base, far)
    bound = norm_bounds.fixed_norm_bound(policy)
    assert bound == int(0.5 * 2**24)
    assert bound - 100 < sum(int(v) ** 2 for v in change.tolist()) ** 0.5 <= bound


def test_with_differential_privacy_the_proof_covers_the_noise_share_too(srs):
    repo = proven_team(srs, dp_clip="0.5", dp_noise="1", dp_delta="1e-5", dp_epsilon="100")
    r = Round(repo, EVERYONE)
    r.memory = rounds.RoundMemory(CIRCUITS)
    roster = r.roster()
    r.mask(roster, EVERYONE)
    unmask = r.unmask(roster)
    assert len(unmask.content.masked) == 5
    r.reveal(unmask, EVERYONE)
    merged = r.merge(unmask)
    assert merged.meta["dp"]["taken"] == 5
    checked_by_everyone(repo, r, merged)


def test_a_secure_norm_bound_goes_with_kzg_commitments_and_a_plain_one_with_nothing():
    cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    assert RoundPolicy(norm_bound="1").norm_bound == "1"  # plain: members check the deltas they read
    for scheme in ({}, {"proof_chunk": SIZE, "proof_scheme": "poseidon"}):
        with pytest.raises(InvalidInput, match="needs KZG commitments"):
            RoundPolicy(privacy="secure", max_staleness=0, norm_bound="1", **scheme)
    with pytest.raises(InvalidInput, match="proof_chunk goes with norm_bound"):
        RoundPolicy(privacy="secure", max_staleness=0, proof_chunk=SIZE, proof_scheme="kzg", proof_srs=cid)
    for bad in ("-1", "501", "x"):
        with pytest.raises(InvalidInput, match="norm_bound is a decimal above 0 and at most 500"):
            RoundPolicy(norm_bound=bad)
    assert RoundPolicy(privacy="secure", max_staleness=0, proof_chunk=SIZE, proof_scheme="kzg", proof_srs=cid,
                       norm_bound="2.5").norm_bound == "2.5"
