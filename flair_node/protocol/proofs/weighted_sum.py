"""Commitments to deltas, proofs of their weighted sums, and the checks that bind one to the other.

**Deltas.** A contribution's delta is taken in the merge's own fixed point (``tensors.fixedpoint``): for every
tensor in name order, ``fixed(x) − fixed(base)`` with 24 fraction bits for floating tensors and 0 for integer
ones (bool tensors are not averaged, so not covered), flattened into one vector of integers and cut into chunks
of ``size`` values, the last padded with zeros. Each chunk is committed (``commitments``: KZG with the
repository's SRS, or Poseidon; see ``ezkl_backend``): that is what a contributor publishes.

**Sums.** A merge with integer weights ``w`` (out of 2^16) computes, per value, ``S = Σ_i w_i · d_i`` and adds
``round_half_even(S / 2^16)`` to the head. The aggregator publishes the commitment of each chunk of S and, per
chunk, a proof (``prove``) carrying the commitments C(w), C(chunk of each d_i) and C(chunk of S). ``check`` is
what anyone runs: the proof verifies *and* the commitments it carries are exactly that of the recorded weights,
the published ones of exactly the recorded contributors in their order, and the published one of the sums.
``ezkl.verify`` alone would accept a proof about any values.

**Sampling.** A model too big to prove whole has some chunks proven: ``sample`` picks them from a seed fixed
only after the merge is published (its commit id), so the aggregator cannot know in advance which chunks it may
falsify. ``detection_probability`` is the chance such a sample contains at least one falsified chunk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from functools import lru_cache
from math import comb

import torch

from ...core.errors import IntegrityError, InvalidInput
from ...tensors.fixedpoint import fixed
from . import ezkl_backend
from .ezkl_backend import Circuit

DEFAULT_CHUNK = 64


def fixed_delta(state: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``fixed(state) − fixed(base)``, tensor by tensor in name order (bool tensors left out), as one int64
    vector: the values a contribution commits to."""
    if state.keys() != base.keys():
        raise InvalidInput("a delta needs the same tensors on both sides")
    parts = []
    for name in sorted(state):
        if state[name].dtype == torch.bool:
            continue
        if state[name].shape != base[name].shape or state[name].dtype != base[name].dtype:
            raise InvalidInput(f"tensor {name} differs in shape or dtype from its base")
        parts.append((fixed(state[name], name=name) - fixed(base[name], name=name)).reshape(-1))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def chunks(values: torch.Tensor, size: int = DEFAULT_CHUNK) -> list[list[int]]:
    """``values`` cut into chunks of ``size``, the last padded with zeros (at least one chunk)."""
    if size < 1:
        raise InvalidInput("chunks hold at least one value")
    flat = values.reshape(-1).tolist()
    count = max(1, -(-len(flat) // size))
    flat += [0] * (count * size - len(flat))
    return [flat[i * size:(i + 1) * size] for i in range(count)]


def commitments(values: torch.Tensor, size: int = DEFAULT_CHUNK, via: Circuit | None = None) -> list[str]:
    """The commitment of each chunk of ``values``: KZG with ``via`` (a KZG circuit of chunk size ``size``), or
    Poseidon without."""
    if via is None:
        return [ezkl_backend.poseidon(chunk) for chunk in chunks(values, size)]
    if via.shape.size != size:
        raise InvalidInput(f"a circuit for chunks of {via.shape.size} cannot commit chunks of {size}")
    return [ezkl_backend.commit(via, chunk) for chunk in chunks(values, size)]


def weighted_sums(weights: Sequence[int], deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ_i w_i · d_i`` per value, exactly (int64; |w| <= 2^16 and |d| < 2^40 keep it far from overflow)."""
    if len(weights) != len(deltas) or not deltas:
        raise InvalidInput("one weight per delta, and at least one delta")
    total = torch.zeros_like(deltas[0])
    for w, d in zip(weights, deltas, strict=True):
        if d.shape != total.shape:
            raise InvalidInput("every delta has the same number of values")
        total += int(w) * d
    return total


def prove(circuit: Circuit, weights: Sequence[int], deltas: Sequence[torch.Tensor], indices: Sequence[int]
          ) -> dict[int, bytes]:
    """A proof for each chunk in ``indices`` that its sums are the weighted sum of the deltas' chunks."""
    size = circuit.shape.size
    cut = [chunks(d, size) for d in deltas]
    proofs = {}
    for j in indices:
        if not 0 <= j < len(cut[0]):
            raise InvalidInput(f"there is no chunk {j} (the deltas have {len(cut[0])})")
        proofs[j] = ezkl_backend.prove(circuit, weights, [c[j] for c in cut])
    return proofs


def check(circuit: Circuit, proof: bytes, *, weights: Sequence[int], contributions: Sequence[str], sums: str
          ) -> None:
    """``IntegrityError`` unless ``proof`` verifies and the commitments it carries are that of ``weights``, then
    the ``contributions``' commitments of this chunk in order, then the commitment ``sums`` of the merged chunk."""
    values = ezkl_backend.verify(circuit, proof)
    if len(contributions) != circuit.shape.inputs or len(weights) != circuit.shape.inputs:
        raise IntegrityError(f"this circuit binds {circuit.shape.inputs} contributions and weights")
    if values[0] != _weights_commitment(circuit, tuple(int(w) for w in weights)):
        raise IntegrityError("the proof is about other weights than the merge records")
    for i, (proven, published) in enumerate(zip(values[1:-1], contributions, strict=True)):
        if proven != published:
            raise IntegrityError(f"the proof is about another delta than contribution {i} published")
    if values[-1] != sums:
        raise IntegrityError("the proof is about other sums than the merge published")


@lru_cache(maxsize=64)
def _weights_commitment(circuit: Circuit, weights: tuple[int, ...]) -> str:
    """The commitment to a merge's weights: the same for each of its chunks, so made once (half of a check's
    time, measured: 12 ms of 22 for a chunk of 256)."""
    return ezkl_backend.commit(circuit, list(weights))


def sample(seed: str, total: int, count: int) -> list[int]:
    """``count`` distinct chunk indices out of ``total``, drawn from ``seed`` (a merged commit id: known only
    once the merge is published), the same for everyone; sorted."""
    if not 0 <= count <= total:
        raise InvalidInput(f"cannot sample {count} of {total} chunks")
    order = sorted(range(total), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    return sorted(order[:count])


def detection_probability(total: int, falsified: int, sampled: int) -> float:
    """The chance that ``sampled`` chunks drawn at random from ``total`` include at least one of ``falsified``."""
    if not (0 <= falsified <= total and 0 <= sampled <= total):
        raise InvalidInput("need 0 <= falsified, sampled <= total")
    return 1.0 - comb(total - falsified, sampled) / comb(total, sampled)

