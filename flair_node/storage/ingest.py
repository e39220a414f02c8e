"""Records from peers, checked before they are stored: the one way into a repository for what this node did not
sign itself.

Records arrive signed by their authors, relayed by anyone; each is checked against this node's own view of the
membership, whoever relayed it. Callers bring what a record needs first: the membership change it was made
under, a commit's parents and payload blocks, a move's commit, a proof record's proofs. Where a record names
something to fetch, a ``check_*`` runs before it is fetched (``protocol.sync``): a commit's blocks, a proof
record's proofs.

``Ingest`` is a part a ``Repository`` holds (``repo.ingest``), given what it needs: the history it checks
against and stores into, the merge records, and the repository's ownership check. In the node only the sync
protocol and the daemon's gossip call it: calling through the part (``repo.ingest.accept_move(move)``) says at
each call that a peer's record is coming in.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.errors import FlairError, IntegrityError, RefConflict
from ..core.ids import short
from ..core.membership import ROLES, MembershipChange, check_move_target
from ..core.objects import AnchorClaim, Commit, ProofRecord, check_commit_time
from ..core.refs import MAX_CLOCK_SKEW_MS, BranchMove
from ..core.round_messages import Masked, RoundMessage
from . import clock, unixfs
from .history import History
from .merge_records import MAX_PROOFS_BYTES, MergeRecords
from .round_messages import RoundMessages

#: What a masked update's encryption adds to its values (``core.crypto``: magic, nonce, tag), with room to spare.
_SEALED_OVERHEAD = 64


def _norm_proof_bytes(values: int, chunk: int) -> int:
    """The most a norm proof of ``values`` values in chunks of ``chunk`` takes (``protocol.proofs.norms``), with
    room to spare: a commitment per chunk (130 bytes of JSON), a pair and a proof per group of 16 chunks (131
    bytes and about 33 KB, measured), and the bound proof."""
    chunks = -(-values // max(1, chunk))
    return 160 * chunks + (48 << 10) * -(-chunks // 16) + (64 << 10)


class Ingest:
    """Checks and stores peers' records into ``history``; ``check_ownership`` is asked, before a token change or
    a handover is applied, whether the chain shows it (``Repository.check_ownership``)."""

    def __init__(self, history: History, merges: MergeRecords, secure: RoundMessages, *,
                 check_ownership: Callable[[MembershipChange], None]) -> None:
        self.history = history
        self.merges = merges
        self.secure = secure
        self._check_ownership = check_ownership

    def accept_membership(self, change: MembershipChange) -> bool:
        """Store ``change`` if it is the next one of the chain; False if this node has it already. A token change
        or a handover is checked first (``check_ownership``)."""
        members = self.history.members
        if change.action in ("token", "handover") and not members.contains(change.id):
            self._check_ownership(change)
        while not members.contains(change.id):
            try:
                members.append(change)
            except RefConflict:
                continue  # another pull appended meanwhile (maybe this very change): look again
            self.history.keys.forget()  # a rotation may have given this node the next epoch's key
            return True
        return False

    def check_commit(self, commit: Commit) -> bool:
        """Check a commit from a peer before anything it names is fetched; False if it is here already.

        ``IntegrityError`` if its record, repository, key epoch, parents or date (before a parent's, or ahead of
        this node's clock by more than the skew allowed) do not check out, ``Forbidden`` if its author held no
        contributor role for it at its time."""
        history = self.history
        commit.verify()
        if history.objects.has(commit.id):
            return False
        if commit.repo != history.id:
            raise IntegrityError(f"commit {short(commit.id)} belongs to another repository", commit=commit.id)
        membership = history.members.current()
        if commit.payload.key_epoch > membership.epoch:
            raise IntegrityError(f"commit {short(commit.id)} is sealed with key epoch {commit.payload.key_epoch}; "
                                 f"this node's membership is at epoch {membership.epoch}", commit=commit.id)
        least = "owner" if not commit.parents else "contributor"
        membership.require(commit.author, least, epoch=commit.payload.key_epoch, at_ms=commit.timestamp_ms,
                           what=f"commit {short(commit.id)}")
        for parent in commit.parents:
            if not history.objects.has(parent):
                raise IntegrityError(f"commit {short(commit.id)} arrived before its parent {short(parent)}",
                                     commit=commit.id)
        # Its role was judged at its own time: a time no earlier than its parents' and not yet to come.
        check_commit_time(commit, [history.commit(p) for p in commit.parents], now_ms=clock.now_ms())
        return True

    def accept_commit(self, commit: Commit) -> bool:
        """Store a commit from a peer whose payload blocks are here; False if it is here already.

        Raises what ``check_commit`` raises, and ``IntegrityError`` if the payload blocks do not check out."""
        if not self.check_commit(commit):
            return False
        size = unixfs.file_size(self.history.blocks, commit.payload.cid, max_size=commit.payload.size)
        if size != commit.payload.size:
            raise IntegrityError(f"payload of commit {short(commit.id)} has {size} bytes, its record says "
                                 f"{commit.payload.size}", commit=commit.id)
        self.history.store_commit(commit)
        return True

    def accept_move(self, move: BranchMove) -> bool:
        """Take a branch move from a peer if its author may make it (``Membership.require_branch_move``: the role,
        and a contribution branch only by its holder), it fits its commit (``check_move_target``: a contribution
        branch only at its holder's own commit) and it comes after the branch's current move; True if the branch
        moved."""
        history = self.history
        move.verify()
        if move.repo != history.id:
            raise IntegrityError(f"branch move {short(move.id)} belongs to another repository", move=move.id)
        commit = history.commit(move.commit)  # stored and verified already, or CommitNotFound
        membership = history.members.current()
        if move.epoch > membership.epoch:
            raise IntegrityError(f"branch move {short(move.id)} was made at key epoch {move.epoch}; this node's "
                                 f"membership is at epoch {membership.epoch}", move=move.id)
        membership.require_branch_move(move.author, move.branch, epoch=move.epoch, at_ms=move.timestamp_ms)
        check_move_target(move, commit)
        if move.timestamp_ms > clock.now_ms() + MAX_CLOCK_SKEW_MS:  # or it would outrank every honest move for long
            raise IntegrityError(f"branch move {short(move.id)} is dated more than {MAX_CLOCK_SKEW_MS // 60_000} "
                                 "minutes ahead of this node's clock", move=move.id)
        history.objects.put(move.id, move.encode())
        while True:
            current_id = history.refs.get(move.branch)
            if current_id == move.id or (current_id is not None and not move.comes_after(history.move(current_id))):
                return False
            try:
                history.swap_branch(move.branch, current_id, move)
            except RefConflict:
                continue  # moved meanwhile: compare with the newer move
            return True

    def check_proof(self, record: ProofRecord) -> None:
        """What a proof record must hold before its proofs are fetched: at most ``MAX_PROOFS_BYTES`` named, and
        signed by the author of a round merge held here (``IntegrityError``)."""
        if record.size > MAX_PROOFS_BYTES:
            raise IntegrityError(f"proof record {short(record.id)} names more than {MAX_PROOFS_BYTES >> 20} MiB")
        self._check_claim(record)

    def accept_proof(self, record: ProofRecord) -> bool:
        """Keep a proof record from a peer (its blocks must be here already); False if this node holds one for
        that merge already. ``IntegrityError`` unless it is signed by the author of a round merge held here."""
        self.check_proof(record)
        if unixfs.file_size(self.history.blocks, record.proofs, max_size=record.size) != record.size:
            raise IntegrityError(f"the proofs of proof record {short(record.id)} are not of the size it says")
        return self.merges.keep_proof(record)

    def accept_anchor(self, claim: AnchorClaim) -> bool:
        """Keep an anchor record from a peer; False if this node holds one for that merge already.
        ``IntegrityError`` unless it is signed by the author of a round merge held here (what it claims is
        checked on chain by ``daemon.anchor_service``)."""
        self._check_claim(claim)
        return self.merges.keep_anchor(claim)

    def check_round_message(self, message: RoundMessage) -> bool:
        """Check a secure round message from a peer before anything it names is fetched; False if it is kept
        here already. ``IntegrityError`` unless it is signed, of this repository, by a member at its time (a
        contributor, for an advert or a masked update), not dated ahead of this node's clock beyond the skew
        allowed, and a masked update names at most what the largest ring holds for the repository's layout;
        ``NotFound`` if the commit that opened its round has not arrived."""
        message.verify()
        if message.repo != self.history.id:
            raise IntegrityError(f"secure round message {short(message.id)} belongs to another repository")
        if self.secure.has(message.id) and message.id in self.secure.ids(message.branch, message.head):
            return False
        membership = self.history.members.current()
        role = membership.role(message.author, epoch=membership.epoch, at_ms=message.timestamp_ms)
        least = "contributor" if message.phase in ("advert", "masked") else "reader"
        if role is None or ROLES.index(role) < ROLES.index(least):
            raise IntegrityError(f"secure round message {short(message.id)} is by {short(message.author)}, who "
                                 f"held no {least} role at its time")
        if message.timestamp_ms > clock.now_ms() + MAX_CLOCK_SKEW_MS:
            raise IntegrityError(f"secure round message {short(message.id)} is dated ahead of this node's clock")
        self.history.commit(message.head)
        if isinstance(message.content, Masked):  # a term over the head's tensors, whatever the first commit held
            try:
                layout = self.history.layout(message.head)
            except FlairError:  # a head this node cannot read: the first commit's, what the signed record holds
                layout = self.history.record.layout
            values = sum(spec.numel for spec in layout)
            if message.content.size > 8 * values + _SEALED_OVERHEAD:
                raise IntegrityError(f"masked update {short(message.id)} names {message.content.size} bytes, more "
                                     f"than a model of {values} values masks to")
            if message.content.proof is not None and not membership.policy.norm_bound:
                raise IntegrityError(f"masked update {short(message.id)} names a norm proof, which this "
                                     "repository's policy does not ask for")
            if message.content.proof_size > _norm_proof_bytes(values, membership.policy.proof_chunk):
                raise IntegrityError(f"masked update {short(message.id)} names a norm proof of "
                                     f"{message.content.proof_size} bytes, more than one of a model of {values} "
                                     "values takes")
        return True

    def accept_round_message(self, message: RoundMessage) -> bool:
        """Keep a secure round message from a peer (a masked update's blocks must be here already); False if it
        is kept already. ``IntegrityError`` as ``check_round_message`` says, or if its round is full."""
        if not self.check_round_message(message):
            return False
        if isinstance(message.content, Masked):
            for cid, size in message.content.files():
                if unixfs.file_size(self.history.blocks, cid, max_size=size) != size:
                    raise IntegrityError(f"masked update {short(message.id)} names a file not of the size it says")
        return self.secure.add(message)

    def _check_claim(self, record: ProofRecord | AnchorClaim) -> None:
        """A record about round merge ``record.commit`` must be signed by that merge's author."""
        record.verify()
        if record.repo != self.history.id:
            raise IntegrityError(f"{record.KIND} record {short(record.id)} belongs to another repository")
        merge = self.history.commit(record.commit)
        if merge.kind != "round" or merge.author != record.author:
            raise IntegrityError(f"{record.KIND} record {short(record.id)} is not by the author of round merge "
                                 f"{short(record.commit)}")


def check_ownership_offline(repo: History, change: MembershipChange) -> None:
    """``Repository.check_ownership`` without a chain to ask: a token change or handover the owner signed is taken
    on the owner's word (they could hand the repository over by inviting and leaving anyway); a handover only the
    new owner signed is not, since only the chain shows the token moved to them."""
    if change.action == "handover" and change.author != repo.members.current().owner:
        raise IntegrityError(f"handover {short(change.id)} of repository {short(repo.id)} is signed by the new "
                             "owner alone: only a node with chain.cluster can check that the token moved to them",
                             change=change.id)
