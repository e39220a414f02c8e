"""A repository's membership chain: changes in the object store under their ids, the last one's id in the
reserved ref ``.members`` (not a valid branch name, so never listed or moved as a branch)."""

from __future__ import annotations

import threading

from ..core.errors import IntegrityError, NotFound, RefConflict
from ..core.ids import BranchName, RecordId, short
from ..core.membership import Membership, MembershipChange
from ..core.objects import RepositoryRecord
from .stores import ObjectStore, RefStore

MEMBERS_REF = BranchName(".members")
MAX_CHANGES = 100_000


class MembershipLog:
    def __init__(self, record: RepositoryRecord, objects: ObjectStore, refs: RefStore) -> None:
        self.record = record
        self.objects = objects
        self.refs = refs
        self._lock = threading.Lock()
        self._cached: Membership | None = None

    def current(self) -> Membership:
        """The membership after the last stored change, every change re-verified when first read."""
        head = self.refs.get(MEMBERS_REF) or self.record.id
        with self._lock:
            if self._cached is not None and self._cached.head == head:
                return self._cached
        membership = Membership.genesis(self.record)
        for change in self.changes(head):
            membership = membership.apply(change)
        with self._lock:
            self._cached = membership
        return membership

    def changes(self, head: str | None = None) -> list[MembershipChange]:
        """Every change, first to last (up to ``head``: by default the stored head)."""
        cursor = head or self.refs.get(MEMBERS_REF) or self.record.id
        chain: list[MembershipChange] = []
        while cursor != self.record.id:
            if len(chain) >= MAX_CHANGES:
                raise IntegrityError(f"membership chain of {short(self.record.id)} is longer than {MAX_CHANGES}")
            try:
                change = MembershipChange.decode(self.objects.get(cursor))
            except NotFound:
                raise IntegrityError(f"membership change {short(cursor)} of repository {short(self.record.id)} "
                                     "is missing", change=cursor) from None
            change.verify(cursor)
            chain.append(change)
            cursor = change.previous
        return chain[::-1]

    def contains(self, change_id: str) -> bool:
        """Whether ``change_id`` is one of the stored chain's changes."""
        return change_id in self.current().applied

    def append(self, change: MembershipChange) -> Membership:
        """Store ``change`` after the current head, if it follows it and keeps every rule; the new membership.

        ``IntegrityError`` if it does not apply; ``RefConflict`` if another change got there first."""
        current = self.current()
        after = current.apply(change)
        self.objects.put(change.id, change.encode())
        expected = None if current.head == self.record.id else RecordId(current.head)
        try:
            self.refs.compare_and_swap(MEMBERS_REF, expected, RecordId(change.id))
        except RefConflict:
            raise RefConflict(f"membership of repository {short(self.record.id)} changed meanwhile; retry",
                              repo=self.record.id) from None
        with self._lock:
            self._cached = after
        return after
