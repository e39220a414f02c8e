"""What a round merge's record says, and what proving a round merge needs, from the records alone.

``meta_parents`` and ``merge_parents`` read which contributions a round merge merged and took; ``proof_weights`` and
``proof_statement`` are what a proof of it must bind; ``commitments`` is what a contribution publishes when a
repository's merges are proven, and ``provable_merge`` the merge computed so that its sums can be proven
(``protocol.rounds`` derives and checks the rounds themselves).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..core.errors import IntegrityError, InvalidInput
from ..core.ids import CommitId, short
from ..core.objects import Commit
from ..core.round_rules import RoundPolicy
from ..storage.repo import EXACT_CODECS, Repository
from .proofs.circuits import Circuits

if TYPE_CHECKING:
    from ..tensors.safetensors_io import StateDict


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
