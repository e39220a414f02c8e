"""Layout changes: a commit may add, remove or reshape tensors (a new head, a resized vocabulary); checkouts stay
bit for bit, diffs say what changed, and merges and reverts follow git's rule for a change made on one side."""

from __future__ import annotations

import pytest
import torch

from flair_node.core.errors import LayoutMismatch, MergeError
from flair_node.core.identity import Identity
from flair_node.storage import unixfs
from flair_node.storage.repos import RepoSet

OWNER = Identity.generate()


def model(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"embed": torch.randn(100, 8, generator=g), "body": torch.randn(8, 8, generator=g),
            "head": torch.randn(3, 8, generator=g), "steps": torch.tensor(7)}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bit for bit."""
    def bits(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1).view(torch.uint8)

    return sorted(a) == sorted(b) and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                          and bits(a[k]).equal(bits(b[k])) for k in a)


@pytest.fixture
def repo():
    return RepoSet.in_memory(OWNER).create("layouts", model())


def test_commits_add_remove_and_reshape_tensors_and_every_one_checks_out_bit_for_bit(repo):
    states = [model()]
    grown = {**states[-1], "embed": torch.randn(120, 8), "head2": torch.randn(5, 8)}  # resized vocabulary, new head
    shrunk = {k: v for k, v in grown.items() if k != "head"}
    retyped = {**shrunk, "body": shrunk["body"].to(torch.bfloat16)}
    commits = [repo.head("main")]
    for state in (grown, shrunk, retyped):
        commits.append(repo.commit_weights(OWNER, state, message="layout").id)
        states.append(state)
    repo.drop_caches()
    for cid, state in zip(commits, states, strict=True):
        assert same(repo.materialize(cid), state)
        assert [s.name for s in repo.layout(cid)] == sorted(state)
    changes = {t["name"]: t for t in repo.diff(commits[0], commits[3])}
    assert changes["embed"]["change"] == "layout" and changes["embed"]["after"] == ["F32", [120, 8]]
    assert changes["head"] == {"name": "head", "change": "removed", "before": ["F32", [3, 8]], "after": None}
    assert changes["head2"]["change"] == "added" and changes["body"]["after"] == ["BF16", [8, 8]]
    assert changes["steps"]["change"] == "values" and changes["steps"]["changed"] == 0


def test_a_delta_or_a_contribution_must_hold_its_parents_tensors(repo):
    grown = {**model(), "head2": torch.randn(5, 8)}
    with pytest.raises(LayoutMismatch, match="head2 is not in"):
        repo.commit_weights(OWNER, grown, message="lossy", codec="int8-v1")
    with pytest.raises(LayoutMismatch, match="head2 is not in"):
        repo.contribute(OWNER, grown, examples=10)
    after = repo.commit_weights(OWNER, grown, message="grown")
    again = {**grown, "head2": grown["head2"] + 1}
    exact = repo.commit_weights(OWNER, again, message="a delta on the new layout", codec="bitdelta-v1")
    repo.drop_caches()
    assert same(repo.materialize(exact.id), again) and repo.commit(after.id).parents


def branch_with(repo, name: str, state: dict[str, torch.Tensor]) -> None:
    repo.create_branch(OWNER, name, repo.resolve("main"))
    repo.commit_weights(OWNER, state, message=name, branch=name)


def test_a_merge_takes_a_layout_change_made_on_one_side_and_merges_the_values_of_the_rest(repo):
    base = model()
    branch_with(repo, "grow", {**base, "head2": torch.randn(5, 8), "embed": torch.randn(120, 8)})
    branch_with(repo, "drop", {k: v for k, v in base.items() if k != "head"})
    repo.commit_weights(OWNER, {**base, "body": base["body"] + 2}, message="tune")
    merged = repo.merge(OWNER, ["grow", "drop"], "main", strategy="task-arithmetic")
    state = repo.materialize(merged.id)
    grow = repo.materialize(repo.resolve("grow"))
    assert sorted(state) == ["body", "embed", "head2", "steps"]
    assert torch.equal(state["head2"], grow["head2"]) and torch.equal(state["embed"], grow["embed"])
    assert torch.equal(state["body"], base["body"] + 2)
    reverted = repo.revert(OWNER, repo.resolve("grow"), branch="grow")  # undoes the new head and the vocabulary
    assert same(repo.materialize(reverted.id), base)


@pytest.mark.parametrize("left, right, message", [
    (lambda s: s.pop("head"), lambda s: s.update(head=s["head"] + 1), "head is removed on one side and changed"),
    (lambda s: s.update(head2=torch.ones(2)), lambda s: s.update(head2=torch.zeros(2)),
     "head2 is added on two sides with different values"),
    (lambda s: s.update(embed=torch.zeros(120, 8)), lambda s: s.update(embed=torch.zeros(130, 8)),
     "embed: the inputs change its shape"),
    (lambda s: s.update(embed=torch.zeros(120, 8)), lambda s: s.update(embed=s["embed"] * 2),
     "embed is reshaped on one side and changed on another"),
])
def test_conflicting_layout_changes_are_refused_naming_the_tensor(repo, left, right, message):
    for name, change in (("left", left), ("right", right)):
        state = model()
        change(state)
        branch_with(repo, name, state)
    head = repo.head("left")
    with pytest.raises(MergeError, match=message):
        repo.merge(OWNER, ["right"], "left")
    assert repo.head("left") == head


def test_the_same_layout_change_on_both_sides_merges(repo):
    for name in ("left", "right"):
        branch_with(repo, name, {**model(), "head2": torch.ones(5, 8)})
    merged = repo.materialize(repo.merge(OWNER, ["right"], "left").id)
    assert torch.equal(merged["head2"], torch.ones(5, 8))


def test_a_repository_is_described_by_mains_layout_and_by_its_first_where_main_does_not_read(repo):
    from flair_node.api.views import repo_json

    first = repo_json(repo)
    assert (first["tensors"], first["parameters"]) == (4, 800 + 64 + 24 + 1)
    repo.commit_weights(OWNER, {**model(), "embed": torch.randn(120, 8), "head2": torch.randn(5, 8)}, message="grown")
    grown = repo_json(repo)
    assert (grown["tensors"], grown["parameters"]) == (5, 960 + 64 + 24 + 1 + 40)
    head = repo.commit(repo.head("main"))
    for key in unixfs.block_keys(repo.blocks, head.payload.cid, max_size=head.payload.size):
        repo.blocks.delete_key(key)  # main's payload not here (yet): the first commit's layout, not an error
    repo.drop_caches()
    assert repo_json(repo)["tensors"] == 4
