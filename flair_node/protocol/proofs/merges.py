"""Proofs of whole round merges: which chunks are proven, the bundle of proofs an aggregator publishes, and the
check every other node makes of it.

**What is proven.** A merge of at most ``PROVE_ALL`` chunks is proven whole. A bigger one has a sample proven,
drawn from the merged commit's id (``weighted_sum.sample``): the id exists only once the merge is signed, so the
aggregator cannot know beforehand which chunks it could falsify unseen. The sample is the smallest that catches
an aggregator falsifying ``FALSIFIED`` of the chunks with probability ``CONFIDENCE`` (``sample_size``).

**The bundle.** JSON ``{"v": 1, "repo", "commit", "proofs": {"<chunk>": <EZKL proof>}}``, stored as a UnixFS
file and named by a signed ``ProofRecord`` (``MergeRecords.write_proof``). Proofs reveal nothing of the deltas, so the
bundle is not encrypted. A bundle from a peer is read within bounds: at most the size its record declares
(``MAX_PROOFS_BYTES``), JSON nested at most ``MAX_BUNDLE_DEPTH`` deep (checked without recursing,
``core.encoding.loads_json``); anything else is an ``IntegrityError``, never a ``RecursionError``.

**The check** (``check_merge``) needs only records and the SRS, no payload: the record lists exactly the chunks
the merge's id selects and names the verifying key this node builds itself, and each proof verifies and carries
the recorded weights' commitment, the published commitments of exactly the merged contributions, and the
published commitment of that chunk of the sums.
"""

from __future__ import annotations

import json
import threading
from math import ceil
from typing import TYPE_CHECKING, Any

from ...core.encoding import loads_json
from ...core.errors import IntegrityError
from ...core.ids import CommitId, RepoId, short
from ...core.objects import ProofRecord
from ...storage import unixfs
from ...storage.repo import MAX_PROOFS_BYTES
from .. import round_merges
from . import weighted_sum, worker

if TYPE_CHECKING:
    from ...core.identity import Identity
    from ...storage.repo import Repository
    from .circuits import Circuits

PROVE_ALL = 64  # merges of up to this many chunks are proven whole
FALSIFIED, CONFIDENCE = 0.01, 0.99  # a sample catches 1 % of the chunks falsified with probability 0.99
BUNDLE_VERSION = 1
#: Deepest nesting of a bundle's JSON: the bundle and its map of proofs, then an EZKL proof (a few levels: lists
#: of lists of public values), with room to spare for EZKL versions.
MAX_BUNDLE_DEPTH = 16


def sample_size(total: int, falsified: float = FALSIFIED, confidence: float = CONFIDENCE) -> int:
    """The fewest chunks, drawn from ``total``, that include at least one of ``falsified`` (a fraction; at least
    one chunk) with probability ``confidence``."""
    bad = max(1, ceil(falsified * total))
    low, high = 1, total
    while low < high:
        middle = (low + high) // 2
        if weighted_sum.detection_probability(total, bad, middle) >= confidence:
            high = middle
        else:
            low = middle + 1
    return low


def chunks_to_prove(merge: CommitId, total: int) -> list[int]:
    """The chunks of merge ``merge`` (of ``total`` chunks) its proofs cover: all, or the sample its id draws."""
    if total <= PROVE_ALL:
        return list(range(total))
    return weighted_sum.sample(merge, total, sample_size(total))


def prove_merge(repo: Repository, identity: Identity, merge: CommitId, *, circuits: Circuits,
                memory_mb: int = worker.DEFAULT_MEMORY_MB, timeout_s: float = worker.DEFAULT_TIMEOUT_S,
                stop: threading.Event | None = None) -> ProofRecord:
    """Prove round merge ``merge`` (made by ``identity``, on a node that can read its contributions) with the
    node's ``circuits`` in a worker process, and store, sign and announce the proofs (``MergeRecords.write_proof``)."""
    commit = repo.commit(merge)
    weights, _, sums = round_merges.proof_statement(repo, commit)
    deltas = []
    for contribution in round_merges.meta_parents(dict(commit.meta)):
        base = repo.commit(contribution).parents[0]
        deltas.append(weighted_sum.fixed_delta(repo.materialize(contribution), repo.materialize(base)))
    circuit = circuits.circuit(repo, len(weights))
    indices = chunks_to_prove(commit.id, len(sums))
    proofs = worker.prove_chunks(circuit, weights, deltas, indices, memory_mb=memory_mb, timeout_s=timeout_s,
                                 stop=stop)
    bundle = {"v": BUNDLE_VERSION, "repo": repo.id, "commit": commit.id,
              "proofs": {str(j): json.loads(proofs[j]) for j in indices}}
    return repo.merges.write_proof(identity, commit.id, indices, json.dumps(bundle, separators=(",", ":")).encode(),
                            vk=circuit.vk_sha256)


def decode_bundle(data: bytes, repo: RepoId, merge: CommitId, chunks: list[int]) -> dict[str, Any]:
    """The bundle in ``data``: of ``repo``'s merge ``merge``, one proof for each of ``chunks``. ``IntegrityError``
    if it is anything else, too deep included (see the module docstring)."""
    try:
        bundle = loads_json(data, max_depth=MAX_BUNDLE_DEPTH, what="the bundle")
    except IntegrityError as exc:
        raise IntegrityError(f"the proofs of {short(merge)}: {exc}") from None
    if not (isinstance(bundle, dict) and bundle.get("v") == BUNDLE_VERSION and bundle.get("repo") == repo
            and bundle.get("commit") == merge and isinstance(bundle.get("proofs"), dict)
            and set(bundle["proofs"]) == {str(j) for j in chunks}):
        raise IntegrityError(f"the proofs of {short(merge)} are not a bundle of one proof per chunk it selects")
    return bundle


def check_merge(repo: Repository, record: ProofRecord, *, circuits: Circuits) -> dict[str, Any]:
    """Check the proofs ``record`` names against ``repo``'s records (see the module docstring) with the node's
    ``circuits``; what was proven (chunks, total, the chance the sample catches 1 % falsified). ``IntegrityError``
    saying what is wrong."""
    commit = repo.commit(record.commit)
    weights, published, sums = round_merges.proof_statement(repo, commit)
    expected = chunks_to_prove(commit.id, len(sums))
    if list(record.chunks) != expected:
        raise IntegrityError(f"the proofs of {short(commit.id)} cover other chunks than its id selects")
    if record.size > MAX_PROOFS_BYTES:
        raise IntegrityError(f"the proofs of {short(commit.id)} are larger than {MAX_PROOFS_BYTES >> 20} MiB")
    bundle = decode_bundle(unixfs.cat(repo.blocks, record.proofs, max_size=record.size), repo.id, commit.id,
                           expected)
    circuit = circuits.circuit(repo, len(weights))
    if record.vk != circuit.vk_sha256:
        raise IntegrityError(f"the proofs of {short(commit.id)} were made for another verifying key (sha256 "
                             f"{record.vk[:16]}...) than this node builds from the repository's SRS and circuit "
                             f"({circuit.vk_sha256[:16]}...): another EZKL version, or keys not from that SRS")
    for j in expected:
        proof = json.dumps(bundle["proofs"][str(j)]).encode()
        try:
            weighted_sum.check(circuit, proof, weights=weights, contributions=[p[j] for p in published],
                               sums=sums[j])
        except IntegrityError as exc:
            raise IntegrityError(f"chunk {j} of {short(commit.id)}: {exc}") from None
    falsified = max(1, ceil(FALSIFIED * len(sums)))
    return {"chunks": len(expected), "total": len(sums),
            "detection": weighted_sum.detection_probability(len(sums), falsified, len(expected))}
