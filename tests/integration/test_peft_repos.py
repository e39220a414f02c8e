"""Repositories of PEFT LoRA adapters through real daemons: what PEFT saves goes in, what comes out loads in PEFT
and computes what the adapter computed, a merged checkout is PEFT's ``merge_and_unload``, a round over adapters
merges the weighted mean of the changes (not of the factors), and inputs that do not fit are refused with a
message that says why. Nothing is downloaded: the models are built from configs."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from test_cli import flair
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from flair_node.core.errors import FlairError, InvalidInput, RepositoryNotFound
from flair_node.sdk import Repo
from flair_node.tensors.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoraAdapter,
    adapter_delta,
    load_adapter,
    merge_fedit,
)
from flair_node.testing.cluster import address, configure, public_key, wait_until
from flair_node.testing.daemon import running_daemon
from flair_node.testing.models import INPUTS, load_digits_split, make_mlp

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WHOLE = 1 << 16  # round weights are integers out of this
INTERNAL_ERROR = -32603
LLAMA_LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
MLP_LORA = {"r": 4, "lora_alpha": 4, "target_modules": ["0", "2"]}
LossOf = Callable[[nn.Module, torch.Generator], torch.Tensor]


# --- models and adapters ------------------------------------------------------------------------------------------

def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config).eval()


def llama_loss(model: nn.Module, g: torch.Generator) -> torch.Tensor:
    tokens = torch.randint(0, 100, (4, 12), generator=g)
    loss: torch.Tensor = model(input_ids=tokens, labels=tokens).loss
    return loss


def save_state(model: nn.Module, path: Path) -> Path:
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(path))
    return path


def wrap(base: nn.Module, seed: int, **config: object) -> nn.Module:
    """A copy of ``base`` with a fresh PEFT LoRA adapter (PEFT's default initialization: B = 0), from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(copy.deepcopy(base), LoraConfig(**config))  # type: ignore[arg-type]


def train(model: nn.Module, loss_of: LossOf, seed: int, steps: int, lr: float = 0.01) -> nn.Module:
    """A few Adam steps on the trainable (LoRA) parameters of ``model``, in place; returns it in eval mode."""
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_of(model, g).backward()
        optimizer.step()
    return model.eval()


def saved(model: nn.Module, folder: Path) -> Path:
    model.save_pretrained(str(folder), save_embedding_layers=False)
    return folder


def read_folder(folder: Path) -> LoraAdapter:
    return load_adapter((folder / ADAPTER_WEIGHTS).read_bytes(), (folder / ADAPTER_CONFIG).read_bytes())


def assert_same_factors(got: Path, want: Path) -> None:
    mine, theirs = load_file(str(got / ADAPTER_WEIGHTS)), load_file(str(want / ADAPTER_WEIGHTS))
    assert sorted(mine) == sorted(theirs)
    for key in mine:
        assert mine[key].dtype == theirs[key].dtype and torch.equal(mine[key], theirs[key]), key


@torch.no_grad()
def with_delta(base: nn.Module, delta: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``base`` whose adapted modules' weights have ``delta`` (float64) added, rounded once."""
    model = copy.deepcopy(base)
    for path, change in delta.items():
        module = model.get_submodule(path)
        assert isinstance(module, nn.Linear)
        module.weight.copy_((module.weight.double() + change).to(module.weight.dtype))
    return model


def combined(terms: list[tuple[LoraAdapter, float]]) -> dict[str, torch.Tensor]:
    """``Σ cᵢ Δᵢ`` over (adapter, coefficient) ``terms``, in float64."""
    out: dict[str, torch.Tensor] = {}
    for adapter, c in terms:
        for path, d in adapter_delta(adapter).items():
            out[path] = out.get(path, torch.zeros_like(d)) + c * d
    return out


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return float(sum(torch.sum((a[p] - b[p]) ** 2) for p in a)) ** 0.5


def norm(a: dict[str, torch.Tensor]) -> float:
    return float(sum(torch.sum(t ** 2) for t in a.values())) ** 0.5


def refused(call: Callable[[], object], kind: type[FlairError], *fragments: str) -> FlairError:
    """The error ``call`` raises: of ``kind`` (never an internal error), its message holding every fragment."""
    with pytest.raises(FlairError) as caught:
        call()
    error = caught.value
    assert error.code != INTERNAL_ERROR, f"an internal error, not a clear refusal: {error}"
    assert isinstance(error, kind), f"{type(error).__name__} (code {error.code}), not {kind.__name__}: {error}"
    for fragment in fragments:
        assert fragment in str(error), f"{fragment!r} is not in the message: {error}"
    return error


def head(daemon, repo: str, branch: str = "main") -> str | None:
    return daemon.client.call("repo.branch", repo=repo)["branches"].get(branch)


# --- 1. a round trip through one daemon ---------------------------------------------------------------------------

def test_a_peft_adapter_round_trips_through_a_daemon_and_its_merged_checkout_is_merge_and_unload(tmp_path):
    base = tiny_llama()
    tokens = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(9))
    peft_model = train(wrap(base, 1, **LLAMA_LORA), llama_loss, 1, steps=2)
    first = saved(peft_model, tmp_path / "first")
    assert all(bool(t.abs().max() > 0) for k, t in load_file(str(first / ADAPTER_WEIGHTS)).items() if "lora_B" in k)
    configure(tmp_path / "home", [], sync_interval=600.0)
    with running_daemon(tmp_path / "home", timeout=60) as node:
        call = node.client.call
        node.client.timeout = 120
        llama = call("repo.init", name="llama", model_path=str(save_state(base, tmp_path / "base.safetensors")))
        tuned = call("repo.init", name="llama-lora", model_path=str(first), base_repo="llama")
        assert tuned["adapter"] == {"base_repo": llama["repo"], "base_commit": llama["commit"], "rank": 4,
                                    "max_rank": 256}
        assert tuned["tensors"] == 2 * 2 * 2  # A and B of q_proj and v_proj in each of 2 layers

        train(peft_model, llama_loss, 2, steps=2)  # trained further: the adapter committed
        second = saved(peft_model, tmp_path / "second")
        commit = call("repo.commit", repo="llama-lora", weights_path=str(second), message="two more steps",
                      branch="main")
        assert commit["parents"] == [tuned["commit"]]
        out = call("repo.checkout", repo="llama-lora", commit="main", output_path=str(tmp_path / "out"))
        assert out["commit"] == commit["id"]
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
        merged = call("repo.checkout", repo="llama-lora", commit="main", merged=True,
                      output_path=str(tmp_path / "merged.safetensors"))
        assert merged["base"] == llama["commit"]

        # the SDK: the same adapter as tensors, a folder checked out, and a folder committed
        sdk = Repo.connect(tmp_path / "home", "llama-lora")
        assert sdk.adapter is not None and sdk.adapter["base_repo"] == llama["repo"]
        pulled = sdk.pull("main")
        assert pulled.keys() == load_file(str(second / ADAPTER_WEIGHTS)).keys()
        assert all(torch.equal(pulled[k], t) for k, t in load_file(str(second / ADAPTER_WEIGHTS)).items())
        assert sdk.checkout("main~1", tmp_path / "sdk-out") == tmp_path / "sdk-out"
        assert_same_factors(tmp_path / "sdk-out", first)
        again = sdk.commit(tmp_path / "sdk-out", message="back to the first adapter")
        assert call("repo.show", repo="llama-lora", commit=again)["parents"] == [commit["id"]]
        assert not list((tmp_path / "home" / "tmp").iterdir())  # the SDK's scratch folder was removed

    assert_same_factors(tmp_path / "out", second)  # bit for bit as committed
    config = json.loads((tmp_path / "out" / ADAPTER_CONFIG).read_text())
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (4, 8, ["q_proj", "v_proj"])
    with torch.no_grad():
        want = peft_model(input_ids=tokens).logits
        assert (want - base(input_ids=tokens).logits).abs().max() > 1e-4  # the adapter does change the model
        loaded = PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "out")).eval()
        assert torch.equal(loaded(input_ids=tokens).logits, want)

    # merged: the base's weights with s B A added (in float64, rounded once): PEFT's merge_and_unload
    reference = copy.deepcopy(peft_model).merge_and_unload().eval()
    state = load_file(str(tmp_path / "merged.safetensors"))
    fresh = LlamaForCausalLM(base.config).eval()
    fresh.load_state_dict(state, strict=True)
    originals = base.state_dict()
    for name, tensor in state.items():
        if "q_proj" in name or "v_proj" in name:
            assert not torch.equal(tensor, originals[name]), name
            torch.testing.assert_close(tensor, reference.state_dict()[name], rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(tensor, originals[name]), name  # the modules not adapted are the base's, untouched
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=tokens).logits, reference(input_ids=tokens).logits,
                                   rtol=1e-5, atol=1e-5)


# --- 2. a round over adapters between two daemons -----------------------------------------------------------------

def test_a_round_over_adapters_merges_the_weighted_mean_of_the_changes_on_both_nodes(tmp_path):
    base = tiny_llama()
    tokens = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(9))
    start = saved(train(wrap(base, 1, **LLAMA_LORA), llama_loss, 1, steps=2), tmp_path / "start")
    with running_daemon(configure(tmp_path / "a"), timeout=60) as a, \
            running_daemon(configure(tmp_path / "b", [address(a)]), timeout=60) as b:
        a.client.timeout = b.client.timeout = 120
        llama = a.client.call("repo.init", name="llama", model_path=str(save_state(base, tmp_path / "base.st")))
        repo = a.client.call("repo.init", name="lora", model_path=str(start), base_repo="llama")["repo"]
        a.client.call("repo.invite", repo=llama["repo"], member=public_key(b), role="reader")
        a.client.call("repo.invite", repo=repo, member=public_key(b), role="maintainer")
        pulled = b.client.call("repo.pull", repo=repo, peer=address(a))
        assert "base_error" not in pulled and "base" in pulled, pulled  # the base model came along
        assert head(b, llama["repo"]) == llama["commit"]
        a.client.call("repo.policy", repo=repo, buffer=2, deadline_s=60, timeout_s=6)
        wait_until(lambda: b.client.call("repo.policy", repo=repo)["buffer"] == 2, "the policy on b", 30)

        # each trains from the head's checkout on its own node, and contributes
        before = head(a, repo)
        assert head(b, repo) == before
        contributed = {}
        for node, seed, examples in [(a, 11, 300), (b, 12, 100)]:
            folder = tmp_path / f"head-{seed}"
            node.client.call("repo.checkout", repo=repo, commit=before, output_path=str(folder))
            model = PeftModel.from_pretrained(copy.deepcopy(base), str(folder), is_trainable=True)
            mine = saved(train(model, llama_loss, seed, steps=3, lr=0.05), tmp_path / f"trained-{seed}")
            cid = node.client.call("repo.contribute", repo=repo, weights_path=str(mine), examples=examples)["id"]
            contributed[cid] = (read_folder(mine), examples)

        def merged_everywhere() -> bool:
            heads = {head(a, repo), head(b, repo)}
            return len(heads) == 1 and heads != {before}

        wait_until(merged_everywhere, "the round over both contributions merged by its aggregator and followed by "
                   "the other node", 60)
        record = a.client.call("repo.show", repo=repo, commit=head(a, repo))
        assert record["kind"] == "round" and set(record["parents"][1:]) == set(contributed), record
        assert record["meta"]["lora"] == "stack", record["meta"]
        b.client.call("repo.checkout", repo=repo, commit="main", output_path=str(tmp_path / "merged"))

    # fresh contributions weighted 300:100, as 16-bit integer weights: Σ wᵢ Δᵢ (the head's own change cancels)
    weights = {entry[0]: entry[3] for entry in record["meta"]["contributions"]}
    assert sorted(weights.values()) == [WHOLE // 4, 3 * WHOLE // 4] and record["meta"]["step"] == WHOLE
    exact = combined([(contributed[cid][0], w / WHOLE) for cid, w in weights.items()])
    merged = read_folder(tmp_path / "merged")
    assert merged.rank == 2 * 4  # stacked, FLoRA-style: the two ranks side by side
    assert merged.scaling == pytest.approx(2.0)  # lora_alpha / r kept: 16 / 8
    error = distance(adapter_delta(merged), exact)
    assert error < 1e-6 * norm(exact), (error, norm(exact))

    # what PEFT computes with the merged adapter is the base with the exact change added in float64
    with torch.no_grad():
        want = with_delta(base, exact)(input_ids=tokens).logits
        got = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "merged")).eval()(input_ids=tokens).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    # FedIT (the factors averaged apart) is not that: it misses a measurable part of what the round changed
    head_delta = adapter_delta(read_folder(start))
    update = {p: exact[p] - head_delta[p] for p in exact}
    fedit = adapter_delta(merge_fedit([contributed[cid] for cid in weights]))
    fedit_error = distance(fedit, exact)
    assert fedit_error > 0.01 * norm(update), (fedit_error, norm(update))
    assert fedit_error > 1e4 * error, (fedit_error, error)


# --- 3. the digits MLP through the CLI ----------------------------------------------------------------------------

def test_the_cli_makes_an_adapter_repository_and_checks_out_merge_and_unload(tmp_path):
    base = make_mlp(0).eval()
    x, y, x_test, _ = load_digits_split()

    def loss_of(model: nn.Module, g: torch.Generator) -> torch.Tensor:
        batch = torch.randint(0, len(y), (64,), generator=g)
        return nn.functional.cross_entropy(model(x[batch]), y[batch])

    peft_model = train(wrap(base, 1, **MLP_LORA), loss_of, 1, steps=10)
    first = saved(peft_model, tmp_path / "first")
    home = tmp_path / "home"
    configure(home, [], sync_interval=600.0)
    with running_daemon(home, timeout=60):
        flair(home, "init", "digits", "--model", str(save_state(base, tmp_path / "base.safetensors")))
        commit0 = json.loads(flair(home, "log", "digits", "--json").stdout)["commits"][0]["id"]
        repo = flair(home, "init", "digits-lora", "--model", str(first), "--base", f"digits@{commit0[:12]}",
                     "--max-rank", "32").stdout.strip()
        assert len(repo) == 64, repo
        flair(home, "checkout", "digits-lora", "main", "-o", str(tmp_path / "merged0.safetensors"), "--merged")

        train(peft_model, loss_of, 2, steps=10)
        second = saved(peft_model, tmp_path / "second")
        flair(home, "commit", "digits-lora", "--weights", str(second), "-m", "ten more steps")
        flair(home, "checkout", "digits-lora", "main", "-o", str(tmp_path / "merged.safetensors"), "--merged")
        flair(home, "checkout", "digits-lora", "main", "-o", str(tmp_path / "out"))
        shown = {r["name"]: r for r in json.loads(flair(home, "repos", "--json").stdout)}
    assert_same_factors(tmp_path / "out", second)
    assert shown["digits-lora"]["adapter"]["max_rank"] == 32
    assert shown["digits-lora"]["adapter"]["base_commit"] == commit0

    reference = copy.deepcopy(peft_model).merge_and_unload().eval()
    fresh = make_mlp(7).eval()
    fresh.load_state_dict(load_file(str(tmp_path / "merged.safetensors")), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x_test), reference(x_test), rtol=1e-5, atol=1e-5)
        assert (reference(x_test) - base(x_test)).abs().max() > 1e-3  # the adapter does change the model
    # the first checkout was commit 0's adapter, not the later one
    fresh.load_state_dict(load_file(str(tmp_path / "merged0.safetensors")), strict=True)
    with torch.no_grad():
        assert not torch.allclose(fresh(x_test), reference(x_test), atol=1e-4)


# --- 4. hostile inputs --------------------------------------------------------------------------------------------

def test_inputs_that_do_not_fit_are_refused_with_a_clear_error(tmp_path):
    base = make_mlp(0).eval()
    config = {**MLP_LORA, "init_lora_weights": False}  # B random: no training needed
    first = saved(wrap(base, 1, **config), tmp_path / "first")
    scaled = saved(wrap(base, 2, **{**config, "lora_alpha": 16}), tmp_path / "alpha16")  # s = 4, not 1
    other_r = saved(wrap(base, 3, **{**config, "r": 8}), tmp_path / "r8")  # r 8, alpha 4: s = 0.5
    ranked = saved(wrap(base, 4, **{**config, "r": 8, "lora_alpha": 8}), tmp_path / "r8-alpha8")  # s = 1: fits
    narrower = saved(wrap(base, 5, **{**config, "target_modules": ["0"]}), tmp_path / "only0")
    misfit = saved(wrap(make_mlp(0, hidden=16), 6, **config), tmp_path / "hidden16")
    configure(tmp_path / "home", [], sync_interval=600.0)
    with running_daemon(tmp_path / "home", timeout=60) as node:
        call = node.client.call
        call("repo.init", name="mlp", model_path=str(save_state(base, tmp_path / "base.safetensors")))
        call("repo.init", name="mlp-lora", model_path=str(first), base_repo="mlp")
        commits = len(call("repo.log", repo="mlp-lora")["commits"])

        # an adapter with another lora_alpha / r than the repository's
        for folder in (scaled, other_r):
            refused(lambda f=folder: call("repo.commit", repo="mlp-lora", weights_path=str(f), message="x",
                                          branch="main"), InvalidInput, "scaling", "lora_alpha / r")
        refused(lambda: call("repo.commit", repo="mlp-lora", weights_path=str(narrower), message="x",
                             branch="main"), InvalidInput, "target_modules")
        refused(lambda: call("repo.commit", repo="mlp-lora", weights_path=str(tmp_path / "base.safetensors"),
                             message="whole weights", branch="main"), InvalidInput, "adapter_config.json")
        assert len(call("repo.log", repo="mlp-lora")["commits"]) == commits  # nothing refused was committed
        # another rank at the same scaling is the same kind of adapter: taken
        call("repo.commit", repo="mlp-lora", weights_path=str(ranked), message="rank 8", branch="main")

        # a PEFT folder given to repo.init without base_repo, or adapter-only parameters without it
        refused(lambda: call("repo.init", name="nobase", model_path=str(first)), InvalidInput,
                "is a PEFT adapter", "base_repo")
        refused(lambda: call("repo.init", name="nobase", model_path=str(tmp_path / "base.safetensors"), rank=4),
                InvalidInput, "base_repo")
        # an adapter committed or contributed to a repository of whole models
        for method, extra in (("repo.commit", {"message": "x", "branch": "main"}), ("repo.contribute",
                                                                                     {"examples": 1})):
            refused(lambda m=method, e=extra: call(m, repo="mlp", weights_path=str(first), **e), InvalidInput,
                    "is a PEFT adapter", "holds whole models")
        # merged on a repository of whole models; shard_size on an adapter's own checkout
        refused(lambda: call("repo.checkout", repo="mlp", commit="main", merged=True,
                             output_path=str(tmp_path / "m.safetensors")), InvalidInput, "holds whole models",
                "merged")
        refused(lambda: call("repo.checkout", repo="mlp-lora", commit="main", shard_size=1 << 20,
                             output_path=str(tmp_path / "shards")), InvalidInput, "shard_size")
        # base_repo naming a repository not on this node; an adapter that does not fit the base model
        refused(lambda: call("repo.init", name="orphan", model_path=str(first), base_repo="nowhere"),
                RepositoryNotFound, "nowhere")
        refused(lambda: call("repo.init", name="misfit", model_path=str(misfit), base_repo="mlp"), InvalidInput,
                "0.weight", "16 x 64")
        # rounds over adapters take the mean in plain rounds only
        refused(lambda: call("repo.policy", repo="mlp-lora", strategy="median"), InvalidInput, "median")
        names = {r["name"] for r in call("repo.list")}
        assert names == {"mlp", "mlp-lora"}, names  # no repository was created by a refused init


# --- 5. branch merges and reverts through the API -----------------------------------------------------------------

def test_branch_merges_and_reverts_combine_the_changes_stacked_or_by_svd_above_max_rank(tmp_path):
    base = make_mlp(0).eval()
    x = torch.rand(256, INPUTS, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 10, (256,), generator=torch.Generator().manual_seed(4))

    def loss_of(model: nn.Module, g: torch.Generator) -> torch.Tensor:
        batch = torch.randint(0, len(y), (64,), generator=g)
        return nn.functional.cross_entropy(model(x[batch]), y[batch])

    start_model = train(wrap(base, 1, **MLP_LORA), loss_of, 1, steps=10)
    start = saved(start_model, tmp_path / "start")
    ours = saved(train(copy.deepcopy(start_model), loss_of, 2, steps=10, lr=0.05), tmp_path / "ours")
    theirs = saved(train(copy.deepcopy(start_model), loss_of, 3, steps=10, lr=0.05), tmp_path / "theirs")
    exact = combined([(read_folder(ours), 0.75), (read_folder(theirs), 0.25)])  # mean weighted 30:10 examples
    configure(tmp_path / "home", [], sync_interval=600.0)
    with running_daemon(tmp_path / "home", timeout=60) as node:
        call = node.client.call
        call("repo.init", name="mlp", model_path=str(save_state(base, tmp_path / "base.safetensors")))
        merges = {}
        for name, limits in [("stacked", {}), ("compressed", {"rank": 4, "max_rank": 4})]:
            call("repo.init", name=name, model_path=str(start), base_repo="mlp", **limits)
            call("repo.branch", repo=name, name="side", at="main")
            call("repo.commit", repo=name, weights_path=str(ours), message="ours", branch="main", examples=30)
            call("repo.commit", repo=name, weights_path=str(theirs), message="theirs", branch="side", examples=10)
            merges[name] = call("repo.merge", repo=name, sources=["side"], into="main", strategy="mean")
            call("repo.checkout", repo=name, commit="main", output_path=str(tmp_path / f"{name}-merge"))
        reverted = call("repo.revert", repo="stacked", commit="main", branch="main")
        call("repo.checkout", repo="stacked", commit="main", output_path=str(tmp_path / "reverted"))

    # within max_rank: stacked, exactly the weighted mean of the two sides' changes
    stacked = read_folder(tmp_path / "stacked-merge")
    assert merges["stacked"]["meta"]["lora"] == "stack" and stacked.rank == 8
    assert distance(adapter_delta(stacked), exact) < 1e-6 * norm(exact)
    with torch.no_grad():
        got = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "stacked-merge")).eval()(x)
        torch.testing.assert_close(got, with_delta(base, exact)(x), rtol=1e-5, atol=1e-5)
    # reverting the merge takes its change away again: main's adapter before it, bit for bit
    assert reverted["meta"]["lora"] == "stack"
    assert_same_factors(tmp_path / "reverted", ours)

    # above max_rank: the best adapter of the record's rank (Eckart–Young), which PEFT applies as written
    compressed = read_folder(tmp_path / "compressed-merge")
    assert merges["compressed"]["meta"]["lora"] == "svd" and compressed.rank == 4
    optimum = sum(float(torch.linalg.svdvals(d)[4:].square().sum()) for d in exact.values()) ** 0.5
    assert optimum > 1e-3 * norm(exact)  # rank 4 cannot hold it all: the svd had work to do
    assert distance(adapter_delta(compressed), exact) == pytest.approx(optimum, rel=1e-4)
    with torch.no_grad():
        got = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "compressed-merge")).eval()(x)
        torch.testing.assert_close(got, with_delta(base, adapter_delta(compressed))(x), rtol=1e-5, atol=1e-5)


# --- 6. a contribution at another rank ----------------------------------------------------------------------------

def test_a_contribution_may_change_the_rank_as_a_commit_may(tmp_path):
    base = make_mlp(0).eval()
    config = {**MLP_LORA, "init_lora_weights": False}
    first = saved(wrap(base, 1, **config), tmp_path / "first")
    ranked = saved(wrap(base, 2, **{**config, "r": 8, "lora_alpha": 8}), tmp_path / "r8")  # scaling 1, as r 4
    configure(tmp_path / "home", [], sync_interval=600.0)
    with running_daemon(tmp_path / "home", timeout=60) as node:
        call = node.client.call
        call("repo.init", name="mlp", model_path=str(save_state(base, tmp_path / "base.safetensors")))
        call("repo.init", name="mlp-lora", model_path=str(first), base_repo="mlp")
        call("repo.branch", repo="mlp-lora", name="side", at="main")
        call("repo.commit", repo="mlp-lora", weights_path=str(ranked), message="rank 8", branch="side")  # taken
        contribution = call("repo.contribute", repo="mlp-lora", weights_path=str(ranked), examples=10)
        assert contribution["kind"] == "contribution"
