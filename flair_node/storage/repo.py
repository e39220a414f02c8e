"""A model repository assembled from an object store and a ref store (after dulwich's ``BaseRepo``).

Every commit's payload is stored losslessly relative to its first parent (``bitdelta-v1``) or in full (the
root, ``full-v1``), so materializing any commit gives back bit for bit the weights that were committed.
Merges and reverts are computed in exact fixed-point arithmetic (``tensors.fixedpoint``) and record their
scale and integer weights, so anyone holding the same inputs re-derives the same bytes.

The methods that do tensor work import ``tensors.*`` (and with it torch) when they run, not when this module
loads: a daemon that serves records, syncs with peers and answers the API but commits, checks out and merges
nothing never imports torch, and stays small (issue 4; ``tests/integration/test_idle_daemon.py`` holds it to that).

What this node writes keeps the rules it checks in what peers send (``core.membership``, ``core.objects``): a
commit is dated no earlier than its parents, a contribution branch is moved only by its holder and only to its
holder's commits; and on the owner's node, a payload key held by a member whose role has expired is rotated
away before anything new is sealed with it (``rotate_if_expired``).
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core import crypto, graph
from ..core.errors import (
    CommitNotFound,
    FlairError,
    Forbidden,
    IntegrityError,
    InvalidInput,
    MergeError,
    NotAMember,
    NotFound,
    RefConflict,
    RepositoryNotFound,
)
from ..core.identity import Identity
from ..core.ids import BranchName, CommitId, PublicKey, RecordId, RepoId, check_id_prefix, is_full_id, short
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
from ..core.objects import Commit, Payload, RepositoryRecord, check_commit_time, metric_text
from ..core.refs import CONTRIBUTION_PREFIX as CONTRIBUTION_PREFIX
from ..core.refs import DEFAULT_BRANCH, MAX_CLOCK_SKEW_MS, BranchMove, check_branch_name
from ..core.refs import contribution_branch as contribution_branch
from ..core.round_rules import RoundPolicy
from ..tensors.params import DEFAULT_TOPK_RATIO, LOSSY_CODECS
from . import unixfs
from .members import MembershipLog
from .records import ANCHOR_REF as ANCHOR_REF
from .records import MAX_PROOFS_BYTES as MAX_PROOFS_BYTES
from .records import PROOF_REF as PROOF_REF
from .records import MergeRecords, now_ms
from .stores import ObjectStore, RefStore

if TYPE_CHECKING:  # at run time, tensor modules are imported by the methods that use them (see above)
    from ..tensors.safetensors_io import StateDict

#: How ``merge`` combines branches; ``average`` is the older name of ``mean``, still accepted.
MERGE_METHODS = ("mean", "task-arithmetic")
MERGE_ALIASES = {"average": "mean"}
#: Codecs a contribution may be committed in: exact, or lossy to save bytes.
DELTA_CODECS = ("bitdelta-v1", *LOSSY_CODECS)
_ANCESTRY = re.compile(r"^(?P<rev>.+?)(?:(?P<op>~)(?P<n>\d{1,6})?|(?P<carets>\^+))$")
_CACHE_STATES = 4


@dataclass(frozen=True)
class Problem:
    """One finding of ``fsck``: what is damaged and why."""

    object: str
    what: str


class Repository(MergeRecords):
    def __init__(self, record: RepositoryRecord, objects: ObjectStore, blocks: unixfs.BlockStore,
                 refs: RefStore, *, reader: Identity | None = None, write_lock: threading.Lock | None = None) -> None:
        self.record = record
        #: Whose sealed payload keys this node opens (its own identity); None reads no payloads.
        self.reader = reader
        self._keys: dict[int, bytes] = {}  # payload key per epoch, opened from the membership chain
        #: Held while a commit's blocks are written and its branch moved: garbage collection holds it too,
        #: so it never sees blocks that are written but not yet reachable from a branch.
        self.write_lock = write_lock or threading.Lock()
        self.objects = objects
        self.blocks = blocks
        self.refs = refs
        self.members = MembershipLog(record, objects, refs)
        #: Told of every record this node signs here, as (kind, record id, encoded record): what the daemon gossips.
        self.announce: Callable[[str, str, bytes], None] = lambda kind, record_id, record: None
        #: Asked, before a peer's token change or handover is applied, whether it did on chain what it says
        #: (the daemon's ``OwnershipService`` asks the cluster); raises if not, or if it cannot tell yet.
        self.check_ownership: Callable[[Repository, MembershipChange], None] = check_ownership_offline
        self._commits: dict[CommitId, Commit] = {}
        self._moves: dict[RecordId, BranchMove] = {}
        self._states: OrderedDict[CommitId, StateDict] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def id(self) -> RepoId:
        return self.record.id

    @property
    def name(self) -> str:
        return self.record.name

    # -- creating and opening ---------------------------------------------------------------------------

    @classmethod
    def create(cls, objects: ObjectStore, blocks: unixfs.BlockStore, refs_for: Callable[[RepoId], RefStore],
               identity: Identity, name: str, state: StateDict, *, message: str = "initial weights",
               write_lock: threading.Lock | None = None) -> Repository:
        """A new repository whose commit 0 is ``state``; ``refs_for`` gives the ref store for its id."""
        from ..tensors.safetensors_io import layout_of

        if not name.strip() or len(name) > 200:
            raise InvalidInput("a repository name is 1 to 200 characters", name=name)
        if not state:
            raise InvalidInput("the initial model has no tensors")
        key = crypto.new_key()
        record = RepositoryRecord(
            name=name, owner=identity.public_key, created_ms=now_ms(), nonce=os.urandom(16).hex(),
            layout=layout_of(state), sealed_keys={identity.public_key: crypto.seal_key(key, identity.public_key)},
        ).signed(identity)
        objects.put(record.id, record.encode())
        repo = cls(record, objects, blocks, refs_for(record.id), reader=identity, write_lock=write_lock)
        repo._keys[0] = key
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

    # -- reading ----------------------------------------------------------------------------------------

    def commit(self, cid: CommitId) -> Commit:
        """The commit ``cid``, its id and signature verified when first read from storage."""
        cached = self._commits.get(cid)
        if cached is not None:
            return cached
        commit = self._read_commit(cid)
        self._commits[cid] = commit
        return commit

    def _read_commit(self, cid: CommitId) -> Commit:
        try:
            data = self.objects.get(cid)
        except NotFound:
            raise CommitNotFound(f"commit {short(cid)} is not in repository {self.name}", commit=cid) from None
        commit = Commit.decode(data)
        commit.verify(cid)
        if commit.repo != self.id:
            raise CommitNotFound(f"commit {short(cid)} belongs to another repository", commit=cid)
        return commit

    def _payload(self, commit: Commit) -> bytes:
        """The commit's decrypted payload, every block re-hashed against its CID on the way."""
        data = unixfs.cat(self.blocks, commit.payload.cid, max_size=commit.payload.size)
        if len(data) != commit.payload.size:
            raise IntegrityError(f"payload {commit.payload.cid} has {len(data)} bytes, its commit says "
                                 f"{commit.payload.size}", cid=commit.payload.cid)
        return crypto.decrypt(self._key(commit.payload.key_epoch), data, self._context(commit.payload.codec))

    def _key(self, epoch: int) -> bytes:
        key = self._keys.get(epoch)
        if key is None:
            membership = self.members.current()
            if epoch > membership.epoch:
                raise IntegrityError(f"payload key epoch {epoch} is unknown to repository {self.name} (its "
                                     f"membership is at epoch {membership.epoch})", repo=self.id)
            sealed = membership.sealed_key(self.reader.public_key, epoch) if self.reader else None
            if sealed is None or self.reader is None:
                raise NotAMember(f"this node holds no key of epoch {epoch} for repository {self.name}: its "
                                 "payloads stay ciphertext to non-members", repo=self.id)
            key = self._keys[epoch] = crypto.open_sealed_key(sealed, self.reader)
        return key

    def _context(self, codec: str) -> bytes:
        """Associated data: a payload authenticates only in this repository and as this codec."""
        return f"flair/payload/{self.id}/{codec}".encode()

    def branches(self) -> dict[BranchName, CommitId]:
        return {name: self.move(mid).commit for name, mid in self.refs.all().items()}

    def head(self, branch: str) -> CommitId:
        move = self.branch_move(branch)
        if move is None:
            known = ", ".join(self.branches()) or "none"
            raise NotFound(f"no branch {branch!r} in repository {self.name} (branches: {known})", branch=branch)
        return move.commit

    def branch_move(self, branch: str) -> BranchMove | None:
        """The signed move that put ``branch`` where it is; None if there is no such branch."""
        mid = self.refs.get(check_branch_name(branch))
        return None if mid is None else self.move(mid)

    def move(self, mid: RecordId) -> BranchMove:
        """A branch move record, its id and signature verified when first read."""
        cached = self._moves.get(mid)
        if cached is None:
            try:
                cached = BranchMove.decode(self.objects.get(mid))
            except NotFound:
                raise IntegrityError(f"branch move {short(mid)} of repository {self.name} is missing",
                                     move=mid) from None
            cached.verify(mid)
            if cached.repo != self.id:
                raise IntegrityError(f"branch move {short(mid)} belongs to another repository", move=mid)
            self._moves[mid] = cached
        return cached

    def resolve(self, rev: str) -> CommitId:
        """A branch name, a full commit id or an unambiguous prefix of one, as a commit id.

        As in git, ``REV~N`` is the N-th first-parent ancestor of REV and ``REV^`` its first parent.
        """
        match = _ANCESTRY.match(rev)
        if match:
            cid = self.resolve(match["rev"])
            steps = int(match["n"] or 1) if match["op"] == "~" else len(match["carets"])
            for _ in range(steps):
                parents = self.commit(cid).parents
                if not parents:
                    raise CommitNotFound(f"{rev}: {short(cid)} has no parent", commit=rev)
                cid = parents[0]
            return cid
        try:
            ref = self.branch_move(rev)
        except InvalidInput:
            ref = None
        if ref is not None:
            return ref.commit
        prefix = check_id_prefix(rev, "commit")
        if is_full_id(prefix):
            self.commit(CommitId(prefix))
            return CommitId(prefix)
        matches = [k for k in self.objects.keys(prefix) if self._is_own_commit(k)]
        if not matches:
            raise CommitNotFound(f"no branch or commit {rev!r} in repository {self.name}", commit=rev)
        if len(matches) > 1:
            raise InvalidInput(f"commit prefix {rev!r} is ambiguous: {', '.join(short(m) for m in matches)}",
                               commit=rev)
        return CommitId(matches[0])

    def _is_own_commit(self, key: str) -> bool:
        try:
            self.commit(CommitId(key))
        except FlairError:
            return False
        return True

    def parents(self, cid: CommitId) -> tuple[CommitId, ...]:
        return self.commit(cid).parents

    def _timestamp(self, cid: CommitId) -> int:
        return self.commit(cid).timestamp_ms

    def log(self, heads: Sequence[CommitId], limit: int | None = None) -> list[Commit]:
        out = []
        for cid in graph.walk(heads, self.parents, self._timestamp):
            if limit is not None and len(out) >= limit:
                break
            out.append(self.commit(cid))
        return out

    def materialize(self, cid: CommitId) -> StateDict:
        """The full weights of commit ``cid``, bit for bit as committed."""
        from ..tensors.codec import decode_payload

        chain: list[Commit] = []
        cursor: CommitId | None = cid
        base: StateDict | None = None
        while cursor is not None:
            with self._lock:
                cached = self._states.get(cursor)
            if cached is not None:
                base = cached
                break
            commit = self.commit(cursor)
            chain.append(commit)
            if commit.payload.codec == "full-v1":
                break
            if not commit.parents:
                raise IntegrityError(f"commit {short(cursor)} has a delta payload but no parent", commit=cursor)
            cursor = commit.parents[0]
        for commit in reversed(chain):
            base = decode_payload(commit.payload.codec, self._payload(commit), base, self.record.layout)
        assert base is not None
        self._remember(cid, base)
        return base

    def _remember(self, cid: CommitId, state: StateDict) -> None:
        with self._lock:
            self._states[cid] = state
            self._states.move_to_end(cid)
            while len(self._states) > _CACHE_STATES:
                self._states.popitem(last=False)

    def diff(self, a: CommitId, b: CommitId) -> list[dict[str, Any]]:
        from ..tensors.diff import tensor_diff

        return tensor_diff(self.materialize(a), self.materialize(b))

    # -- writing ----------------------------------------------------------------------------------------

    def _write_commit(self, identity: Identity, state: StateDict, *, parents: tuple[CommitId, ...], kind: str,
                      message: str, meta: Mapping[str, Any], metrics: Mapping[str, str], branch: BranchName,
                      expected: CommitId | None, codec: str = "bitdelta-v1",
                      topk_ratio: float = DEFAULT_TOPK_RATIO,
                      check_time: Callable[[int], None] | None = None) -> Commit:
        from ..tensors.codec import decode_payload, encode_payload
        from ..tensors.safetensors_io import check_layout

        check_layout(state, self.record.layout)
        self.rotate_if_expired(identity)  # the owner's node: never seal a new payload to an expired member
        membership = self.members.current()
        # Never dated before a parent (a peer's clock may run a little ahead of this one's): see check_commit_time.
        timestamp = max([now_ms(), *(self.commit(p).timestamp_ms for p in parents)])
        if check_time is not None:
            check_time(timestamp)
        membership.require_branch_move(identity.public_key, branch, epoch=membership.epoch, at_ms=timestamp)
        if not parents:
            codec = "full-v1"
            data = encode_payload(codec, state, None)
        else:
            base = self.materialize(parents[0])
            data = encode_payload(codec, state, base, topk_ratio=topk_ratio)
            if codec in LOSSY_CODECS:  # the commit holds exactly what its payload decodes to
                state = decode_payload(codec, data, base, self.record.layout)
        data = crypto.encrypt(self._key(membership.epoch), data, self._context(codec))
        # Blocks, record and branch move under the lock that gc takes: it never sees blocks of a half-made commit.
        with self.write_lock:
            payload = Payload(cid=unixfs.add(self.blocks, data), codec=codec, size=len(data),
                              key_epoch=membership.epoch)
            commit = Commit(
                repo=self.id, parents=parents, author=identity.public_key, timestamp_ms=timestamp, kind=kind,
                message=message, payload=payload, meta=dict(meta), metrics=dict(metrics),
            ).signed(identity)
            check_commit_time(commit, [self.commit(p) for p in parents], now_ms=now_ms())
            self.objects.put(commit.id, commit.encode())
            self._commits[commit.id] = commit
            move = self._move_branch(identity, branch, commit.id, expected=expected, epoch=membership.epoch,
                                     timestamp=timestamp)
        self.announce("commit", commit.id, commit.encode())
        self.announce("move", move.id, move.encode())
        self._remember(commit.id, state)
        return commit

    def commit_weights(self, identity: Identity, state: StateDict, *, message: str, branch: str = DEFAULT_BRANCH,
                       examples: int = 0, metrics: Mapping[str, float | int | str] | None = None,
                       expected_head: CommitId | None = None, codec: str = "bitdelta-v1",
                       topk_ratio: float = DEFAULT_TOPK_RATIO) -> Commit:
        """Commit new weights on ``branch``: the delta against its head. Raises ``RefConflict`` if it moved.

        ``codec`` is ``bitdelta-v1`` (exact, the default) or a lossy one (``tensors.lossy``): then the commit holds
        ``head + decoded delta``, which a contributor's ``ErrorFeedback`` compares with what it sent.
        """
        if codec not in DELTA_CODECS:
            raise InvalidInput(f"unknown codec {codec!r}: use one of {', '.join(DELTA_CODECS)}", codec=codec)
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

    def contribute(self, identity: Identity, state: StateDict, *, branch: str = DEFAULT_BRANCH, examples: int,
                   base: CommitId | None = None, message: str = "", codec: str = "bitdelta-v1",
                   topk_ratio: float = DEFAULT_TOPK_RATIO, commitments: Sequence[str] = ()) -> Commit:
        """A contribution to the rounds of ``branch``: weights trained from ``base`` (default: the branch head) on
        ``examples`` local examples, stored as their delta against ``base``. It does not move ``branch``: it sits
        on this member's own branch ``contrib/<branch>/<key>`` (each contribution replaces the previous one
        there) until a round's aggregator merges it. ``commitments``, if any, are recorded with it: the
        commitments of its delta's chunks, when the repository's merges are proven (``protocol.proofs``)."""
        if codec not in DELTA_CODECS:
            raise InvalidInput(f"unknown codec {codec!r}: use one of {', '.join(DELTA_CODECS)}", codec=codec)
        if not isinstance(examples, int) or examples < 0:
            raise InvalidInput("examples must be an integer >= 0")
        target = check_branch_name(branch)
        start = self.resolve(base) if base is not None else self.head(target)
        own = check_branch_name(contribution_branch(target, identity.public_key))
        previous = self.branch_move(own)
        return self._write_commit(identity, state, parents=(start,), kind="contribution",
                                  message=_message(message or f"contribution to {target} ({examples} examples)"),
                                  meta={"examples": examples, "branch": target,
                                        **({"commitments": list(commitments)} if commitments else {})},
                                  metrics={}, branch=own,
                                  expected=previous.commit if previous else None, codec=codec, topk_ratio=topk_ratio)

    def write_round(self, identity: Identity, state: StateDict, *, branch: str, parents: tuple[CommitId, ...],
                    meta: Mapping[str, Any], message: str, check_time: Callable[[int], None] | None = None) -> Commit:
        """A round's merged commit on ``branch`` (its head first among ``parents``), moving the branch to it; the
        round rules (``protocol.rounds``) decide what goes in it, this only writes it. ``check_time`` is called
        with the commit's timestamp before anything is written; what it raises stops the write."""
        target = check_branch_name(branch)
        return self._write_commit(identity, state, parents=parents, kind="round", message=_message(message),
                                  meta=meta, metrics={}, branch=target, expected=parents[0], check_time=check_time)

    def create_branch(self, identity: Identity, name: str, at: CommitId) -> BranchName:
        return self._point(identity, check_branch_name(name), at, expected=None).branch

    def reset_branch(self, identity: Identity, name: str, to: CommitId) -> BranchMove:
        """Point an existing branch at commit ``to`` (git's ``branch -f``): a signed move like any other."""
        branch = check_branch_name(name)
        return self._point(identity, branch, to, expected=self.head(branch))

    def _point(self, identity: Identity, branch: BranchName, commit: CommitId, *,
               expected: CommitId | None) -> BranchMove:
        """Move ``branch`` to a stored ``commit`` if ``identity``'s role allows it; the move is announced."""
        membership, timestamp = self.members.current(), now_ms()
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
            self.refs.compare_and_swap(branch, current_id, move.id)
        except RefConflict:
            raise _moved(branch, expected, self.branches().get(branch)) from None
        self._moves[move.id] = move
        return move

    # -- membership -------------------------------------------------------------------------------------

    def invite(self, identity: Identity, member: str, role: str, *, expires_ms: int = 0) -> Membership:
        """Grant ``member`` (a public key) ``role``, sealing every payload key so far to them; owner only."""
        membership = self._owner_only(identity, "invites members")
        keys = {epoch: self._key(epoch) for epoch in range(membership.epoch + 1)}
        return self._append(invitation(membership, identity, PublicKey(member), role, expires_ms=expires_ms,
                                       keys=keys, now_ms=now_ms()))

    def remove(self, identity: Identity, member: str) -> Membership:
        """Remove ``member``: a new payload key, sealed to every other member whose role has not expired, seals
        every payload from now on."""
        membership = self._owner_only(identity, "removes members")
        new_key = crypto.new_key()
        after = self._append(removal(membership, identity, PublicKey(member), new_key=new_key, now_ms=now_ms()))
        self._keys[after.epoch] = new_key
        return after

    def rotate_key(self, identity: Identity) -> Membership:
        """Start a new payload key epoch (owner only), its key sealed to every member not removed whose role has
        not expired: payloads from now on are closed to members whose role has expired."""
        membership = self._owner_only(identity, "rotates the payload key")
        new_key = crypto.new_key()
        after = self._append(rotation(membership, identity, new_key=new_key, now_ms=now_ms()))
        self._keys[after.epoch] = new_key
        return after

    def rotate_if_expired(self, identity: Identity) -> Membership | None:
        """On the owner's node: rotate the payload key if a member whose role has expired still holds the
        current one (how an expiry stops reads, see ``core.membership``); None if there is nothing to do, or
        ``identity`` is not the owner. The daemon calls it periodically; every local commit calls it first."""
        membership = self.members.current()
        if identity.public_key != membership.owner or not membership.expired_holders(now_ms()):
            return None
        try:
            return self.rotate_key(identity)
        except RefConflict:
            return None  # the chain moved meanwhile: the next call looks again

    def set_policy(self, identity: Identity, policy: RoundPolicy) -> Membership:
        """How rounds run from now on (owner only): a signed change in the membership chain, announced."""
        membership = self._owner_only(identity, "sets the round policy")
        return self._append(policy_change(membership, identity, policy, now_ms=now_ms()))

    def bind_token(self, identity: Identity, chain: ChainRef) -> Membership:
        """Whoever holds the token ``chain`` minted (to the owner, checked by the caller) owns the repository."""
        membership = self._owner_only(identity, "binds the repository to an ownership token")
        return self._append(token_binding(membership, identity, chain, now_ms=now_ms()))

    def hand_over(self, identity: Identity, new_owner: str, chain: ChainRef) -> Membership:
        """``new_owner`` owns the repository: transaction ``chain`` (checked by the caller) moved the token to
        them. Signed by the owner or by ``new_owner``."""
        return self._append(handover(self.members.current(), identity, PublicKey(new_owner), chain,
                                     now_ms=now_ms()))

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

    def merge(self, identity: Identity, sources: Sequence[str], into: str, *, strategy: str = "mean",
              message: str | None = None) -> Commit:
        """A merge commit on ``into`` with parents ``[into's head, *sources]``, combined relative to their base.

        ``mean`` weights each side by the examples committed on it since the merge base (equal weights if
        none were recorded): federated averaging. ``task-arithmetic`` adds every side's change to the base.
        """
        from ..tensors.fixedpoint import DEFAULT_SCALE_BITS, WEIGHT_BITS, combine, normalize_weights

        strategy = MERGE_ALIASES.get(strategy, strategy)
        if strategy not in MERGE_METHODS:
            raise InvalidInput(f"unknown merge strategy {strategy!r}: use one of {', '.join(MERGE_METHODS)}",
                               strategy=strategy)
        if not sources:
            raise InvalidInput("name at least one branch or commit to merge")
        target = check_branch_name(into)
        head = self.head(target)
        heads = [head]
        for src in sources:
            cid = self.resolve(src)
            if cid in heads:
                raise MergeError(f"{src} is already named or is the head of {into}", commit=cid)
            if graph.is_ancestor(cid, head, self.parents):
                raise MergeError(f"{src} ({short(cid)}) is already contained in {into}: nothing to merge", commit=cid)
            heads.append(cid)
        base = heads[0]
        for cid in heads[1:]:
            found = graph.merge_base(base, cid, self.parents, self._timestamp)
            if found is None:
                raise MergeError(f"{short(cid)} shares no history with {into}", commit=cid)
            base = found
        examples = [self._examples_since(h, base) for h in heads]
        if strategy == "mean":
            weights = normalize_weights(examples, WEIGHT_BITS)
        else:
            weights = [1 << WEIGHT_BITS] * len(heads)
        merged = combine(self.materialize(base), [self.materialize(h) for h in heads], weights,
                         scale_bits=DEFAULT_SCALE_BITS, weight_bits=WEIGHT_BITS)
        names = ", ".join(sources)
        meta = {"strategy": strategy, "base": base, "weights": weights, "scale_bits": DEFAULT_SCALE_BITS,
                "weight_bits": WEIGHT_BITS, "examples": sum(examples)}
        return self._write_commit(identity, merged, parents=tuple(heads), kind="merge",
                                  message=_message(message or f"merge {names} into {into} ({strategy})"),
                                  meta=meta, metrics={}, branch=target, expected=head)

    def _examples_since(self, head: CommitId, base: CommitId) -> int:
        behind = graph.ancestors(base, self.parents)
        return sum(int(self.commit(c).meta.get("examples", 0)) for c in graph.ancestors(head, self.parents)
                   if c not in behind and self.commit(c).kind == "commit")

    def revert(self, identity: Identity, rev: str, *, branch: str = DEFAULT_BRANCH,
               message: str | None = None) -> Commit:
        """A new commit on ``branch`` that undoes ``rev``'s change (relative to its first parent)."""
        from ..tensors.fixedpoint import DEFAULT_SCALE_BITS, WEIGHT_BITS, combine

        target = check_branch_name(branch)
        head = self.head(target)
        cid = self.resolve(rev)
        reverted = self.commit(cid)
        if not reverted.parents:
            raise InvalidInput(f"commit {short(cid)} is the repository's first commit: nothing to revert to",
                               commit=cid)
        if not graph.is_ancestor(cid, head, self.parents):
            raise InvalidInput(f"commit {short(cid)} is not on branch {branch} (head is {short(head)})",
                               commit=cid, branch=branch)
        parent = reverted.parents[0]
        state = combine(self.materialize(cid), [self.materialize(head), self.materialize(parent)],
                        [1 << WEIGHT_BITS, 1 << WEIGHT_BITS], scale_bits=DEFAULT_SCALE_BITS,
                        weight_bits=WEIGHT_BITS)
        meta = {"reverts": cid, "scale_bits": DEFAULT_SCALE_BITS, "weight_bits": WEIGHT_BITS, "examples": 0}
        first_line = reverted.message.splitlines()[0] if reverted.message else short(cid)
        return self._write_commit(identity, state, parents=(head,), kind="revert",
                                  message=_message(message or f'revert "{first_line}"'), meta=meta, metrics={},
                                  branch=target, expected=head)

    # -- receiving from peers ---------------------------------------------------------------------------
    # Records arrive signed by their authors; each is checked here against this node's own view of the
    # membership before it is stored, whoever relayed it. Callers bring what a record needs first: the
    # membership change it was made under, a commit's parents and payload blocks, a move's commit.

    def accept_membership(self, change: MembershipChange) -> bool:
        """Store ``change`` if it is the next one of the chain; False if this node has it already. A token change
        or a handover is checked first (``check_ownership``)."""
        if change.action in ("token", "handover") and not self.members.contains(change.id):
            self.check_ownership(self, change)
        while not self.members.contains(change.id):
            try:
                self.members.append(change)
            except RefConflict:
                continue  # another pull appended meanwhile (maybe this very change): look again
            self._keys.clear()  # a rotation may have given this node the next epoch's key
            return True
        return False

    def check_commit(self, commit: Commit) -> bool:
        """Check a commit from a peer before anything it names is fetched; False if it is here already.

        ``IntegrityError`` if its record, repository, key epoch, parents or date (before a parent's, or ahead of
        this node's clock by more than the skew allowed) do not check out, ``Forbidden`` if its author held no
        contributor role for it at its time."""
        commit.verify()
        if self.objects.has(commit.id):
            return False
        if commit.repo != self.id:
            raise IntegrityError(f"commit {short(commit.id)} belongs to another repository", commit=commit.id)
        membership = self.members.current()
        if commit.payload.key_epoch > membership.epoch:
            raise IntegrityError(f"commit {short(commit.id)} is sealed with key epoch {commit.payload.key_epoch}; "
                                 f"this node's membership is at epoch {membership.epoch}", commit=commit.id)
        least = "owner" if not commit.parents else "contributor"
        membership.require(commit.author, least, epoch=commit.payload.key_epoch, at_ms=commit.timestamp_ms,
                           what=f"commit {short(commit.id)}")
        for parent in commit.parents:
            if not self.objects.has(parent):
                raise IntegrityError(f"commit {short(commit.id)} arrived before its parent {short(parent)}",
                                     commit=commit.id)
        # Its role was judged at its own time: a time no earlier than its parents' and not yet to come.
        check_commit_time(commit, [self.commit(p) for p in commit.parents], now_ms=now_ms())
        return True

    def accept_commit(self, commit: Commit) -> bool:
        """Store a commit from a peer whose payload blocks are here; False if it is here already.

        Raises what ``check_commit`` raises, and ``IntegrityError`` if the payload blocks do not check out."""
        if not self.check_commit(commit):
            return False
        payload = unixfs.cat(self.blocks, commit.payload.cid, max_size=commit.payload.size)
        if len(payload) != commit.payload.size:
            raise IntegrityError(f"payload of commit {short(commit.id)} has {len(payload)} bytes, its record says "
                                 f"{commit.payload.size}", commit=commit.id)
        self.objects.put(commit.id, commit.encode())
        self._commits[commit.id] = commit
        return True

    def accept_move(self, move: BranchMove) -> bool:
        """Take a branch move from a peer if its author may make it (``Membership.require_branch_move``: the role,
        and a contribution branch only by its holder), it fits its commit (``check_move_target``: a contribution
        branch only at its holder's own commit) and it comes after the branch's current move; True if the branch
        moved."""
        move.verify()
        if move.repo != self.id:
            raise IntegrityError(f"branch move {short(move.id)} belongs to another repository", move=move.id)
        commit = self.commit(move.commit)  # stored and verified already, or CommitNotFound
        membership = self.members.current()
        if move.epoch > membership.epoch:
            raise IntegrityError(f"branch move {short(move.id)} was made at key epoch {move.epoch}; this node's "
                                 f"membership is at epoch {membership.epoch}", move=move.id)
        membership.require_branch_move(move.author, move.branch, epoch=move.epoch, at_ms=move.timestamp_ms)
        check_move_target(move, commit)
        if move.timestamp_ms > now_ms() + MAX_CLOCK_SKEW_MS:  # or it would outrank every honest move for long
            raise IntegrityError(f"branch move {short(move.id)} is dated more than {MAX_CLOCK_SKEW_MS // 60_000} "
                                 "minutes ahead of this node's clock", move=move.id)
        self.objects.put(move.id, move.encode())
        while True:
            current_id = self.refs.get(move.branch)
            if current_id == move.id or (current_id is not None and not move.comes_after(self.move(current_id))):
                return False
            try:
                self.refs.compare_and_swap(move.branch, current_id, move.id)
            except RefConflict:
                continue  # moved meanwhile: compare with the newer move
            self._moves[move.id] = move
            return True

    # -- checking ---------------------------------------------------------------------------------------

    def fsck(self) -> tuple[int, list[Problem]]:
        """Re-read every commit reachable from a branch: ids, signatures, payload hashes, layouts, parents.

        Nothing is taken from memory: caches are dropped first. Returns how many commits were checked and what
        is damaged (nothing, in a healthy repository).
        """
        with self._lock:
            self._commits.clear()
            self._states.clear()
            self._moves.clear()
        problems: list[Problem] = []
        try:
            RepositoryRecord.decode(self.objects.get(self.id)).verify(self.id)
        except FlairError as exc:
            problems.append(Problem(self.id, f"repository record: {exc}"))
        try:
            self.members.changes()
        except FlairError as exc:
            problems.append(Problem(self.id, f"membership: {exc}"))
        heads = []
        for branch, mid in self.refs.all().items():
            try:
                heads.append(self.move(mid).commit)
            except FlairError as exc:
                problems.append(Problem(mid, f"branch {branch}: {exc}"))
        heads = list(dict.fromkeys(heads))
        checked: dict[CommitId, Commit] = {}
        stack = list(heads)
        while stack:
            cid = stack.pop()
            if cid in checked:
                continue
            try:
                commit = self.commit(cid)
            except FlairError as exc:
                problems.append(Problem(cid, str(exc)))
                continue
            checked[cid] = commit
            stack.extend(p for p in commit.parents if p not in checked)
        order = list(graph.walk(heads, lambda c: checked[c].parents if c in checked else (),
                                lambda c: checked[c].timestamp_ms if c in checked else 0))
        for cid in reversed(order):  # parents first, so each delta applies to a cached parent
            if cid not in checked or any(p not in checked for p in checked[cid].parents):
                continue
            try:
                self.materialize(cid)
            except FlairError as exc:
                problems.append(Problem(cid, f"payload: {exc}"))
        return len(checked), problems

    def commits(self) -> Iterator[Commit]:
        heads = list(dict.fromkeys(self.branches().values()))
        for cid in graph.walk(heads, self.parents, self._timestamp):
            yield self.commit(cid)


def check_ownership_offline(repo: Repository, change: MembershipChange) -> None:
    """Without a chain to ask: a token change or handover the owner signed is taken on the owner's word (they
    could hand the repository over by inviting and leaving anyway); a handover only the new owner signed is not,
    since only the chain shows the token moved to them."""
    if change.action == "handover" and change.author != repo.members.current().owner:
        raise IntegrityError(f"handover {short(change.id)} of repository {short(repo.id)} is signed by the new "
                             "owner alone: only a node with chain.cluster can check that the token moved to them",
                             change=change.id)


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
