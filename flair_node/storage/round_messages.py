"""The messages of a repository's secure rounds (``core.round_messages``), as one node keeps them.

Each message is an object under its id. Each round (a branch and the head that opened it) has an index: a chain
of small objects ``{prev, message, count}`` whose newest link a ref names (``.secure/<head>/<branch>``; names with
a dot are never branches), moved by compare-and-swap, so a message added is found by the round after a restart
and two writers never lose one another's. A round holds at most ``MAX_ROUND_MESSAGES`` and each member at most
``MAX_PER_PHASE`` of each kind of message in it: what a member can make a node keep is bounded.

What a message must be to be kept (signed, of this repository, by a member, about a commit the node holds) is
checked by ``storage.ingest`` before ``add``; whether it fits its round is ``protocol.secure_rounds``' to judge.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import NamedTuple

from ..core import encoding, schema
from ..core.errors import IntegrityError, NotFound, RefConflict
from ..core.ids import BranchName, CommitId, RecordId, RepoId, sha256_hex, short
from ..core.refs import CONTRIBUTION_PREFIX
from ..core.round_messages import RoundMessage
from .history import History
from .stores import ObjectStore, RefStore

SECURE_REF = ".secure/"
MAX_ROUND_MESSAGES = 4096
MAX_PER_PHASE = 4  # messages of one kind by one member in one round (a contributor may advertise again)
_CACHE = 8192
_ROUNDS_CACHED = 64  # rounds whose index ``ids`` remembers


class RoundMessages:
    """A repository's secure round messages: ``add`` keeps one, ``message`` and ``of_round`` find them (the
    ``protocol.secure_rounds.MessageSource`` the round functions read)."""

    def __init__(self, repo: RepoId, objects: ObjectStore, refs: RefStore) -> None:
        self.repo = repo
        self.objects = objects
        self.refs = refs
        self._lock = threading.Lock()
        self._decoded: OrderedDict[str, RoundMessage] = OrderedDict()
        #: Per round's ref: its newest link when last read, and the ids up to it.
        self._indexed: OrderedDict[str, tuple[RecordId, list[str]]] = OrderedDict()
        #: Masked updates announced to this node whose blocks are on their way, by id (``arriving``).
        self._arriving: OrderedDict[str, RoundMessage] = OrderedDict()

    def has(self, message_id: str) -> bool:
        return self.objects.has(message_id)

    def message(self, message_id: str) -> RoundMessage:
        """The message stored under ``message_id``, checked; ``NotFound`` if it has not arrived."""
        found = self._decoded.get(message_id)
        if found is not None:
            return found
        try:
            data = self.objects.get(schema.hex_id(message_id, "message id"))
        except NotFound:
            raise NotFound(f"secure round message {short(message_id)} has not arrived", record=message_id) from None
        message = RoundMessage.decode(data)
        message.verify(message_id)
        if message.repo != self.repo:
            raise IntegrityError(f"message {short(message_id)} is of another repository")
        self._remember(message)
        return message

    def ids(self, branch: str, head: str) -> list[str]:
        """The ids of the messages of the round ``head`` opened on ``branch``, oldest first. Only the links added
        since the last call are read: the round service asks several times a second."""
        name = _ref(branch, head)
        newest = self.refs.get(name)
        known, ids = self._indexed.get(name, (None, []))
        fresh: list[str] = []
        link = newest
        while link is not None and link != known and len(fresh) <= MAX_ROUND_MESSAGES:
            entry = _link(self.objects.get(link))
            fresh.append(entry.message)
            link = RecordId(entry.prev) if entry.prev else None
        ids = ids + fresh[::-1] if link == known else fresh[::-1]  # else: the chain is not the one seen before
        if newest is not None:
            self._indexed[name] = (newest, ids)
            while len(self._indexed) > _ROUNDS_CACHED:
                self._indexed.popitem(last=False)
        return list(ids)

    def of_round(self, repo: str, branch: str, head: str, phase: str) -> list[RoundMessage]:
        """The messages of one kind of a round, by id."""
        if repo != self.repo:
            return []
        found = (self.message(i) for i in self.ids(branch, head))
        return sorted((m for m in found if m.phase == phase), key=lambda m: m.id)

    def arriving(self, message: RoundMessage) -> None:
        """Note a masked update that passed the gossip gate but whose blocks are still on their way (it is kept,
        and ``of_round`` lists it, once they are here): the aggregator waits for it a while longer
        (``protocol.secure_node``). In memory only, at most ``MAX_ROUND_MESSAGES``."""
        with self._lock:
            self._arriving[message.id] = message
            self._arriving.move_to_end(message.id)
            while len(self._arriving) > MAX_ROUND_MESSAGES:
                self._arriving.popitem(last=False)

    def still_arriving(self, branch: str, head: str) -> list[RoundMessage]:
        """The messages of a round noted by ``arriving`` and not kept yet."""
        with self._lock:
            noted = [m for m in self._arriving.values() if (m.branch, m.head) == (branch, head)]
        return [m for m in noted if not self.objects.has(m.id)]

    def add(self, message: RoundMessage) -> bool:
        """Keep ``message`` (checked by the caller) and index it under its round; False if it was kept already.
        ``IntegrityError`` if its round, or its author's share of it, is full."""
        with self._lock:
            name = _ref(message.branch, message.head)
            if self.objects.has(message.id) and message.id in self.ids(message.branch, message.head):
                return False
            while True:
                previous = self.refs.get(name)
                count = 0 if previous is None else _link(self.objects.get(previous)).total
                if count >= MAX_ROUND_MESSAGES:
                    raise IntegrityError(f"the secure round of {message.branch} on {short(message.head)} holds "
                                         f"{MAX_ROUND_MESSAGES} messages already")
                same = [m for m in (self.message(i) for i in self.ids(message.branch, message.head))
                        if (m.author, m.phase) == (message.author, message.phase)]
                if len(same) >= MAX_PER_PHASE:
                    raise IntegrityError(f"{short(message.author)} sent {MAX_PER_PHASE} {message.phase} messages "
                                         "in this round already")
                self.objects.put(message.id, message.encode())
                data = encoding.encode({"prev": previous or "", "message": message.id, "count": count + 1})
                link = RecordId(sha256_hex(data))
                self.objects.put(link, data)
                try:
                    self.refs.compare_and_swap(name, previous, link)
                except RefConflict:
                    continue  # another process added one meanwhile: link after it
                self._remember(message)
                self._arriving.pop(message.id, None)
                return True

    def _remember(self, message: RoundMessage) -> None:
        self._decoded[message.id] = message
        while len(self._decoded) > _CACHE:
            self._decoded.popitem(last=False)


def live_rounds(history: History) -> list[tuple[str, CommitId]]:
    """The secure rounds a node keeps the messages (and masked updates) of: each branch's current round, and the
    round its head merged (members check that merge against them). None unless the repository runs secure rounds."""
    if history.members.current().policy.privacy != "secure":
        return []
    found: list[tuple[str, CommitId]] = []
    for branch, head_id in sorted(history.branches().items()):
        if branch.startswith(CONTRIBUTION_PREFIX):
            continue
        head = history.commit(head_id)
        found.append((branch, head.id))
        if head.kind == "round" and head.parents:
            found.append((branch, head.parents[0]))
    return found


def _ref(branch: str, head: str) -> BranchName:
    return BranchName(f"{SECURE_REF}{head}/{branch}")


class _Link(NamedTuple):
    prev: str  # the link before, "" for the round's first message
    message: str
    total: int  # messages in the round up to this one


def _link(data: bytes) -> _Link:
    entry = schema.mapping(encoding.decode(data), "a secure round index entry")
    if set(entry) != {"prev", "message", "count"} or not isinstance(entry["prev"], str) \
            or not isinstance(entry["count"], int) or not 0 < entry["count"] <= MAX_ROUND_MESSAGES:
        raise IntegrityError("a secure round index entry is malformed")
    return _Link(entry["prev"], schema.hex_id(entry["message"], "message id"), entry["count"])
