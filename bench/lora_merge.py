#!/usr/bin/env python
"""Merge LoRA adapters from several contributors with each strategy of flair_node.tensors.lora, against the exact
weighted average of their products Σ wᵢ sᵢ BᵢAᵢ (``exact_delta``).

Setups, all from fixed seeds:
  random_K      K contributors (2, 4, 8), rank-8 adapters on four 256 x 256 modules, every factor drawn at random
                (independent As: ffa does not apply, null)
  shared_a_4    4 contributors whose As are one shared random A (FFA-LoRA's setting): ffa and fedit are exact
  large_8       8 contributors, rank 16 on one 4096 x 4096 module (a 7B model's attention projection): the costs
  digits_lora   4 contributors train rank-4 LoRA (A and B, from one shared initialization as a round hands out)
                on both Linear layers of the 64-32-10 digits MLP, each on a skewed slice of the data
  digits_ffa    the same with A frozen at the shared initialization (FFA-LoRA): only B trains
For every setup and strategy: ``<strategy>_rel_error`` = ‖merged change − exact change‖_F / ‖exact change‖_F over
all modules (null where the strategy refuses), ``stack_rank`` and ``svd_rank``, and ``<strategy>_s``, the best of
--repeat merges in seconds (``exact_s`` forms the full-rank reference). For the digits setups, the test accuracy of
the base model with each merged change added (``<strategy>_accuracy``), next to ``base_accuracy`` and
``exact_accuracy``. The last line of stdout is one JSON object keyed by setup.

    .venv/bin/python bench/lora_merge.py            # about 20 s on 2 cores
    .venv/bin/python bench/lora_merge.py --quick    # no large_8, 1 repeat: a smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from flair_node.core.errors import MergeError
from flair_node.tensors.lora import (
    Contribution,
    LoraAdapter,
    adapter_delta,
    exact_delta,
    merge_fedit,
    merge_ffa,
    merge_stack,
    merge_svd,
    read_adapter,
    relative_error,
)
from flair_node.testing.models import accuracy, load_digits_split, make_mlp, partition, train_local

MERGES: dict[str, Callable[[list[Contribution]], LoraAdapter]] = {
    "fedit": merge_fedit, "ffa": merge_ffa, "stack": merge_stack, "svd": merge_svd,
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peft_config(rank: int, alpha: float, targets: list[str]) -> dict[str, object]:
    return {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "use_rslora": False, "target_modules": targets,
            "bias": "none", "rank_pattern": {}, "alpha_pattern": {}, "task_type": None}


def random_adapters(k: int, rank: int, shape: tuple[int, int], modules: int, seed: int, *,
                    shared_a: bool = False) -> list[Contribution]:
    """``k`` adapters in PEFT's format, read back through ``read_adapter``; examples drawn from 100..5000."""
    g = torch.Generator().manual_seed(seed)
    n_out, n_in = shape
    common = [torch.randn(rank, n_in, generator=g) / math.sqrt(n_in) for _ in range(modules)]
    out = []
    for _ in range(k):
        tensors = {}
        for m in range(modules):
            a = common[m] if shared_a else torch.randn(rank, n_in, generator=g) / math.sqrt(n_in)
            tensors[f"base_model.model.layers.{m}.proj.lora_A.weight"] = a.clone()
            tensors[f"base_model.model.layers.{m}.proj.lora_B.weight"] = torch.randn(n_out, rank, generator=g) * 0.01
        examples = int(torch.randint(100, 5000, (), generator=g))
        out.append((read_adapter(tensors, peft_config(rank, 2 * rank, ["proj"])), examples))
    return out


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def measure(parts: list[Contribution], repeat: int) -> tuple[dict[str, Any], dict[str, LoraAdapter]]:
    row: dict[str, Any] = {"contributors": len(parts), "rank": parts[0][0].rank}
    row["exact_s"], reference = best_of(repeat, lambda: exact_delta(parts))
    merged = {}
    for name, merge in MERGES.items():
        try:
            seconds, adapter = best_of(repeat, lambda merge=merge: merge(parts))
        except MergeError as exc:
            log(f"  {name}: refused ({exc})")
            row[f"{name}_rel_error"], row[f"{name}_s"] = None, None
            continue
        merged[name] = adapter
        row[f"{name}_rel_error"] = float(f"{relative_error(adapter, reference):.3e}")
        row[f"{name}_s"] = round(seconds, 5)
    row["stack_rank"], row["svd_rank"] = merged["stack"].rank, merged["svd"].rank
    row["exact_s"] = round(row["exact_s"], 5)
    return row, merged


# --- adapters trained on the digits MLP ---------------------------------------------------------------------------

LINEARS = ("0", "2")  # the Linear layers of make_mlp's nn.Sequential, by their names (PEFT's target_modules)


def lora_forward(base: nn.Sequential, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], scaling: float,
                 x: torch.Tensor) -> torch.Tensor:
    """``base(x)`` with each adapted Linear computing ``W x + b + s B A x``, as PEFT's LoRA layer does."""
    for name, layer in base.named_children():
        if name in factors:
            assert isinstance(layer, nn.Linear)
            a, b = factors[name]
            x = F.linear(x, layer.weight, layer.bias) + scaling * F.linear(F.linear(x, a), b)
        else:
            x = layer(x)
    return x


def train_lora(base: nn.Sequential, x: torch.Tensor, y: torch.Tensor, *, rank: int, alpha: float, seed: int,
               init_seed: int, train_a: bool, epochs: int, lr: float) -> dict[str, torch.Tensor]:
    """One contributor's LoRA on ``LINEARS``, from the round's shared initialization (PEFT's default: A uniform in
    ±1/√in, B zero), trained with Adam on ``(x, y)``; returned as the tensors of adapter_model.safetensors."""
    g = torch.Generator().manual_seed(init_seed)
    factors = {}
    for name in LINEARS:
        layer = base.get_submodule(name)
        assert isinstance(layer, nn.Linear)
        bound = 1 / math.sqrt(layer.in_features)
        a = (torch.rand(rank, layer.in_features, generator=g) * 2 - 1) * bound
        factors[name] = (a.requires_grad_(train_a), torch.zeros(layer.out_features, rank, requires_grad=True))
    params = [t for pair in factors.values() for t in pair if t.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    order_g = torch.Generator().manual_seed(seed)
    scaling = alpha / rank
    for _ in range(epochs):
        for batch in torch.split(torch.randperm(len(y), generator=order_g), 32):
            optimizer.zero_grad()
            F.cross_entropy(lora_forward(base, factors, scaling, x[batch]), y[batch]).backward()
            optimizer.step()
    out = {}
    for name, (a, b) in factors.items():
        out[f"base_model.model.{name}.lora_A.weight"] = a.detach().clone()
        out[f"base_model.model.{name}.lora_B.weight"] = b.detach().clone()
    return out


@torch.no_grad()
def accuracy_with(base: nn.Sequential, delta: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    model = make_mlp(0)
    model.load_state_dict(base.state_dict())
    for name, change in delta.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, nn.Linear)
        layer.weight += change.to(layer.weight.dtype)
    return accuracy(model, x, y)


def digits(train_a: bool, args: argparse.Namespace, data: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(0)
    base = make_mlp(0)
    assert isinstance(base, nn.Sequential)
    n_base = len(y_train) // 5
    train_local(base, x_train[:n_base], y_train[:n_base], epochs=2, lr=0.005, batch_size=32, seed=0)
    for p in base.parameters():
        p.requires_grad_(False)
    slices = partition(x_train[n_base:], y_train[n_base:], args.digits_contributors, seed=1, skew=0.8)
    parts = []
    for i, (x, y) in enumerate(slices):
        tensors = train_lora(base, x, y, rank=4, alpha=8, seed=10 + i, init_seed=99, train_a=train_a,
                             epochs=args.digits_epochs, lr=0.01)
        parts.append((read_adapter(tensors, peft_config(4, 8, list(LINEARS))), len(y)))
    row, merged = measure(parts, args.repeat)
    row["base_accuracy"] = round(accuracy(base, x_test, y_test), 4)
    row["exact_accuracy"] = round(accuracy_with(base, exact_delta(parts), x_test, y_test), 4)
    row["contributor_accuracy_mean"] = round(sum(accuracy_with(base, adapter_delta(a), x_test, y_test)
                                                 for a, _ in parts) / len(parts), 4)
    for name in MERGES:
        row[f"{name}_accuracy"] = round(accuracy_with(base, adapter_delta(merged[name]), x_test, y_test), 4) \
            if name in merged else None
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--digits-contributors", type=int, default=4)
    parser.add_argument("--digits-epochs", type=int, default=8)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.digits_epochs = 1, 2
    torch.set_num_threads(1)
    report: dict[str, Any] = {}
    setups: dict[str, Callable[[], list[Contribution]]] = {
        f"random_{k}": (lambda k=k: random_adapters(k, 8, (256, 256), 4, seed=k)) for k in (2, 4, 8)
    }
    setups["shared_a_4"] = lambda: random_adapters(4, 8, (256, 256), 4, seed=40, shared_a=True)
    if not args.quick:
        setups["large_8"] = lambda: random_adapters(8, 16, (4096, 4096), 1, seed=80)
    for name, make in setups.items():
        start = time.perf_counter()
        report[name], _ = measure(make(), args.repeat)
        log(f"{name}: {report[name]}  ({time.perf_counter() - start:.1f} s)")
    data = load_digits_split(seed=0)
    for name, train_a in (("digits_lora", True), ("digits_ffa", False)):
        start = time.perf_counter()
        report[name] = digits(train_a, args, data)
        log(f"{name}: {report[name]}  ({time.perf_counter() - start:.1f} s)")
    report["params"] = {"torch_threads": 1, "repeat": args.repeat, "digits_epochs": args.digits_epochs}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
