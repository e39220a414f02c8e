"""``repo.verify``: what this node found of the EZKL proofs of a round merge (the daemon's proof service)."""

from __future__ import annotations

from typing import Any

from ..context import ApiContext
from ..dispatch import MethodTable
from ..params import MERGE, OBJECT

methods = MethodTable()


@methods.method(
    "repo.verify", "What this node found of the proofs of a round merge: verified (and what was proven), "
    "failed (and why), or not proven yet; checked now if they arrived but were not checked yet.",
    params=MERGE, result=OBJECT)
async def repo_verify(ctx: ApiContext, repo: str, commit: str) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        r = ctx.repos.open(repo)
        merge = r.resolve(commit)
        found = r.commit(merge)
        if found.kind != "round" or "sums" not in found.meta:
            return {"commit": merge, "status": "unproven", "reason": "not a round merge made with proofs on"}
        proofs = ctx.need_proofs()
        known = proofs.result(r, merge)
        if known is not None:
            return known
        if r.merges.proof(merge) is None:
            return {"commit": merge, "status": "waiting", "author": found.author,
                    "reason": "no proof has arrived yet: its aggregator proves it after merging"}
        return proofs.verify(r, merge)

    return await ctx.off_thread(work)
