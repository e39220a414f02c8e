"""Branch moves: signed records that every node orders the same way, accepted only from movers with the role."""

import dataclasses

import pytest

from flair_node.core import encoding
from flair_node.core.errors import CommitNotFound, Forbidden, IntegrityError, NotFound
from flair_node.core.identity import Identity
from flair_node.core.refs import MAX_CLOCK_SKEW_MS, BranchMove
from flair_node.storage.repo import Repository, now_ms
from flair_node.storage.repos import RepoSet
from flair_node.testing.commit_graph import tiny_state

OWNER, ALICE = Identity.generate(), Identity.generate()


def move(repo, identity, branch, commit, ts, epoch=0):
    return BranchMove(repo=repo.id, branch=branch, commit=commit, previous="", author=identity.public_key,
                      epoch=epoch, timestamp_ms=ts).signed(identity)


def test_a_move_survives_its_encoding_and_tampering_is_caught():
    repo = RepoSet.in_memory(OWNER).create("r", tiny_state(0))
    m = repo.branch_move("main")
    assert BranchMove.decode(m.encode()) == m and m.author == OWNER.public_key and m.previous == ""
    with pytest.raises(IntegrityError):
        dataclasses.replace(m, branch="other").verify()
    outer = encoding.decode(m.encode())
    outer["body"]["force"] = True
    with pytest.raises(IntegrityError, match="unknown fields"):
        BranchMove.decode(encoding.encode(outer))
    outer["body"].pop("force")
    outer["body"]["branch"] = "../escape"
    with pytest.raises(IntegrityError):
        BranchMove.decode(encoding.encode(outer))


def test_the_later_move_wins_whatever_order_they_arrive_in():
    repo = RepoSet.in_memory(OWNER).create("r", tiny_state(0))
    root = repo.head("main")
    second = repo.commit_weights(OWNER, tiny_state(1), message="x").id
    early, late = move(repo, OWNER, "b", root, 1_000), move(repo, OWNER, "b", second, 2_000)
    assert late.comes_after(early) and not early.comes_after(late)
    assert repo.ingest.accept_move(late) and not repo.ingest.accept_move(early) and repo.head("b") == second
    assert not repo.ingest.accept_move(late)  # a replay changes nothing


def test_moves_are_checked_against_the_movers_role():
    repo = RepoSet.in_memory(OWNER).create("r", tiny_state(0))
    root = repo.head("main")
    with pytest.raises(Forbidden, match="is not a member"):
        repo.ingest.accept_move(move(repo, ALICE, "alice", root, 10**12))
    repo.invite(OWNER, ALICE.public_key, "contributor")
    assert repo.ingest.accept_move(move(repo, ALICE, "alice", root, 10**12))
    with pytest.raises(Forbidden, match="moving branch main needs the role maintainer"):
        repo.ingest.accept_move(move(repo, ALICE, "main", root, 10**12))
    with pytest.raises(IntegrityError, match="epoch 3"):
        repo.ingest.accept_move(move(repo, ALICE, "alice", root, 10**12, epoch=3))
    with pytest.raises(CommitNotFound):
        repo.ingest.accept_move(move(repo, OWNER, "main", "ab" * 32, 10**12))


def test_a_local_move_never_predates_the_one_it_replaces():
    repo = RepoSet.in_memory(OWNER).create("r", tiny_state(0))
    future = move(repo, OWNER, "main", repo.head("main"), now_ms() + 60_000)  # a peer's clock a minute ahead
    assert repo.ingest.accept_move(future)
    with pytest.raises(IntegrityError, match="ahead of this node's clock"):
        repo.ingest.accept_move(move(repo, OWNER, "main", repo.head("main"), now_ms() + MAX_CLOCK_SKEW_MS + 60_000))
    commit = repo.commit_weights(OWNER, tiny_state(1), message="after")
    assert repo.head("main") == commit.id and repo.branch_move("main").comes_after(future)


def test_reset_points_a_branch_anywhere_with_a_signed_move_and_a_role_check():
    repo = RepoSet.in_memory(OWNER).create("r", tiny_state(0))
    root = repo.head("main")
    second = repo.commit_weights(OWNER, tiny_state(1), message="x").id
    move = repo.reset_branch(OWNER, "main", root)
    assert (repo.head("main"), move.previous, move.commit) == (root, second, root)
    repo.invite(OWNER, ALICE.public_key, "contributor")
    theirs = Repository.open(repo.id, repo.objects, repo.blocks, repo.refs, reader=ALICE)
    with pytest.raises(Forbidden, match="moving branch main needs the role maintainer"):
        theirs.reset_branch(ALICE, "main", second)
    with pytest.raises(NotFound):
        repo.reset_branch(OWNER, "nowhere", root)
