"""Norm proofs: EZKL proofs that a vector, committed chunk by chunk, has an L2 norm of at most a bound, which
reveal nothing else of it, not even its norm.

**The vector** is cut as contributions are (``weighted_sum.chunks``: chunks of the repository's ``proof_chunk``
values, committed with KZG), and the chunks are taken ``GROUP`` at a time, the last group padded with zero
chunks. The statement is ``Σ x² <= B²`` over its integers, with B² given (``squared_bound``).

**The bundle** a prover publishes, JSON ``{"v": 1, "pairs": [...], "bound": <proof>, "proofs": {"<g>": <proof>}}``:

- ``pairs``: for each group g, the KZG commitment of the column ``[s_g, r_g]``, where s_g is the sum of the
  squares of its values and r_g a fresh random salt of ``SALT_BITS`` bits (so the commitment hides s_g, which
  a column of one value would not: its few possible values could be tried one by one);
- ``bound``: one proof, over the committed totals ``[S, R]`` (S = Σ s_g, R = Σ r_g) and K bits (committed with
  a salt), whose public values are ``S + Σ_k b_k 2^k`` and each ``b_k² − b_k``. The verifier reads B² and K
  zeros: the bits are bits, so S = B² minus a number below 2^K, that is at most B². It never learns S;
- ``proofs``: for each group the verifier selects, a proof that the pair of that group commits to the sum of
  the squares of exactly the chunks the prover published (the commitments it carries are checked).

**The check** (``check``) needs the published chunk commitments and the bundle, no value: the ``bound`` proof's
totals are the totals of the pairs, because KZG commitments add (``points.commitment_of_sum``), and every
selected group's proof binds its pair to its chunks.

**What a sample guarantees.** A vector of up to ``merges.PROVE_ALL`` chunks has every group proven. A bigger one
has the groups ``groups_to_prove`` draws from a seed the prover must not choose; the smallest sample that
catches a prover whose pairs lie about 1 % of its groups with probability 0.99 (``merges.sample_size``). A pair
that lies about one group (its sum of squares put at 0, say) goes unseen with the probability that the sample
misses that group, 1 − 192/245 (about one in five) for 1M values in chunks of 256: the sample bounds how much
of a vector can lie, not by how much it can exceed the bound.

**What it assumes.** That the committed values are the integers they stand for, below 2^50: the circuit does
not range-check them, so a chunk of huge field elements could square to anything. Where the chunks come from
matters: a member checks a contribution's commitments against its delta before it counts it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from math import ceil
from pathlib import Path
from typing import Any

import torch

from ...core.encoding import loads_json
from ...core.errors import IntegrityError, InvalidInput
from . import ezkl_backend, merges, points, weighted_sum
from .ezkl_backend import Circuit, Shape, felt_value

GROUP = ezkl_backend.KZG_INPUTS  # chunks a squares proof takes: as many as a circuit of this size commits
SALT_BITS = 100  # hides a sum of squares below 2^120; 245 of them sum below 2^108, well inside EZKL's i128
BUNDLE_VERSION = 1
MAX_BUNDLE_DEPTH = merges.MAX_BUNDLE_DEPTH
FRACTION_BITS = 24  # the merge arithmetic's fixed point (``tensors.fixedpoint``) for floating tensors


@dataclass(frozen=True)
class NormCircuits:
    """The two circuits that prove one bound for one chunk size, and the commitment of a zero column."""

    squares: Circuit
    bound: Circuit
    zero: str
    zero_chunk: str  # the commitment of a chunk of zeros: what pads the last group

    @property
    def size(self) -> int:
        return self.squares.shape.size


def squared_bound(clip: float) -> int:
    """B² for an L2 norm of at most ``clip`` over values in the merge's fixed point (24 fraction bits)."""
    if not clip > 0:
        raise InvalidInput("a norm bound is positive")
    scaled = int(clip * (1 << FRACTION_BITS))
    return scaled * scaled


def build(cache: Path, size: int, srs: Path, bound: int) -> NormCircuits:
    """The circuits proving norms of at most ``sqrt(bound)`` for vectors in chunks of ``size``, with ``srs`` (the
    repository's, so that commitments agree with those its contributions publish), built once under ``cache``."""
    if not 0 < bound < 1 << ezkl_backend.MAX_BOUND_BITS:
        raise InvalidInput(f"a squared norm bound is from 1 to 2^{ezkl_backend.MAX_BOUND_BITS} − 1")
    squares = ezkl_backend.build(cache, Shape(GROUP, size, "kzg", "squares"), srs)
    bound_circuit = ezkl_backend.build(cache, Shape(bound.bit_length(), size, "kzg", "bound"), srs)
    return NormCircuits(squares, bound_circuit, ezkl_backend.commit(squares, [0]),
                        ezkl_backend.commit(squares, [0] * size))


def group_count(chunks: int) -> int:
    return max(1, ceil(chunks / GROUP))


def groups_to_prove(seed: str, groups: int) -> list[int]:
    """The groups a vector of ``groups`` groups has proven: all of a small one, else the sample ``seed`` draws."""
    if groups * GROUP <= merges.PROVE_ALL:
        return list(range(groups))
    return weighted_sum.sample(seed, groups, merges.sample_size(groups))


def prove(circuits: NormCircuits, values: torch.Tensor, bound: int, indices: Sequence[int] | None = None
          ) -> dict[str, Any]:
    """The bundle proving ``Σ values² <= bound`` (see the module docstring), with the squares of the groups
    ``indices`` proven (all of them if None). ``InvalidInput`` if the vector's norm is above the bound: no
    proof of it can exist."""
    _same_bound(circuits, bound)
    if values.numel() and int(values.abs().max()) >= ezkl_backend.MAX_SQUARED:
        raise InvalidInput(f"norm proofs take values below 2^{ezkl_backend.MAX_SQUARED.bit_length() - 1}")
    groups = _groups(weighted_sum.chunks(values, circuits.size))
    chosen = range(len(groups)) if indices is None else indices
    if any(not 0 <= g < len(groups) for g in chosen):
        raise InvalidInput(f"there are {len(groups)} groups to prove")
    sums = [sum(v * v for chunk in group for v in chunk) for group in groups]
    if sum(sums) > bound:
        raise InvalidInput("the vector's norm is above the bound: it has no norm proof")
    salts = [secrets.randbits(SALT_BITS) for _ in groups]
    pairs = [ezkl_backend.commit(circuits.squares, [s, r]) for s, r in zip(sums, salts, strict=True)]
    rest = bound - sum(sums)
    bits = [(rest >> k) & 1 for k in range(circuits.bound.shape.inputs)]
    final = ezkl_backend.prove_bound(circuits.bound, [sum(sums), sum(salts)], bits, secrets.randbits(SALT_BITS))
    proofs = {str(g): json.loads(ezkl_backend.prove_squares(circuits.squares, salts[g], groups[g]))
              for g in chosen}
    return {"v": BUNDLE_VERSION, "pairs": pairs, "bound": json.loads(final), "proofs": proofs}


def decode(data: bytes) -> dict[str, Any]:
    """A bundle read from untrusted bytes: JSON nested at most ``MAX_BUNDLE_DEPTH``; ``IntegrityError`` if not."""
    bundle = loads_json(data, max_depth=MAX_BUNDLE_DEPTH, what="a norm proof")
    if not isinstance(bundle, dict):
        raise IntegrityError("a norm proof is a JSON object")
    return bundle


def check(circuits: NormCircuits, bundle: dict[str, Any], published: Sequence[str], bound: int,
          indices: Sequence[int]) -> None:
    """``IntegrityError`` unless ``bundle`` proves that the vector whose chunks committed to ``published`` has
    ``Σ x² <= bound``, with a proof for each group in ``indices`` (see the module docstring)."""
    groups = group_count(len(published))
    pairs = bundle.get("pairs")
    if not (bundle.get("v") == BUNDLE_VERSION and isinstance(pairs, list) and len(pairs) == groups
            and all(isinstance(p, str) for p in pairs) and isinstance(bundle.get("proofs"), dict)
            and set(bundle["proofs"]) == {str(g) for g in indices}):
        raise IntegrityError(f"a norm proof here has {groups} pairs and a proof for each of groups "
                             f"{list(indices)[:8]}{'...' if len(indices) > 8 else ''}")
    for pair in pairs:
        points.point(pair)  # on the curve, before any arithmetic with it
    _same_bound(circuits, bound)
    carried = ezkl_backend.verify(circuits.bound, _proof_bytes(bundle.get("bound")))
    totals, _bits, said, *zeros = carried
    if totals != points.commitment_of_sum(pairs, circuits.zero):
        raise IntegrityError("the norm proof's totals are not those of its pairs")
    if felt_value(said) != bound or any(felt_value(z) != 0 for z in zeros):
        raise IntegrityError("the norm proof does not show a sum of squares within the bound")
    cut = [*published, *[circuits.zero_chunk] * (groups * GROUP - len(published))]
    for g in indices:
        salt_and_chunks = ezkl_backend.verify(circuits.squares, _proof_bytes(bundle["proofs"][str(g)]))
        if salt_and_chunks[1:-1] != cut[g * GROUP:(g + 1) * GROUP]:
            raise IntegrityError(f"the squares proof of group {g} is about other chunks than were published")
        if salt_and_chunks[-1] != pairs[g]:
            raise IntegrityError(f"the squares proof of group {g} is about another pair than the bundle's")


def check_sum(committer: Circuit, published: Sequence[Sequence[str]], total: torch.Tensor) -> None:
    """``IntegrityError`` unless ``total`` (an int64 vector) is, chunk by chunk, the sum of the vectors whose
    chunk commitments are ``published`` (one list per vector), as KZG commitments add (``points``): how a secure
    round's members know that what was unmasked is what was proven. ``committer``: a KZG circuit of the chunk
    size."""
    size = committer.shape.size
    sums = weighted_sum.commitments(total, size, committer)
    if any(len(p) != len(sums) for p in published):
        raise IntegrityError(f"each vector of the sum has {len(sums)} chunk commitments")
    zero = ezkl_backend.commit(committer, [0])
    for j, chunk in enumerate(sums):
        if points.commitment_of_sum([p[j] for p in published], zero) != chunk:
            raise IntegrityError(f"chunk {j} of the sum is not the sum of the chunks committed to")


def _same_bound(circuits: NormCircuits, bound: int) -> None:
    """The bound circuit's bits hold B² − S, so it has exactly as many as B² needs: more would let B² − S exceed
    B², and S, in the field, pass for a negative number."""
    if bound < 1 or bound.bit_length() != circuits.bound.shape.inputs:
        raise InvalidInput(f"these circuits are for bounds of {circuits.bound.shape.inputs} bits")


def _groups(chunks: list[list[int]]) -> list[list[list[int]]]:
    padded = chunks + [[0] * len(chunks[0])] * (group_count(len(chunks)) * GROUP - len(chunks))
    return [padded[g * GROUP:(g + 1) * GROUP] for g in range(len(padded) // GROUP)]


def _proof_bytes(proof: object) -> bytes:
    if not isinstance(proof, dict):
        raise IntegrityError("a proof in a norm proof is an EZKL proof object")
    return json.dumps(proof).encode()
