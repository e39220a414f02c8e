"""What a round merge is: its weights and record as every member derives them, and what proving it needs.

``derive_lazily`` (``derive``, computed whole) gives a round merge's weights (``Merged``, computed a range at a
time as they are read) and the ``meta`` it records, from the round's view and the contributions it takes;
``meta_parents`` and ``merge_parents`` read which contributions a round merge merged and took; ``proof_weights``
and ``proof_statement`` are what a proof of it must bind; ``commitments`` is what a contribution publishes when a
repository's merges are proven, and ``provable_merge`` the merge computed so that its sums can be proven
(``protocol.rounds`` runs and checks the rounds themselves).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from ..core.errors import IntegrityError, InvalidInput
from ..core.ids import CommitId, short
from ..core.objects import Commit, TensorSpec
from ..core.round_rules import RoundPolicy, step_weight, weight_counts
from ..storage import adapters
from ..storage.repo import EXACT_CODECS, Repository
from .proofs.circuits import Circuits
from .round_inputs import screen

if TYPE_CHECKING:
    import torch

    from ..tensors.safetensors_file import Source
    from ..tensors.safetensors_io import Ranges, StateDict
    from .rounds import Contribution, RoundMemory, RoundView


def most_inputs(policy: RoundPolicy) -> int:
    """How many contributions one round merge takes: as many as wait, unless merges are proven, when one proof
    circuit must take them all."""
    if not policy.proof_chunk:
        return 1 << 30
    from .proofs.ezkl_backend import KZG_INPUTS, MAX_INPUTS

    return KZG_INPUTS if policy.proof_scheme == "kzg" else MAX_INPUTS


def proof_weights(meta: dict[str, Any]) -> list[int]:
    """The integer weights a proven merge applies to its contributions' deltas: each recorded weight times the
    merge's step, out of 2^16, rounded down (the head keeps the rest)."""
    from ..tensors.fixedpoint import WEIGHT_BITS

    return [int(entry[3]) * int(meta["step"]) >> WEIGHT_BITS for entry in meta["contributions"]]


def proof_statement(repo: Repository, commit: Commit) -> tuple[list[int], list[list[str]], list[str]]:
    """What a proof of round merge ``commit`` must bind, from the records alone (no payload is read, so any
    holder of the records can check proofs): the effective weights, each contribution's chunk commitments in
    the merge's order, and the commitments of the merged sums. ``IntegrityError`` if the merge is not proven."""
    sums = commit.meta.get("sums")
    if commit.kind != "round" or not isinstance(sums, list) or not sums:
        raise IntegrityError(f"commit {short(commit.id)} is not a proven round merge")
    published = []
    for contribution in meta_parents(dict(commit.meta)):
        chunks = repo.commit(contribution).meta.get("commitments")
        if not isinstance(chunks, list) or len(chunks) != len(sums):
            raise IntegrityError(f"contribution {short(contribution)} publishes no commitment for each chunk")
        published.append(chunks)
    return proof_weights(dict(commit.meta)), published, sums


def meta_parents(meta: dict[str, Any]) -> list[CommitId]:
    """The contributions a round merge merged (those it excluded left out), in its weights' order."""
    return [CommitId(entry[0]) for entry in meta["contributions"]]


def merge_parents(meta: dict[str, Any]) -> list[CommitId]:
    """Every contribution a round merge takes, merged or excluded, sorted: its parents after the head."""
    return sorted([*meta_parents(meta), *(CommitId(c) for c, _ in meta.get("excluded", []))])


def commitments(repo: Repository, state: StateDict, base: CommitId, codec: str = EXACT_CODECS[0], *,
                circuits: Circuits) -> list[str]:
    """What a contribution of ``state`` trained from ``base`` publishes when the repository's merges are proven:
    the commitments of its delta's chunks (none when they are not), made with ``circuits``. A lossy
    codec would store other values than those committed: ``InvalidInput``."""
    if not repo.members.current().policy.proof_chunk:
        return []
    if codec not in EXACT_CODECS:
        raise InvalidInput(f"this repository's merges are proven: contributions are stored exactly, not as {codec}")
    from .proofs import weighted_sum

    return commit_chunks(repo, weighted_sum.fixed_delta(state, repo.materialize(base)), circuits)


def commit_chunks(repo: Repository, values: Any, circuits: Circuits) -> list[str]:
    """The commitments of the chunks of ``values`` (an int64 vector) under ``repo``'s policy."""
    from .proofs import weighted_sum

    chunk = repo.members.current().policy.proof_chunk
    return weighted_sum.commitments(values, chunk, circuits.committer(repo))


def provable_merge(repo: Repository, head: StateDict, contributions: Sequence[tuple[CommitId, StateDict]],
                   weights: Sequence[int], circuits: Circuits) -> tuple[StateDict, list[str]]:
    """``head + Σ e_i (x_i − base_i)`` for (base id, weights ``x_i``) pairs, with no shortcut (each ``x_i`` enters as
    its own state with weight ``e_i`` and its base with ``−e_i``), and the commitments of the chunks of the sums."""
    from ..tensors.fixedpoint import combine
    from .proofs import weighted_sum

    states, signed, deltas = [], [], []
    for (base_id, x), e in zip(contributions, weights, strict=True):
        base = repo.materialize(base_id)
        states += [x, base]
        signed += [e, -e]
        deltas.append(weighted_sum.fixed_delta(x, base))
    merged = combine(head, states, signed, shortcuts=False)
    return merged, commit_chunks(repo, weighted_sum.weighted_sums(weights, deltas), circuits)


@dataclass(frozen=True)
class Merged:
    """A round merge's weights as ``derive_lazily`` gives them: the layout, and each tensor read by ranges
    (``Ranges``), each range computed from that range of the head and of each input when it is read."""

    layout: tuple[TensorSpec, ...]
    ranges: Callable[[str], Ranges]

    def source(self) -> Source:
        """The weights as the file the merge commit stores, each range computed as the writer reaches it."""
        from ..storage.pieces import PIECE
        from ..tensors.safetensors_io import streamed_source

        return streamed_source(self.layout, lambda name: self.ranges(name).parts(PIECE))

    def state(self) -> StateDict:
        """Every tensor, in memory."""
        return {spec.name: self.ranges(spec.name).tensor() for spec in self.layout}

    @classmethod
    def of(cls, state: Mapping[str, torch.Tensor]) -> Merged:
        """Weights at hand (or read from a ``LazyState``) as a ``Merged``."""
        from ..tensors.safetensors_io import ranges_of, spec_of

        specs = [spec_of(state, name) for name in sorted(state)]
        return cls(tuple(s for s in specs if s is not None), lambda name: ranges_of(state, name))


def derive(repo: Repository, current: RoundView, contributions: Sequence[Contribution], *, memory: RoundMemory
           ) -> tuple[StateDict, dict[str, Any]]:
    """``derive_lazily``, its weights computed whole."""
    merged, meta = derive_lazily(repo, current, contributions, memory=memory)
    return merged.state(), meta


def derive_lazily(repo: Repository, current: RoundView, contributions: Sequence[Contribution], *,
                  memory: RoundMemory) -> tuple[Merged, dict[str, Any]]:
    """The merged weights and the ``meta`` a round merge of ``contributions`` records. The weights are computed
    a range at a time as they are read (``Merged``; the strategy's ``by_ranges``), so a merge holds a few ranges
    of each input, never a whole tensor, but for proven merges and repositories of adapters, whose inputs are
    small. With proofs on (the policy's ``proof_chunk``), the merge is exactly
    ``head + Σ e_i (x_i − base_i) / 2^16`` in fixed point, with the effective weights ``e = proof_weights(meta)``,
    and ``meta["sums"]`` holds the commitments of the chunks of ``Σ e_i (x_i − base_i)``: what an EZKL proof of
    the merge binds to."""
    from ..tensors.fixedpoint import WEIGHT_BITS, combined, normalize_weights
    from ..tensors.safetensors_io import ranges_of
    from .strategies import build_strategy

    if not contributions:
        raise InvalidInput("a round merges at least one contribution")
    if repo.record.adapter is not None:
        adapters.check_policy(current.policy)
    strategy = build_strategy(current.policy.strategy, current.policy.strategy_params)
    head = repo.weights(current.head)
    kept, inputs, excluded = [], [], []
    for c in contributions:
        reason, value = screen(memory, repo, current, head, c)
        if reason is None:
            kept.append(c)
            inputs.append(value)
        else:
            excluded.append([c.commit, reason])
    shown = {"branch": current.branch, "round": current.number + 1, "strategy": strategy.describe()}
    if excluded:
        shown["excluded"] = excluded
    if not kept:  # only unusable ones: the merge takes them out of the pending set and changes nothing
        return Merged.of(head), {**shown, "contributions": [], "examples": 0, "step": 0}
    strategy.check_count(len(kept))
    weights = normalize_weights(weight_counts([(c.examples, c.staleness) for c in kept], current.policy))
    whole = 1 << WEIGHT_BITS
    step = step_weight([(c.examples, c.staleness) for c in kept], current.policy, whole)
    meta = {**shown, "contributions": [[c.commit, c.examples, c.staleness, w] for c, w in zip(kept, weights,
                                                                                          strict=True)],
            "examples": sum(c.examples for c in kept), "step": step}
    if repo.record.adapter is not None:  # head + Σ eᵢ (xᵢ − baseᵢ) in what the adapters change, eᵢ = wᵢ × step
        square = Fraction(whole * whole)
        terms = [(current.head, Fraction(1))]
        for c, w in zip(kept, weights, strict=True):
            terms += [(c.commit, w * step / square), (c.base, -w * step / square)]
        state, meta["lora"] = adapters.combine(repo, terms)
        return Merged.of(state), meta
    if current.policy.proof_chunk:
        state, sums = provable_merge(repo, repo.materialize(current.head),
                                     [(c.base, repo.materialize(c.commit)) for c in kept], proof_weights(meta),
                                     memory.circuits)
        return Merged.of(state), {**meta, "sums": sums}
    result = strategy.by_ranges(head, inputs, weights)  # each contribution moved onto the head (``screen``)
    if step == whole:
        return Merged(repo.layout(current.head), result), meta

    def stepped(name: str) -> Ranges:  # stale contributions: a shorter step from the head towards the result
        return combined(name, ranges_of(head, name), [result(name)], [step])

    return Merged(repo.layout(current.head), stepped), meta
