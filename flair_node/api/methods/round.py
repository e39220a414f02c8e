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
    "aggregators and the one entitled now, pending contributions, whether it may merge; in a repository with "
    "secure rounds, how far its secure round has come (adverts, roster, masked updates, unmask, reveals) and "
    "which secrets its reveals do not recover yet, with the holders yet to reveal; with differential privacy, "
    "what each member has spent of its budget (dp_spent).",
    params=(REPO, BRANCH), result=OBJECT)
async def round_status(ctx: ApiContext, repo: str, branch: str) -> dict[str, Any]:
    from ...protocol import dp, rounds, secure_node, secure_rounds

    def work() -> dict[str, Any]:
        r = ctx.repos.open(repo)
        policy = r.members.current().policy
        if policy.privacy != "secure":
            shown = rounds.view(r, branch, memory=ctx.round_memory).json()
        else:  # a secure round's aggregators and windows are computed over its adverts, not contribution branches
            shown = {**secure_rounds.view(r, branch, memory=ctx.round_memory).json(),
                     "secure": secure_node.progress(r, ctx.repos.pending, branch)}
        if policy.dp:  # what each member has spent of its privacy budget
            shown["dp_spent"] = dp.spent_by_member(r, ctx.round_memory)
        return shown

    return await ctx.off_thread(work)


@methods.method("round.merge", "Merge a branch's pending contributions now, as its round's entitled aggregator.",
                params=(REPO, BRANCH), result=COMMIT_RESULT)
async def round_merge(ctx: ApiContext, repo: str, branch: str) -> dict[str, Any]:
    from ...protocol import rounds

    def work() -> dict[str, Any]:
        merged = rounds.merge(ctx.repos.open(repo), ctx.identity, branch, memory=ctx.round_memory)
        return {**commit_json(merged), "branch": branch}

    return await ctx.changing(work)
