"""The signed records a repository keeps about its round merges: the proof record and the anchor claim.

Each is kept once per merge, under a ref of its own (``.proof/<merge>``, ``.anchor/<merge>``; names with a dot are
never branches), and the first one kept stays. Only a round merge's author writes them (``write_proof``,
``write_anchor``); the same records from peers come in through ``storage.ingest`` (``accept_proof``,
``accept_anchor``), which checks them and then keeps them here.

``MergeRecords`` is a part a ``Repository`` holds (``repo.merges``), given what it needs: the stores, the write lock,
how to read a verified commit, and the repository's announce hook.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from ..core.errors import InvalidInput, RefConflict
from ..core.identity import Identity
from ..core.ids import BranchName, CommitId, RecordId, RepoId, short
from ..core.objects import AnchorClaim, Commit, ProofRecord
from . import clock, unixfs
from .stores import ObjectStore, RefStore

PROOF_REF = ".proof/"  # refs "<PROOF_REF><merge id>" -> its proof record (names with "." are not branches)
ANCHOR_REF = ".anchor/"  # refs "<ANCHOR_REF><merge id>" -> its anchor record
MAX_PROOFS_BYTES = 1 << 26


class MergeRecords:
    """Proof records and anchor claims of ``repo``'s round merges, signed by each merge's author, first come kept.

    ``commit`` reads a verified commit of the repository; ``announce`` is told of every record signed here (the
    repository's hook, which the node sets after the repository is opened: pass a function that looks it up)."""

    def __init__(self, repo: RepoId, objects: ObjectStore, blocks: unixfs.BlockStore, refs: RefStore, *,
                 write_lock: threading.Lock, commit: Callable[[CommitId], Commit],
                 announce: Callable[[str, str, bytes], None]) -> None:
        self.repo = repo
        self.objects = objects
        self.blocks = blocks
        self.refs = refs
        self.write_lock = write_lock
        self._commit = commit
        self._announce = announce

    def proof(self, commit: CommitId) -> ProofRecord | None:
        """The proof record of round merge ``commit`` this node holds, if any."""
        rid = self.refs.get(BranchName(PROOF_REF + commit))
        return None if rid is None else ProofRecord.decode(self.objects.get(rid))

    def anchor(self, commit: CommitId) -> AnchorClaim | None:
        """The anchor record of round merge ``commit`` this node holds, if any."""
        rid = self.refs.get(BranchName(ANCHOR_REF + commit))
        return None if rid is None else AnchorClaim.decode(self.objects.get(rid))

    def write_proof(self, identity: Identity, commit: CommitId, chunks: Sequence[int], proofs: bytes, *,
                    vk: str) -> ProofRecord:
        """Store ``proofs`` (the bundle of proofs of ``chunks`` of round merge ``commit``, which ``identity``
        made for the verifying key whose SHA-256 is ``vk``) as blocks and sign, keep and announce the record
        naming them."""
        self._require_author(identity, commit, "proves")
        with self.write_lock:  # blocks and the record that keeps them, as one step for gc
            cid = unixfs.add(self.blocks, proofs)
            record = ProofRecord(repo=self.repo, commit=commit, chunks=tuple(chunks), proofs=cid, size=len(proofs),
                                 vk=vk, author=identity.public_key, timestamp_ms=clock.now_ms()).signed(identity)
            self._keep(PROOF_REF, record)
        self._announce("proof", record.id, record.encode())
        return record

    def write_anchor(self, identity: Identity, commit: CommitId, *, genesis: str, transaction: str, mint: str,
                     wallet: str = "", contributions: Sequence[tuple[CommitId, str, str]] = ()) -> AnchorClaim:
        """Sign, keep and announce that ``identity``'s round merge ``commit`` is anchored (``protocol.anchoring``)
        by ``identity``'s ``wallet`` in the repository, with its contributions' NFTs when there are some."""
        self._require_author(identity, commit, "anchors")
        claim = AnchorClaim(repo=self.repo, commit=commit, genesis=genesis, transaction=transaction, mint=mint,
                            author=identity.public_key, timestamp_ms=clock.now_ms(),
                            contributions=tuple(contributions), wallet=wallet).signed(identity)
        self._keep(ANCHOR_REF, claim)
        self._announce("anchor", claim.id, claim.encode())
        return claim

    def keep_proof(self, record: ProofRecord) -> bool:
        """Keep a proof record checked already, whose proofs' blocks are here; False if one is kept for its merge."""
        with self.write_lock:
            return self._keep(PROOF_REF, record)

    def keep_anchor(self, claim: AnchorClaim) -> bool:
        """Keep an anchor record checked already; False if one is kept for its merge."""
        return self._keep(ANCHOR_REF, claim)

    def _require_author(self, identity: Identity, commit: CommitId, what: str) -> None:
        merge = self._commit(commit)
        if merge.kind != "round" or merge.author != identity.public_key:
            raise InvalidInput(f"only the author of round merge {short(commit)} {what} it")

    def _keep(self, prefix: str, record: ProofRecord | AnchorClaim) -> bool:
        """Store ``record`` as the one of its kind for its merge (ref ``<prefix><merge>``); the first is kept."""
        self.objects.put(record.id, record.encode())
        try:
            self.refs.compare_and_swap(BranchName(prefix + record.commit), None, RecordId(record.id))
        except RefConflict:
            return False
        return True
