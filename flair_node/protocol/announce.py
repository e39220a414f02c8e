"""Announcements: what nodes gossip about a repository, and the checks every node makes before it accepts or
relays one.

An announcement is canonical msgpack ``{v: 1, repo, items: [[kind, record], ...]}`` on the repository's topic,
at most the gossip size limit (``pack`` fills messages up to it, so a burst of changes travels in few
messages). Kinds: ``commit`` (a commit record, signed by its author), ``move`` (a branch move, signed by the
mover), ``membership`` (a membership change, signed by the owner), ``proof`` (a proof record, naming the proofs
of a round merge by CID) and ``anchor`` (where a round merge is anchored on Solana), both signed by the merge's
author, and ``secure`` (a message of a secure round, ``core.round_messages``, signed by its author; a masked
update names its blocks by CID). Nothing else is in it: every field a node acts on is inside a record its author
signed.

``check`` is the gate: schema, signatures, the repository, and each author's role in this node's view of the
membership (as it would be after the message's own membership changes, in order), the clock of movers and of
secure round messages. A message failing it is neither delivered nor relayed. A message this node cannot judge
yet (a membership change beyond the end of its chain, a record of a key epoch it has not reached, a secure round
message about a round opened by a commit it does not hold) raises ``Lagging``: the node does not relay it. A pull
is work a message would make the node do, so it is judged first (``daemon.p2p``): only a forwarder that is a
current member is pulled from, at most once per ``LAGGING_EVERY`` seconds there, and a claim the pull does not
bear out counts against it. A message holding nothing new is a ``Replay``. ``decode`` refuses anything malformed
with ``IntegrityError`` (an item is exactly a pair of kind and record).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core import encoding, schema
from ..core.errors import IntegrityError
from ..core.ids import RepoId, short
from ..core.membership import Membership, MembershipChange, check_move_target
from ..core.objects import AnchorClaim, Commit, ProofRecord, check_commit_time
from ..core.refs import MAX_CLOCK_SKEW_MS, BranchMove
from ..core.round_messages import Masked, RoundMessage
from ..storage.repo import Repository

VERSION = 1
KINDS = ("commit", "move", "membership", "proof", "anchor", "secure")
TOPIC_PREFIX = "flair/repo/"
MAX_ITEMS = 256


class Lagging(Exception):
    """This node's view is behind the message's: pull from the forwarder rather than judge it."""


class Replay(Exception):
    """Every record in the message is one this node holds already."""


def topic(repo: RepoId) -> str:
    return TOPIC_PREFIX + repo


@dataclass(frozen=True)
class Announcement:
    repo: RepoId
    changes: tuple[MembershipChange, ...] = ()
    commits: tuple[Commit, ...] = ()
    moves: tuple[BranchMove, ...] = ()
    proofs: tuple[ProofRecord, ...] = ()
    anchors: tuple[AnchorClaim, ...] = ()
    messages: tuple[RoundMessage, ...] = ()  # of secure rounds
    items: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)

    @property
    def claims(self) -> tuple[ProofRecord | AnchorClaim, ...]:
        """The proof and anchor records: each about a round merge, and signed by its author."""
        return (*self.proofs, *self.anchors)


def pack(repo: RepoId, items: list[tuple[str, bytes]], limit: int) -> list[bytes]:
    """``items`` (kind, record) in as few messages of at most ``limit`` bytes as they fit, in order.

    ``IntegrityError`` for an item that does not fit a message on its own (peers then learn of it by pulling)."""
    messages: list[bytes] = []
    batch: list[tuple[str, bytes]] = []
    size = _BASE
    for kind, record in items:
        cost = len(record) + _PER_ITEM
        if _BASE + cost > limit:
            raise IntegrityError(f"a {kind} record of {len(record)} bytes does not fit a {limit}-byte announcement")
        if batch and (size + cost > limit or len(batch) == MAX_ITEMS):
            messages.append(_encode(repo, batch))
            batch, size = [], _BASE
        batch.append((kind, record))
        size += cost
    if batch:
        messages.append(_encode(repo, batch))
    return messages


_BASE, _PER_ITEM = 100, 24  # msgpack bytes around the items, and around each record: upper bounds


def _encode(repo: RepoId, items: list[tuple[str, bytes]]) -> bytes:
    return encoding.encode({"v": VERSION, "repo": repo, "items": [[kind, record] for kind, record in items]})


def decode(data: bytes, expected_repo: RepoId) -> Announcement:
    """An announcement from the network, every record decoded (not yet verified); ``IntegrityError`` if it is
    malformed, has unknown fields, or is about another repository than its topic's."""
    value = encoding.decode(data)
    if not isinstance(value, dict) or set(value) != {"v", "repo", "items"} or type(value["v"]) is not int \
            or value["v"] != VERSION:
        raise IntegrityError(f"an announcement is a version-{VERSION} map of v, repo and items")
    if value["repo"] != expected_repo:
        raise IntegrityError(f"an announcement on the topic of {short(expected_repo)} is about another repository")
    items = schema.listing(value["items"], "items")
    if not 0 < len(items) <= MAX_ITEMS:
        raise IntegrityError(f"an announcement holds 1 to {MAX_ITEMS} items")
    changes, commits, moves, proofs, anchors, messages, raw = [], [], [], [], [], [], []
    for item in items:
        kind, record = schema.fixed(item, "item", 2)
        kind = schema.choice(kind, "item kind", KINDS)
        record = schema.blob(record, "record", encoding.MAX_RECORD_BYTES)
        if kind == "membership":
            changes.append(MembershipChange.decode(record))
        elif kind == "commit":
            commits.append(Commit.decode(record))
        elif kind == "proof":
            proofs.append(ProofRecord.decode(record))
        elif kind == "anchor":
            anchors.append(AnchorClaim.decode(record))
        elif kind == "secure":
            messages.append(RoundMessage.decode(record))
        else:
            moves.append(BranchMove.decode(record))
        raw.append((kind, record))
    return Announcement(RepoId(expected_repo), tuple(changes), tuple(commits), tuple(moves), tuple(proofs),
                        tuple(anchors), tuple(messages), tuple(raw))


def check(repo: Repository, announcement: Announcement, now_ms: int) -> Membership:
    """Raise unless every record holds up against ``repo`` (see the module docstring); returns the membership
    the message's own changes lead to."""
    membership = repo.members.current()
    new = 0
    for change in announcement.changes:
        change.verify()
        if change.seq <= membership.seq:
            if not repo.members.contains(change.id):
                raise IntegrityError(f"membership change {short(change.id)} forks the chain at {change.seq}")
            continue
        if change.seq > membership.seq + 1:
            raise Lagging(f"membership change {change.seq} is ahead of change {membership.seq} held here")
        membership = membership.apply(change)
        new += 1
    for commit in announcement.commits:
        commit.verify()
        if commit.repo != repo.id:
            raise IntegrityError(f"commit {short(commit.id)} belongs to another repository")
        if commit.payload.key_epoch > membership.epoch:
            raise Lagging(f"commit {short(commit.id)} is of key epoch {commit.payload.key_epoch}")
        membership.require(commit.author, "contributor" if commit.parents else "owner",
                           epoch=commit.payload.key_epoch, at_ms=commit.timestamp_ms,
                           what=f"commit {short(commit.id)}")
        check_commit_time(commit, [*(repo.commit(p) for p in commit.parents if repo.objects.has(p)),
                                   *(c for c in announcement.commits if c.id in commit.parents)], now_ms=now_ms)
        new += not repo.objects.has(commit.id)
    for move in announcement.moves:
        move.verify()
        if move.repo != repo.id:
            raise IntegrityError(f"branch move {short(move.id)} belongs to another repository")
        if move.epoch > membership.epoch:
            raise Lagging(f"branch move {short(move.id)} is of key epoch {move.epoch}")
        membership.require_branch_move(move.author, move.branch, epoch=move.epoch, at_ms=move.timestamp_ms)
        target = next((c for c in announcement.commits if c.id == move.commit), None)
        if target is None and repo.objects.has(move.commit):
            target = repo.commit(move.commit)
        if target is not None:
            check_move_target(move, target)
        if move.timestamp_ms > now_ms + MAX_CLOCK_SKEW_MS:
            raise IntegrityError(f"branch move {short(move.id)} is dated ahead of this node's clock")
        new += not repo.objects.has(move.id)
    for claim in announcement.claims:  # whether its author made the merge is checked once both are here
        claim.verify()
        if claim.repo != repo.id:
            raise IntegrityError(f"{claim.KIND} record {short(claim.id)} belongs to another repository")
        membership.require(claim.author, "contributor", epoch=membership.epoch, at_ms=claim.timestamp_ms,
                           what=f"{claim.KIND} record {short(claim.id)}")
        new += not repo.objects.has(claim.id)
    for message in announcement.messages:  # whether it fits its round is judged when the round reads it
        message.verify()
        what = f"secure round {message.phase} {short(message.id)}"
        if message.repo != repo.id:
            raise IntegrityError(f"{what} belongs to another repository")
        if isinstance(message.content, Masked) and message.content.key_epoch > membership.epoch:
            raise Lagging(f"{what} is sealed with key epoch {message.content.key_epoch}")
        membership.require(message.author, "contributor" if message.phase in ("advert", "masked") else "reader",
                           epoch=membership.epoch, at_ms=message.timestamp_ms, what=what)
        if message.timestamp_ms > now_ms + MAX_CLOCK_SKEW_MS:
            raise IntegrityError(f"{what} is dated ahead of this node's clock")
        if not repo.objects.has(message.head):
            raise Lagging(f"{what} is about the round opened by commit {short(message.head)}, not held here")
        new += not repo.secure.has(message.id)
    if not new:
        raise Replay(f"nothing new about {short(repo.id)}")
    return membership
