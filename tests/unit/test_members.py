"""Membership in a repository: invited members read every payload, removed ones lose the keys of later
payloads, roles decide who commits where, and the chain survives reopening and is checked by fsck."""

import pytest
import torch

from flair_node.core.errors import Forbidden, InvalidInput, NotAMember
from flair_node.core.identity import Identity
from flair_node.core.round_rules import RoundPolicy
from flair_node.storage.members import MEMBERS_REF
from flair_node.storage.repo import Repository
from flair_node.storage.repos import RepoSet
from flair_node.testing.commit_graph import tiny_state

OWNER, ALICE, BOB = Identity.generate(), Identity.generate(), Identity.generate()


def as_node(repos: RepoSet, repo: Repository, identity: Identity) -> Repository:
    """The repository as another member's node sees it, holding the same records and blocks."""
    return Repository.open(repo.id, repos.objects, repos.blocks, repo.refs, reader=identity)


def test_an_invited_member_reads_every_payload_and_commits_as_its_role_allows():
    repos = RepoSet.in_memory(OWNER)
    repo = repos.create("digits", tiny_state(0))
    first = repo.commit_weights(OWNER, tiny_state(1), message="before the invitation")
    alice = as_node(repos, repo, ALICE)
    with pytest.raises(NotAMember, match="no key of epoch 0"):
        alice.materialize(first.id)

    repo.invite(OWNER, ALICE.public_key, "contributor")
    alice = as_node(repos, repo, ALICE)
    assert torch.equal(alice.materialize(first.id)["w"], tiny_state(1)["w"])
    alice.create_branch(ALICE, "alice", first.id)
    mine = alice.commit_weights(ALICE, tiny_state(2), message="site A", branch="alice")
    assert torch.equal(repo.materialize(mine.id)["w"], tiny_state(2)["w"])  # the owner reads it
    with pytest.raises(Forbidden, match="moving branch main needs the role maintainer"):
        alice.commit_weights(ALICE, tiny_state(3), message="straight to main")


def test_a_reader_pulls_but_does_not_commit():
    repos = RepoSet.in_memory(OWNER)
    repo = repos.create("digits", tiny_state(0))
    repo.invite(OWNER, BOB.public_key, "reader")
    bob = as_node(repos, repo, BOB)
    assert torch.equal(bob.materialize(bob.head("main"))["w"], tiny_state(0)["w"])
    with pytest.raises(Forbidden, match="holds the role reader"):
        bob.create_branch(BOB, "bob", bob.head("main"))


def test_a_removed_member_keeps_what_it_had_and_cannot_read_what_comes_after():
    repos = RepoSet.in_memory(OWNER)
    repo = repos.create("digits", tiny_state(0))
    repo.invite(OWNER, ALICE.public_key, "maintainer")
    repo.invite(OWNER, BOB.public_key, "reader")
    before = repo.commit_weights(OWNER, tiny_state(1), message="epoch 0")
    after_membership = repo.remove(OWNER, ALICE.public_key)
    assert after_membership.epoch == 1
    after = repo.commit_weights(OWNER, tiny_state(2), message="epoch 1")
    assert after.payload.key_epoch == 1 and before.payload.key_epoch == 0

    alice, bob = as_node(repos, repo, ALICE), as_node(repos, repo, BOB)
    assert torch.equal(alice.materialize(before.id)["w"], tiny_state(1)["w"])
    with pytest.raises(NotAMember, match="no key of epoch 1"):
        alice.materialize(after.id)
    assert torch.equal(bob.materialize(after.id)["w"], tiny_state(2)["w"])
    with pytest.raises(Forbidden, match="is not a member"):
        alice.create_branch(ALICE, "still-here", before.id)


def test_only_the_owner_changes_membership():
    repos = RepoSet.in_memory(OWNER)
    repo = repos.create("digits", tiny_state(0))
    repo.invite(OWNER, ALICE.public_key, "maintainer")
    alice = as_node(repos, repo, ALICE)
    with pytest.raises(Forbidden, match="only the owner"):
        alice.invite(ALICE, BOB.public_key, "reader")
    with pytest.raises(Forbidden, match="only the owner"):
        alice.remove(ALICE, OWNER.public_key)
    with pytest.raises(Forbidden, match="only the owner"):
        alice.set_policy(ALICE, RoundPolicy(strategy="median"))
    with pytest.raises(InvalidInput, match="not 32|not base58"):
        repo.invite(OWNER, "not-a-key", "reader")


def test_the_membership_survives_reopening_and_fsck_checks_it(tmp_path):
    repos = RepoSet.on_disk(tmp_path, OWNER)
    repo = repos.create("digits", tiny_state(0))
    repo.invite(OWNER, ALICE.public_key, "contributor")
    repo.remove(OWNER, ALICE.public_key)
    repo.invite(OWNER, BOB.public_key, "reader")
    repo.set_policy(OWNER, RoundPolicy(strategy="krum", strategy_params={"byzantine": 1}, buffer=5))
    reopened = RepoSet.on_disk(tmp_path, OWNER).open("digits")
    membership = reopened.members.current()
    assert (membership.seq, membership.epoch) == (4, 1)
    assert membership.policy == RoundPolicy(strategy="krum", strategy_params={"byzantine": 1}, buffer=5)
    assert [m.role for m in membership.current()] == ["owner", "reader"]
    assert "." not in "".join(reopened.branches())  # the membership ref is not a branch
    assert reopened.fsck()[1] == []

    head = reopened.refs.get(MEMBERS_REF)
    (tmp_path / "objects" / head[:2] / head[2:]).write_bytes(b"\x00damaged")
    problems = RepoSet.on_disk(tmp_path, OWNER).open("digits").fsck()[1]
    assert [p.what for p in problems if p.what.startswith("membership")]


async def test_the_owner_makes_a_repository_private_through_the_api():
    from flair_node.api.context import ApiContext
    from flair_node.api.methods import build_registry

    repos = RepoSet.in_memory(OWNER)
    repos.create("digits", tiny_state(0))
    registry = build_registry(ApiContext(OWNER, repos))

    async def policy(**params):
        return await registry.lookup("repo.policy").handler(**registry.validate("repo.policy",
                                                                                {"repo": "digits", **params}))

    secure = await policy(privacy="secure")
    assert (secure["privacy"], secure["max_staleness"], secure["secure_threshold"]) == ("secure", 0, "0.5")
    assert (await policy(secure_threshold="0.75"))["secure_threshold"] == "0.75"
    with pytest.raises(InvalidInput, match="secure rounds merge by the mean: median needs each contribution"):
        await policy(strategy="median")
    with pytest.raises(InvalidInput, match="only contributions trained from the round's head"):
        await policy(max_staleness=2)
    with pytest.raises(InvalidInput, match="could convince no one else"):
        await policy(proof_chunk=16)  # refused before any SRS is made for it
    with pytest.raises(InvalidInput, match="secure_threshold is a decimal from 0.5 to below 1"):
        await policy(secure_threshold="1")
    assert repos.open("digits").members.current().policy == RoundPolicy(privacy="secure", max_staleness=0,
                                                                        secure_threshold="0.75")

    plain = await policy(privacy="plain", max_staleness=4)
    assert (plain["privacy"], plain["secure_threshold"], plain["max_staleness"]) == ("plain", "0.5", 4)
    with pytest.raises(InvalidInput, match="secure_threshold goes with privacy secure"):
        await policy(secure_threshold="0.6")
    with pytest.raises(InvalidInput, match="param 'privacy'"):
        await policy(privacy="private")
    again = await policy(privacy="secure", max_staleness=0, secure_threshold="0.6")
    assert (again["privacy"], again["secure_threshold"]) == ("secure", "0.6")
    assert await policy() == again
    await policy(privacy="plain", strategy="trimmed_mean", strategy_params={"fraction": "0.2"})
    back = await policy(strategy="mean", privacy="secure")  # the old strategy's parameters go with it
    assert (back["strategy"], back["strategy_params"], back["privacy"]) == ("mean", {}, "secure")
