"""Repositories of LoRA adapters (``storage.adapters``): created on a commit of a base repository, committed and
checked out as PEFT adapters, and merged (branches, reverts, rounds) as what the adapters change, never factor by
factor. Every expectation is the exact change, computed here in float64 from the factors."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from flair_node.core import encoding
from flair_node.core.errors import IntegrityError, InvalidInput, MergeError
from flair_node.core.identity import Identity
from flair_node.core.objects import AdapterSpec, RepositoryRecord
from flair_node.core.round_rules import RoundPolicy
from flair_node.protocol import round_merges, rounds
from flair_node.storage import adapters
from flair_node.storage.repo import Repository
from flair_node.storage.repos import RepoSet
from flair_node.tensors.lora import (
    LoraAdapter,
    adapter_delta,
    adapter_tensors,
    load_adapter,
    read_adapter,
    save_adapter,
)

OWNER = Identity.generate()
MEMBERS = [Identity.generate() for _ in range(3)]
#: Module path -> (out, in), as the base model's ``<path>.weight`` holds it.
MODULES = {"layers.0.q_proj": (12, 8), "layers.0.v_proj": (6, 8)}
ALPHA, RANK = 8, 2


def base_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    state = {f"{path}.weight": torch.randn(*shape, generator=g) for path, shape in MODULES.items()}
    state["layers.0.norm.weight"] = torch.ones(8)
    return state


def config(rank: int = RANK, alpha: float = ALPHA, **extra: object) -> dict[str, object]:
    return {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": ["q_proj", "v_proj"],
            "bias": "none", "task_type": None, "lora_dropout": 0.0, **extra}


def peft(seed: int, rank: int = RANK, alpha: float = ALPHA, *, zero_b: bool = False,
         modules: dict[str, tuple[int, int]] = MODULES, **extra: object) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for path, (n_out, n_in) in modules.items():
        tensors[f"base_model.model.{path}.lora_A.weight"] = torch.randn(rank, n_in, generator=g)
        b = torch.randn(n_out, rank, generator=g)
        tensors[f"base_model.model.{path}.lora_B.weight"] = torch.zeros_like(b) if zero_b else b
    return read_adapter(tensors, config(rank, alpha, **extra))


def trained(start: LoraAdapter, seed: int) -> LoraAdapter:
    """``start`` after some training: both factors moved, the config kept (as PEFT saves it)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in adapter_tensors(start).items()}
    return read_adapter(tensors, dict(start.config))


def delta(a: LoraAdapter) -> dict[str, torch.Tensor]:
    return adapter_delta(a)


def assert_change(adapter: LoraAdapter, expected: dict[str, torch.Tensor], tolerance: float = 1e-5) -> None:
    got = delta(adapter)
    assert set(got) == set(expected)
    for path in got:
        assert torch.allclose(got[path], expected[path], atol=tolerance, rtol=tolerance), path


def combination(*terms: tuple[LoraAdapter, float]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for a, c in terms:
        for path, d in delta(a).items():
            out[path] = out.get(path, torch.zeros_like(d)) + c * d
    return out


def adapter_team(policy: RoundPolicy | None = None, *, max_rank: int | None = None
                 ) -> tuple[RepoSet, Repository, Repository]:
    repos = RepoSet.in_memory(OWNER)
    base = repos.create("base", base_state())
    repo = repos.create_adapter("tuned", peft(0, zero_b=True), "base", max_rank=max_rank)
    for member in MEMBERS:
        repo.invite(OWNER, member.public_key, "maintainer")
    if policy is not None:
        repo.set_policy(OWNER, policy)
    return repos, base, repo


def as_node(repos: RepoSet, repo: Repository, identity: Identity) -> Repository:
    return Repository.open(repo.id, repos.objects, repos.blocks, repo.refs, reader=identity)


def commit_adapter(repo: Repository, a: LoraAdapter, message: str, branch: str = "main", examples: int = 0):
    spec = repo.record.adapter
    assert spec is not None
    return repo.commit_weights(OWNER, adapters.accept(spec, repo.record.layout, a), message=message, branch=branch,
                               examples=examples)


def contribute_adapter(repos: RepoSet, repo: Repository, member: Identity, a: LoraAdapter, examples: int,
                       **options: object):
    """``member``'s contribution of adapter ``a`` to main's rounds, from its own node."""
    spec = repo.record.adapter
    assert spec is not None
    return as_node(repos, repo, member).contribute(member, adapters.accept(spec, repo.record.layout, a),
                                                   examples=examples, **options)


# --- the record ---------------------------------------------------------------------------------------------------

def test_an_adapter_repository_names_its_base_and_config_in_its_signed_record() -> None:
    _, base, repo = adapter_team()
    spec = repo.record.adapter
    assert spec is not None
    assert (spec.base_repo, spec.base_commit, spec.rank, spec.max_rank) == (base.id, base.head("main"), RANK, 256)
    assert json.loads(spec.config)["r"] == RANK and json.loads(spec.config)["lora_alpha"] == ALPHA
    decoded = RepositoryRecord.decode(repo.record.encode())
    decoded.verify(repo.id)
    assert decoded.adapter == spec
    assert base.record.adapter is None and "adapter" not in base.record.body()  # whole-model records unchanged


@pytest.mark.parametrize(("change", "message"), [
    ({"rank": 0}, "rank"), ({"max_rank": 1 << 20}, "max_rank"), ({"config": "[1]"}, "JSON object"),
    ({"config": "{" * 50}, "JSON"), ({"config": "x" * (65 << 10)}, "at most"), ({"base_repo": "zz"}, "hex id"),
    ({"extra": 1}, "unknown fields"),
])
def test_a_record_with_a_malformed_adapter_is_refused(change: dict[str, object], message: str) -> None:
    _, _, repo = adapter_team()
    outer = encoding.decode(repo.record.encode())
    outer["body"]["adapter"].update(change)
    with pytest.raises(IntegrityError, match=message):
        RepositoryRecord.decode(encoding.encode(outer))


# --- creating, committing, checking out ---------------------------------------------------------------------------

def test_an_adapter_that_does_not_fit_the_base_model_is_refused() -> None:
    repos = RepoSet.in_memory(OWNER)
    repos.create("base", base_state())
    with pytest.raises(InvalidInput, match="has no tensor layers.0.k_proj.weight"):
        repos.create_adapter("t", peft(0, modules={**MODULES, "layers.0.k_proj": (6, 8)}), "base")
    with pytest.raises(InvalidInput, match="12 x 9 float matrix"):
        repos.create_adapter("t", peft(0, modules={"layers.0.q_proj": (12, 9)}), "base")
    with pytest.raises(InvalidInput, match="rank <= max_rank"):
        repos.create_adapter("t", peft(0), "base", rank=8, max_rank=4)


def test_commits_check_out_as_the_peft_adapter_bit_for_bit(tmp_path: Path) -> None:
    _, _, repo = adapter_team()
    first = peft(1)
    commit = commit_adapter(repo, first, "first training")
    folder = tmp_path / "out"
    written = adapters.write_peft(repo, commit.id, folder)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(files) == ["adapter_config.json", "adapter_model.safetensors"] and written == sum(
        map(len, files.values()))
    back = load_adapter(files["adapter_model.safetensors"], files["adapter_config.json"])
    for key, tensor in adapter_tensors(first).items():
        assert torch.equal(adapter_tensors(back)[key], tensor)
    assert back.config == {**first.config, "r": RANK, "lora_alpha": ALPHA, "use_rslora": False}
    assert (folder.stat().st_mode & 0o777, (folder / "adapter_config.json").stat().st_mode & 0o777) == (0o700, 0o600)


@pytest.mark.parametrize(("bad", "message"), [
    (lambda: peft(1, rank=RANK, alpha=ALPHA * 2), "scaling"),
    (lambda: peft(1, use_rslora=True), "use_rslora"),
    (lambda: peft(1, target_modules=["q_proj"]), "target_modules"),
    (lambda: peft(1, modules={"layers.0.q_proj": (12, 8)}), "missing from"),
    (lambda: peft(1, modules={**MODULES, "layers.0.k_proj": (6, 8)}), "not among"),
    (lambda: peft(1, modules={"layers.0.q_proj": (12, 8), "layers.0.v_proj": (7, 8)}), "only the rank"),
])
def test_an_adapter_that_is_not_this_repositorys_is_refused(bad, message: str) -> None:
    _, _, repo = adapter_team()
    with pytest.raises(InvalidInput, match=message):
        commit_adapter(repo, bad(), "wrong")


def test_tensors_that_are_not_an_adapter_of_the_repository_are_never_committed() -> None:
    _, _, repo = adapter_team()
    tensors = adapter_tensors(peft(1))
    a_key = "base_model.model.layers.0.q_proj.lora_A.weight"
    uneven = {**tensors, a_key: torch.randn(RANK + 1, 8)}
    for state, message in [(uneven, "ranks \\[2, 3\\]"), ({**tensors, a_key: torch.full((RANK, 8), float("nan"))},
                                                       "not finite")]:
        with pytest.raises(InvalidInput, match=message):
            repo.commit_weights(OWNER, state, message="bad")


def test_the_merged_checkout_is_the_base_with_the_change_added(tmp_path: Path) -> None:
    from flair_node.storage.history import write_file
    from flair_node.tensors.safetensors_io import load_file

    repos, base, repo = adapter_team()
    a = peft(3)
    commit = commit_adapter(repo, a, "trained")
    spec = repo.record.adapter
    assert spec is not None
    out = tmp_path / "merged.safetensors"
    write_file(adapters.merged_source(base, spec.base_commit, adapters.read(repo, commit.id)), out)
    merged, weights = load_file(out), base_state()
    assert set(merged) == set(weights)
    assert torch.equal(merged["layers.0.norm.weight"], weights["layers.0.norm.weight"])
    for path, change in delta(a).items():
        assert torch.allclose(merged[f"{path}.weight"].double(), weights[f"{path}.weight"].double() + change,
                              atol=1e-6)


# --- merges and reverts -------------------------------------------------------------------------------------------

def merged_branches(repo: Repository, examples: tuple[int, int]):
    """Two branches trained from one adapter, ``examples`` on each, merged (mean): their adapters, the merge."""
    start = peft(1)
    commit_adapter(repo, start, "start")
    repo.create_branch(OWNER, "other", repo.head("main"))
    ours, theirs = trained(start, 10), trained(start, 11)
    commit_adapter(repo, ours, "ours", examples=examples[0])
    commit_adapter(repo, theirs, "theirs", branch="other", examples=examples[1])
    return ours, theirs, repo.merge(OWNER, ["other"], "main")


def test_a_branch_merge_adds_each_sides_change_exactly_and_stacks_the_ranks() -> None:
    _, _, repo = adapter_team()
    ours, theirs, merged = merged_branches(repo, (30, 10))
    assert merged.meta["lora"] == "stack"
    result = adapters.read(repo, merged.id)
    # mean: Δ_start + ¾ (Δ_ours − Δ_start) + ¼ (Δ_theirs − Δ_start) = ¾ Δ_ours + ¼ Δ_theirs
    assert result.rank == 2 * RANK
    assert_change(result, combination((ours, 0.75), (theirs, 0.25)))
    # a later commit trains from the merged (rank 4) adapter: only the rank changed
    commit_adapter(repo, trained(result, 12), "after the merge")


def test_a_revert_takes_one_change_away_exactly() -> None:
    _, _, repo = adapter_team()
    one, two = peft(1), peft(2)
    commit_adapter(repo, one, "one")
    c2 = commit_adapter(repo, two, "two")
    three = trained(two, 5)
    commit_adapter(repo, three, "three")
    reverted = repo.revert(OWNER, c2.id)
    assert_change(adapters.read(repo, reverted.id), combination((three, 1), (one, 1), (two, -1)))
    # reverting the head gives its parent back, bit for bit
    head_revert = repo.revert(OWNER, reverted.id)
    for key, tensor in adapter_tensors(three).items():
        assert torch.equal(repo.materialize(head_revert.id)[key], tensor)


def test_above_max_rank_a_merge_is_the_best_adapter_of_the_record_rank() -> None:
    _, _, repo = adapter_team(max_rank=3)
    ours, theirs, merged = merged_branches(repo, (1, 1))
    result = adapters.read(repo, merged.id)
    assert (merged.meta["lora"], result.rank) == ("svd", RANK)
    exact = combination((ours, 0.5), (theirs, 0.5))
    for path, change in delta(result).items():  # Eckart–Young: no rank-2 adapter is closer
        best = torch.linalg.svdvals(exact[path])[RANK:].square().sum().sqrt()
        assert torch.linalg.matrix_norm(change - exact[path]) <= best * (1 + 1e-4) + 1e-6


def test_combine_adds_a_commit_named_twice_and_refuses_changes_that_cancel() -> None:
    _, _, repo = adapter_team()
    c = commit_adapter(repo, peft(1), "one")
    state, method = adapters.combine(repo, [(c.id, Fraction(1, 2)), (c.id, Fraction(1, 2))])
    assert method == "stack" and all(torch.equal(state[k], v) for k, v in repo.materialize(c.id).items())
    with pytest.raises(MergeError, match="cancel"):
        adapters.combine(repo, [(c.id, Fraction(1)), (c.id, Fraction(-1))])


# --- rounds -------------------------------------------------------------------------------------------------------

def test_a_round_merges_the_weighted_mean_of_the_changes_and_every_member_re_derives_it() -> None:
    memory = rounds.RoundMemory()
    repos, _, repo = adapter_team(RoundPolicy(buffer=3))
    start = adapters.read(repo, repo.head("main"))
    contributed = {}
    for i, member in enumerate(MEMBERS):
        mine = trained(start, 20 + i)
        commit = contribute_adapter(repos, repo, member, mine, 100 * (i + 1))
        contributed[commit.id] = (mine, i + 1)
    current = rounds.view(repo, "main", memory=memory)
    aggregator = next(i for i in [OWNER, *MEMBERS] if i.public_key == current.aggregator(current.opened_ms + 1))
    merged = rounds.merge(as_node(repos, repo, aggregator), aggregator, "main", memory=memory)
    assert merged.meta["lora"] == "stack"
    # fresh contributions: Σ wᵢ Δᵢ with weights ∝ examples (1:2:3, as 16-bit integer weights)
    taken = {entry[0]: entry[3] / (1 << 16) for entry in merged.meta["contributions"]}
    assert {cid: round(w * 6, 3) for cid, w in taken.items()} == {cid: n for cid, (_, n) in contributed.items()}
    assert_change(adapters.read(repo, merged.id),
                  combination(*((contributed[cid][0], w) for cid, w in taken.items())))
    for other in [OWNER, *MEMBERS]:
        if other != aggregator:
            rounds.verify(as_node(repos, repo, other), merged, memory=rounds.RoundMemory())


def test_a_stale_contribution_adds_its_own_change_to_the_new_head_at_a_shorter_step() -> None:
    memory = rounds.RoundMemory()
    repos, _, repo = adapter_team(RoundPolicy(buffer=1))
    old_head = repo.head("main")
    start = adapters.read(repo, old_head)

    def merge_round():
        current = rounds.view(repo, "main", memory=memory)
        who = next(i for i in [OWNER, *MEMBERS] if i.public_key == current.aggregator(current.opened_ms + 1))
        return rounds.merge(as_node(repos, repo, who), who, "main", memory=memory)

    first = trained(start, 50)
    contribute_adapter(repos, repo, MEMBERS[0], first, 8)
    round_one = merge_round()
    late = trained(start, 51)  # trained from the head before round one
    contribute_adapter(repos, repo, MEMBERS[1], late, 8, base=old_head)
    round_two = merge_round()
    assert round_two.meta["contributions"][0][2] == 1  # one round stale
    step = round_two.meta["step"] / (1 << 16)
    assert 0 < step < 1
    assert_change(adapters.read(repo, round_two.id),
                  combination((adapters.read(repo, round_one.id), 1), (late, step), (start, -step)))
    rounds.verify(as_node(repos, repo, MEMBERS[2]), round_two, memory=rounds.RoundMemory())


def test_a_round_merge_that_averages_the_factors_is_refused() -> None:
    memory = rounds.RoundMemory()
    repos, _, repo = adapter_team(RoundPolicy(buffer=2))
    start = adapters.read(repo, repo.head("main"))
    contributions = []
    for i, member in enumerate(MEMBERS[:2]):
        mine = trained(start, 30 + i)
        contributions.append(mine)
        contribute_adapter(repos, repo, member, mine, 10)
    current = rounds.view(repo, "main", memory=memory)
    state, meta = round_merges.derive(repo, current, current.pending, memory=memory)
    # what FedIT would publish: the factors averaged apart, at the contributors' rank
    fedit = {k: (adapter_tensors(contributions[0])[k] + adapter_tensors(contributions[1])[k]) / 2
             for k in adapter_tensors(contributions[0])}
    aggregator = next(i for i in [OWNER, *MEMBERS] if i.public_key == current.aggregator(current.opened_ms + 1))
    forged = as_node(repos, repo, aggregator).write_round(
        aggregator, fedit, branch="main", parents=(current.head, *sorted(c.commit for c in current.pending)),
        meta=meta, message="averaged factors")
    other = next(i for i in [OWNER, *MEMBERS] if i != aggregator)
    with pytest.raises(rounds.MergeMismatch, match="not what its inputs merge to"):
        rounds.verify(as_node(repos, repo, other), forged, memory=rounds.RoundMemory())
    assert set(state) == set(fedit)


def test_an_svd_round_merge_is_re_derived_to_its_tolerance_and_a_nudged_one_is_refused() -> None:
    memory = rounds.RoundMemory()
    repos, _, repo = adapter_team(RoundPolicy(buffer=2), max_rank=3)
    spec = repo.record.adapter
    assert spec is not None
    start = adapters.read(repo, repo.head("main"))
    for i, member in enumerate(MEMBERS[:2]):
        contribute_adapter(repos, repo, member, trained(start, 60 + i), 10)
    current = rounds.view(repo, "main", memory=memory)
    state, meta = round_merges.derive(repo, current, current.pending, memory=memory)
    assert meta["lora"] == "svd" and adapters.adapter_of(spec, repo.record.layout, state).rank == RANK
    who = next(i for i in [OWNER, *MEMBERS] if i.public_key == current.aggregator(current.opened_ms + 1))
    other = next(i for i in [OWNER, *MEMBERS] if i != who)
    parents = (current.head, *sorted(c.commit for c in current.pending))
    node = as_node(repos, repo, who)
    nudged = {k: v * 1.01 if k.endswith("lora_B.weight") else v for k, v in state.items()}
    forged = node.write_round(who, nudged, branch="main", parents=parents, meta=meta, message="nudged by 1 %")
    with pytest.raises(rounds.MergeMismatch, match="not what its inputs merge to"):
        rounds.verify(as_node(repos, repo, other), forged, memory=rounds.RoundMemory())
    repo.reset_branch(OWNER, "main", current.head)
    honest = node.write_round(who, state, branch="main", parents=parents, meta=meta, message="as derived")
    rounds.verify(as_node(repos, repo, other), honest, memory=rounds.RoundMemory())


def test_a_secure_round_merge_of_adapters_is_refused() -> None:
    from flair_node.protocol import secure_merges

    _, _, repo = adapter_team()
    forged = repo.write_round(OWNER, repo.materialize(repo.head("main")), branch="main",
                              parents=(repo.head("main"),), meta={"secure": {"unmask": "0" * 64, "reveals": []}},
                              message="a masked sum of factors")
    with pytest.raises(rounds.MergeMismatch, match="LoRA adapters"):
        secure_merges.verify(repo, forged, repo.secure, memory=rounds.RoundMemory())


def test_rounds_over_adapters_refuse_policies_that_work_on_whole_models() -> None:
    _, _, repo = adapter_team()
    for policy, what in [(RoundPolicy(strategy="median"), "median"), (RoundPolicy(privacy="secure",
                                                                                  max_staleness=0), "secure"),
                         (RoundPolicy(norm_bound="1.0"), "norm bounds")]:
        with pytest.raises(InvalidInput, match=what):
            repo.set_policy(OWNER, policy)


def test_a_contribution_that_is_not_an_adapter_of_the_repository_is_excluded_not_merged() -> None:
    memory = rounds.RoundMemory()
    repos, _, repo = adapter_team(RoundPolicy(buffer=2))
    start = adapters.read(repo, repo.head("main"))
    spec = repo.record.adapter
    assert spec is not None
    good = trained(start, 40)
    contribute_adapter(repos, repo, MEMBERS[0], good, 5)
    huge = {k: v * 1e9 for k, v in adapter_tensors(trained(start, 41)).items()}
    as_node(repos, repo, MEMBERS[1]).contribute(MEMBERS[1], huge, examples=5)
    current = rounds.view(repo, "main", memory=memory)
    state, meta = round_merges.derive(repo, current, current.pending, memory=memory)
    assert [reason for _, reason in meta["excluded"]] == ["out of range"]
    assert_change(adapters.adapter_of(spec, repo.record.layout, state), delta(good))


def test_saved_files_round_trip_through_accept() -> None:
    _, _, repo = adapter_team()
    spec = repo.record.adapter
    assert spec is not None
    files = save_adapter(peft(9))
    state = adapters.accept(spec, repo.record.layout,
                            load_adapter(files["adapter_model.safetensors"], files["adapter_config.json"]))
    assert all(torch.equal(state[k], v) for k, v in adapter_tensors(peft(9)).items())


def test_an_adapter_spec_is_checked_when_made() -> None:
    with pytest.raises(InvalidInput, match="rank"):
        AdapterSpec("a" * 64, "b" * 64, "{}", 5, 4)
