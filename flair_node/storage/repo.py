"""The repository this node writes to: a ``History`` (``storage.history``: its records and weights, read and
verified) to which this node adds commits, branch moves and, as the owner, membership changes. ``History`` is its
base class rather than a part because reads and writes are one object to callers (``repo.head``, ``repo.commit``,
``repo.materialize`` beside ``repo.commit_weights``, at about a hundred call sites); it is complete on its own, and
holds everything it uses.

Its parts sit beside it, each given what it needs rather than reaching into the repository:

- ``members``, ``keys`` (from ``History``): the membership chain and the payload keys of each epoch;
- ``merges`` (``storage.merge_records``): the proof and anchor records of round merges;
- ``ingest`` (``storage.ingest``): records from peers, each checked before it is stored.

Callers use a part through it (``repo.merges.proof(merge)``, ``repo.ingest.accept_move(move)``): there are few of
them, and a part's name says what a call touches. The verbs that write a commit (``commit_weights``,
``contribute``, ``write_round``, ``merge``, ``revert``) and the membership verbs stay methods here, where the API,
the CLI, the daemon and the tests call them; ``merge`` and ``revert`` ask ``storage.merging`` what to write, and
``fsck`` is ``storage.fsck``'s check of this history.

Methods that do tensor work import ``tensors.*`` (and with it torch) when they run, not when this module loads
(see ``storage.history``).

What this node writes keeps the rules it checks in what peers send (``core.membership``, ``core.objects``): a
commit is dated no earlier than its parents, a contribution branch is moved only by its holder and only to its
holder's commits; and on the owner's node, a payload key held by a member whose role has expired is rotated
away before anything new is sealed with it (``rotate_if_expired``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..core import crypto
from ..core.errors import (
    Forbidden,
    IntegrityError,
    InvalidInput,
    NotFound,
    NotSafetensors,
    RefConflict,
    RepositoryNotFound,
)
from ..core.identity import Identity, wallet
from ..core.ids import BranchName, Cid, CommitId, PublicKey, RepoId, short
from ..core.membership import (
    ChainRef,
    Membership,
    MembershipChange,
    check_move_target,
    handover,
    invitation,
    policy_change,
    removal,
    rotation,
    token_binding,
)
from ..core.objects import AdapterSpec, Commit, Payload, RepositoryRecord, TensorSpec, check_commit_time, metric_text
from ..core.refs import CONTRIBUTION_PREFIX as CONTRIBUTION_PREFIX
from ..core.refs import DEFAULT_BRANCH, BranchMove, check_branch_name
from ..core.refs import contribution_branch as contribution_branch
from ..core.round_rules import RoundPolicy
from ..tensors import safetensors_file
from ..tensors.codec_params import DEFAULT_TOPK_RATIO, LOSSY_CODECS
from ..tensors.safetensors_file import Header, Source
from . import adapters, clock, merging, pieces, unixfs
from .clock import now_ms as now_ms
from .fsck import Problem
from .fsck import check as check_history
from .history import History
from .ingest import Ingest
from .ingest import check_ownership_offline as check_ownership_offline
from .merge_records import ANCHOR_REF as ANCHOR_REF
from .merge_records import MAX_PROOFS_BYTES as MAX_PROOFS_BYTES
from .merge_records import PROOF_REF as PROOF_REF
from .merge_records import MergeRecords
from .merging import MERGE_ALIASES as MERGE_ALIASES
from .merging import MERGE_METHODS as MERGE_METHODS
from .round_messages import RoundMessages
from .stores import ObjectStore, RefStore

if TYPE_CHECKING:  # at run time, tensor modules are imported by the methods that use them (see above)
    from ..tensors.safetensors_io import StateDict

#: Codecs that store weights exactly: whole, in deduplicated pieces (the default), or as the bit delta against the
#: first parent that older versions wrote.
log = logging.getLogger(__name__)

EXACT_CODECS = (pieces.CODEC, "bitdelta-v1")
#: Codecs a commit or a contribution may be written in: exact, or lossy to save bytes.
WRITE_CODECS = (*EXACT_CODECS, *LOSSY_CODECS)


class Repository(History):
    """A repository this node keeps, reads (``History``) and writes to; ``reader`` opens its payloads (this
    node's identity), ``write_lock`` is the node's lock for writing blocks (shared with ``RepoSet.gc``)."""

    def __init__(self, record: RepositoryRecord, objects: ObjectStore, blocks: unixfs.BlockStore,
                 refs: RefStore, *, reader: Identity | None = None, write_lock: threading.Lock | None = None) -> None:
        super().__init__(record, objects, blocks, refs, reader=reader)
        #: Held while a commit's blocks are written and its branch moved: garbage collection holds it too,
        #: so it never sees blocks that are written but not yet reachable from a branch.
        self.write_lock = write_lock or threading.Lock()
        #: Told of every record this node signs here, as (kind, record id, encoded record): what the daemon gossips.
        self.announce: Callable[[str, str, bytes], None] = lambda kind, record_id, record: None
        #: Asked, before a peer's token change or handover is applied, whether it did on chain what it says
        #: (the daemon's ``OwnershipService`` asks the cluster); raises if not, or if it cannot tell yet.
        self.check_ownership: Callable[[Repository, MembershipChange], None] = check_ownership_offline
        # The parts are handed functions that look the two hooks above up when called: the node sets them after
        # a repository is opened (``RepoSet``).
        self.merges = MergeRecords(record.id, objects, blocks, refs, write_lock=self.write_lock, commit=self.commit,
                                   announce=lambda kind, record_id, data: self.announce(kind, record_id, data))
        #: The messages of its secure rounds (``protocol.secure_rounds``).
        self.secure = RoundMessages(record.id, objects, refs)
        self.ingest = Ingest(self, self.merges, self.secure,
                             check_ownership=lambda change: self.check_ownership(self, change))

    # -- creating and opening ---------------------------------------------------------------------------

    @classmethod
    def create(cls, objects: ObjectStore, blocks: unixfs.BlockStore, refs_for: Callable[[RepoId], RefStore],
               identity: Identity, name: str, state: StateDict | Source, *, message: str = "initial weights",
               write_lock: threading.Lock | None = None, adapter: AdapterSpec | None = None) -> Repository:
        """A new repository whose commit 0 is ``state`` (tensors, or a file's as a ``Source``); ``refs_for`` gives
        the ref store for its id. With ``adapter``, a repository of LoRA adapters (``storage.adapters``) whose
        first adapter is ``state``, its factors under PEFT's keys; the caller checked it against the base."""
        if not name.strip() or len(name) > 200:
            raise InvalidInput("a repository name is 1 to 200 characters", name=name)
        layout = _layout(state)
        if not layout:
            raise InvalidInput("the initial model has no tensors")
        key = crypto.new_key()
        record = RepositoryRecord(
            name=name, owner=identity.public_key, created_ms=clock.now_ms(), nonce=os.urandom(16).hex(),
            layout=layout, sealed_keys={identity.public_key: crypto.seal_key(key, identity.public_key)},
            adapter=adapter,
        ).signed(identity)
        objects.put(record.id, record.encode())
        repo = cls(record, objects, blocks, refs_for(record.id), reader=identity, write_lock=write_lock)
        repo.keys.add(0, key)
        repo._write_commit(identity, state, parents=(), kind="init", message=message, meta={"examples": 0},
                           metrics={}, branch=DEFAULT_BRANCH, expected=None)
        return repo

    @classmethod
    def open(cls, repo_id: RepoId, objects: ObjectStore, blocks: unixfs.BlockStore, refs: RefStore, *,
             reader: Identity | None = None, write_lock: threading.Lock | None = None) -> Repository:
        try:
            data = objects.get(repo_id)
        except NotFound:
            raise RepositoryNotFound(f"repository {short(repo_id)} is not stored here", repo=repo_id) from None
        record = RepositoryRecord.decode(data)
        record.verify(repo_id)
        return cls(record, objects, blocks, refs, reader=reader, write_lock=write_lock)

    # -- writing ----------------------------------------------------------------------------------------

    def _write_commit(self, identity: Identity, state: StateDict | Source, *, parents: tuple[CommitId, ...],
                      kind: str, message: str, meta: Mapping[str, Any], metrics: Mapping[str, str],
                      branch: BranchName, expected: CommitId | None, codec: str = pieces.CODEC,
                      topk_ratio: float = DEFAULT_TOPK_RATIO,
                      check_time: Callable[[int], None] | None = None) -> Commit:
        """Write ``state`` (tensors, or a file's as a ``Source``: stored in pieces as it is read) as a commit and
        move ``branch`` to it. The first commit holds whole weights whatever ``codec`` asks for.

        A commit in ``snapshot-v1`` may add, remove or reshape tensors; a delta (any other codec) applies to its
        parent's tensors, and a contribution is merged into its base's, so both must hold exactly those (but for
        an adapter's rank: adapters are merged by what they change, whatever their ranks)."""
        if self.record.adapter is not None:  # small: checked whole, as the adapter it must be
            if isinstance(state, Source):
                from ..tensors.safetensors_io import load_source

                state = load_source(state)
            adapters.adapter_of(self.record.adapter, self.record.layout, state)
        layout = _layout(state)
        if not layout:
            raise InvalidInput("a commit holds at least one tensor")
        if parents and (codec != pieces.CODEC or kind == "contribution" and self.record.adapter is None):
            safetensors_file.check_layout(layout, self.layout(parents[0]))
        self.rotate_if_expired(identity)  # the owner's node: never seal a new payload to an expired member
        membership = self.members.current()
        # Never dated before a parent (a peer's clock may run a little ahead of this one's): see check_commit_time.
        timestamp = max([clock.now_ms(), *(self.commit(p).timestamp_ms for p in parents)])
        if check_time is not None:
            check_time(timestamp)
        membership.require_branch_move(identity.public_key, branch, epoch=membership.epoch, at_ms=timestamp)
        if not parents:
            codec = pieces.CODEC
        if codec == pieces.CODEC:
            source = state if isinstance(state, Source) else _state_source(state)
            cipher = self.keys.pieces(epoch=membership.epoch, codec=codec)
            delta_base = self._delta_base(parents, source.header, membership.epoch)

            def store() -> tuple[Cid, int]:
                return pieces.write(self.blocks, cipher, pieces.cut(source.segments(pieces.PIECE)), delta_base)
        else:
            if isinstance(state, Source):
                raise InvalidInput(f"{codec} encodes tensors in memory: a file is committed in {pieces.CODEC}")
            from ..tensors.codec import decode_payload, encode_payload

            base = self.materialize(parents[0])
            data = encode_payload(codec, state, base, topk_ratio=topk_ratio)
            if codec in LOSSY_CODECS:  # the commit holds exactly what its payload decodes to
                state = decode_payload(codec, data, base, self.record.layout)
            data = self.keys.encrypt(data, epoch=membership.epoch, codec=codec)

            def store() -> tuple[Cid, int]:
                return unixfs.add(self.blocks, data), len(data)
        # Blocks, record and branch move under the lock that gc takes: it never sees blocks of a half-made commit.
        with self.write_lock:
            root, size = store()
            payload = Payload(cid=root, codec=codec, size=size, key_epoch=membership.epoch)
            commit = Commit(
                repo=self.id, parents=parents, author=identity.public_key, timestamp_ms=timestamp, kind=kind,
                message=message, payload=payload, meta=dict(meta), metrics=dict(metrics),
            ).signed(identity)
            check_commit_time(commit, [self.commit(p) for p in parents], now_ms=clock.now_ms())
            self.store_commit(commit)
            move = self._move_branch(identity, branch, commit.id, expected=expected, epoch=membership.epoch,
                                     timestamp=timestamp)
        self.announce("commit", commit.id, commit.encode())
        self.announce("move", move.id, move.encode())
        if not isinstance(state, Source):
            self._remember(commit.id, state)
        return commit

    def commit_weights(self, identity: Identity, state: StateDict | Source, *, message: str,
                       branch: str = DEFAULT_BRANCH, examples: int = 0,
                       metrics: Mapping[str, float | int | str] | None = None,
                       expected_head: CommitId | None = None, codec: str = pieces.CODEC,
                       topk_ratio: float = DEFAULT_TOPK_RATIO) -> Commit:
        """Commit new weights on ``branch``: the delta against its head. Raises ``RefConflict`` if it moved.

        ``codec`` is an exact one (``snapshot-v1``, the default, or ``bitdelta-v1``) or a lossy one
        (``tensors.lossy``): then the commit holds ``head + decoded delta``, which a contributor's
        ``ErrorFeedback`` compares with what it sent.
        """
        if codec not in WRITE_CODECS:
            raise InvalidInput(f"unknown codec {codec!r}: use one of {', '.join(WRITE_CODECS)}", codec=codec)
        name = check_branch_name(branch)
        head = self.head(name)
        if expected_head is not None and expected_head != head:
            raise RefConflict(f"branch {name} moved: expected {short(expected_head)}, head is now {short(head)}; "
                              "retry on the new head", branch=name, head=head)
        if examples < 0:
            raise InvalidInput("examples must be >= 0")
        checked = dict(metric_text(k, v) for k, v in (metrics or {}).items())
        return self._write_commit(identity, state, parents=(head,), kind="commit", message=_message(message),
                                  codec=codec, topk_ratio=topk_ratio,
                                  meta={"examples": examples}, metrics=checked, branch=name, expected=head)

    def contribute(self, identity: Identity, state: StateDict | Source, *, branch: str = DEFAULT_BRANCH,
                   examples: int, base: CommitId | None = None, message: str = "", codec: str = pieces.CODEC,
                   topk_ratio: float = DEFAULT_TOPK_RATIO, commitments: Sequence[str] = (),
                   dp: Mapping[str, Any] | None = None) -> Commit:
        """A contribution to the rounds of ``branch``: weights trained from ``base`` (default: the branch head) on
        ``examples`` local examples, stored as their delta against ``base``. It does not move ``branch``: it sits
        on this member's own branch ``contrib/<branch>/<key>`` (each contribution replaces the previous one
        there) until a round's aggregator merges it. ``commitments``, if any, are recorded with it: the
        commitments of its delta's chunks, when the repository's merges are proven (``protocol.proofs``); ``dp``,
        if any, what it spent of its author's privacy budget (``core.dp``: the weights are clipped and noised
        already, by ``protocol.dp``)."""
        if codec not in WRITE_CODECS:
            raise InvalidInput(f"unknown codec {codec!r}: use one of {', '.join(WRITE_CODECS)}", codec=codec)
        if not isinstance(examples, int) or examples < 0:
            raise InvalidInput("examples must be an integer >= 0")
        if self.members.current().policy.privacy == "secure":
            raise InvalidInput(f"repository {short(self.id)} runs secure rounds: a contribution is never stored "
                               "where members could read it, it is masked (protocol.secure_rounds)")
        target = check_branch_name(branch)
        start = self.resolve(base) if base is not None else self.head(target)
        own = check_branch_name(contribution_branch(target, identity.public_key))
        previous = self.branch_move(own)
        return self._write_commit(identity, state, parents=(start,), kind="contribution",
                                  message=_message(message or f"contribution to {target} ({examples} examples)"),
                                  meta={"examples": examples, "branch": target,
                                        "wallet": wallet(identity, self.id).public_key,  # its NFTs go there
                                        **({"commitments": list(commitments)} if commitments else {}),
                                        **({"dp": dict(dp)} if dp else {})},
                                  metrics={}, branch=own,
                                  expected=previous.commit if previous else None, codec=codec, topk_ratio=topk_ratio)

    def write_round(self, identity: Identity, state: StateDict | Source, *, branch: str, parents: tuple[CommitId, ...],
                    meta: Mapping[str, Any], message: str, check_time: Callable[[int], None] | None = None) -> Commit:
        """A round's merged commit on ``branch`` (its head first among ``parents``), moving the branch to it; the
        round rules (``protocol.rounds``) decide what goes in it, this only writes it. ``check_time`` is called
        with the commit's timestamp before anything is written; what it raises stops the write."""
        target = check_branch_name(branch)
        return self._write_commit(identity, state, parents=parents, kind="round", message=_message(message),
                                  meta=meta, metrics={}, branch=target, expected=parents[0], check_time=check_time)

    def merge(self, identity: Identity, sources: Sequence[str], into: str, *, strategy: str = "mean",
              message: str | None = None) -> Commit:
        """A merge commit on ``into`` with parents ``[into's head, *sources]`` (``storage.merging.merge``)."""
        return self._write_new(identity, merging.merge(self, sources, into, strategy=strategy, message=message))

    def revert(self, identity: Identity, rev: str, *, branch: str = DEFAULT_BRANCH,
               message: str | None = None) -> Commit:
        """A new commit on ``branch`` that undoes ``rev``'s change (``storage.merging.revert``)."""
        return self._write_new(identity, merging.revert(self, rev, branch=branch, message=message))

    def _write_new(self, identity: Identity, new: merging.NewCommit) -> Commit:
        return self._write_commit(identity, new.state, parents=new.parents, kind=new.kind,
                                  message=_message(new.message), meta=new.meta, metrics={}, branch=new.branch,
                                  expected=new.expected)

    def fsck(self) -> tuple[int, list[Problem]]:
        """How many commits reachable from a branch were re-read from storage, and what is damaged
        (``storage.fsck.check``)."""
        return check_history(self)

    # -- moving branches --------------------------------------------------------------------------------

    def _delta_base(self, parents: tuple[CommitId, ...], header: Header, epoch: int) -> pieces.Snapshot | None:
        """The first parent's payload if a new one of ``header`` may be stored against it (``storage.pieces``): in
        pieces, sealed under the key of ``epoch`` (a rotation starts afresh), cut the same way (one header)."""
        if not parents:
            return None
        parent = self.commit(parents[0])
        if parent.payload.codec != pieces.CODEC or parent.payload.key_epoch != epoch:
            return None
        try:
            _, snapshot = self._snapshot(parent)
        except (IntegrityError, NotFound, NotSafetensors) as exc:  # a damaged parent is no base: stored whole
            log.warning("the parent %s of a new commit does not read (%s); its pieces are stored whole",
                        short(parent.id), exc)
            return None
        return snapshot if snapshot.header.raw == header.raw else None

    def create_branch(self, identity: Identity, name: str, at: CommitId) -> BranchName:
        return self._point(identity, check_branch_name(name), at, expected=None).branch

    def reset_branch(self, identity: Identity, name: str, to: CommitId) -> BranchMove:
        """Point an existing branch at commit ``to`` (git's ``branch -f``): a signed move like any other."""
        branch = check_branch_name(name)
        return self._point(identity, branch, to, expected=self.head(branch))

    def _point(self, identity: Identity, branch: BranchName, commit: CommitId, *,
               expected: CommitId | None) -> BranchMove:
        """Move ``branch`` to a stored ``commit`` if ``identity``'s role allows it; the move is announced."""
        membership, timestamp = self.members.current(), clock.now_ms()
        membership.require_branch_move(identity.public_key, branch, epoch=membership.epoch, at_ms=timestamp)
        self.commit(commit)
        move = self._move_branch(identity, branch, commit, expected=expected, epoch=membership.epoch,
                                 timestamp=timestamp)
        self.announce("move", move.id, move.encode())
        return move

    def _move_branch(self, identity: Identity, branch: BranchName, commit: CommitId, *, expected: CommitId | None,
                     epoch: int, timestamp: int) -> BranchMove:
        """Point ``branch`` at ``commit`` if it points at ``expected`` (None: if it does not exist), with a move
        signed by ``identity``; ``RefConflict`` otherwise."""
        current_id = self.refs.get(branch)
        current = None if current_id is None else self.move(current_id)
        if (current.commit if current else None) != expected:
            raise _moved(branch, expected, current.commit if current else None)
        # Never earlier than the move it replaces, or peers would keep the old one (their order is by time).
        at = max(timestamp, current.timestamp_ms + 1) if current else timestamp
        move = BranchMove(repo=self.id, branch=branch, commit=commit, previous=current.commit if current else "",
                          author=identity.public_key, epoch=epoch, timestamp_ms=at).signed(identity)
        check_move_target(move, self.commit(commit))  # the same rule every peer applies to it
        self.objects.put(move.id, move.encode())
        try:
            self.swap_branch(branch, current_id, move)
        except RefConflict:
            raise _moved(branch, expected, self.branches().get(branch)) from None
        return move

    # -- membership -------------------------------------------------------------------------------------

    def invite(self, identity: Identity, member: str, role: str, *, expires_ms: int = 0) -> Membership:
        """Grant ``member`` (a public key) ``role``, sealing every payload key so far to them; owner only."""
        membership = self._owner_only(identity, "invites members")
        keys = {epoch: self.keys.key(epoch) for epoch in range(membership.epoch + 1)}
        return self._append(invitation(membership, identity, PublicKey(member), role, expires_ms=expires_ms,
                                       keys=keys, now_ms=clock.now_ms()))

    def remove(self, identity: Identity, member: str) -> Membership:
        """Remove ``member``: a new payload key, sealed to every other member whose role has not expired, seals
        every payload from now on."""
        membership = self._owner_only(identity, "removes members")
        new_key = crypto.new_key()
        after = self._append(removal(membership, identity, PublicKey(member), new_key=new_key, now_ms=clock.now_ms()))
        self.keys.add(after.epoch, new_key)
        return after

    def rotate_key(self, identity: Identity) -> Membership:
        """Start a new payload key epoch (owner only), its key sealed to every member not removed whose role has
        not expired: payloads from now on are closed to members whose role has expired."""
        membership = self._owner_only(identity, "rotates the payload key")
        new_key = crypto.new_key()
        after = self._append(rotation(membership, identity, new_key=new_key, now_ms=clock.now_ms()))
        self.keys.add(after.epoch, new_key)
        return after

    def rotate_if_expired(self, identity: Identity) -> Membership | None:
        """On the owner's node: rotate the payload key if a member whose role has expired still holds the
        current one (how an expiry stops reads, see ``core.membership``); None if there is nothing to do, or
        ``identity`` is not the owner. The daemon calls it periodically; every local commit calls it first."""
        membership = self.members.current()
        if identity.public_key != membership.owner or not membership.expired_holders(clock.now_ms()):
            return None
        try:
            return self.rotate_key(identity)
        except RefConflict:
            return None  # the chain moved meanwhile: the next call looks again

    def set_policy(self, identity: Identity, policy: RoundPolicy) -> Membership:
        """How rounds run from now on (owner only): a signed change in the membership chain, announced."""
        membership = self._owner_only(identity, "sets the round policy")
        if self.record.adapter is not None:
            adapters.check_policy(policy)
        return self._append(policy_change(membership, identity, policy, now_ms=clock.now_ms()))

    def bind_token(self, identity: Identity, chain: ChainRef) -> Membership:
        """Whoever holds the token ``chain`` minted (to the owner, checked by the caller) owns the repository."""
        membership = self._owner_only(identity, "binds the repository to an ownership token")
        return self._append(token_binding(membership, identity, chain, now_ms=clock.now_ms()))

    def hand_over(self, identity: Identity, new_owner: str, chain: ChainRef) -> Membership:
        """``new_owner`` owns the repository: transaction ``chain`` (checked by the caller) moved the token to
        them. Signed by the owner or by ``new_owner``."""
        return self._append(handover(self.members.current(), identity, PublicKey(new_owner), chain,
                                     now_ms=clock.now_ms()))

    def _append(self, change: MembershipChange) -> Membership:
        after = self.members.append(change)
        self.announce("membership", change.id, change.encode())
        return after

    def _owner_only(self, identity: Identity, what: str) -> Membership:
        membership = self.members.current()
        if identity.public_key != membership.owner:
            raise Forbidden(f"only the owner of repository {self.name} ({short(membership.owner)}) {what}",
                            repo=self.id)
        return membership


def _layout(state: StateDict | Source) -> tuple[TensorSpec, ...]:
    if isinstance(state, Source):
        return state.layout()
    from ..tensors.safetensors_io import layout_of

    return layout_of(state)


def _state_source(state: StateDict) -> Source:
    from ..tensors.safetensors_io import state_source

    return state_source(state)


def _moved(branch: str, expected: CommitId | None, current: CommitId | None) -> RefConflict:
    if expected is None:
        return RefConflict(f"branch {branch} already exists (at {short(current or '')})", branch=branch)
    if current is None:
        return RefConflict(f"branch {branch} does not exist any more", branch=branch)
    return RefConflict(f"branch {branch} moved: expected {short(expected)}, head is now {short(current)}; retry on "
                       "the new head", branch=branch, head=current)


def _message(message: str) -> str:
    text = message.strip()
    if not text:
        raise InvalidInput("a commit needs a message (-m)")
    if len(text) > 4096:
        raise InvalidInput("a commit message is at most 4096 characters")
    return text
