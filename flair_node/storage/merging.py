"""Merges and reverts: which commits go in, with which weights, and the weights they add up to.

Both are computed in exact fixed-point arithmetic (``tensors.fixedpoint``) and record their scale and integer
weights, so anyone holding the same inputs re-derives the same bytes. Both are computed a piece at a time as the
new commit is written (``History.weights``, ``fixedpoint.combine_parts``, ``safetensors_io.streamed_source``): a
merge holds a piece of the tensor it is at, in each input, and never a whole tensor, and it finds the tensors an
input left unchanged by the pieces they are stored in, without reading them.

``Repository.merge`` and ``Repository.revert`` stay the verbs (the API, the CLI and the tests call them, next to
``commit_weights`` and ``contribute``): each asks this module what to write (a ``NewCommit``) and writes it the
way every commit of this node is written. This module only reads the repository's ``History``.

In a repository of LoRA adapters, the same merges and reverts combine what the adapters change, not their
factors (``storage.adapters.combine``): the commit records how (``meta["lora"]``: ``stack`` or ``svd``).

Like the rest of storage's tensor work, torch is imported when a merge runs, not when this module loads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from ..core import graph
from ..core.errors import InvalidInput, MergeError
from ..core.ids import BranchName, CommitId, short
from ..core.objects import TensorSpec
from ..core.refs import DEFAULT_BRANCH, check_branch_name
from . import adapters
from .history import History
from .pieces import PIECE

if TYPE_CHECKING:  # at run time, tensor modules are imported by the functions that use them (see above)
    from ..tensors.safetensors_file import Source
    from ..tensors.safetensors_io import StateDict

#: How ``merge`` combines branches; ``average`` is the older name of ``mean``, still accepted.
MERGE_METHODS = ("mean", "task-arithmetic")
MERGE_ALIASES = {"average": "mean"}


@dataclass(frozen=True)
class NewCommit:
    """A commit to write: its weights, parents, kind, record fields, and the move of ``branch`` from ``expected``.

    ``message`` is the one given, or the default; the writer checks it."""

    state: Source | StateDict
    parents: tuple[CommitId, ...]
    kind: str
    message: str
    meta: dict[str, Any]
    branch: BranchName
    expected: CommitId


def merge(history: History, sources: Sequence[str], into: str, *, strategy: str = "mean",
          message: str | None = None) -> NewCommit:
    """A merge commit on ``into`` with parents ``[into's head, *sources]``, combined relative to their base.

    ``mean`` weights each side by the examples committed on it since the merge base (equal weights if none were
    recorded): federated averaging. ``task-arithmetic`` adds every side's change to the base.
    """
    from ..tensors.fixedpoint import DEFAULT_SCALE_BITS, WEIGHT_BITS, normalize_weights

    strategy = MERGE_ALIASES.get(strategy, strategy)
    if strategy not in MERGE_METHODS:
        raise InvalidInput(f"unknown merge strategy {strategy!r}: use one of {', '.join(MERGE_METHODS)}",
                           strategy=strategy)
    if not sources:
        raise InvalidInput("name at least one branch or commit to merge")
    target = check_branch_name(into)
    head = history.head(target)
    heads = [head]
    for src in sources:
        cid = history.resolve(src)
        if cid in heads:
            raise MergeError(f"{src} is already named or is the head of {into}", commit=cid)
        if graph.is_ancestor(cid, head, history.parents):
            raise MergeError(f"{src} ({short(cid)}) is already contained in {into}: nothing to merge", commit=cid)
        heads.append(cid)
    base = heads[0]
    for cid in heads[1:]:
        found = graph.merge_base(base, cid, history.parents, lambda c: history.commit(c).timestamp_ms)
        if found is None:
            raise MergeError(f"{short(cid)} shares no history with {into}", commit=cid)
        base = found
    examples = [_examples_since(history, h, base) for h in heads]
    if strategy == "mean":
        weights = normalize_weights(examples, WEIGHT_BITS)
    else:
        weights = [1 << WEIGHT_BITS] * len(heads)
    meta = {"strategy": strategy, "base": base, "weights": weights, "scale_bits": DEFAULT_SCALE_BITS,
            "weight_bits": WEIGHT_BITS, "examples": sum(examples)}
    merged: Source | StateDict
    if history.record.adapter is not None:  # base + Σ wᵢ (sideᵢ − base), in what the adapters change
        whole = Fraction(1 << WEIGHT_BITS)
        sides = [(h, w / whole) for h, w in zip(heads, weights, strict=True)]
        merged, meta["lora"] = adapters.combine(history, [(base, 1 - sum(weights) / whole), *sides])
    else:
        merged = _combined(history, base, heads, weights)
    return NewCommit(merged, tuple(heads), "merge", message or f"merge {', '.join(sources)} into {into} ({strategy})",
                     meta, target, head)


def revert(history: History, rev: str, *, branch: str = DEFAULT_BRANCH, message: str | None = None) -> NewCommit:
    """A new commit on ``branch`` that undoes ``rev``'s change (relative to its first parent)."""
    from ..tensors.fixedpoint import DEFAULT_SCALE_BITS, WEIGHT_BITS

    target = check_branch_name(branch)
    head = history.head(target)
    cid = history.resolve(rev)
    reverted = history.commit(cid)
    if not reverted.parents:
        raise InvalidInput(f"commit {short(cid)} is the repository's first commit: nothing to revert to",
                           commit=cid)
    if not graph.is_ancestor(cid, head, history.parents):
        raise InvalidInput(f"commit {short(cid)} is not on branch {branch} (head is {short(head)})",
                           commit=cid, branch=branch)
    parent = reverted.parents[0]
    meta = {"reverts": cid, "scale_bits": DEFAULT_SCALE_BITS, "weight_bits": WEIGHT_BITS, "examples": 0}
    state: Source | StateDict
    if history.record.adapter is not None:
        one = Fraction(1)
        state, meta["lora"] = adapters.combine(history, [(head, one), (parent, one), (cid, -one)])
    else:
        state = _combined(history, cid, [head, parent], [1 << WEIGHT_BITS, 1 << WEIGHT_BITS])
    first_line = reverted.message.splitlines()[0] if reverted.message else short(cid)
    return NewCommit(state, (head,), "revert", message or f'revert "{first_line}"', meta, target, head)


def _combined(history: History, base: CommitId, inputs: Sequence[CommitId], weights: Sequence[int]) -> Source:
    """``fixedpoint.combine`` of ``inputs`` relative to ``base`` with ``weights``, as the file the new commit
    stores, each tensor computed when the writer reaches it.

    A tensor whose layout (present, dtype, shape) no input changed is combined by its values. One that some inputs
    add, remove or reshape takes their layout, as git takes a change made on one side only:

    - the inputs that change it must agree: the same spec, and bit for bit the same tensor (or all remove it);
    - the inputs that keep its layout must keep its values too, or their change would be lost;

    anything else is a ``MergeError`` naming the tensor, to be resolved by a commit on one side."""
    from ..tensors.fixedpoint import DEFAULT_SCALE_BITS, WEIGHT_BITS, combine_parts, same_bits
    from ..tensors.safetensors_io import ranges_of, spec_of, streamed_source

    start = history.weights(base)
    sides = [history.weights(cid) for cid in inputs]
    layout: list[TensorSpec] = []
    taken: dict[str, int] = {}  # a tensor whose layout changed -> the input it is taken from
    for name in sorted(set(start).union(*sides)):
        was = spec_of(start, name)
        specs = [spec_of(side, name) for side in sides]
        changing = [i for i, spec in enumerate(specs) if spec != was]
        if not changing:
            if was is not None:
                layout.append(was)
            continue
        if len({specs[i] for i in changing}) > 1:
            raise MergeError(f"tensor {name}: the inputs change its shape, dtype or presence in different ways; "
                             "commit one layout on one side first", tensor=name)
        spec = specs[changing[0]]
        what = "removed" if spec is None else "added" if was is None else "reshaped"
        if was is not None and any(not same_bits(side[name], start[name])
                                   for i, side in enumerate(sides) if i not in changing):
            raise MergeError(f"tensor {name} is {what} on one side and changed on another", tensor=name)
        if spec is None:
            continue
        if any(not same_bits(sides[i][name], sides[changing[0]][name]) for i in changing[1:]):
            raise MergeError(f"tensor {name} is {what} on two sides with different values", tensor=name)
        layout.append(spec)
        taken[name] = changing[0]
    if not layout:
        raise MergeError("the merge would hold no tensor")

    def parts(name: str) -> Iterator[memoryview]:
        if name in taken:
            return ranges_of(sides[taken[name]], name).parts(PIECE)
        return combine_parts(name, ranges_of(start, name), [ranges_of(side, name) for side in sides], weights,
                             scale_bits=DEFAULT_SCALE_BITS, weight_bits=WEIGHT_BITS, part=PIECE)

    return streamed_source(layout, parts)


def _examples_since(history: History, head: CommitId, base: CommitId) -> int:
    """The examples committed (by plain commits) on the way from ``base`` to ``head``: a side's weight in ``mean``."""
    behind = graph.ancestors(base, history.parents)
    return sum(int(history.commit(c).meta.get("examples", 0)) for c in graph.ancestors(head, history.parents)
               if c not in behind and history.commit(c).kind == "commit")
