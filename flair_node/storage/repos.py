"""All repositories of one node: where their refs live, and finding one by id, id prefix or name; on the owner's
node, rotating the payload key of those where an expired member still holds it (``rotate_expired``)."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from ..core.errors import AlreadyExists, FlairError, InvalidInput, RepositoryNotFound
from ..core.identity import Identity
from ..core.ids import Cid, RepoId, is_full_id, short
from ..core.membership import MembershipChange
from ..core.objects import AdapterSpec, RepositoryRecord
from ..core.round_messages import Masked
from ..core.round_rules import MAX_SRS_BYTES
from . import adapters, clock, unixfs
from .atomic import make_dirs, resource_errors
from .ingest import check_ownership_offline
from .repo import Repository
from .round_messages import live_rounds
from .secure_pending import PendingContributions
from .stores import DiskObjectStore, DiskRefStore, MemoryObjectStore, MemoryRefStore, ObjectStore, RefStore
from .unixfs import BlockStore

if TYPE_CHECKING:  # not at run time: that would import torch (see storage.history)
    from ..tensors.lora import LoraAdapter
    from ..tensors.safetensors_file import Source
    from ..tensors.safetensors_io import StateDict

log = logging.getLogger(__name__)

OUTBOX_SIZE = 100_000  # records waiting to be announced; older ones are dropped (peers catch up by pulling)


class Outgoing(NamedTuple):
    """A record signed and stored here, waiting to be announced; ``queued_ms``: when it was handed over."""

    repo: RepoId
    kind: str
    record_id: str
    record: bytes
    queued_ms: int


class RefBackend(Protocol):
    def refs_for(self, repo_id: RepoId) -> RefStore: ...
    def repo_ids(self) -> list[RepoId]: ...


class MemoryRefBackend:
    def __init__(self) -> None:
        self._stores: dict[RepoId, MemoryRefStore] = {}

    def refs_for(self, repo_id: RepoId) -> RefStore:
        return self._stores.setdefault(repo_id, MemoryRefStore())

    def repo_ids(self) -> list[RepoId]:
        return sorted(self._stores)


class DiskRefBackend:
    def __init__(self, root: Path) -> None:
        self.root = root
        make_dirs(root)

    def refs_for(self, repo_id: RepoId) -> RefStore:
        return DiskRefStore(self.root / repo_id / "refs")

    def repo_ids(self) -> list[RepoId]:
        with resource_errors(self.root):
            names = os.listdir(self.root)
        return sorted(RepoId(d) for d in names if is_full_id(d))


class RepoSet:
    """The repositories one node keeps, opened once each and shared by every caller."""

    def __init__(self, identity: Identity, objects: ObjectStore, blocks: ObjectStore, refs: RefBackend, *,
                 pending: PendingContributions | None = None) -> None:
        self.identity = identity
        #: This node's own secure contributions while their rounds run (never shared).
        self.pending = pending or PendingContributions(None)
        self.objects = objects
        self.blocks = BlockStore(blocks)
        self._write_lock = threading.Lock()  # shared by every repository's commits and by gc
        self._refs = refs
        self._open: dict[RepoId, Repository] = {}
        self._broken: set[RepoId] = set()  # repositories all() left out, logged once each
        self._lock = threading.Lock()
        #: Every record signed on this node, oldest first: the daemon gossips them. Appended from worker threads,
        #: drained by the daemon (deque's append and popleft are atomic).
        self.outbox: deque[Outgoing] = deque(maxlen=OUTBOX_SIZE)
        #: More roots gc keeps, as (CID, most bytes) from each callable: files a service published (the daemon's).
        self.pins: list[Callable[[], Iterable[tuple[str, int]]]] = []
        #: How every repository here checks a peer's token change or handover before applying it (``Repository``'s
        #: ``check_ownership``): by the records alone, until the daemon's chain service replaces it.
        self.check_ownership: Callable[[Repository, MembershipChange], None] = check_ownership_offline

    @classmethod
    def in_memory(cls, identity: Identity) -> RepoSet:
        return cls(identity, MemoryObjectStore(), MemoryObjectStore(), MemoryRefBackend())

    @classmethod
    def on_disk(cls, home: Path, identity: Identity) -> RepoSet:
        return cls(identity, DiskObjectStore(home / "objects"), DiskObjectStore(home / "blocks"),
                   DiskRefBackend(home / "repos"), pending=PendingContributions(home / "secure"))

    def create(self, name: str, state: StateDict | Source, *, adapter: AdapterSpec | None = None) -> Repository:
        """A new repository owned by this node's identity, its commit 0 ``state`` (``Repository.create``)."""
        if any(r.name == name for r in self.all()):
            raise AlreadyExists(f"a repository named {name!r} exists already here: pick another name", name=name)
        repo = Repository.create(self.objects, self.blocks, self._refs.refs_for, self.identity, name, state,
                                 write_lock=self._write_lock, adapter=adapter)
        self._announcing(repo)
        main = repo.branch_move("main")
        assert main is not None
        root = repo.commit(main.commit)
        self.outbox.extend([Outgoing(repo.id, "commit", root.id, root.encode(), clock.now_ms()),
                            Outgoing(repo.id, "move", main.id, main.encode(), clock.now_ms())])
        with self._lock:
            self._open[repo.id] = repo
        return repo

    def create_adapter(self, name: str, adapter: LoraAdapter, base_repo: str, base_commit: str | None = None, *,
                       rank: int | None = None, max_rank: int | None = None) -> Repository:
        """A new repository of LoRA adapters (``storage.adapters``) whose commit 0 is ``adapter``, on the base model
        at ``base_commit`` (default: main's head) of repository ``base_repo`` (held here, its weights readable
        here): ``InvalidInput`` unless the adapter fits that model. Merges stack adapters up to rank ``max_rank``
        (default ``lora.DEFAULT_MAX_STACK_RANK``) and re-compress to ``rank`` (default the adapter's) above it."""
        from ..tensors.lora import DEFAULT_MAX_STACK_RANK, adapter_config, adapter_tensors

        base = self.open(base_repo)
        commit = base.resolve(base_commit) if base_commit else base.head("main")
        adapters.check_base(adapter, base.layout(commit),
                            fan_in_fan_out=bool(adapter.config.get("fan_in_fan_out", False)))
        config = json.dumps(adapter_config(adapter), sort_keys=True, separators=(",", ":"), allow_nan=False)
        rank = rank or adapter.rank
        spec = AdapterSpec(base.id, commit, config, rank, max_rank or max(DEFAULT_MAX_STACK_RANK, rank))
        return self.create(name, adapter_tensors(adapter), adapter=spec)

    def _announcing(self, repo: Repository) -> Repository:
        repo.announce = lambda kind, record_id, record: self.outbox.append(
            Outgoing(repo.id, kind, record_id, record, clock.now_ms()))
        repo.check_ownership = lambda r, change: self.check_ownership(r, change)
        return repo

    def adopt(self, record: RepositoryRecord) -> Repository:
        """The repository of ``record`` (checked by the caller against the id it asked for), created here if this
        node did not keep it yet: how a clone starts."""
        with self._lock:
            opened = self._open.get(record.id)
        if opened is not None:
            return opened
        record.verify()
        self.objects.put(record.id, record.encode())
        self._refs.refs_for(record.id)
        return self._open_id(record.id)

    def ids(self) -> list[RepoId]:
        """The ids of the repositories kept here."""
        return list(self._refs.repo_ids())

    def open_id(self, repo_id: RepoId) -> Repository:
        """The repository with exactly this id (no prefixes, no names: for peers)."""
        with self._lock:
            opened = self._open.get(repo_id)
        if opened is not None:
            return opened
        if repo_id not in self._refs.repo_ids():
            raise RepositoryNotFound(f"repository {short(repo_id)} is not kept on this node", repo=repo_id)
        return self._open_id(repo_id)

    def all(self) -> list[Repository]:
        """Every repository here that opens; a broken one (a folder whose record is missing or damaged) is left
        out and logged once, so one damaged folder never stops the services that walk them all."""
        opened = []
        for rid in self._refs.repo_ids():
            try:
                opened.append(self.open(rid))
            except FlairError as exc:
                if rid not in self._broken:
                    self._broken.add(rid)
                    log.warning("repository %s cannot be opened and is left out: %s",
                                short(rid), exc)
        return opened

    def open(self, key: str) -> Repository:
        """The repository with id ``key``, an unambiguous id prefix, or the name ``key``."""
        with self._lock:
            opened = self._open.get(RepoId(key))
        if opened is not None:
            return opened
        ids = self._refs.repo_ids()
        matches = [rid for rid in ids if rid == key] or [rid for rid in ids if len(key) >= 4 and rid.startswith(key)]
        if not matches:
            matches = [rid for rid in ids if self._open_id(rid).name == key]
        if not matches:
            raise RepositoryNotFound(f"no repository {key!r} on this node (see `flair repos`)", repo=key)
        if len(matches) > 1:
            raise InvalidInput(f"{key!r} names several repositories: {', '.join(short(m) for m in matches)}",
                               repo=key)
        return self._open_id(matches[0])

    def _open_id(self, rid: RepoId) -> Repository:
        with self._lock:
            repo = self._open.get(rid)
            if repo is None:
                repo = self._announcing(Repository.open(rid, self.objects, self.blocks, self._refs.refs_for(rid),
                                                  reader=self.identity, write_lock=self._write_lock))
                self._open[rid] = repo
            return repo

    def rotate_expired(self) -> list[RepoId]:
        """On the owner's node: rotate the payload key of each repository this node owns in which a member whose
        role has expired still holds the current key (``Repository.rotate_if_expired``: how an expiry stops reads);
        the ids of those rotated. The daemon calls it periodically; a repository that fails is logged and left
        for the next call, and the others still go."""
        rotated = []
        for repo in self.all():
            try:
                if repo.rotate_if_expired(self.identity) is not None:
                    rotated.append(repo.id)
            except FlairError as exc:
                log.warning("could not rotate the payload key of %s: %s", short(repo.id), exc)
        return rotated

    def pinned(self) -> set[str]:
        """Digests of every block reachable from a commit of a local repository, from the SRS its policy names,
        from the proofs of its round merges (when stored here), from the masked updates of its live secure rounds
        (``round_messages.live_rounds``), and from ``pins``: what ``gc`` keeps."""
        keys: set[str] = set()
        for repo in self.all():
            for commit in repo.commits():
                keys |= unixfs.block_keys(self.blocks, commit.payload.cid, max_size=commit.payload.size)
            srs = Cid(repo.members.current().policy.proof_srs)
            if srs and self.blocks.has(srs):
                keys |= unixfs.block_keys(self.blocks, srs, max_size=MAX_SRS_BYTES)
            for commit in repo.commits():
                proof = repo.merges.proof(commit.id) if commit.kind == "round" else None
                if proof is not None and self.blocks.has(proof.proofs):
                    keys |= unixfs.block_keys(self.blocks, proof.proofs, max_size=proof.size)
            for branch, opened in live_rounds(repo):  # the masked updates of live secure rounds
                for message in repo.secure.of_round(repo.id, branch, opened, "masked"):
                    masked = message.content
                    for cid, size in masked.files() if isinstance(masked, Masked) else []:
                        if self.blocks.has(cid):
                            keys |= unixfs.block_keys(self.blocks, cid, max_size=size)
        for roots in self.pins:
            for root, size in roots():
                cid = Cid(root)
                if self.blocks.has(cid):
                    keys |= unixfs.block_keys(self.blocks, cid, max_size=size)
        return keys

    def gc(self) -> tuple[int, int]:
        """Delete every unpinned block; returns (blocks kept, blocks removed)."""
        with self._write_lock:
            pinned = self.pinned()
            unpinned = [key for key in self.blocks.keys() if key not in pinned]
            for key in unpinned:
                self.blocks.delete_key(key)
        return len(pinned), len(unpinned)
