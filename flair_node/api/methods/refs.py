"""``repo.*`` that move branches: create one, merge into one, revert a commit on one, reset one."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ...core.errors import InvalidInput
from ...core.refs import DEFAULT_BRANCH
from ...storage.repo import MERGE_ALIASES, MERGE_METHODS
from ..context import ApiContext
from ..dispatch import MethodTable, Param
from ..params import BRANCH, COMMIT, COMMIT_RESULT, ID, MESSAGE, OBJECT, REPO
from ..views import commit_json

methods = MethodTable()


@methods.method(
    "repo.branch", "List branches, or create one at a commit (default: the head of main) and return it.",
    params=(REPO,
            Param("name", ID, "new branch name; omit to list", required=False, default=None),
            Param("at", ID, "commit or branch the new branch starts at", required=False, default=None)),
    result=OBJECT)
async def repo_branch(ctx: ApiContext, repo: str, name: str | None, at: str | None) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        r = ctx.repos.open(repo)
        if name is None:
            if at is not None:
                raise InvalidInput("'at' needs a branch name to create")
            return {"branches": dict(r.branches())}
        head = r.resolve(at or DEFAULT_BRANCH)
        return {"created": r.create_branch(ctx.identity, name, head), "head": head}

    return await (ctx.changing if name is not None else ctx.off_thread)(work)


@methods.method(
    "repo.merge", "Merge branches or commits into a branch with one merge commit (exact fixed-point).",
    params=(REPO,
            Param("sources", {"type": "array", "items": ID, "maxItems": 64}, "branches or commits to merge"),
            Param("into", ID, "branch that receives the merge commit"),
            Param("strategy", {"type": "string", "enum": [*MERGE_METHODS, *MERGE_ALIASES]},
                  "mean (weighted by examples since the merge base; average is its older name) or task-arithmetic "
                  "(sum of changes)", required=False, default="mean"),
            replace(MESSAGE, description="merge commit message", required=False, default=None)),
    result=COMMIT_RESULT)
async def repo_merge(ctx: ApiContext, repo: str, sources: list[str], into: str, strategy: str,
                     message: str | None) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        r = ctx.repos.open(repo)
        return commit_json(r.merge(ctx.identity, sources, into, strategy=strategy, message=message))

    return await ctx.changing(work)


@methods.method(
    "repo.revert", "A new commit on a branch that undoes one commit's change.",
    params=(REPO,
            replace(COMMIT, description="commit to undo"),
            replace(BRANCH, description="branch to commit on"),
            replace(MESSAGE, required=False, default=None)),
    result=COMMIT_RESULT)
async def repo_revert(ctx: ApiContext, repo: str, commit: str, branch: str, message: str | None) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        r = ctx.repos.open(repo)
        return commit_json(r.revert(ctx.identity, commit, branch=branch, message=message))

    return await ctx.changing(work)


@methods.method(
    "repo.reset", "Point an existing branch at another commit (git's branch -f); returns the move.",
    params=(REPO,
            replace(BRANCH, description="the branch to move", required=True, default=None),
            replace(COMMIT, description="commit or branch it moves to")),
    result=OBJECT)
async def repo_reset(ctx: ApiContext, repo: str, branch: str, commit: str) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        r = ctx.repos.open(repo)
        move = r.reset_branch(ctx.identity, branch, r.resolve(commit))
        return {"branch": move.branch, "head": move.commit, "previous": move.previous, "move": move.id}

    return await ctx.changing(work)
