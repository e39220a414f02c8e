"""Catch-up: a node asks a peer for what it lacks of a repository, and checks everything before storing it.

A peer answers two questions, to current members of the repository only (roles judged at the time of asking, so
a removal or an expiry stops reads from then on): ``heads`` (the repository record, the id of the last membership
change, every branch's latest move, the proof records of recent round merges, the ids of the messages of each
branch's secure round and of the one its head merged) and ``records`` (records by id, at
most ``MAX_IDS`` a request and 1 MiB a reply). Payloads come as blocks (Bitswap), never inside a reply. A node's
peer id is its transport key, not its member key, so each request carries the asker's claim (``as``): its member
key and its signature of the repository id and both peer ids, good for that one pair of peers (``claim``,
``claimed``). An asker tells its member key only to the peers it asks: members it recognised by their cards
(``protocol.hello``), or the peer a user named (``flair clone``, ``flair pull``).

``pull`` asks until this node holds what the peer showed it, in the order checks need: the membership chain first
(it decides who may do what), then commits parents first, then the branch moves (``Ingest.accept_move``: the same
total order on every node, so nodes that pulled from each other agree on every head), then proof records and anchor
records (``Ingest.accept_anchor``); the messages of secure rounds come before the moves (a secure merge is checked
against them), each checked before a masked update's blocks are fetched (``Ingest.accept_round_message``). Nothing a
record names is requested before the record is checked: a commit's signature, repository, key epoch, date and its
author's role at its time (``Ingest.check_commit``, as ``announce.check`` judges gossip) come before its payload is
fetched (within the size it declares, see ``storage.unixfs.Bounds``) and the record accepted
(``Ingest.accept_commit``); a proof record is checked to be signed by its merge's author before its proofs are
fetched (``Ingest.check_proof``); the SRS fetched is the one the owner-signed policy names, within
``MAX_SRS_BYTES``. A record that fails is refused, with everything built on it, without a block of it requested, and
the rest still arrives. Everything a peer sends is decoded by the bounded decoders of ``core.encoding``; a malformed
reply is a ``RemoteError``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import trio

from ..core import encoding, schema
from ..core.errors import FlairError, Forbidden, IntegrityError, InvalidInput, NotFound, RemoteError
from ..core.identity import Identity, verify
from ..core.ids import Cid, CommitId, PublicKey, RepoId, is_full_id, sha256_hex, short
from ..core.membership import MembershipChange
from ..core.objects import AnchorClaim, Commit, ProofRecord, RepositoryRecord
from ..core.refs import BranchMove
from ..core.round_rules import MAX_SRS_BYTES
from ..network import rpc
from ..network.bitswap import BlockExchange, Connect
from ..network.host import Host, Peer
from ..storage.clock import now_ms
from ..storage.members import MAX_CHANGES
from ..storage.repo import Repository
from ..storage.repos import RepoSet
from ..storage.round_messages import live_rounds
from . import rounds
from .rounds import RoundMemory

log = logging.getLogger(__name__)
T = TypeVar("T")

PROTOCOL = "/flair/sync/1.0.0"
MAX_IDS = 256
MAX_BRANCHES = 1024
MAX_REPLY_BYTES = 900_000  # records per reply, below the 1 MiB frame with room for the envelope
MAX_PROOFS = 64  # proof records in one heads reply
MAX_SECURE = 8192  # secure round message ids in one heads reply: two rounds' worth (``storage.round_messages``)
RECENT_MERGES = 16  # commits back from each branch head whose proofs a heads reply carries
MAX_COMMITS = 1_000_000  # one pull; a longer history arrives over several


def claim(identity: Identity, repo: RepoId, asker: str, server: str) -> dict[str, Any]:
    """``identity``'s claim, as peer ``asker``, to be a member of ``repo`` when it asks peer ``server``."""
    return {"key": identity.public_key, "sig": identity.sign(_claimed_statement(repo, asker, server))}


def claimed(request: Any, asker: str, server: str) -> PublicKey | None:
    """The member key ``request``'s claim proves peer ``asker`` holds, asking ``server``; None if it has none
    or it does not verify."""
    made = request.get("as") if isinstance(request, dict) else None
    repo = request.get("repo") if isinstance(request, dict) else None
    if not (isinstance(made, dict) and isinstance(made.get("key"), str) and isinstance(made.get("sig"), bytes)
            and isinstance(repo, str)):
        return None
    try:
        verify(PublicKey(made["key"]), _claimed_statement(RepoId(repo), asker, server), made["sig"])
    except (IntegrityError, InvalidInput):
        return None
    return PublicKey(made["key"])


def _claimed_statement(repo: RepoId, asker: str, server: str) -> bytes:
    return f"flair/sync/1\0{repo}\0{asker}\0{server}".encode()


def serve(host: Host, repos: RepoSet, **options: Any) -> rpc.Served:
    """Answer sync requests on ``host`` from ``repos`` (``options``: ``rpc.serve``'s)."""
    return rpc.serve(host, PROTOCOL, SyncServer(repos, me=str(host.get_id())).on_request, **options)


class SyncServer:
    """Answers ``heads`` and ``records`` from this node's repositories, to their members as of ``clock()`` (ms);
    ``me`` is this node's peer id (claims name it)."""

    def __init__(self, repos: RepoSet, *, clock: Callable[[], int] = now_ms, me: str = "") -> None:
        self.repos = repos
        self.clock = clock
        self.me = me

    async def on_request(self, peer: str, request: Any) -> Any:
        """A request from peer ``peer`` as it came off the wire: its asker is whoever its claim proves."""
        return await self.handle(claimed(request, peer, self.me), request)

    async def handle(self, asker: PublicKey | None, request: Any) -> Any:
        if not isinstance(request, dict) or request.get("op") not in ("heads", "records"):
            raise InvalidInput("a sync request is {op: heads | records, repo, [ids]}")
        repo_id = request.get("repo")
        if not isinstance(repo_id, str) or not is_full_id(repo_id):
            raise InvalidInput("a sync request names a repository by its full id")
        ids = request.get("ids", [])
        if request["op"] == "records" and (not isinstance(ids, list) or len(ids) > MAX_IDS
                                           or not all(isinstance(i, str) and is_full_id(i) for i in ids)):
            raise InvalidInput(f"records asks for at most {MAX_IDS} full ids")
        return await trio.to_thread.run_sync(self._answer, asker, request["op"], RepoId(repo_id), ids)

    def _answer(self, asker: PublicKey | None, op: str, repo_id: RepoId, ids: list[str]) -> Any:
        repo = self.repos.open_id(repo_id)
        membership = repo.members.current()
        if asker is None or membership.role(asker, epoch=membership.epoch, at_ms=self.clock()) is None:
            raise Forbidden(f"repository {short(repo_id)} shares its history with its members only (a removed "
                            "member or one whose role has expired is none)")
        if op == "heads":
            moves = [repo.move(mid) for mid in list(repo.refs.all().values())[:MAX_BRANCHES]]
            return {"record": repo.record.encode(), "members": membership.head, "moves": [m.encode() for m in moves],
                    "proofs": [p.encode() for p in _recent(repo, moves, repo.merges.proof)],
                    "anchors": [a.encode() for a in _recent(repo, moves, repo.merges.anchor)],
                    "secure": _secure_ids(repo)}
        records, size = [], 0
        for rid in ids:
            if not repo.objects.has(rid):
                continue
            data = repo.objects.get(rid)
            if size + len(data) > MAX_REPLY_BYTES:
                break  # the asker asks again for the rest
            records.append(data)
            size += len(data)
        return {"records": records}


class Source(Protocol):
    """Where ``pull`` gets a repository's records and payloads: a peer, or (in tests) another node's stores."""

    async def heads(self, repo: RepoId) -> Any: ...
    async def records(self, repo: RepoId, ids: list[str]) -> list[bytes]: ...
    async def blocks(self, cid: Cid, max_size: int) -> None: ...


class PeerSource:
    """A member's node over libp2p: records by request and reply, each claiming ``identity``'s membership,
    payloads over Bitswap. ``holders()``, if given, names the peers to ask for payloads, in order (``peer``
    among them or not): blocks are what their CIDs name, so any member holding them will do, and the next is
    asked for the rest when one fails (``BlockExchange.fetch_from_any``). ``connect``, if given, dials a holder
    no longer connected before it is asked again (a relayed one through its relay)."""

    def __init__(self, host: Host, peer: Peer, exchange: BlockExchange, identity: Identity, *,
                 holders: Callable[[], Sequence[Peer]] | None = None, connect: Connect | None = None) -> None:
        self.host, self.peer, self.exchange, self.identity = host, peer, exchange, identity
        self.holders = holders or (lambda: [peer])
        self.connect = connect

    def _as(self, repo: RepoId) -> dict[str, Any]:
        return claim(self.identity, repo, str(self.host.get_id()), str(self.peer))

    async def heads(self, repo: RepoId) -> Any:
        return await rpc.request(self.host, self.peer, PROTOCOL, {"op": "heads", "repo": repo, "as": self._as(repo)})

    async def records(self, repo: RepoId, ids: list[str]) -> list[bytes]:
        reply = await rpc.request(self.host, self.peer, PROTOCOL,
                                  {"op": "records", "repo": repo, "ids": ids, "as": self._as(repo)})
        records = reply.get("records") if isinstance(reply, dict) else None
        if not isinstance(records, list):
            raise RemoteError(f"peer {self.peer} sent a malformed records reply")
        return records

    async def blocks(self, cid: Cid, max_size: int) -> None:
        await self.exchange.fetch_from_any(cid, self.holders, max_size=max_size, connect=self.connect)


@dataclass
class PullResult:
    changes: int = 0
    commits: int = 0
    proofs: int = 0
    anchors: int = 0
    secure: int = 0  # secure round messages
    moved: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # record id -> why
    refused_merges: list[tuple[BranchMove, str]] = field(default_factory=list)  # moves to a round merge, and why

    def then(self, later: PullResult) -> PullResult:
        """What this pass and a ``later`` one brought together."""
        return PullResult(self.changes + later.changes, self.commits + later.commits, self.proofs + later.proofs,
                          self.anchors + later.anchors, self.secure + later.secure,
                          [*self.moved, *(b for b in later.moved if b not in self.moved)],
                          {**self.refused, **later.refused}, [*self.refused_merges, *later.refused_merges])

    def json(self) -> dict[str, Any]:
        return {"changes": self.changes, "commits": self.commits, "proofs": self.proofs, "anchors": self.anchors,
                "secure": self.secure, "moved": self.moved, "refused": self.refused}


async def pull(repos: RepoSet, repo_id: RepoId, source: Source, *, memory: RoundMemory) -> PullResult:
    """Bring this node's copy of ``repo_id`` up to what ``source`` holds (creating it: a clone); round merges are
    noted and checked in the node's round ``memory``."""
    heads = await source.heads(repo_id)
    if not isinstance(heads, dict) or not {"record", "members", "moves"} <= heads.keys():
        raise RemoteError("a heads reply needs record, members and moves")
    record = RepositoryRecord.decode(_bytes(heads["record"]))
    record.verify(repo_id)
    repo = await trio.to_thread.run_sync(repos.adopt, record)
    result = PullResult()
    result.changes = await _pull_membership(repo, heads["members"], source)
    srs = repo.members.current().policy.proof_srs
    if srs:  # the SRS the policy names: proofs and KZG commitments need the file itself
        try:
            await source.blocks(Cid(srs), MAX_SRS_BYTES)
        except FlairError as exc:
            log.warning("could not fetch the SRS %s of %s: %s", srs, short(repo_id), exc)
    if not isinstance(heads["moves"], list) or len(heads["moves"]) > MAX_BRANCHES:
        raise RemoteError(f"a heads reply holds at most {MAX_BRANCHES} branch moves")
    moves = [BranchMove.decode(_bytes(m)) for m in heads["moves"]]
    commits = await _fetch_commits(repo, [m.commit for m in moves], source)
    for commit in commits:  # a peer's merge of a round: this node holds its own while it is checked
        if commit.kind == "round":
            await trio.to_thread.run_sync(partial(rounds.note_merge, repo, commit, memory=memory))
    for commit in commits:
        if any(p in result.refused for p in commit.parents):
            result.refused[commit.id] = "built on a refused commit"
            continue
        try:
            await trio.to_thread.run_sync(repo.ingest.check_commit, commit)  # before a block of it is asked for
            await source.blocks(commit.payload.cid, commit.payload.size)
            if await trio.to_thread.run_sync(repo.ingest.accept_commit, commit):
                result.commits += 1
        except (Forbidden, IntegrityError) as exc:
            log.debug("refused commit %s of %s: %s", short(commit.id), short(repo_id), exc)
            result.refused[commit.id] = str(exc)
    result.secure = await _pull_secure(repo, heads.get("secure", []), source, result)  # a secure merge's inputs
    for move in moves:
        if move.commit in result.refused:
            result.refused[move.id] = f"moves {move.branch} to a refused commit"
            continue
        try:
            await trio.to_thread.run_sync(partial(rounds.check_move, repo, move, memory=memory))
        except IntegrityError as exc:  # a forged or unentitled round merge: the branch stays where it is
            log.debug("refused move of %s in %s: %s", move.branch, short(repo_id), exc)
            result.refused[move.id] = str(exc)
            result.refused_merges.append((move, str(exc)))
            continue
        try:
            if await trio.to_thread.run_sync(repo.ingest.accept_move, move):
                result.moved.append(move.branch)
        except (Forbidden, IntegrityError) as exc:
            log.debug("refused move of %s in %s: %s", move.branch, short(repo_id), exc)
            result.refused[move.id] = str(exc)
    proofs = heads.get("proofs", [])
    if not isinstance(proofs, list) or len(proofs) > MAX_PROOFS:
        raise RemoteError(f"a heads reply holds at most {MAX_PROOFS} proof records")
    for data in proofs:
        proof = ProofRecord.decode(_bytes(data))
        if repo.objects.has(proof.id) or not repo.objects.has(proof.commit) or repo.merges.proof(proof.commit):
            continue  # held, about a merge not taken here, or a merge proven already
        try:
            await trio.to_thread.run_sync(repo.ingest.check_proof, proof)  # before fetching what it names
            await source.blocks(proof.proofs, proof.size)
            result.proofs += await trio.to_thread.run_sync(repo.ingest.accept_proof, proof)
        except (Forbidden, IntegrityError, NotFound) as exc:
            log.debug("refused proof record %s of %s: %s", short(proof.id), short(repo_id), exc)
            result.refused[proof.id] = str(exc)
    anchors = heads.get("anchors", [])
    if not isinstance(anchors, list) or len(anchors) > MAX_PROOFS:
        raise RemoteError(f"a heads reply holds at most {MAX_PROOFS} anchor records")
    for data in anchors:
        claim = AnchorClaim.decode(_bytes(data))
        if repo.objects.has(claim.id) or not repo.objects.has(claim.commit) or repo.merges.anchor(claim.commit):
            continue
        try:
            result.anchors += await trio.to_thread.run_sync(repo.ingest.accept_anchor, claim)
        except (Forbidden, IntegrityError) as exc:
            log.debug("refused anchor record %s of %s: %s", short(claim.id), short(repo_id), exc)
            result.refused[claim.id] = str(exc)
    return result


def _secure_ids(repo: Repository) -> list[str]:
    """The ids of the messages of the secure rounds a node keeps (``round_messages.live_rounds``), at most
    ``MAX_SECURE``."""
    ids: list[str] = []
    for branch, opened in live_rounds(repo):
        ids += repo.secure.ids(branch, opened)[:MAX_SECURE - len(ids)]
    return ids


async def _pull_secure(repo: Repository, ids: Any, source: Source, result: PullResult) -> int:
    """Fetch the secure round messages of ``ids`` this node lacks, each checked before the blocks of a masked
    update are fetched (``Ingest.check_round_message``); returns how many were kept."""
    from ..core.round_messages import Masked, RoundMessage

    if not isinstance(ids, list) or len(ids) > MAX_SECURE or not all(isinstance(i, str) and is_full_id(i)
                                                                     for i in ids):
        raise RemoteError(f"a heads reply lists at most {MAX_SECURE} secure round messages by id")
    missing = [i for i in dict.fromkeys(ids) if not repo.secure.has(i)]
    kept = 0
    for start in range(0, len(missing), MAX_IDS):
        for data in await _records(source, repo.id, missing[start:start + MAX_IDS]):
            message = RoundMessage.decode(data)
            try:
                if not await trio.to_thread.run_sync(repo.ingest.check_round_message, message):
                    continue
                if isinstance(message.content, Masked):
                    for cid, size in message.content.files():
                        await source.blocks(cid, size)
                kept += await trio.to_thread.run_sync(repo.ingest.accept_round_message, message)
            except (IntegrityError, NotFound) as exc:
                log.debug("refused secure round message %s of %s: %s", short(message.id), short(repo.id), exc)
                result.refused[message.id] = str(exc)
    return kept


def _recent(repo: Repository, moves: list[BranchMove], find: Callable[[CommitId], T | None]) -> list[T]:
    """The records ``find`` gives for the latest round merges on each branch (``RECENT_MERGES`` commits back):
    proof or anchor records, for a peer to catch up with (at most ``MAX_PROOFS``)."""
    found: list[T] = []
    for move in moves:
        cursor: str | None = move.commit
        for _ in range(RECENT_MERGES):
            if cursor is None or len(found) >= MAX_PROOFS:
                break
            commit = repo.commit(CommitId(cursor))
            record = find(commit.id) if commit.kind == "round" else None
            if record is not None:
                found.append(record)
            cursor = commit.parents[0] if commit.parents else None
    return found


async def _pull_membership(repo: Repository, head: Any, source: Source) -> int:
    """Fetch the membership changes after the last one held here, and apply them in order."""
    if not isinstance(head, str) or not is_full_id(head):
        raise RemoteError("a heads reply names its last membership change by id")
    chain: list[MembershipChange] = []
    cursor = head
    while cursor != repo.id and not await trio.to_thread.run_sync(repo.members.contains, cursor):
        if len(chain) >= MAX_CHANGES:
            raise IntegrityError(f"membership chain of {short(repo.id)} is longer than {MAX_CHANGES}")
        (data,) = await _records(source, repo.id, [cursor])
        change = MembershipChange.decode(data)
        change.verify(cursor)
        chain.append(change)
        cursor = change.previous
    for change in reversed(chain):
        await trio.to_thread.run_sync(repo.ingest.accept_membership, change)
    return len(chain)


async def _fetch_commits(repo: Repository, heads: list[CommitId], source: Source) -> list[Commit]:
    """The commit records behind ``heads`` that this node lacks, parents before children."""
    fetched: dict[CommitId, Commit] = {}
    frontier = list(dict.fromkeys(c for c in heads if not repo.objects.has(c)))
    while frontier:
        if len(fetched) + len(frontier) > MAX_COMMITS:
            raise RemoteError(f"more than {MAX_COMMITS} commits to fetch in one pull")
        batch, frontier = frontier[:MAX_IDS], frontier[MAX_IDS:]
        for data in await _records(source, repo.id, batch):
            commit = Commit.decode(data)
            fetched[commit.id] = commit
            frontier.extend(p for p in commit.parents
                            if p not in fetched and p not in frontier and not repo.objects.has(p))
    order: list[Commit] = []
    placed: set[CommitId] = set()
    for cid in fetched:  # depth-first, parents first (iteratively: histories can be long)
        stack = [(cid, False)]
        while stack:
            at, expanded = stack.pop()
            if at in placed or at not in fetched:
                continue
            if expanded:
                placed.add(at)
                order.append(fetched[at])
            else:
                stack.append((at, True))
                stack.extend((p, False) for p in fetched[at].parents if p not in placed)
    return order


async def _records(source: Source, repo: RepoId, ids: Sequence[str]) -> list[bytes]:
    """Exactly the records ``ids`` (asking again for what a reply left out), each checked to be the one asked."""
    out: dict[str, bytes] = {}
    missing = list(ids)
    while missing:
        got = await source.records(repo, missing)
        if not isinstance(got, list) or not got:
            raise RemoteError(f"the peer does not have record {short(missing[0])} of repository {short(repo)}")
        for data in got:
            rid = _record_id(_bytes(data))
            if rid not in missing:
                raise RemoteError(f"the peer sent record {short(rid)}, which was not asked for")
            out[rid] = data
        missing = [i for i in missing if i not in out]
    return [out[i] for i in ids]


def _record_id(data: bytes) -> str:
    """The id of a signed record: the hash of its body (what each record type's ``id`` computes)."""
    outer = encoding.decode(data)
    if not isinstance(outer, dict) or "body" not in outer:
        raise RemoteError("the peer sent something that is not a signed record")
    return sha256_hex(encoding.encode(schema.mapping(outer["body"], "record body")))


def _bytes(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise RemoteError("the peer sent a record that is not bytes")
    return value

