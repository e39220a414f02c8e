"""``round.*``: a branch's current round as this node sees it, and merging it now as its aggregator."""

from __future__ import annotations

from typing import Any

from ..context import ApiContext
from ..dispatch import MethodTable
from ..params import BRANCH, COMMIT_RESULT, OBJECT, REPO
from ..views import commit_json

methods = MethodTable()


@methods.method(
    "round.status", "The current round of a branch as this node sees it: head, round number, ranked "
    "aggregators and the one entitled now, pending contributions, whether it may merge.",
    params=(REPO, BRANCH), result=OBJECT)
async def round_status(ctx: ApiContext, repo: str, branch: str) -> dict[str, Any]:
    from ...protocol import rounds

    return await ctx.off_thread(lambda: rounds.view(ctx.repos.open(repo), branch, memory=ctx.round_memory).json())


@methods.method("round.merge", "Merge a branch's pending contributions now, as its round's entitled aggregator.",
                params=(REPO, BRANCH), result=COMMIT_RESULT)
async def round_merge(ctx: ApiContext, repo: str, branch: str) -> dict[str, Any]:
    from ...protocol import rounds

    def work() -> dict[str, Any]:
        merged = rounds.merge(ctx.repos.open(repo), ctx.identity, branch, memory=ctx.round_memory)
        return {**commit_json(merged), "branch": branch}

    return await ctx.changing(work)
