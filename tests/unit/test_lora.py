"""LoRA adapters: the merges' arithmetic (tensors/lora.py), and hostile adapters refused as InvalidInput."""

from __future__ import annotations

import json
import math

import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flair_node.core.errors import InvalidInput, MergeError, NotSafetensors
from flair_node.tensors.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    MAX_RANK,
    LoraAdapter,
    adapter_config,
    adapter_delta,
    adapter_tensors,
    exact_delta,
    load_adapter,
    lora_scaling,
    merge_fedit,
    merge_ffa,
    merge_lora,
    merge_stack,
    merge_svd,
    read_adapter,
    relative_error,
    save_adapter,
)

MODULES = {"model.layers.0.q_proj": (24, 16), "model.layers.0.v_proj": (12, 16), "lm_head": (10, 24)}


def peft_tensors(seed: int, rank: int, modules: dict[str, tuple[int, int]] = MODULES, *,
                 dtype: torch.dtype = torch.float64, shared_a: int | None = None) -> dict[str, torch.Tensor]:
    """An adapter's tensors under PEFT's keys; ``shared_a`` seeds the As alone, so adapters given the same one
    share their As (FFA-LoRA)."""
    g = torch.Generator().manual_seed(seed)
    g_a = torch.Generator().manual_seed(1000 + shared_a) if shared_a is not None else g
    out = {}
    for path, (n_out, n_in) in modules.items():
        out[f"base_model.model.{path}.lora_A.weight"] = torch.randn(rank, n_in, generator=g_a, dtype=dtype)
        out[f"base_model.model.{path}.lora_B.weight"] = torch.randn(n_out, rank, generator=g, dtype=dtype)
    return out


def peft_config(rank: int, alpha: float = 16, **extra: object) -> dict[str, object]:
    config: dict[str, object] = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "use_rslora": False,
                                 "rank_pattern": {}, "alpha_pattern": {}, "target_modules": ["q_proj", "v_proj"],
                                 "bias": "none", "use_dora": False, "modules_to_save": None, "task_type": None}
    config.update(extra)
    return config


def adapter(seed: int, rank: int = 4, alpha: float = 16, *, dtype: torch.dtype = torch.float64,
            shared_a: int | None = None, **extra: object) -> LoraAdapter:
    return read_adapter(peft_tensors(seed, rank, dtype=dtype, shared_a=shared_a), peft_config(rank, alpha, **extra))


def eckart_young(reference: dict[str, torch.Tensor], rank: int) -> float:
    """The least Frobenius error of any rank-``rank`` approximation of ``reference``, over all modules."""
    return math.sqrt(sum(float(torch.sum(torch.linalg.svdvals(d)[rank:] ** 2)) for d in reference.values()))


def absolute_error(merged: LoraAdapter, reference: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(torch.sum((d - reference[p]) ** 2)) for p, d in adapter_delta(merged).items()))


# --- reading and writing ------------------------------------------------------------------------------------------

def test_read_groups_the_factors_by_module_with_the_scaling() -> None:
    a = adapter(0, rank=4, alpha=16)
    assert sorted(a.modules) == sorted(MODULES)
    q = a.modules["model.layers.0.q_proj"]
    assert (q.rank, q.in_features, q.out_features, q.embedding) == (4, 16, 24, False)
    assert a.scaling == 4.0
    assert adapter(0, rank=4, alpha=16, use_rslora=True).scaling == 8.0
    assert lora_scaling(16, 4, True) == 16 / math.sqrt(4)


def test_embedding_factors_are_read_and_written_under_their_own_keys() -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {"base_model.model.embed_tokens.lora_embedding_A": torch.randn(4, 100, generator=g),
               "base_model.model.embed_tokens.lora_embedding_B": torch.randn(32, 4, generator=g)}
    a = read_adapter(tensors, peft_config(4))
    assert a.modules["embed_tokens"].embedding
    merged = merge_stack([(a, 1), (a, 3)])
    assert sorted(adapter_tensors(merged)) == sorted(tensors)
    assert adapter_tensors(merged)["base_model.model.embed_tokens.lora_embedding_A"].shape == (8, 100)


def test_save_then_load_gives_the_same_adapter_and_keeps_the_config() -> None:
    a = adapter(0, rank=4, alpha=16, dtype=torch.float32, target_modules=["q_proj"], peft_version="0.21.2")
    files = save_adapter(merge_stack([(a, 2), (adapter(1, dtype=torch.float32), 1)]))
    config = json.loads(files[ADAPTER_CONFIG])
    assert (config["r"], config["lora_alpha"], config["target_modules"]) == (8, 32, ["q_proj"])
    assert config["peft_version"] == "0.21.2"
    again = load_adapter(files[ADAPTER_WEIGHTS], files[ADAPTER_CONFIG])
    assert again.rank == 8 and again.scaling == a.scaling
    tensors = safetensors.torch.load(files[ADAPTER_WEIGHTS])
    assert all(torch.equal(tensors[k], v) for k, v in adapter_tensors(again).items())


# --- the merges' arithmetic ---------------------------------------------------------------------------------------

def test_exact_delta_is_the_weighted_average_of_the_scaled_products() -> None:
    a, b = adapter(0, alpha=16), adapter(1, alpha=8)
    delta = exact_delta([(a, 1), (b, 3)])
    for path in MODULES:
        want = 0.25 * adapter_delta(a)[path] + 0.75 * adapter_delta(b)[path]
        torch.testing.assert_close(delta[path], want, rtol=1e-12, atol=1e-12)


def test_stack_is_exact_with_the_summed_rank_and_the_first_scaling() -> None:
    parts = [(adapter(0, rank=2, alpha=16), 10), (adapter(1, rank=4, alpha=8), 30), (adapter(2, rank=3, alpha=3), 7)]
    merged = merge_stack(parts)
    assert merged.rank == 9 and merged.alpha == 72 and merged.scaling == parts[0][0].scaling
    assert relative_error(merged, exact_delta(parts)) < 1e-14


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_stack_keeps_the_dtype_and_is_exact_to_its_rounding(dtype: torch.dtype, tolerance: float) -> None:
    parts = [(adapter(seed, dtype=dtype), n) for seed, n in [(0, 5), (1, 9), (2, 2)]]
    merged = merge_stack(parts)
    assert all(m.a.dtype == dtype and m.b.dtype == dtype for m in merged.modules.values())
    assert relative_error(merged, exact_delta(parts)) < tolerance


def test_stack_under_rslora_keeps_the_scaling() -> None:
    parts = [(adapter(0, rank=4, use_rslora=True), 1), (adapter(1, rank=4, use_rslora=True), 1)]
    merged = merge_stack(parts)
    assert merged.rslora and math.isclose(merged.scaling, parts[0][0].scaling, rel_tol=1e-15)
    assert relative_error(merged, exact_delta(parts)) < 1e-14


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 1000), st.sampled_from([1, 4, 16, 7.5])),
                min_size=1, max_size=5))
def test_stack_is_exact_for_any_ranks_weights_and_alphas(specs: list[tuple[int, int, float]]) -> None:
    parts = [(adapter(i, rank=r, alpha=alpha), n) for i, (r, n, alpha) in enumerate(specs)]
    merged = merge_stack(parts)
    assert merged.rank == sum(r for r, _, _ in specs)
    assert relative_error(merged, exact_delta(parts)) < 1e-12


def test_stack_refuses_to_pass_the_rank_bound() -> None:
    parts = [(adapter(i, rank=4), 1) for i in range(3)]
    with pytest.raises(MergeError, match="rank 12, above the bound of 8"):
        merge_stack(parts, max_rank=8)
    with pytest.raises(InvalidInput, match="max_rank"):
        merge_stack(parts, max_rank=MAX_RANK + 1)


def test_svd_is_exact_when_the_rank_allows() -> None:
    parts = [(adapter(i, rank=3), n) for i, n in enumerate([4, 1, 2])]
    reference = exact_delta(parts)
    assert relative_error(merge_svd(parts, rank=9), reference) < 1e-12
    # A rank above what the modules hold is padded with zero factors, still exact.
    padded = merge_svd(parts, rank=40)
    assert padded.rank == 40 and relative_error(padded, reference) < 1e-12
    # Shared As: the average has rank 3 whatever the Bs, so rank 3 is enough.
    shared = [(adapter(i, rank=3, shared_a=0), n) for i, n in enumerate([4, 1, 2])]
    assert relative_error(merge_svd(shared), exact_delta(shared)) < 1e-12


def test_svd_reaches_the_eckart_young_optimum() -> None:
    parts = [(adapter(i, rank=4), n) for i, n in enumerate([3, 5, 2, 6])]
    reference = exact_delta(parts)
    merged = merge_svd(parts)
    assert merged.rank == 4 and merged.scaling == parts[0][0].scaling
    optimum = eckart_young(reference, 4)
    assert optimum > 0
    assert math.isclose(absolute_error(merged, reference), optimum, rel_tol=1e-9)
    assert relative_error(merged, reference) < relative_error(merge_fedit(parts), reference)


def test_ffa_is_exact_over_a_shared_a_and_refuses_different_ones() -> None:
    shared = [(adapter(i, shared_a=7), n) for i, n in enumerate([2, 9, 4])]
    merged = merge_ffa(shared)
    assert merged.rank == 4 and relative_error(merged, exact_delta(shared)) < 1e-14
    assert torch.equal(merged.modules["lm_head"].a, shared[0][0].modules["lm_head"].a)
    with pytest.raises(MergeError, match="contribution 1 has another A for module"):
        merge_ffa([(adapter(0), 1), (adapter(1), 1)])


def test_fedit_is_measurably_off_unless_the_as_are_shared() -> None:
    parts = [(adapter(i), n) for i, n in enumerate([2, 9, 4])]
    assert relative_error(merge_fedit(parts), exact_delta(parts)) > 0.3
    shared = [(adapter(i, shared_a=7), n) for i, n in enumerate([2, 9, 4])]
    assert relative_error(merge_fedit(shared), exact_delta(shared)) < 1e-14
    with pytest.raises(MergeError, match="one rank"):
        merge_fedit([(adapter(0, rank=2), 1), (adapter(1, rank=4), 1)])


def test_one_contribution_merges_to_itself() -> None:
    only = [(adapter(0), 5)]
    for merged in (merge_fedit(only), merge_ffa(only), merge_stack(only), merge_svd(only)):
        assert relative_error(merged, adapter_delta(only[0][0])) < 1e-13


def test_auto_stacks_under_the_bound_and_compresses_above_it() -> None:
    parts = [(adapter(i, rank=4), 1) for i in range(3)]
    assert merge_lora(parts).rank == 12
    compressed = merge_lora(parts, max_rank=8)
    assert compressed.rank == 4
    assert merge_lora(parts, max_rank=8, rank=6).rank == 6
    with pytest.raises(InvalidInput, match="unknown LoRA merge"):
        merge_lora(parts, "mean")


def test_merges_refuse_adapters_that_do_not_fit_together() -> None:
    a = adapter(0)
    other_modules = read_adapter(peft_tensors(1, 4, {"model.layers.0.q_proj": (24, 16)}), peft_config(4))
    with pytest.raises(MergeError, match="adapt different modules"):
        merge_stack([(a, 1), (other_modules, 1)])
    other_shape = read_adapter(peft_tensors(1, 4, {**MODULES, "lm_head": (10, 12)}), peft_config(4))
    with pytest.raises(MergeError, match="module lm_head is 10 x 12"):
        merge_stack([(a, 1), (other_shape, 1)])
    with pytest.raises(MergeError, match="base_model_name_or_path"):
        merge_stack([(adapter(0, base_model_name_or_path="gpt2"), 1), (adapter(1, base_model_name_or_path="opt"), 1)])
    with pytest.raises(MergeError, match="use_rslora"):
        merge_stack([(adapter(0, use_rslora=True), 1), (a, 1)])


@pytest.mark.parametrize("examples", [0, -3, True, 2.5, "7", 1 << 60])
def test_weights_are_whole_positive_example_counts(examples: object) -> None:
    with pytest.raises(InvalidInput, match="examples"):
        merge_stack([(adapter(0), 1), (adapter(1), examples)])  # type: ignore[list-item]


def test_nothing_to_merge_is_refused() -> None:
    with pytest.raises(InvalidInput, match="no LoRA adapters"):
        merge_svd([])


# --- hostile adapters ---------------------------------------------------------------------------------------------

def test_a_without_its_b_is_refused_naming_the_missing_key() -> None:
    tensors = peft_tensors(0, 4)
    del tensors["base_model.model.lm_head.lora_B.weight"]
    with pytest.raises(InvalidInput, match=r"no base_model\.model\.lm_head\.lora_B\.weight"):
        read_adapter(tensors, peft_config(4))
    tensors = peft_tensors(0, 4)
    del tensors["base_model.model.lm_head.lora_A.weight"]
    with pytest.raises(InvalidInput, match=r"no base_model\.model\.lm_head\.lora_A\.weight"):
        read_adapter(tensors, peft_config(4))


@pytest.mark.parametrize("key, shape, message", [
    ("base_model.model.lm_head.lora_A.weight", (5, 24), "config's r is 4"),
    ("base_model.model.lm_head.lora_B.weight", (10, 3), "config's r is 4"),
    ("base_model.model.lm_head.lora_A.weight", (4,), "not a matrix"),
    ("base_model.model.lm_head.lora_A.weight", (4, 24, 3, 3), "convolutions"),
    ("base_model.model.lm_head.lora_A.weight", (4, 0), "empty"),
])
def test_shapes_that_do_not_chain_are_refused(key: str, shape: tuple[int, ...], message: str) -> None:
    tensors = peft_tensors(0, 4)
    tensors[key] = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(InvalidInput, match=message):
        read_adapter(tensors, peft_config(4))


@pytest.mark.parametrize("key", [
    "base_model.model.lm_head.weight",
    "lm_head.lora_A.weight",
    "base_model.model.lm_head.lora_A.default.weight",
    "base_model.model.lm_head.lora_B.bias",
    "base_model.model..lm_head.lora_A.weight",
    "base_model.model.lm/head.lora_A.weight",
    "base_model.model.lm_head.lora_magnitude_vector",
    "x" * 1000,
])
def test_unknown_keys_are_refused_by_name(key: str) -> None:
    tensors = peft_tensors(0, 4)
    tensors[key] = torch.zeros(4, 4, dtype=torch.float64)
    with pytest.raises(InvalidInput, match="adapter key") as info:
        read_adapter(tensors, peft_config(4))
    assert key[:100] in str(info.value)
    assert len(str(info.value)) < 400


@pytest.mark.parametrize("value, message", [
    (torch.zeros(4, 16, dtype=torch.int64), "not a float"),
    (torch.full((4, 16), float("nan"), dtype=torch.float32), "not finite"),
    (torch.full((4, 16), float("inf"), dtype=torch.float16), "not finite"),
    ("not a tensor", "does not hold a tensor"),
])
def test_tensors_that_are_not_finite_floats_are_refused(value: object, message: str) -> None:
    tensors: dict[str, object] = dict(peft_tensors(0, 4))
    tensors["base_model.model.model.layers.0.q_proj.lora_A.weight"] = value
    with pytest.raises(InvalidInput, match=message):
        read_adapter(tensors, peft_config(4))  # type: ignore[arg-type]


def test_linear_and_embedding_factors_on_one_module_are_refused() -> None:
    tensors = peft_tensors(0, 4)
    tensors["base_model.model.lm_head.lora_embedding_A"] = torch.zeros(4, 24, dtype=torch.float64)
    with pytest.raises(InvalidInput, match="both linear and embedding"):
        read_adapter(tensors, peft_config(4))


def test_an_empty_adapter_is_refused() -> None:
    with pytest.raises(InvalidInput, match="no LoRA tensors"):
        read_adapter({}, peft_config(4))


@pytest.mark.parametrize("field, value, message", [
    ("r", 10**9, "r must be an integer from 1 to"),
    ("r", MAX_RANK + 1, "r must be an integer from 1 to"),
    ("r", 0, "r must be an integer"),
    ("r", True, "r must be an integer"),
    ("r", "4", "r must be an integer"),
    ("r", 4.0, "r must be an integer"),
    ("r", None, "r must be an integer"),
    ("lora_alpha", "16", "lora_alpha must be a positive number"),
    ("lora_alpha", float("nan"), "lora_alpha must be a positive number"),
    ("lora_alpha", -8, "lora_alpha must be a positive number"),
    ("lora_alpha", 1e300, "lora_alpha must be a positive number"),
    ("lora_alpha", False, "lora_alpha must be a positive number"),
    ("use_rslora", "yes", "use_rslora must be true or false"),
    ("use_rslora", 1, "use_rslora must be true or false"),
    ("peft_type", "IA3", "peft_type"),
    ("rank_pattern", {"q_proj": 8}, "per-module ranks are not supported"),
    ("alpha_pattern", {"q_proj": 32}, "per-module alphas are not supported"),
    ("use_dora", True, "DoRA"),
    ("lora_bias", True, "LoRA biases"),
    ("bias", "all", "bias must be"),
    ("modules_to_save", ["lm_head"], "whole saved modules"),
    ("rank_pattern", "x", "per-module ranks"),
])
def test_bad_config_fields_are_refused_by_name(field: str, value: object, message: str) -> None:
    config = peft_config(4)
    config[field] = value
    with pytest.raises(InvalidInput, match=message) as info:
        read_adapter(peft_tensors(0, 4), config)
    assert info.value.data.get("field") == field


def test_a_missing_rank_or_alpha_is_refused() -> None:
    for field in ("r", "lora_alpha"):
        config = peft_config(4)
        del config[field]
        with pytest.raises(InvalidInput, match=field):
            read_adapter(peft_tensors(0, 4), config)


@pytest.mark.parametrize("config, message", [
    (b"[1, 2]", "not a JSON object"),
    (b"{\"r\": 4,", "not JSON"),
    (b"{\"r\": NaN}", "not JSON"),
    (b"[" * 50 + b"]" * 50, "nested"),
    (b"{\"r\": \"" + b"x" * (2 << 20) + b"\"}", "accepted"),
])
def test_config_bytes_that_are_not_a_json_object_are_refused(config: bytes, message: str) -> None:
    weights = bytes(safetensors.torch.save(peft_tensors(0, 4)))
    with pytest.raises(InvalidInput, match=message):
        load_adapter(weights, config)


def test_weight_bytes_that_are_not_safetensors_are_refused() -> None:
    with pytest.raises(NotSafetensors):
        load_adapter(b"\xff" * 64, json.dumps(peft_config(4)).encode())


def test_the_written_config_is_what_peft_reads() -> None:
    merged = merge_stack([(adapter(0, alpha=6), 1), (adapter(1, alpha=6), 1)])
    config = adapter_config(merged)
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (8, 12, False)
    alpha, rank = config["lora_alpha"], config["r"]
    assert isinstance(alpha, int) and isinstance(rank, int)
    assert lora_scaling(alpha, rank, False) == merged.scaling
    odd = merge_stack([(adapter(0, rank=3, alpha=2), 1), (adapter(1, rank=4, alpha=2), 1)])
    assert adapter_config(odd)["lora_alpha"] == pytest.approx(2 * 7 / 3)
