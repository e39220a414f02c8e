"""``fsck``: re-read a repository's whole history from storage and say what is damaged.

Nothing is taken from memory: the history's caches are dropped first, then the repository record, the membership
chain, every branch's move and every commit reachable from one are read and verified again, and every such
commit's weights are read through (``History.verify``), each payload block re-hashed against its CID and each
piece authenticated on the way. One damaged object is
reported and the check goes on with the rest. ``Repository.fsck`` calls ``check``, which only reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core import graph
from ..core.errors import FlairError
from ..core.ids import CommitId
from ..core.objects import Commit, RepositoryRecord
from .history import History


@dataclass(frozen=True)
class Problem:
    """One finding of ``fsck``: what is damaged and why."""

    object: str
    what: str


def check(history: History) -> tuple[int, list[Problem]]:
    """Re-read every commit reachable from a branch: ids, signatures, payload hashes, layouts, parents.

    Returns how many commits were checked and what is damaged (nothing, in a healthy repository).
    """
    history.drop_caches()
    problems: list[Problem] = []
    try:
        RepositoryRecord.decode(history.objects.get(history.id)).verify(history.id)
    except FlairError as exc:
        problems.append(Problem(history.id, f"repository record: {exc}"))
    try:
        history.members.changes()
    except FlairError as exc:
        problems.append(Problem(history.id, f"membership: {exc}"))
    heads = []
    for branch, mid in history.refs.all().items():
        try:
            heads.append(history.move(mid).commit)
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
            commit = history.commit(cid)
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
            history.verify(cid)
        except FlairError as exc:
            problems.append(Problem(cid, f"payload: {exc}"))
    return len(checked), problems
