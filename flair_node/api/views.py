"""The JSON shapes the API answers for Flair's records: commits, repositories, members and ownership.

Each is a pure function of a record, written once, so every method that returns a commit (``repo.commit``,
``repo.log``, ``round.merge``, ...) returns it the same way. The daemon's ownership service uses
``ownership_json`` for ``repo.owner`` too.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import FlairError
from ..core.membership import PROTECTED_BRANCHES, Member, Membership, MembershipChange
from ..core.objects import Commit, TensorSpec
from ..core.refs import DEFAULT_BRANCH
from ..storage.repo import Repository


def commit_json(commit: Commit) -> dict[str, Any]:
    """The commit's record as JSON: its id, every signed field, and metrics as numbers."""
    body = {k: v for k, v in commit.body().items() if k not in ("v", "type")}
    return {"id": commit.id, **body, "metrics": {k: float(v) for k, v in commit.metrics.items()}}


def repo_json(repo: Repository) -> dict[str, Any]:
    """A repository's id, name, owner, creation time, branches and the size of main's layout (``main_layout``)."""
    record = repo.record
    layout = main_layout(repo)
    return {
        "repo": repo.id,
        "name": record.name,
        "owner": record.owner,
        "created_ms": record.created_ms,
        "branches": dict(repo.branches()),
        "tensors": len(layout),
        "parameters": sum(t.numel for t in layout),
        **({"adapter": {"base_repo": record.adapter.base_repo, "base_commit": record.adapter.base_commit,
                        "rank": record.adapter.rank, "max_rank": record.adapter.max_rank}}
           if record.adapter is not None else {}),
    }


def main_layout(repo: Repository) -> tuple[TensorSpec, ...]:
    """The tensors of main's head, read from its payload's header; those of the first commit (what the signed
    record holds) where this node cannot read main: not a member, or its blocks not all here yet."""
    branches = repo.branches()
    if DEFAULT_BRANCH not in branches:
        return repo.record.layout
    try:
        return repo.layout(branches[DEFAULT_BRANCH])
    except FlairError:
        return repo.record.layout


def members_json(membership: Membership) -> dict[str, Any]:
    """A repository's current members and roles, the removed keys, its key epoch and its round policy."""

    def member(m: Member) -> dict[str, Any]:
        return {"key": m.key, "role": m.role, "expires_ms": m.expires_ms, "joined_epoch": m.joined_epoch}

    return {"repo": membership.repo, "owner": membership.owner, "epoch": membership.epoch,
            "changes": membership.seq, "members": [member(m) for m in membership.current()],
            "removed": sorted(k for k, m in membership.members.items() if m.removed_epoch is not None),
            "protected_branches": sorted(PROTECTED_BRANCHES), "policy": membership.policy.as_dict()}


def ownership_json(membership: Membership, changes: list[MembershipChange], cluster: str) -> dict[str, Any]:
    """A repository's owner, its ownership token and its handovers (``cluster``: where the node looks)."""
    token = membership.token
    return {
        "repo": membership.repo, "owner": membership.owner, "cluster": cluster,
        "token": None if token is None else {"genesis": token.genesis, "mint": token.mint,
                                             "transaction": token.transaction, "slot": token.slot},
        "handovers": [{"seq": c.seq, "to": c.member, "by": c.author, "transaction": c.chain.transaction,
                       "slot": c.chain.slot} for c in changes if c.action == "handover" and c.chain is not None],
    }


__all__ = ["commit_json", "members_json", "ownership_json", "repo_json"]
