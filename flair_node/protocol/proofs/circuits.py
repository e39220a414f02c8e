"""The circuits and SRS a node proves and verifies with, found from a repository's policy.

A repository's policy names its SRS by CID (``proof_srs``): the owner's node adds the file to its blocks
(``add_srs``), members fetch those blocks when they pull, re-hashing each, so every member ends up with exactly
the file the policy names, and keys and KZG commitments made from it agree everywhere. ``Circuits`` copies it
out of the blocks once, into ``<cache>/srs/<cid>``, and builds the policy's circuits under ``<cache>/circuits``
(``ezkl_backend.build``: once per shape and SRS). A node has one, in its home (the daemon's ``Node`` makes it), and
hands it to whatever commits, proves or verifies: the round code (``rounds.RoundMemory``) and the proof service.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from ...core.errors import InvalidInput, NotFound
from ...core.ids import Cid
from ...core.round_rules import MAX_SRS_BYTES
from ...storage import unixfs
from ...storage.atomic import atomic_write
from . import ezkl_backend
from .ezkl_backend import Circuit, ProofError, Shape

if TYPE_CHECKING:
    from ...storage.repo import Repository
    from .norms import NormCircuits


class Circuits:
    """One node's circuit cache (a folder of its home)."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self._lock = threading.Lock()  # one build at a time: two would only race to the same files

    @classmethod
    def in_temporary_folder(cls) -> Circuits:
        """A cache in a new temporary folder: for a node without a home (tests, in-memory repositories). The folder
        (circuits and keys of about 200 MB once proofs were made) is removed with the cache, or when the process
        exits."""
        circuits = cls(Path(tempfile.mkdtemp(prefix="flair-circuits-")))
        weakref.finalize(circuits, shutil.rmtree, circuits.cache, ignore_errors=True)
        return circuits

    def srs(self, repo: Repository) -> Path:
        """The SRS file ``repo``'s policy names; ``ProofError`` if it names none or its blocks are not here yet."""
        cid = repo.members.current().policy.proof_srs
        if not cid:
            raise ProofError(f"repository {repo.name} names no SRS for its proofs: its owner sets one with "
                             "`flair policy --proof-srs FILE`")
        path = self.cache / "srs" / cid
        if not path.exists():
            try:
                data = unixfs.cat(repo.blocks, Cid(cid), max_size=MAX_SRS_BYTES)
            except NotFound:
                raise ProofError(f"the SRS {cid} of repository {repo.name} has not arrived on this node yet: it "
                                 "comes with the next pull from a member") from None
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)
        return path

    def circuit(self, repo: Repository, inputs: int) -> Circuit:
        """The circuit proving a merge of ``inputs`` contributions under ``repo``'s policy."""
        policy = repo.members.current().policy
        if not policy.proof_chunk:
            raise InvalidInput(f"repository {repo.name} does not prove its merges")
        shape = Shape(inputs, policy.proof_chunk, policy.proof_scheme)
        srs = self.srs(repo)
        with self._lock:
            return ezkl_backend.build(self.cache / "circuits", shape, srs)

    def norms(self, repo: Repository, bound: int) -> NormCircuits:
        """The circuits proving ``Σ x² <= bound`` for vectors in ``repo``'s chunks (``norms``), with its SRS."""
        from . import norms

        policy = repo.members.current().policy
        if not policy.proof_chunk or policy.proof_scheme != "kzg":
            raise InvalidInput(f"repository {repo.name} does not commit with KZG: it has no norm proofs")
        srs = self.srs(repo)
        with self._lock:
            return norms.build(self.cache / "circuits", policy.proof_chunk, srs, bound)

    def committer(self, repo: Repository) -> Circuit | None:
        """What contributions commit with under ``repo``'s policy: a KZG circuit of its chunk size (any circuit
        of that size commits alike), or None for Poseidon hashes, which need no circuit."""
        if repo.members.current().policy.proof_scheme == "poseidon":
            return None
        return self.circuit(repo, 1)


def choose_srs(chunk: int, scheme: str, *, given: Path | None, configured: Path | None, development: Path
               ) -> tuple[Path, bool]:
    """The SRS file an owner's node names in a proven policy, and whether it is a development one: ``given``
    (``flair policy --proof-srs``), else ``configured`` (the node's ``proofs.srs``), else one made here with
    ``ezkl.gen_srs`` under ``development``, whose secret is not destroyed. KZG needs an SRS for exactly the rows of
    its circuits; a development SRS for Poseidon is sized for merges of up to 4 contributions."""
    needed = Shape(1 if scheme == "kzg" else 4, chunk, scheme).logrows
    path = given or configured
    if path is None:
        return ezkl_backend.development_srs(development, needed), True
    if not path.is_file():
        raise InvalidInput(f"no SRS file at {path}")
    k = ezkl_backend.srs_logrows(path)
    if scheme == "kzg" and k != needed:
        raise InvalidInput(f"the SRS {path} is for 2^{k} rows; KZG proofs of chunks of {chunk} need one for exactly "
                           f"2^{needed} (EZKL's kzg{needed}.srs)")
    return path, False


def add_srs(blocks: unixfs.BlockStore, data: bytes) -> Cid:
    """Store an SRS file's bytes as a UnixFS file in ``blocks``; its CID, for a policy's ``proof_srs``."""
    if not 0 < len(data) <= MAX_SRS_BYTES:
        raise InvalidInput(f"an SRS file holds 1 to {MAX_SRS_BYTES >> 20} MiB, not {len(data)} bytes")
    return unixfs.add(blocks, data)
