"""Commit-graph algorithms over a ``parents`` function: pure, no storage."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence

from .ids import CommitId

Parents = Callable[[CommitId], Sequence[CommitId]]
#: Ordering key for ties: newer first (timestamp descending, then id).
Timestamp = Callable[[CommitId], int]


def ancestors(start: CommitId, parents: Parents) -> set[CommitId]:
    """``start`` and every commit reachable from it."""
    seen = {start}
    stack = [start]
    while stack:
        for p in parents(stack.pop()):
            if p not in seen:
                seen.add(p)
                stack.append(p)
    return seen


def is_ancestor(candidate: CommitId, of: CommitId, parents: Parents) -> bool:
    return candidate in ancestors(of, parents)


def merge_base(a: CommitId, b: CommitId, parents: Parents, timestamp: Timestamp) -> CommitId | None:
    """The best common ancestor: one no other common ancestor descends from (newest first on ties)."""
    common = ancestors(a, parents) & ancestors(b, parents)
    if not common:
        return None
    dominated: set[CommitId] = set()
    for c in common:
        dominated |= ancestors(c, parents) - {c}
    best = common - dominated
    return max(best, key=lambda c: (timestamp(c), c))


def walk(heads: Sequence[CommitId], parents: Parents, timestamp: Timestamp) -> Iterator[CommitId]:
    """Every commit reachable from ``heads`` once, children before their parents, newest first otherwise."""
    reachable: set[CommitId] = set()
    for h in heads:
        reachable |= ancestors(h, parents)
    pending_children = {c: 0 for c in reachable}
    for c in reachable:
        for p in set(parents(c)):
            pending_children[p] += 1
    ready = [(-timestamp(c), c) for c in reachable if pending_children[c] == 0]
    heapq.heapify(ready)
    while ready:
        _, c = heapq.heappop(ready)
        yield c
        for p in set(parents(c)):
            pending_children[p] -= 1
            if pending_children[p] == 0:
                heapq.heappush(ready, (-timestamp(p), p))
