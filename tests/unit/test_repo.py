"""The repository: commits, branches, checkout, merge, revert, fsck, on memory and disk stores alike."""

import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flair_node.core import graph
from flair_node.core.cid import parse_cid
from flair_node.core.errors import (
    CommitNotFound,
    LayoutMismatch,
    MergeError,
    NotFound,
    RefConflict,
    RepositoryNotFound,
)
from flair_node.core.identity import Identity
from flair_node.storage.repos import RepoSet
from flair_node.tensors.fixedpoint import combine
from flair_node.testing.commit_graph import build_commit_graph, tiny_state

ME = Identity.generate()


def same(a, b):
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and torch.equal(a[k].view(torch.uint8) if a[k].dtype != torch.bool else a[k],
                        b[k].view(torch.uint8) if b[k].dtype != torch.bool else b[k])
        for k in a)


@pytest.fixture(params=["memory", "disk"])
def repos(request, tmp_path):
    return RepoSet.in_memory(ME) if request.param == "memory" else RepoSet.on_disk(tmp_path / "home", ME)


@pytest.fixture
def repo(repos):
    return repos.create("tiny", tiny_state(0))


def test_create_and_find(repos, repo):
    assert repos.open(repo.id) is repo
    assert repos.open(repo.id[:8]) is repo
    assert repos.open("tiny") is repo
    with pytest.raises(RepositoryNotFound):
        repos.open("nope")
    assert same(repo.materialize(repo.head("main")), tiny_state(0))
    assert repo.commit(repo.head("main")).kind == "init"


def test_commit_and_checkout_are_exact(repo):
    c1 = repo.commit_weights(ME, tiny_state(1), message="one", examples=5, metrics={"acc": 0.5})
    assert repo.head("main") == c1.id
    assert c1.parents == (repo.log([c1.id])[1].id,)
    assert same(repo.materialize(c1.id), tiny_state(1))
    assert dict(c1.metrics) == {"acc": "0.5"}
    assert repo.resolve(c1.id[:6]) == c1.id
    assert repo.resolve("main") == c1.id
    c2 = repo.commit_weights(ME, tiny_state(2), message="two")
    root = c1.parents[0]
    assert repo.resolve("main~1") == repo.resolve("main^") == c1.id
    assert repo.resolve("main~2") == repo.resolve(f"{c2.id[:8]}^^") == root
    assert repo.resolve("main~0") == c2.id
    with pytest.raises(CommitNotFound, match="no parent"):
        repo.resolve("main~3")


def test_a_delta_of_another_layout_names_the_tensor(repo):
    bad = tiny_state(1)
    bad["w"] = torch.zeros(4, 4)
    with pytest.raises(LayoutMismatch, match="w"):
        repo.commit_weights(ME, bad, message="bad", codec="bitdelta-v1")
    bad = tiny_state(1)
    bad["extra"] = torch.zeros(1)
    with pytest.raises(LayoutMismatch, match="extra"):
        repo.commit_weights(ME, bad, message="bad", codec="int8-v1")


def test_stale_head_conflicts(repo):
    base = repo.head("main")
    repo.commit_weights(ME, tiny_state(1), message="one")
    with pytest.raises(RefConflict, match="moved"):
        repo.commit_weights(ME, tiny_state(2), message="two", expected_head=base)


def test_concurrent_commits_one_wins_none_lost(repo):
    results, barrier = [], threading.Barrier(4)

    def work(i):
        head = repo.head("main")
        barrier.wait()
        try:
            results.append(repo.commit_weights(ME, tiny_state(10 + i), message=f"c{i}", expected_head=head).id)
        except RefConflict:
            results.append(None)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r]
    assert len(winners) == 1 and repo.head("main") == winners[0]


def test_branches(repo):
    root = repo.head("main")
    repo.create_branch(ME, "alice", root)
    with pytest.raises(RefConflict):
        repo.create_branch(ME, "alice", root)
    with pytest.raises(NotFound, match="no branch 'bob'"):
        repo.head("bob")
    repo.commit_weights(ME, tiny_state(1), message="a", branch="alice")
    assert repo.head("main") == root and repo.head("alice") != root


def test_merge_average_weights_by_examples_and_is_rederivable(repo):
    root = repo.head("main")
    for name, seed, n in [("alice", 1, 30), ("bob", 2, 10)]:
        repo.create_branch(ME, name, root)
        repo.commit_weights(ME, tiny_state(seed), message=name, branch=name, examples=n)
    merged = repo.merge(ME, ["alice", "bob"], "main")
    assert merged.parents == (root, repo.head("alice"), repo.head("bob"))
    assert merged.meta["weights"] == [0, 49152, 16384] and merged.meta["base"] == root
    again = combine(repo.materialize(root), [repo.materialize(p) for p in merged.parents],
                    merged.meta["weights"], scale_bits=merged.meta["scale_bits"],
                    weight_bits=merged.meta["weight_bits"])
    assert same(again, repo.materialize(merged.id))
    expected = 0.75 * tiny_state(1)["w"].double() + 0.25 * tiny_state(2)["w"].double()
    assert torch.allclose(repo.materialize(merged.id)["w"].double(), expected, atol=1e-6)
    with pytest.raises(MergeError, match="already contained"):
        repo.merge(ME, ["alice"], "main")


def test_task_arithmetic_adds_changes(repo):
    root = repo.head("main")
    base = tiny_state(0)
    for name, delta in [("a", 0.5), ("b", 0.25)]:
        repo.create_branch(ME, name, root)
        repo.commit_weights(ME, {"w": base["w"] + delta, "b": base["b"]}, message=name, branch=name)
    merged = repo.merge(ME, ["a", "b"], "main", strategy="task-arithmetic")
    state = repo.materialize(merged.id)
    assert torch.allclose(state["w"], base["w"] + 0.75, atol=1e-6)
    assert same({"b": state["b"]}, {"b": base["b"]})  # untouched tensors keep their exact bits


def test_merge_base_on_a_built_graph(repo):
    ids = build_commit_graph(repo, ME, [[1], [2, 1], [3, 1], [4, 2, 3], [5, 2]])
    assert graph.merge_base(ids[4], ids[5], repo.parents, repo._timestamp) == ids[2]
    assert graph.merge_base(ids[2], ids[3], repo.parents, repo._timestamp) == ids[1]
    walked = list(graph.walk([ids[4], ids[5]], repo.parents, repo._timestamp))
    assert walked.index(ids[4]) < walked.index(ids[2]) < walked.index(ids[1])


def test_revert_gives_parent_exactly_and_checks_branch(repo):
    root = repo.head("main")
    c1 = repo.commit_weights(ME, tiny_state(1), message="bad update")
    undone = repo.revert(ME, c1.id)
    assert same(repo.materialize(undone.id), repo.materialize(root))
    repo.create_branch(ME, "other", root)
    c2 = repo.commit_weights(ME, tiny_state(2), message="x", branch="other")
    with pytest.raises(Exception, match="not on branch main"):
        repo.revert(ME, c2.id)
    with pytest.raises(Exception, match="first commit"):
        repo.revert(ME, root)


dtypes = st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 2**31), min_size=1, max_size=12), dtypes)
def test_long_histories_check_out_bit_for_bit(repos, seeds, dtype):
    def state(seed):
        g = torch.Generator().manual_seed(seed)
        x = (torch.randn(5, 7, generator=g) * 10 ** torch.randint(-6, 4, (5, 7), generator=g)).to(dtype)
        x[0, 0] = float("nan") if seed % 3 == 0 else -0.0
        return {"x": x, "steps": torch.tensor([seed], dtype=torch.int64)}

    repo = repos.create(f"h{len(repos.all())}", state(0))
    committed = []
    for seed in seeds:
        committed.append((repo.commit_weights(ME, state(seed), message=str(seed)).id, seed))
    repo._states.clear()
    for cid, seed in committed:
        assert same(repo.materialize(cid), state(seed))
    last, parent = committed[-1][0], (committed[-2][0] if len(committed) > 1 else repo.parents(committed[0][0])[0])
    assert same(repo.materialize(repo.revert(ME, last).id), repo.materialize(parent))


def test_fsck_clean_then_detects_damage(tmp_path):
    repos = RepoSet.on_disk(tmp_path / "home", ME)
    repo = repos.create("tiny", tiny_state(0))
    c1 = repo.commit_weights(ME, tiny_state(1), message="one")
    checked, problems = repo.fsck()
    assert checked == 2 and problems == []
    key = parse_cid(c1.payload.cid).key
    blob = tmp_path / "home" / "blocks" / key[:2] / key[2:]
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    checked, problems = repo.fsck()
    assert [p.object for p in problems] == [c1.id] and "hash" in problems[0].what
    commit_file = tmp_path / "home" / "objects" / c1.id[:2] / c1.id[2:]
    commit_file.write_bytes(commit_file.read_bytes().replace(b"one", b"two"))
    _, problems = repo.fsck()
    assert problems and problems[0].object == c1.id


def test_unknown_commit(repo):
    with pytest.raises(CommitNotFound):
        repo.resolve("abcdef12")
    for name in ("no-such-branch", "feature/x", "main2~1"):  # not hex: named as what it is, a missing branch
        with pytest.raises(CommitNotFound, match="no branch or commit"):
            repo.resolve(name)
