"""Real PEFT adapters through tensors/lora.py: saved by PEFT, read, merged, written, and loaded back by PEFT.

A merged adapter loaded with ``PeftModel.from_pretrained`` must compute what the base model computes with the
merge's change added to its weights: with the exact change for stack (and for svd when the rank allows it), with
the best change its rank allows for svd otherwise. Nothing is downloaded: the models are built from configs.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from flair_node.tensors.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoraAdapter,
    adapter_delta,
    exact_delta,
    load_adapter,
    merge_fedit,
    merge_stack,
    merge_svd,
    relative_error,
    save_adapter,
)
from flair_node.testing.models import INPUTS, make_mlp

pytestmark = pytest.mark.slow


def tiny_llama() -> nn.Module:
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config).eval()


def train_adapter(base: nn.Module, config: LoraConfig, seed: int, folder: Path,
                  loss_of: Callable[[nn.Module, torch.Generator], torch.Tensor], steps: int = 3) -> LoraAdapter:
    """Wrap a copy of ``base`` with PEFT's LoRA (initialized from ``seed``), take a few Adam steps on
    ``loss_of(model, generator)``, save it with ``save_pretrained`` and read the folder back."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(copy.deepcopy(base), config)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_of(model, g).backward()
        optimizer.step()
    model.save_pretrained(str(folder), save_embedding_layers=False)
    return load_adapter((folder / ADAPTER_WEIGHTS).read_bytes(), (folder / ADAPTER_CONFIG).read_bytes())


def write_folder(adapter: LoraAdapter, folder: Path) -> Path:
    folder.mkdir()
    for name, data in save_adapter(adapter).items():
        (folder / name).write_bytes(data)
    return folder


@torch.no_grad()
def with_delta(base: nn.Module, delta: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``base`` whose adapted modules' weights have ``delta`` added (transposed for embeddings)."""
    model = copy.deepcopy(base)
    for path, change in delta.items():
        module = model.get_submodule(path)
        assert isinstance(module, nn.Linear | nn.Embedding)
        module.weight += (change.T if isinstance(module, nn.Embedding) else change).to(module.weight.dtype)
    return model


@torch.no_grad()
def peft_loaded(base: nn.Module, folder: Path) -> nn.Module:
    return PeftModel.from_pretrained(copy.deepcopy(base), folder).eval()


def llama_loss(model: nn.Module, g: torch.Generator) -> torch.Tensor:
    tokens = torch.randint(0, 100, (4, 12), generator=g)
    loss: torch.Tensor = model(input_ids=tokens, labels=tokens).loss
    return loss


def test_merged_llama_adapters_load_in_peft_and_match_the_exact_merge(tmp_path: Path) -> None:
    base = tiny_llama()
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"],
                        init_lora_weights=False)
    parts = [(train_adapter(base, config, seed, tmp_path / f"contributor{seed}", llama_loss), n)
             for seed, n in [(1, 300), (2, 100)]]
    assert {m.embedding for m in parts[0][0].modules.values()} == {True, False}
    exact = exact_delta(parts)
    tokens = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        want = with_delta(base, exact)(input_ids=tokens).logits
        untouched = base(input_ids=tokens).logits
    assert (want - untouched).abs().max() > 1e-2  # the adapters do change the model

    stacked = peft_loaded(base, write_folder(merge_stack(parts), tmp_path / "stack"))
    q_proj = stacked.get_submodule("base_model.model.model.layers.0.self_attn.q_proj")
    assert q_proj.r["default"] == 8 and q_proj.scaling["default"] == pytest.approx(2.0)
    with torch.no_grad():
        torch.testing.assert_close(stacked(input_ids=tokens).logits, want, rtol=1e-5, atol=1e-5)

    full = merge_svd(parts, rank=8)  # rank 8 holds the whole average: svd is exact too
    with torch.no_grad():
        got = peft_loaded(base, write_folder(full, tmp_path / "svd8"))(input_ids=tokens).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    svd = merge_svd(parts)  # rank 4: the best rank-4 change, which PEFT applies as written
    with torch.no_grad():
        got = peft_loaded(base, write_folder(svd, tmp_path / "svd4"))(input_ids=tokens).logits
        torch.testing.assert_close(got, with_delta(base, adapter_delta(svd))(input_ids=tokens).logits,
                                   rtol=1e-5, atol=1e-5)
    optimum = math.sqrt(sum(float(torch.sum(torch.linalg.svdvals(d)[4:] ** 2)) for d in exact.values()))
    error = math.sqrt(sum(float(torch.sum((d - exact[p]) ** 2)) for p, d in adapter_delta(svd).items()))
    assert error == pytest.approx(optimum, rel=1e-4)
    assert relative_error(svd, exact) < relative_error(merge_fedit(parts), exact)


def test_merged_mlp_adapters_load_in_peft_and_match_the_exact_merge(tmp_path: Path) -> None:
    base = make_mlp(0).eval()
    # PEFT's default initialization (B = 0): the adapters differ from nothing only by training.
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["0", "2"])
    x = torch.rand(256, INPUTS, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 10, (256,), generator=torch.Generator().manual_seed(4))

    def loss_of(model: nn.Module, g: torch.Generator) -> torch.Tensor:
        batch = torch.randint(0, len(y), (64,), generator=g)
        return nn.functional.cross_entropy(model(x[batch]), y[batch])

    parts = [(train_adapter(base, config, seed, tmp_path / f"contributor{seed}", loss_of, steps=10), n)
             for seed, n in [(1, 50), (2, 70), (3, 20)]]
    assert sorted(parts[0][0].modules) == ["0", "2"]
    assert all(bool(m.b.abs().max() > 0) for a, _ in parts for m in a.modules.values())
    exact = exact_delta(parts)
    with torch.no_grad():
        want = with_delta(base, exact)(x)
        stacked = peft_loaded(base, write_folder(merge_stack(parts), tmp_path / "stack"))
        torch.testing.assert_close(stacked(x), want, rtol=1e-5, atol=1e-5)
        svd = merge_svd(parts)
        got = peft_loaded(base, write_folder(svd, tmp_path / "svd"))(x)
        torch.testing.assert_close(got, with_delta(base, adapter_delta(svd))(x), rtol=1e-5, atol=1e-5)


def test_reading_and_writing_back_keeps_peft_s_tensors_and_config(tmp_path: Path) -> None:
    base = make_mlp(0).eval()
    config = LoraConfig(r=2, lora_alpha=16, target_modules=["0"], init_lora_weights=False, use_rslora=True)
    adapter = train_adapter(base, config, 5, tmp_path / "one", lambda model, g: model(torch.rand(8, INPUTS)).sum(),
                            steps=1)
    assert adapter.rslora and adapter.scaling == pytest.approx(16 / math.sqrt(2))
    again = write_folder(adapter, tmp_path / "again")
    assert json.loads((again / ADAPTER_CONFIG).read_text()) == \
        json.loads((tmp_path / "one" / ADAPTER_CONFIG).read_text())
    mine = safetensors.torch.load_file(again / ADAPTER_WEIGHTS)
    theirs = safetensors.torch.load_file(tmp_path / "one" / ADAPTER_WEIGHTS)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
