"""A repository's history as any node holding it reads it: commits and branch moves (each verified when first
read), revisions, the log, and the weights of any commit; and the two ways a checked record is stored
(``store_commit``, ``swap_branch``), which keep what was read in step with what is stored.

``History`` is assembled from an object store, a block store and a ref store (after dulwich's ``BaseRepo``), and
holds two parts: the membership chain (``members``) and the payload keys (``keys``). ``storage.repo.Repository`` is
a ``History`` that this node also writes commits and branch moves to; the modules that work on a repository's
records without writing any of their own (``storage.merging``, ``storage.fsck``, ``storage.ingest``) take a
``History``, so they cannot reach the writing side.

A commit's payload holds its whole weights in deduplicated pieces (``snapshot-v1``, ``storage.pieces``), or, in
older commits and in contributions sent in a lossy codec, a delta against its first parent (``bitdelta-v1``,
``tensors.lossy``) that applies to the first ancestor holding whole weights. Materializing a commit gives back bit
for bit the weights that were committed; a checkout of a ``snapshot-v1`` commit streams its pieces to the file
and never holds the weights whole. Tensor modules (and with them torch) are imported by the methods that decode
weights into tensors, when they run: a daemon that serves records and syncs with peers never imports torch
(``tests/integration/test_idle_daemon.py``).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import graph
from ..core.errors import CommitNotFound, FlairError, IntegrityError, InvalidInput, NotFound
from ..core.identity import Identity
from ..core.ids import BranchName, CommitId, RecordId, RepoId, check_id_prefix, is_full_id, short
from ..core.objects import Commit, RepositoryRecord, TensorSpec
from ..core.refs import BranchMove, check_branch_name
from ..tensors.safetensors_file import (
    INDEX_NAME,
    MAX_SHARDS,
    Entry,
    Header,
    Source,
    canonical,
    shard_plan,
)
from . import pieces, unixfs
from .atomic import atomic_write, atomic_writer
from .keys import PayloadKeys
from .members import MembershipLog
from .stores import ObjectStore, RefStore

if TYPE_CHECKING:  # at run time, tensor modules are imported by the methods that use them (see above)
    import torch

    from ..tensors.safetensors_io import StateDict

_ANCESTRY = re.compile(r"^(?P<rev>.+?)(?:(?P<op>~)(?P<n>\d{1,6})?|(?P<carets>\^+))$")
#: Bytes of materialized weights kept (a round reads its head and each contribution's base more than once);
#: weights larger than this are read again each time, never held after the call that asked for them.
_CACHE_BYTES = 256 << 20


class History:
    """The records and weights of the repository ``record``; payloads are read with ``reader``'s keys (its own
    identity, for a node that is a member; None reads no payloads)."""

    def __init__(self, record: RepositoryRecord, objects: ObjectStore, blocks: unixfs.BlockStore,
                 refs: RefStore, *, reader: Identity | None = None) -> None:
        self.record = record
        self.objects = objects
        self.blocks = blocks
        self.refs = refs
        self.members = MembershipLog(record, objects, refs)
        self.keys = PayloadKeys(record, self.members, reader)
        self._commits: dict[CommitId, Commit] = {}
        self._moves: dict[RecordId, BranchMove] = {}
        self._states: OrderedDict[CommitId, tuple[StateDict, int]] = OrderedDict()  # with their bytes
        self._lock = threading.Lock()

    @property
    def id(self) -> RepoId:
        return self.record.id

    @property
    def name(self) -> str:
        return self.record.name

    # -- records ----------------------------------------------------------------------------------------

    def commit(self, cid: CommitId) -> Commit:
        """The commit ``cid``, its id and signature verified when first read from storage."""
        cached = self._commits.get(cid)
        if cached is not None:
            return cached
        try:
            data = self.objects.get(cid)
        except NotFound:
            raise CommitNotFound(f"commit {short(cid)} is not in repository {self.name}", commit=cid) from None
        commit = Commit.decode(data)
        commit.verify(cid)
        if commit.repo != self.id:
            raise CommitNotFound(f"commit {short(cid)} belongs to another repository", commit=cid)
        self._commits[cid] = commit
        return commit

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

    def store_commit(self, commit: Commit) -> None:
        """Store ``commit``: one signed here, or a peer's checked already (``ingest.Ingest.check_commit``)."""
        self.objects.put(commit.id, commit.encode())
        self._commits[commit.id] = commit

    def swap_branch(self, branch: BranchName, current: RecordId | None, move: BranchMove) -> None:
        """Point ``branch`` from move ``current`` (None: no such branch) to ``move``, a checked record stored
        already; ``RefConflict`` if the branch moved meanwhile."""
        self.refs.compare_and_swap(branch, current, move.id)
        self._moves[move.id] = move

    def drop_caches(self) -> None:
        """Forget every record and weights read so far: what is read next comes from storage (``storage.fsck``)."""
        with self._lock:
            self._commits.clear()
            self._states.clear()
            self._moves.clear()

    # -- branches and revisions -------------------------------------------------------------------------

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
        try:
            prefix = check_id_prefix(rev, "commit")
        except InvalidInput:  # neither a branch here nor anything a commit id could start with
            raise CommitNotFound(f"no branch or commit {rev!r} in repository {self.name} (a branch name, or a commit "
                                 "id or a prefix of it of 4 to 64 hex digits)", commit=rev) from None
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

    # -- the graph --------------------------------------------------------------------------------------

    def parents(self, cid: CommitId) -> tuple[CommitId, ...]:
        return self.commit(cid).parents

    def _timestamp(self, cid: CommitId) -> int:
        return self.commit(cid).timestamp_ms

    def log(self, heads: Sequence[CommitId], limit: int | None = None) -> list[Commit]:
        out: list[Commit] = []
        for cid in graph.walk(heads, self.parents, self._timestamp):
            if limit is not None and len(out) >= limit:
                break
            out.append(self.commit(cid))
        return out

    def commits(self) -> Iterator[Commit]:
        """Every commit reachable from a branch, newest first."""
        heads = list(dict.fromkeys(self.branches().values()))
        for cid in graph.walk(heads, self.parents, self._timestamp):
            yield self.commit(cid)

    # -- weights ----------------------------------------------------------------------------------------

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
                base = cached[0]
                break
            commit = self.commit(cursor)
            chain.append(commit)
            if commit.payload.codec in ("full-v1", pieces.CODEC):
                break
            if not commit.parents:
                raise IntegrityError(f"commit {short(cursor)} has a delta payload but no parent", commit=cursor)
            cursor = commit.parents[0]
        from ..tensors.safetensors_io import LazyState, layout_of

        for commit in reversed(chain):
            if commit.payload.codec == pieces.CODEC:
                header, snapshot = self._snapshot(commit)
                base = dict(LazyState(header, snapshot.readinto))
            else:
                base = decode_payload(commit.payload.codec, self._payload(commit), base,
                                      self.record.layout if base is None else layout_of(base))
        assert base is not None
        self._remember(cid, base)
        return base

    def checkout(self, cid: CommitId, path: Path, *, shard_bytes: int | None = None) -> int:
        """Write commit ``cid``'s weights to ``path`` as a safetensors file, atomically and private to this user;
        returns its bytes. A ``snapshot-v1`` commit streams piece by piece, checked on the way (``_snapshot``).

        With ``shard_bytes``, ``path`` is a folder, and the weights are written there as a Hugging Face sharded
        checkpoint: shards of at most that many bytes of tensors each, then ``model.safetensors.index.json``."""
        if shard_bytes is not None:
            return self._checkout_shards(cid, path, shard_bytes)
        commit = self.commit(cid)
        if commit.payload.codec != pieces.CODEC:
            from ..tensors.safetensors_io import save_bytes

            data = save_bytes(self.materialize(cid))
            atomic_write(path, data, mode=0o600)
            return len(data)
        header, snapshot = self._snapshot(commit)
        with atomic_writer(path, mode=0o600) as out:
            for piece in snapshot.pieces():
                out.write(piece)
        return header.size

    def _checkout_shards(self, cid: CommitId, folder: Path, shard_bytes: int) -> int:
        commit = self.commit(cid)
        if commit.payload.codec == pieces.CODEC:
            header, snapshot = self._snapshot(commit)

            def read(entry: Entry, offset: int, size: int) -> bytes:
                return snapshot.read(header.data_start + entry.begin + offset, size)

            source = Source(header, read)
        else:
            from ..tensors.safetensors_io import state_source

            source = state_source(self.materialize(cid))
        return write_shards(source, folder, shard_bytes)

    def verify(self, cid: CommitId) -> None:
        """Read commit ``cid``'s weights through, checking every block and piece and their layout (``fsck``): a
        ``snapshot-v1`` commit a piece at a time, any other materialized."""
        commit = self.commit(cid)
        if commit.payload.codec != pieces.CODEC:
            self.materialize(cid)
            return
        _, snapshot = self._snapshot(commit)
        for _ in snapshot.pieces():
            pass

    def weights(self, cid: CommitId) -> Mapping[str, torch.Tensor]:
        """The weights of commit ``cid`` as a mapping that reads each tensor when it is asked for, and holds none
        (a ``snapshot-v1`` commit's; any other is materialized): what merges and diffs go through, one tensor at
        a time, so their memory follows the largest tensor rather than the model."""
        commit = self.commit(cid)
        if commit.payload.codec != pieces.CODEC:
            return self.materialize(cid)
        from ..tensors.safetensors_io import LazyState

        with self._lock:
            cached = self._states.get(cid)
        if cached is not None:
            return cached[0]
        header, snapshot = self._snapshot(commit)
        epoch = commit.payload.key_epoch  # equal leaves under one key are equal bytes

        def identify(start: int, stop: int) -> Hashable:
            return epoch, snapshot.span(start, stop)

        return LazyState(header, snapshot.readinto, identify)

    def layout(self, cid: CommitId) -> tuple[TensorSpec, ...]:
        """The specs of commit ``cid``'s tensors, sorted by name: a ``snapshot-v1`` commit's own (its header's,
        read without its tensors), any other the repository's first layout, which those codecs keep."""
        commit = self.commit(cid)
        if commit.payload.codec != pieces.CODEC:
            return self.record.layout
        return self._snapshot(commit)[0].layout()

    def _snapshot(self, commit: Commit) -> tuple[Header, pieces.Snapshot]:
        """A ``snapshot-v1`` payload, to read by ranges, and its checked header (the file's size exactly). Its
        tensors are whatever its author committed: a commit may add, remove or reshape tensors."""
        what = f"payload of commit {short(commit.id)}"
        cipher = self.keys.pieces(epoch=commit.payload.key_epoch, codec=commit.payload.codec)
        snapshot = pieces.Snapshot(self.blocks, cipher, commit.payload.cid, commit.payload.size, what)
        if not snapshot.header.entries:
            raise IntegrityError(f"{what} holds no tensors", commit=commit.id)
        return snapshot.header, snapshot

    def _payload(self, commit: Commit) -> bytes:
        """The commit's decrypted payload, every block re-hashed against its CID on the way."""
        data = unixfs.cat(self.blocks, commit.payload.cid, max_size=commit.payload.size)
        if len(data) != commit.payload.size:
            raise IntegrityError(f"payload {commit.payload.cid} has {len(data)} bytes, its commit says "
                                 f"{commit.payload.size}", cid=commit.payload.cid)
        return self.keys.decrypt(data, epoch=commit.payload.key_epoch, codec=commit.payload.codec)

    def _remember(self, cid: CommitId, state: StateDict) -> None:
        size = sum(t.nbytes for t in state.values())
        with self._lock:
            self._states.pop(cid, None)
            if size > _CACHE_BYTES:
                return
            self._states[cid] = (state, size)
            while sum(held for _, held in self._states.values()) > _CACHE_BYTES:
                self._states.popitem(last=False)

    def diff(self, a: CommitId, b: CommitId) -> list[dict[str, Any]]:
        """Per tensor, how ``b`` differs from ``a`` (``tensors.diff``), one tensor of each at a time."""
        from ..tensors.diff import tensor_diff

        return tensor_diff(self.weights(a), self.weights(b))


def write_file(source: Source, path: Path) -> int:
    """Write ``source`` (read tensor by tensor) to ``path`` as one safetensors file, atomically and private to
    this user; returns its bytes."""
    with atomic_writer(path, mode=0o600) as out:
        out.write(source.header.raw)
        for entry in source.header.entries:
            for part in source.parts(entry, pieces.PIECE):
                out.write(part)
    return source.header.size


def write_shards(source: Source, folder: Path, shard_bytes: int) -> int:
    """Write ``source`` to ``folder`` as a Hugging Face sharded checkpoint: shards of at most ``shard_bytes`` bytes
    of tensors each, then ``model.safetensors.index.json``; returns the bytes written."""
    plan = shard_plan(source.header, shard_bytes)
    if len(plan) > MAX_SHARDS:
        raise InvalidInput(f"shards of {shard_bytes} bytes would make {len(plan)} files, more than {MAX_SHARDS}: "
                           "pick a larger shard size")
    names = [f"model-{i:05d}-of-{len(plan):05d}.safetensors" for i in range(1, len(plan) + 1)]
    written = 0
    for name, entries in zip(names, plan, strict=True):
        shard = canonical(e.spec for e in entries)
        with atomic_writer(folder / name, mode=0o600) as out:
            out.write(shard.raw)
            for entry in entries:  # the shard's own order too (a run of the canonical order)
                for part in source.parts(entry, pieces.PIECE):
                    out.write(part)
        written += shard.size
    index = {"metadata": {"total_size": source.header.size - source.header.data_start},
             "weight_map": {e.name: name for name, entries in zip(names, plan, strict=True) for e in entries}}
    data = json.dumps(index, indent=2, sort_keys=True).encode() + b"\n"
    atomic_write(folder / INDEX_NAME, data, mode=0o600)
    return written + len(data)
