"""LoRA adapters in PEFT's format, read as untrusted input, and merged across contributors.

A LoRA adapter changes each of its modules' weights by ``s · B A``: ``A`` is ``r × in``, ``B`` is ``out × r`` and
the scaling ``s`` is ``lora_alpha / r`` (``lora_alpha / √r`` with ``use_rslora``). A round over adapters that
contributors trained from the same base model wants the weighted average of their changes,
``Δ = Σ wᵢ sᵢ Bᵢ Aᵢ`` with ``wᵢ = examplesᵢ / Σ examples`` (``exact_delta``). The merges here:

    fedit   average the As and the Bs separately (FedIT). Σ wᵢBᵢ · Σ wᵢAᵢ is not Σ wᵢ BᵢAᵢ: biased, kept to compare
    ffa     average the Bs over one shared, frozen A (FFA-LoRA). Exact; refused when the As differ
    stack   concatenate the wᵢsᵢ-scaled Bs and the As along the rank (FLoRA). Exact; rank Σ rᵢ, bounded
    svd     the best rank-r approximation of Δ (Eckart–Young), from QR of the stacked factors and the SVD of a
            (Σ rᵢ)-square matrix: nothing larger than the adapters' own factors is formed. Exact when rank Δ ≤ r

Every merge returns a ``LoraAdapter`` whose scaling is that of the first contribution (``lora_alpha`` grows with
the rank so that ``lora_alpha / r`` stays put), the merge's weights and scalings folded into ``B``; the rest of
the first contribution's config is kept. ``save_adapter`` gives the two files PEFT's ``from_pretrained`` loads.

Only plain LoRA on linear and embedding layers is read (``lora_A``/``lora_B``, ``lora_embedding_A``/``_B``):
per-module ranks or alphas (``rank_pattern``, ``alpha_pattern``), DoRA, LoRA biases, convolutions and saved
whole modules are refused with ``InvalidInput`` naming the key or field, as is any tensor key not understood.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import safetensors.torch
import torch

from ..core.encoding import loads_json
from ..core.errors import IntegrityError, InvalidInput, MergeError
from .safetensors_io import load_bytes

#: The highest rank read from an adapter or produced by a merge.
MAX_RANK = 1024
#: The highest rank ``stack`` produces unless told otherwise; above it ``merge_lora`` re-compresses with ``svd``.
DEFAULT_MAX_STACK_RANK = 256
#: The largest adapter_config.json read, and how deep its JSON may nest.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 8
#: The most examples one contribution may claim.
MAX_EXAMPLES = 1 << 50
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
STRATEGIES = ("fedit", "ffa", "stack", "svd")

_PREFIX = "base_model.model."
_SUFFIXES = {  # key suffix -> (factor, embedding layer)
    ".lora_A.weight": ("A", False), ".lora_B.weight": ("B", False),
    ".lora_embedding_A": ("A", True), ".lora_embedding_B": ("B", True),
}
_MODULE_PATH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: Config fields that turn plain LoRA into something these merges do not model: each must be absent or empty.
_UNSUPPORTED_FIELDS = {
    "rank_pattern": "per-module ranks", "alpha_pattern": "per-module alphas", "use_dora": "DoRA",
    "lora_bias": "LoRA biases", "use_qalora": "QA-LoRA", "use_bdlora": "block-diagonal LoRA",
    "modules_to_save": "whole saved modules", "trainable_token_indices": "trainable tokens",
    "target_parameters": "LoRA on bare parameters", "layer_replication": "replicated layers",
}
#: Config fields that must agree between the adapters of one merge.
_SHARED_FIELDS = ("base_model_name_or_path", "task_type", "fan_in_fan_out", "use_rslora")


def lora_scaling(alpha: float, rank: int, rslora: bool) -> float:
    """The factor PEFT applies to ``B A``: ``alpha / rank``, or ``alpha / √rank`` with rsLoRA (as PEFT computes it)."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


@dataclass(frozen=True)
class LoraModule:
    """One module's factors: ``a`` is ``rank × in_features``, ``b`` is ``out_features × rank``. For an embedding
    ``in_features`` is the vocabulary and PEFT adds ``(s B A)ᵀ`` to the ``vocabulary × dim`` weight."""

    a: torch.Tensor
    b: torch.Tensor
    embedding: bool = False

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.a.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.b.shape[0])


@dataclass(frozen=True)
class LoraAdapter:
    """A checked adapter: its modules by path in the base model (``model.layers.0.self_attn.q_proj``), its rank,
    ``lora_alpha`` and rsLoRA flag, and the whole adapter_config.json it came with (kept when written back)."""

    modules: Mapping[str, LoraModule]
    rank: int
    alpha: float
    rslora: bool
    config: Mapping[str, object]

    @property
    def scaling(self) -> float:
        return lora_scaling(self.alpha, self.rank, self.rslora)


#: A contributor's adapter and the number of examples it was trained on (the merge's integer weight).
Contribution = tuple[LoraAdapter, int]


# --- reading ------------------------------------------------------------------------------------------------------

def read_adapter(tensors: Mapping[str, torch.Tensor], config: Mapping[str, object]) -> LoraAdapter:
    """Check and group the tensors of an adapter_model.safetensors with its parsed adapter_config.json.

    ``InvalidInput`` for anything not understood or not consistent, naming the key or field: a key that is not
    ``base_model.model.<module>.lora_A.weight`` (or ``lora_B``, ``lora_embedding_A``/``_B``), an A without its B,
    shapes that do not chain (A ``r × in``, B ``out × r``, ``r`` the config's), values that are not finite.
    """
    rank, alpha, rslora = _check_config(config)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    kinds: dict[str, bool] = {}
    for key, tensor in tensors.items():
        path, factor, embedding = _parse_key(key)
        if kinds.setdefault(path, embedding) != embedding:
            raise InvalidInput(f"adapter key {_show(key)}: module {path} holds both linear and embedding factors",
                               key=_show(key))
        parts.setdefault(path, {})[factor] = _check_tensor(key, tensor)
    if not parts:
        raise InvalidInput("the adapter holds no LoRA tensors")
    modules = {}
    for path in sorted(parts):
        embedding = kinds[path]
        names = _key_names(path, embedding)
        if "A" not in parts[path] or "B" not in parts[path]:
            missing = names["B"] if "A" in parts[path] else names["A"]
            raise InvalidInput(f"adapter has no {missing}: every LoRA A needs its B and every B its A", key=missing)
        a, b = parts[path]["A"], parts[path]["B"]
        if a.shape[0] != rank or b.shape[1] != rank:
            raise InvalidInput(f"module {path}: A is {_dims(a)} and B is {_dims(b)}, but the config's r is {rank} "
                               "(A must be r x in and B out x r)", key=names["A"])
        modules[path] = LoraModule(a, b, embedding)
    return LoraAdapter(modules, rank, alpha, rslora, dict(config))


def load_adapter(weights: bytes, config: bytes) -> LoraAdapter:
    """``read_adapter`` of the bytes of an adapter_model.safetensors and of its adapter_config.json."""
    if len(config) > MAX_CONFIG_BYTES:
        raise InvalidInput(f"{ADAPTER_CONFIG} is {len(config):,} bytes, more than the {MAX_CONFIG_BYTES:,} accepted")
    try:
        parsed = loads_json(config, max_depth=MAX_CONFIG_DEPTH, what=ADAPTER_CONFIG)
    except IntegrityError as exc:
        raise InvalidInput(str(exc)) from None
    if not isinstance(parsed, dict):
        raise InvalidInput(f"{ADAPTER_CONFIG} is not a JSON object")
    return read_adapter(load_bytes(weights, ADAPTER_WEIGHTS), parsed)


def _check_config(config: Mapping[str, object]) -> tuple[int, float, bool]:
    if not isinstance(config, Mapping) or not all(isinstance(k, str) for k in config):
        raise InvalidInput(f"{ADAPTER_CONFIG} must be an object with string keys")
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise InvalidInput(f"{ADAPTER_CONFIG}: peft_type is {_show(peft_type)}, not LORA", field="peft_type")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= MAX_RANK:
        raise InvalidInput(f"{ADAPTER_CONFIG}: r must be an integer from 1 to {MAX_RANK}, not {_show(rank)}",
                           field="r")
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0 \
            or alpha > 1e12:
        raise InvalidInput(f"{ADAPTER_CONFIG}: lora_alpha must be a positive number (at most 1e12), not {_show(alpha)}",
                           field="lora_alpha")
    rslora = config.get("use_rslora", False)
    if not isinstance(rslora, bool):
        raise InvalidInput(f"{ADAPTER_CONFIG}: use_rslora must be true or false, not {_show(rslora)}",
                           field="use_rslora")
    bias = config.get("bias", "none")
    if bias != "none":
        raise InvalidInput(f"{ADAPTER_CONFIG}: bias is {_show(bias)}: adapters that train the base model's biases "
                           "are not supported (bias must be \"none\")", field="bias")
    for field, what in _UNSUPPORTED_FIELDS.items():
        value = config.get(field)
        if value is not None and value is not False and value != {} and value != []:
            raise InvalidInput(f"{ADAPTER_CONFIG}: {field} is {_show(value)}: {what} are not supported; "
                               f"merge adapters that leave {field} empty", field=field)
    return rank, float(alpha), rslora


def _parse_key(key: object) -> tuple[str, str, bool]:
    if not isinstance(key, str):
        raise InvalidInput(f"adapter key {_show(key)} is not a string")
    for suffix, (factor, embedding) in _SUFFIXES.items():
        if key.startswith(_PREFIX) and key.endswith(suffix):
            path = key[len(_PREFIX):-len(suffix)]
            if _MODULE_PATH.fullmatch(path):
                return path, factor, embedding
    if key.endswith((".lora_magnitude_vector", ".lora_magnitude_vector.weight")):
        raise InvalidInput(f"adapter key {_show(key)} is a DoRA magnitude: DoRA adapters are not supported",
                           key=_show(key))
    raise InvalidInput(f"adapter key {_show(key)} is not a LoRA factor (expected base_model.model.<module>"
                       ".lora_A.weight or .lora_B.weight, or .lora_embedding_A/.lora_embedding_B)", key=_show(key))


def _check_tensor(key: str, tensor: object) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise InvalidInput(f"adapter key {_show(key)} does not hold a tensor", key=_show(key))
    if tensor.dtype not in _FLOAT_DTYPES:
        raise InvalidInput(f"adapter tensor {_show(key)} is {tensor.dtype}, not a float", key=_show(key))
    if tensor.dim() != 2:
        hint = " (LoRA on convolutions is not supported)" if tensor.dim() > 2 else ""
        raise InvalidInput(f"adapter tensor {_show(key)} has shape {_dims(tensor)}, not a matrix{hint}",
                           key=_show(key))
    if tensor.numel() == 0:
        raise InvalidInput(f"adapter tensor {_show(key)} is empty ({_dims(tensor)})", key=_show(key))
    if not bool(torch.isfinite(tensor).all()):
        raise InvalidInput(f"adapter tensor {_show(key)} holds values that are not finite", key=_show(key))
    return tensor


def _key_names(path: str, embedding: bool) -> dict[str, str]:
    if embedding:
        return {"A": f"{_PREFIX}{path}.lora_embedding_A", "B": f"{_PREFIX}{path}.lora_embedding_B"}
    return {"A": f"{_PREFIX}{path}.lora_A.weight", "B": f"{_PREFIX}{path}.lora_B.weight"}


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _dims(t: torch.Tensor) -> str:
    return " x ".join(str(n) for n in t.shape)


# --- writing ------------------------------------------------------------------------------------------------------

def adapter_tensors(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's keys, as adapter_model.safetensors holds them."""
    out: dict[str, torch.Tensor] = {}
    for path in sorted(adapter.modules):
        module = adapter.modules[path]
        names = _key_names(path, module.embedding)
        out[names["A"]] = module.a.contiguous()
        out[names["B"]] = module.b.contiguous()
    return out


def adapter_config(adapter: LoraAdapter) -> dict[str, object]:
    """The adapter's adapter_config.json: the config it came with, its ``r`` and ``lora_alpha`` brought up to date."""
    return _config_with(adapter.config, adapter.rank, adapter.alpha, adapter.rslora)


def _config_with(config: Mapping[str, object], rank: int, alpha: float, rslora: bool) -> dict[str, object]:
    out = dict(config)
    out["r"] = rank
    out["lora_alpha"] = int(alpha) if float(alpha).is_integer() else alpha
    out["use_rslora"] = rslora
    return out


def save_adapter(adapter: LoraAdapter) -> dict[str, bytes]:
    """The two files of a PEFT adapter folder, by name: ``adapter_model.safetensors`` and ``adapter_config.json``.
    Writing them durably is storage's job."""
    weights = safetensors.torch.save(adapter_tensors(adapter), metadata={"format": "pt"})
    config = json.dumps(adapter_config(adapter), indent=2, sort_keys=True, allow_nan=False)
    return {ADAPTER_WEIGHTS: bytes(weights), ADAPTER_CONFIG: (config + "\n").encode()}


# --- merging ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Plan:
    """Checked contributions: the adapters, their weights wᵢ (summing to 1), the module paths, the output dtype."""

    adapters: tuple[LoraAdapter, ...]
    weights: tuple[float, ...]
    paths: tuple[str, ...]
    dtype: torch.dtype

    @property
    def first(self) -> LoraAdapter:
        return self.adapters[0]


def exact_delta(contributions: Sequence[Contribution]) -> dict[str, torch.Tensor]:
    """The reference every merge is measured against: ``Σ wᵢ sᵢ Bᵢ Aᵢ`` per module, full rank, in float64
    (``out × in``, in LoRA's orientation: an embedding's weight changes by its transpose)."""
    plan = _plan(contributions)
    out = {}
    for path in plan.paths:
        total = torch.zeros(plan.first.modules[path].out_features, plan.first.modules[path].in_features,
                            dtype=torch.float64)
        for adapter, w in zip(plan.adapters, plan.weights, strict=True):
            module = adapter.modules[path]
            total.addmm_(module.b.double(), module.a.double(), alpha=w * adapter.scaling)
        out[path] = total
    return out


def adapter_delta(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    """``s B A`` per module in float64: what ``adapter`` adds to the base model (LoRA's orientation)."""
    return {path: (m.b.double() @ m.a.double()) * adapter.scaling for path, m in sorted(adapter.modules.items())}


def relative_error(adapter: LoraAdapter, reference: Mapping[str, torch.Tensor]) -> float:
    """``‖adapter_delta(adapter) − reference‖ / ‖reference‖``, Frobenius norms over all modules together."""
    if set(reference) != set(adapter.modules):
        raise InvalidInput("the reference and the adapter cover different modules")
    error = total = 0.0
    for path, delta in adapter_delta(adapter).items():
        error += float(torch.sum((delta - reference[path].double()) ** 2))
        total += float(torch.sum(reference[path].double() ** 2))
    return math.sqrt(error / total) if total > 0 else math.sqrt(error)


def merge_fedit(contributions: Sequence[Contribution]) -> LoraAdapter:
    """FedIT (Zhang et al., 2023): ``B = Σ wᵢ Bᵢ``, ``A = Σ wᵢ Aᵢ``. Not the average of the products unless the
    As (or the Bs) are all the same: kept to measure the others against. The ranks must agree."""
    plan = _plan(contributions)
    rank = _common_rank(plan, "fedit")
    alpha, scaling = _output_scale(plan, rank)
    modules = {}
    for path in plan.paths:
        a = _weighted_sum([ad.modules[path].a for ad in plan.adapters], plan.weights)
        b = _weighted_sum([ad.modules[path].b for ad in plan.adapters], _folds(plan, scaling))
        modules[path] = LoraModule(a.to(plan.dtype), b.to(plan.dtype), plan.first.modules[path].embedding)
    return _adapter(plan, modules, rank, alpha)


def merge_ffa(contributions: Sequence[Contribution]) -> LoraAdapter:
    """FFA-LoRA (Sun et al., 2024): every contributor kept the same A frozen, so ``Σ wᵢ sᵢ Bᵢ A = (Σ wᵢ sᵢ Bᵢ) A``:
    average the Bs, exactly. ``MergeError`` naming the module when the As are not all the same."""
    plan = _plan(contributions)
    rank = _common_rank(plan, "ffa")
    alpha, scaling = _output_scale(plan, rank)
    modules = {}
    for path in plan.paths:
        a = plan.first.modules[path].a
        for i, adapter in enumerate(plan.adapters[1:], start=1):
            other = adapter.modules[path].a
            if not torch.equal(other.double(), a.double()):
                raise MergeError(f"ffa needs one frozen A shared by every contributor, but contribution {i} has "
                                 f"another A for module {path}: merge with stack or svd instead", module=path)
        b = _weighted_sum([ad.modules[path].b for ad in plan.adapters], _folds(plan, scaling))
        modules[path] = LoraModule(a.to(plan.dtype), b.to(plan.dtype), plan.first.modules[path].embedding)
    return _adapter(plan, modules, rank, alpha)


def merge_stack(contributions: Sequence[Contribution], *, max_rank: int = DEFAULT_MAX_STACK_RANK) -> LoraAdapter:
    """FLoRA's stacking (Wang et al., 2024): ``B = [c₁B₁ … cₖBₖ]``, ``A = [A₁; …; Aₖ]`` with ``cᵢ = wᵢ sᵢ / s``, so
    ``s B A = Σ wᵢ sᵢ Bᵢ Aᵢ`` exactly (to the rounding of ``cᵢ Bᵢ``). The rank is ``Σ rᵢ``: ``MergeError`` above
    ``max_rank``."""
    return _stack(_plan(contributions), max_rank)


def _stack(plan: _Plan, max_rank: int) -> LoraAdapter:
    _check_rank(max_rank, "max_rank")
    rank = sum(adapter.rank for adapter in plan.adapters)
    if rank > max_rank:
        raise MergeError(f"stacking {len(plan.adapters)} adapters gives rank {rank}, above the bound of {max_rank}: "
                         "merge with svd (or raise max_rank)", rank=str(rank))
    alpha, scaling = _output_scale(plan, rank)
    folds = _folds(plan, scaling)
    modules = {}
    for path in plan.paths:
        a = torch.cat([ad.modules[path].a.double() for ad in plan.adapters], dim=0)
        b = torch.cat([ad.modules[path].b.double() * c for ad, c in zip(plan.adapters, folds, strict=True)], dim=1)
        modules[path] = LoraModule(a.to(plan.dtype), b.to(plan.dtype), plan.first.modules[path].embedding)
    return _adapter(plan, modules, rank, alpha)


def merge_svd(contributions: Sequence[Contribution], *, rank: int | None = None) -> LoraAdapter:
    """The best rank-``rank`` approximation of ``exact_delta`` (Eckart–Young, in Frobenius norm), as a LoRA adapter
    of that rank (by default the largest contribution's); exact when the average has rank ``rank`` or less.

    Per module, with the stacked factors ``B̂ = [w₁s₁B₁ …]`` (``out × R``) and ``Â = [A₁; …]`` (``R × in``):
    ``B̂ = Q_B R_B``, ``Âᵀ = Q_A R_A``, and the SVD ``R_B R_Aᵀ = U Σ Vᵀ`` (at most ``R × R``) gives
    ``B̂Â = (Q_B U) Σ (Q_A V)ᵀ``; the top singular values are split evenly between the new B and A. Nothing
    ``out × in`` is formed. Not bit-reproducible across LAPACK builds: commit its result, do not recompute it.
    """
    return _svd(_plan(contributions), rank)


def _svd(plan: _Plan, rank: int | None) -> LoraAdapter:
    rank = max(adapter.rank for adapter in plan.adapters) if rank is None else rank
    _check_rank(rank, "rank")
    alpha, scaling = _output_scale(plan, rank)
    weights = [w * adapter.scaling for adapter, w in zip(plan.adapters, plan.weights, strict=True)]
    modules = {}
    for path in plan.paths:
        stacked_b = torch.cat([ad.modules[path].b.double() * c for ad, c in zip(plan.adapters, weights, strict=True)],
                              dim=1)
        stacked_a = torch.cat([ad.modules[path].a.double() for ad in plan.adapters], dim=0)
        q_b, r_b = torch.linalg.qr(stacked_b)
        q_a, r_a = torch.linalg.qr(stacked_a.T)
        u, sigma, vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)
        k = min(rank, int(sigma.numel()))
        root = torch.sqrt(sigma[:k] / scaling)
        b = torch.zeros(stacked_b.shape[0], rank, dtype=torch.float64)
        a = torch.zeros(rank, stacked_a.shape[1], dtype=torch.float64)
        b[:, :k] = (q_b @ u[:, :k]) * root
        a[:k] = root[:, None] * (vh[:k] @ q_a.T)
        modules[path] = LoraModule(a.to(plan.dtype), b.to(plan.dtype), plan.first.modules[path].embedding)
    return _adapter(plan, modules, rank, alpha)


def merge_lora(contributions: Sequence[Contribution], strategy: str = "auto", *, rank: int | None = None,
               max_rank: int = DEFAULT_MAX_STACK_RANK) -> LoraAdapter:
    """Merge with ``strategy`` (one of ``STRATEGIES``), or by default (``"auto"``) stack when the summed rank is at
    most ``max_rank`` (exact) and otherwise re-compress to ``rank`` with svd (the best that rank allows)."""
    _check_rank(max_rank, "max_rank")
    if strategy == "auto":
        summed = sum(adapter.rank for adapter in _plan(contributions).adapters)
        strategy = "stack" if summed <= max_rank else "svd"
    if strategy == "stack":
        return merge_stack(contributions, max_rank=max_rank)
    if strategy == "svd":
        return merge_svd(contributions, rank=rank)
    if strategy == "ffa":
        return merge_ffa(contributions)
    if strategy == "fedit":
        return merge_fedit(contributions)
    raise InvalidInput(f"unknown LoRA merge {_show(strategy)}: one of auto, {', '.join(STRATEGIES)}",
                       strategy=_show(strategy))


def combine_adapters(terms: Sequence[tuple[LoraAdapter, float]], *, rank: int, max_rank: int
                     ) -> tuple[LoraAdapter, str]:
    """The adapter whose change is ``Σ cᵢ sᵢ Bᵢ Aᵢ`` for (adapter, coefficient ``cᵢ``) ``terms``: coefficients may be
    negative (a merge adds each side's change to the base, ``x − base``, a revert takes one away), and terms with
    coefficient 0 are left out. Stacked exactly while the summed rank is at most ``max_rank``, and otherwise the
    best adapter of rank ``rank`` (svd); the scaling is the first kept term's. Returns the adapter and which of
    ``"stack"`` and ``"svd"`` made it. ``MergeError`` if every coefficient is 0 (nothing to adapt with)."""
    _check_rank(rank, "rank")
    _check_rank(max_rank, "max_rank")
    kept = [(adapter, float(c)) for adapter, c in terms if c != 0]
    if not kept:
        raise MergeError("the changes cancel out: the merge adapts nothing")
    if not all(math.isfinite(c) for _, c in kept):
        raise InvalidInput("merge coefficients must be finite")
    plan = _checked_plan([adapter for adapter, _ in kept], [c for _, c in kept])
    if sum(adapter.rank for adapter in plan.adapters) <= max_rank:
        return _stack(plan, max_rank), "stack"
    return _svd(plan, rank), "svd"


def product_distance(a: LoraAdapter, b: LoraAdapter) -> tuple[float, float]:
    """``‖Δa − Δb‖`` and ``‖Δb‖`` (Frobenius, over all modules, ``Δ = s B A``) without forming any ``out × in``
    matrix: ``‖X Y‖² = Σ (XᵀX) ∘ (Y Yᵀ)`` for the stacked factors. ``MergeError`` if they adapt other modules."""
    if set(a.modules) != set(b.modules):
        raise MergeError("the two adapters adapt different modules")
    apart = total = 0.0
    for path, mb in b.modules.items():
        ma = a.modules[path]
        if (ma.out_features, ma.in_features) != (mb.out_features, mb.in_features):
            raise MergeError(f"module {path} has other shapes in the two adapters", module=path)
        x = torch.cat([ma.b.double() * a.scaling, mb.b.double() * -b.scaling], dim=1)
        y = torch.cat([ma.a.double(), mb.a.double()], dim=0)
        apart += float(((x.T @ x) * (y @ y.T)).sum())
        own_x, own_y = mb.b.double() * b.scaling, mb.a.double()
        total += float(((own_x.T @ own_x) * (own_y @ own_y.T)).sum())
    return math.sqrt(max(apart, 0.0)), math.sqrt(max(total, 0.0))


def merged_weight(weight: torch.Tensor, module: LoraModule, scaling: float, *, fan_in_fan_out: bool = False
                  ) -> torch.Tensor:
    """A base model's ``weight`` with the module's change added, in ``weight``'s dtype: what PEFT's
    ``merge_and_unload`` gives, computed in float64 and rounded once. An embedding's weight (``vocabulary × dim``)
    and a ``fan_in_fan_out`` layer's (``in × out``) take the transpose of ``s B A``."""
    delta = (module.b.double() @ module.a.double()) * scaling
    if module.embedding or fan_in_fan_out:
        delta = delta.T
    if tuple(weight.shape) != tuple(delta.shape):
        raise MergeError(f"the base weight is {_dims(weight)} but the adapter's change is {_dims(delta)}")
    return (weight.double() + delta).to(weight.dtype)


def alpha_for(alpha: float, rank: int, new_rank: int, rslora: bool) -> float:
    """The ``lora_alpha`` that keeps an adapter of ``rank`` and ``alpha``'s scaling at ``new_rank``."""
    if new_rank == rank:
        return alpha
    return alpha * math.sqrt(new_rank) / math.sqrt(rank) if rslora else alpha * new_rank / rank


def _plan(contributions: Sequence[Contribution]) -> _Plan:
    if not contributions:
        raise InvalidInput("no LoRA adapters to merge")
    adapters, counts = [], []
    for i, item in enumerate(contributions):
        if not isinstance(item, tuple) or len(item) != 2 or not isinstance(item[0], LoraAdapter):
            raise InvalidInput(f"contribution {i} is not an (adapter, examples) pair")
        adapter, examples = item
        if not isinstance(examples, int) or isinstance(examples, bool) or not 1 <= examples <= MAX_EXAMPLES:
            raise InvalidInput(f"contribution {i} claims {_show(examples)} examples: a weight is a whole number of "
                               f"examples from 1 to {MAX_EXAMPLES}")
        adapters.append(adapter)
        counts.append(examples)
    total = sum(counts)
    return _checked_plan(adapters, [c / total for c in counts])


def _checked_plan(adapters: Sequence[LoraAdapter], weights: Sequence[float]) -> _Plan:
    """The plan of merging ``adapters`` with ``weights`` (any finite numbers): ``MergeError`` unless the adapters
    agree on ``_SHARED_FIELDS`` and adapt the same modules with the same shapes."""
    first = adapters[0]
    dtype = next(iter(first.modules.values())).a.dtype
    for i, adapter in enumerate(adapters):
        for field in _SHARED_FIELDS:
            if adapter.config.get(field) != first.config.get(field):
                raise MergeError(f"contribution {i} has {field} {_show(adapter.config.get(field))} but contribution 0 "
                                 f"has {_show(first.config.get(field))}: adapters to merge must agree on it",
                                 field=field)
        if set(adapter.modules) != set(first.modules):
            odd = sorted(set(adapter.modules) ^ set(first.modules))[0]
            raise MergeError(f"contribution {i} and contribution 0 adapt different modules ({odd} is in only one): "
                             "adapters to merge must target the same modules", module=odd)
        for path, module in adapter.modules.items():
            mine = first.modules[path]
            if (module.out_features, module.in_features, module.embedding) != \
                    (mine.out_features, mine.in_features, mine.embedding):
                raise MergeError(f"module {path} is {module.out_features} x {module.in_features} in contribution {i} "
                                 f"but {mine.out_features} x {mine.in_features} in contribution 0", module=path)
            dtype = torch.promote_types(dtype, torch.promote_types(module.a.dtype, module.b.dtype))
    return _Plan(tuple(adapters), tuple(weights), tuple(sorted(first.modules)), dtype)


def _common_rank(plan: _Plan, strategy: str) -> int:
    ranks = sorted({adapter.rank for adapter in plan.adapters})
    if len(ranks) > 1:
        raise MergeError(f"{strategy} needs adapters of one rank, not of ranks {ranks}: merge with stack or svd")
    return ranks[0]


def _check_rank(rank: object, name: str) -> None:
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= MAX_RANK:
        raise InvalidInput(f"{name} must be an integer from 1 to {MAX_RANK}, not {_show(rank)}")


def _output_scale(plan: _Plan, rank: int) -> tuple[float, float]:
    """``lora_alpha`` for an adapter of ``rank`` whose scaling is the first contribution's, and that scaling as
    PEFT will compute it from the two."""
    first = plan.first
    alpha = alpha_for(first.alpha, first.rank, rank, first.rslora)
    return alpha, lora_scaling(alpha, rank, first.rslora)


def _folds(plan: _Plan, scaling: float) -> list[float]:
    """``wᵢ sᵢ / s``: what each contribution's B is multiplied by in an adapter of scaling ``s``."""
    return [w * adapter.scaling / scaling for adapter, w in zip(plan.adapters, plan.weights, strict=True)]


def _weighted_sum(tensors: Sequence[torch.Tensor], coefficients: Sequence[float]) -> torch.Tensor:
    total = torch.zeros(tensors[0].shape, dtype=torch.float64)
    for tensor, c in zip(tensors, coefficients, strict=True):
        total.add_(tensor.double(), alpha=c)
    return total


def _adapter(plan: _Plan, modules: dict[str, LoraModule], rank: int, alpha: float) -> LoraAdapter:
    rslora = plan.first.rslora
    return LoraAdapter(modules, rank, alpha, rslora, _config_with(plan.first.config, rank, alpha, rslora))
