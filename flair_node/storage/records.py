"""The signed records a repository keeps about its round merges: the proof record and the anchor claim, each
kept once per merge under a ref of its own (``.proof/<merge>``, ``.anchor/<merge>``), and the clock records are
dated by. ``Repository`` has these methods from ``MergeRecords``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..core.errors import IntegrityError, InvalidInput, RefConflict
from ..core.identity import Identity
from ..core.ids import BranchName, CommitId, RecordId, RepoId, short
from ..core.objects import AnchorClaim, Commit, ProofRecord
from . import unixfs
from .stores import ObjectStore, RefStore

PROOF_REF = ".proof/"  # refs "<PROOF_REF><merge id>" -> its proof record (names with "." are not branches)
ANCHOR_REF = ".anchor/"  # refs "<ANCHOR_REF><merge id>" -> its anchor record
MAX_PROOFS_BYTES = 1 << 26


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class MergeRecords:
    """Proof records and anchor claims of round merges, signed by each merge's author and kept first come."""

    objects: ObjectStore
    refs: RefStore
    blocks: unixfs.BlockStore
    write_lock: threading.Lock
    announce: Callable[[str, str, bytes], None]

    if TYPE_CHECKING:
        @property
        def id(self) -> RepoId: ...

        def commit(self, cid: CommitId) -> Commit: ...

    def proof(self, commit: CommitId) -> ProofRecord | None:
        """The proof record of round merge ``commit`` this node holds, if any."""
        rid = self.refs.get(BranchName(PROOF_REF + commit))
        return None if rid is None else ProofRecord.decode(self.objects.get(rid))

    def write_proof(self, identity: Identity, commit: CommitId, chunks: Sequence[int], proofs: bytes, *,
                    vk: str) -> ProofRecord:
        """Store ``proofs`` (the bundle of proofs of ``chunks`` of round merge ``commit``, which ``identity``
        made for the verifying key whose SHA-256 is ``vk``) as blocks and sign, keep and announce the record
        naming them."""
        merge = self.commit(commit)
        if merge.kind != "round" or merge.author != identity.public_key:
            raise InvalidInput(f"only the author of round merge {short(commit)} proves it")
        with self.write_lock:
            cid = unixfs.add(self.blocks, proofs)
            record = ProofRecord(repo=self.id, commit=commit, chunks=tuple(chunks), proofs=cid, size=len(proofs),
                                 vk=vk, author=identity.public_key, timestamp_ms=now_ms()).signed(identity)
            self._keep(PROOF_REF, record)
        self.announce("proof", record.id, record.encode())
        return record

    def accept_proof(self, record: ProofRecord) -> bool:
        """Keep a proof record from a peer (its blocks must be here already); False if this node holds one for
        that merge already. ``IntegrityError`` unless it is signed by the author of a round merge held here."""
        self.check_proof(record)
        if len(unixfs.cat(self.blocks, record.proofs, max_size=record.size)) != record.size:
            raise IntegrityError(f"the proofs of proof record {short(record.id)} are not of the size it says")
        with self.write_lock:
            return self._keep(PROOF_REF, record)

    def anchor(self, commit: CommitId) -> AnchorClaim | None:
        """The anchor record of round merge ``commit`` this node holds, if any."""
        rid = self.refs.get(BranchName(ANCHOR_REF + commit))
        return None if rid is None else AnchorClaim.decode(self.objects.get(rid))

    def write_anchor(self, identity: Identity, commit: CommitId, *, genesis: str, transaction: str, mint: str,
                     contributions: Sequence[tuple[CommitId, str, str]] = ()) -> AnchorClaim:
        """Sign, keep and announce that ``identity``'s round merge ``commit`` is anchored (``protocol.anchoring``),
        with its contributions' NFTs when there are some."""
        merge = self.commit(commit)
        if merge.kind != "round" or merge.author != identity.public_key:
            raise InvalidInput(f"only the author of round merge {short(commit)} anchors it")
        claim = AnchorClaim(repo=self.id, commit=commit, genesis=genesis, transaction=transaction, mint=mint,
                            author=identity.public_key, timestamp_ms=now_ms(),
                            contributions=tuple(contributions)).signed(identity)
        self._keep(ANCHOR_REF, claim)
        self.announce("anchor", claim.id, claim.encode())
        return claim

    def accept_anchor(self, claim: AnchorClaim) -> bool:
        """Keep an anchor record from a peer; False if this node holds one for that merge already.
        ``IntegrityError`` unless it is signed by the author of a round merge held here (what it claims is
        checked on chain by ``daemon.anchor_service``)."""
        self._check_claim(claim)
        return self._keep(ANCHOR_REF, claim)

    def check_proof(self, record: ProofRecord) -> None:
        """What a proof record must hold before its proofs are fetched: at most ``MAX_PROOFS_BYTES`` named, and
        signed by the author of a round merge held here (``IntegrityError``)."""
        if record.size > MAX_PROOFS_BYTES:
            raise IntegrityError(f"proof record {short(record.id)} names more than {MAX_PROOFS_BYTES >> 20} MiB")
        self._check_claim(record)

    def _check_claim(self, record: ProofRecord | AnchorClaim) -> None:
        """A record about round merge ``record.commit`` must be signed by that merge's author."""
        record.verify()
        if record.repo != self.id:
            raise IntegrityError(f"{record.KIND} record {short(record.id)} belongs to another repository")
        merge = self.commit(record.commit)
        if merge.kind != "round" or merge.author != record.author:
            raise IntegrityError(f"{record.KIND} record {short(record.id)} is not by the author of round merge "
                                 f"{short(record.commit)}")

    def _keep(self, prefix: str, record: ProofRecord | AnchorClaim) -> bool:
        """Store ``record`` as the one of its kind for its merge (ref ``<prefix><merge>``); the first is kept."""
        self.objects.put(record.id, record.encode())
        try:
            self.refs.compare_and_swap(BranchName(prefix + record.commit), None, RecordId(record.id))
        except RefConflict:
            return False
        return True
