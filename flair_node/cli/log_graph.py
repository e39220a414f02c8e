"""ASCII commit graph for ``flair log --graph``: one lane per line of descent, git style."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def render_graph(commits: Sequence[dict[str, Any]], label: Callable[[dict[str, Any]], str]) -> list[str]:
    """Lines drawing ``commits`` (children before parents) with ``label(commit)`` beside each node."""
    shown = {c["id"] for c in commits}
    lanes: list[str] = []
    lines: list[str] = []
    for commit in commits:
        cid = commit["id"]
        if cid not in lanes:
            lanes.append(cid)
        here = lanes.index(cid)
        lines.append(" ".join("*" if j == here else "|" for j in range(len(lanes))) + "  " + label(commit))
        joining = [j for j, lane in enumerate(lanes) if lane == cid and j != here]
        if joining:
            lines.append(" ".join("/" if j in joining else "|" for j in range(len(lanes))))
        parents = [p for p in commit["parents"] if p in shown]
        lanes = [lane for j, lane in enumerate(lanes) if j not in joining]
        if not parents:
            lanes.pop(here)
            continue
        lanes[here] = parents[0]
        added = 0
        for parent in parents[1:]:
            if parent not in lanes:
                lanes.insert(here + 1 + added, parent)
                added += 1
        if added:
            lines.append(" ".join("\\" if here < j <= here + added else "|" for j in range(len(lanes))))
    return lines
