"""Repositories of LoRA adapters: what their commits hold, how their merges combine, and the base model they adapt.

A repository whose record carries an ``AdapterSpec`` (``core.objects``) holds PEFT LoRA adapters on one base
model, a commit of another repository named by both ids. Each commit's tensors are an adapter's factors under
PEFT's own keys (``base_model.model.<module>.lora_A.weight`` ...), stored like any weights (``snapshot-v1``); the
adapter_config.json they share is the record's, with ``r`` read from the factors' shapes and ``lora_alpha`` brought
along so that the scaling ``lora_alpha / r`` never changes (``config_for``). Every commit adapts the record's
modules, with their shapes but for the rank, at one rank (``adapter_of``).

Adapters are combined as what they change, ``Δ = s B A``, never factor by factor: averaging the As and the Bs
apart is not the average of the changes (``tensors.lora``, docs/design/lora-merges.md). A merge of branches, a
revert and a round each write ``Σ cᵢ Δᵢ`` over the commits involved (``combine``): a branch merge
``Δ_base + Σ wᵢ (Δᵢ − Δ_base)``, a revert ``Δ_head − (Δ_c − Δ_parent)``, a round ``Δ_head + Σ eᵢ (Δ_xᵢ − Δ_baseᵢ)``.
The result is stacked exactly (FLoRA) while the summed rank stays within the record's ``max_rank``, and is
otherwise the best adapter of the record's ``rank`` (svd), which depends on the machine's LAPACK: every node
re-derives a stacked merge bit for bit, and an svd one to ``SVD_TOLERANCE`` (``same``).

The base model is needed only to check the first adapter's shapes against it (``check_base``: later commits
keep those shapes) and to write an adapter's merged weights (``merged_source``). Its payload is read like any
other, by members of the base's repository.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import InvalidInput, MergeError
from ..core.ids import CommitId
from ..core.objects import AdapterSpec, TensorSpec
from ..core.round_rules import RoundPolicy
from .atomic import atomic_write
from .history import History

if TYPE_CHECKING:
    import torch

    from ..tensors.lora import LoraAdapter
    from ..tensors.safetensors_file import Source
    from ..tensors.safetensors_io import StateDict

#: How far (relative, in Frobenius norm of the change) a re-derived svd merge may be from the one committed, as a
#: multiple of the adapter dtype's machine epsilon: two LAPACK builds round differently, nothing more.
SVD_TOLERANCE = 64
#: Config fields a contributed adapter must share with the repository's, as PEFT defaults them when absent: they
#: change what the factors mean.
SHARED_FIELDS = {"peft_type": "LORA", "task_type": None, "fan_in_fan_out": False, "use_rslora": False,
                 "target_modules": None}


def config_for(spec: AdapterSpec, rank: int) -> dict[str, Any]:
    """The adapter_config.json of a commit of rank ``rank``: the record's, ``r`` and ``lora_alpha`` brought up to
    date so that the scaling stays the record's."""
    from ..tensors.lora import alpha_for

    config = spec.parsed_config()
    alpha = alpha_for(float(config["lora_alpha"]), int(config["r"]), rank, bool(config.get("use_rslora", False)))
    return {**config, "r": rank, "lora_alpha": int(alpha) if alpha.is_integer() else alpha}


def adapter_of(spec: AdapterSpec, layout: Sequence[TensorSpec], state: Mapping[str, torch.Tensor]) -> LoraAdapter:
    """``state`` read as an adapter of the repository whose record holds ``spec`` and ``layout``: ``InvalidInput``
    unless it holds the record's tensors, each with the record's shape but for the rank, all at one rank."""
    from ..tensors.lora import read_adapter

    names = {t.name: t for t in layout}
    if set(state) != set(names):
        odd = sorted(set(state) ^ set(names))[0]
        where = "is not among" if odd in state else "is missing from"
        raise InvalidInput(f"tensor {odd} {where} this adapter's: an adapter repository's commits adapt the modules "
                           "its first adapter did", tensor=odd)
    ranks = set()
    for name, tensor in state.items():
        expected = names[name].shape
        rank_axis = 0 if ".lora_A" in name or name.endswith("lora_embedding_A") else 1
        if tensor.dim() != 2 or len(expected) != 2 or tensor.shape[1 - rank_axis] != expected[1 - rank_axis]:
            raise InvalidInput(f"tensor {name} is {list(tensor.shape)}, where this adapter repository's is "
                               f"{list(expected)} (only the rank may change)", tensor=name)
        ranks.add(int(tensor.shape[rank_axis]))
    if len(ranks) != 1:
        raise InvalidInput(f"the adapter's modules have ranks {sorted(ranks)}: an adapter has one rank")
    return read_adapter(state, config_for(spec, ranks.pop()))


def read(history: History, cid: CommitId) -> LoraAdapter:
    """Commit ``cid`` of an adapter repository, as an adapter."""
    return adapter_of(_spec(history), history.record.layout, history.materialize(cid))


def accept(spec: AdapterSpec, layout: Sequence[TensorSpec], adapter: LoraAdapter) -> StateDict:
    """The tensors to commit for ``adapter`` (as PEFT saved it) in the repository ``spec`` and ``layout`` describe:
    ``InvalidInput`` unless its config agrees with the repository's on ``SHARED_FIELDS`` and on the scaling, and
    its modules are the repository's (``adapter_of``)."""
    from ..tensors.lora import adapter_tensors, lora_scaling

    config = spec.parsed_config()
    for field, default in SHARED_FIELDS.items():
        mine, theirs = config.get(field, default), adapter.config.get(field, default)
        if field == "target_modules" and isinstance(mine, list) and isinstance(theirs, list):
            mine, theirs = sorted(map(str, mine)), sorted(map(str, theirs))
        if mine != theirs:
            raise InvalidInput(f"the adapter's {field} is {theirs!r}, this repository's {mine!r}: train from its "
                               "checkout, whose adapter_config.json is the repository's", field=field)
    wanted = lora_scaling(float(config["lora_alpha"]), int(config["r"]), bool(config.get("use_rslora", False)))
    if abs(adapter.scaling - wanted) > 1e-12 * wanted:
        raise InvalidInput(f"the adapter's scaling (lora_alpha / r = {adapter.alpha:g} / {adapter.rank}) is "
                           f"{adapter.scaling:g}, this repository's {wanted:g}: keep lora_alpha / r as its checkout "
                           "has it", field="lora_alpha")
    state = adapter_tensors(adapter)
    adapter_of(spec, layout, state)
    return state


def check_base(adapter: LoraAdapter, base: Sequence[TensorSpec], *, fan_in_fan_out: bool = False) -> None:
    """``InvalidInput`` unless every module ``adapter`` adapts is a floating matrix of the base model (layout
    ``base``) of the shape its factors change: ``out × in`` (``in × out`` with ``fan_in_fan_out``; an embedding's
    ``vocabulary × dim``)."""
    specs = {t.name: t for t in base}
    for path, module in sorted(adapter.modules.items()):
        name = f"{path}.weight"
        found = specs.get(name)
        transposed = module.embedding or fan_in_fan_out
        shape = (module.in_features, module.out_features) if transposed else (module.out_features,
                                                                             module.in_features)
        if found is None:
            raise InvalidInput(f"the adapter adapts {path}, but the base model has no tensor {name}", module=path)
        if found.shape != shape or found.dtype not in ("F64", "F32", "F16", "BF16"):
            raise InvalidInput(f"the adapter changes {name} as a {shape[0]} x {shape[1]} float matrix, but the base "
                               f"model's is {found.dtype} {list(found.shape)}", module=path)


def write_peft(history: History, cid: CommitId, folder: Path) -> int:
    """Write commit ``cid`` of an adapter repository to ``folder`` as PEFT saves an adapter (its factors bit for bit
    as committed, and its adapter_config.json), each file atomically and private to this user; returns the bytes."""
    from ..tensors.lora import save_adapter

    written = 0
    for name, data in save_adapter(read(history, cid)).items():
        atomic_write(folder / name, data, mode=0o600)
        written += len(data)
    return written


def merged_source(base: History, base_commit: CommitId, adapter: LoraAdapter) -> Source:
    """The base model's weights with ``adapter``'s change added to each module it adapts (PEFT's
    ``merge_and_unload``), computed a tensor at a time as the file is written."""
    from ..tensors.lora import merged_weight
    from ..tensors.safetensors_io import computed_source

    weights = base.weights(base_commit)
    layout = base.layout(base_commit)
    check_base(adapter, layout, fan_in_fan_out=bool(adapter.config.get("fan_in_fan_out", False)))
    adapted = {f"{path}.weight": module for path, module in adapter.modules.items()}

    def compute(name: str) -> torch.Tensor:
        module = adapted.get(name)
        if module is None:
            return weights[name]
        return merged_weight(weights[name], module, adapter.scaling,
                             fan_in_fan_out=bool(adapter.config.get("fan_in_fan_out", False)))

    return computed_source(layout, compute)


def combine(history: History, terms: Sequence[tuple[CommitId, Fraction]]) -> tuple[StateDict, str]:
    """The adapter whose change is ``Σ c Δ`` over (commit, coefficient ``c``) ``terms`` of an adapter repository
    (the same commit named twice adds up), as the tensors to commit, and how it was made (``"stack"``: exact, or
    ``"svd"``: re-compressed to the record's rank)."""
    from ..tensors.lora import adapter_tensors, combine_adapters

    spec = _spec(history)
    total: dict[CommitId, Fraction] = {}
    for cid, c in terms:
        total[cid] = total.get(cid, Fraction(0)) + c
    kept = [(read(history, cid), float(c)) for cid, c in total.items() if c != 0]
    adapter, method = combine_adapters(kept, rank=spec.rank, max_rank=spec.max_rank)
    return adapter_tensors(adapter), method


def same(history: History, committed: Mapping[str, torch.Tensor], derived: Mapping[str, torch.Tensor],
         method: str) -> bool:
    """Whether a merge's committed tensors are the ones re-derived: bit for bit when stacked, and when made by svd,
    as close in what they change as two machines' LAPACK give (``SVD_TOLERANCE``)."""
    from ..tensors.fixedpoint import same_bits
    from ..tensors.lora import product_distance

    if committed.keys() != derived.keys():
        return False
    if method != "svd":
        return all(committed[k].shape == derived[k].shape and committed[k].dtype == derived[k].dtype
                   and same_bits(committed[k], derived[k]) for k in committed)
    import torch

    spec = _spec(history)
    try:
        mine = adapter_of(spec, history.record.layout, committed)
        theirs = adapter_of(spec, history.record.layout, derived)
        apart, norm = product_distance(mine, theirs)
    except (InvalidInput, MergeError):
        return False
    eps = max(torch.finfo(t.dtype).eps for t in derived.values())
    return apart <= SVD_TOLERANCE * eps * norm


def check_policy(policy: RoundPolicy) -> None:
    """``InvalidInput`` unless rounds over adapters can follow ``policy``: the weighted mean of the changes, in
    plain rounds, with neither proofs, differential privacy nor norm bounds (each works on the values of whole
    models, not on a product of factors)."""
    refused = [what for what, on in (
        (f"the {policy.strategy} strategy", policy.strategy != "mean" or bool(policy.strategy_params)),
        ("secure rounds", policy.privacy == "secure"), ("proven merges", bool(policy.proof_chunk)),
        ("differential privacy", policy.dp), ("norm bounds", bool(policy.norm_bound))) if on]
    if refused:
        raise InvalidInput(f"rounds over LoRA adapters take the weighted mean of the adapters' changes in plain "
                           f"rounds; this policy asks for {', '.join(refused)}, which work on whole models' values")


def _spec(history: History) -> AdapterSpec:
    spec = history.record.adapter
    if spec is None:
        raise InvalidInput(f"repository {history.record.name} holds whole models, not LoRA adapters")
    return spec
