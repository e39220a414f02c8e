"""``repo.*`` about Solana: a round merge's anchor (``repo.provenance``), the repository in the flair_registry
program (``repo.registry``), and its ownership token (``repo.owner``, ``repo.handover``).

The chain work is the daemon's services' (``api.context``: ``Anchoring``, ``ChainRegistry``, ``Ownership``); a node
without ``chain.cluster`` (or ``chain.registry``) answers what it knows offline, or says what to configure.
"""

from __future__ import annotations

from typing import Any

from ...core.errors import InvalidInput
from ..context import ApiContext
from ..dispatch import MethodTable, Param
from ..params import MERGE, OBJECT, PUBLIC_KEY, REPO
from ..views import ownership_json

methods = MethodTable()


@methods.method(
    "repo.provenance", "Where a round merge is anchored on Solana: its memo, NFT mint, transaction and "
    "explorer links, as this node anchored it (its own merges) or checked it on chain (others').",
    params=MERGE, result=OBJECT)
async def repo_provenance(ctx: ApiContext, repo: str, commit: str) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        r = ctx.repos.open(repo)
        merge = r.resolve(commit)
        found = r.commit(merge)
        if found.kind != "round":
            return {"commit": merge, "status": "not anchored", "reason": "only round merges are anchored"}
        if ctx.anchoring is None:
            return {"commit": merge, "status": "not anchored", "reason": "this node has no chain.cluster"}
        known = ctx.anchoring.provenance(r, merge)
        if known is not None:
            return known
        if found.author != ctx.identity.public_key:
            return {"commit": merge, "status": "waiting", "author": found.author,
                    "reason": "its aggregator anchors it; its anchor record has not been checked here yet"}
        return {"commit": merge, "status": "pending", "reason": "not attempted yet"}

    return await ctx.off_thread(work)


@methods.method(
    "repo.registry", "A repository in the flair_registry program (chain.registry): its owner, policy and members "
    "on chain next to this node's, and each branch's recorded head merge and round.",
    params=(REPO,), result=OBJECT)
async def repo_registry(ctx: ApiContext, repo: str) -> dict[str, Any]:
    service = ctx.need_chain_registry()
    return await service.describe(await ctx.off_thread(lambda: ctx.repos.open(repo)))


@methods.method(
    "repo.owner", "Who owns a repository and by which token on Solana; with mint, the owner's node mints the "
    "repository's ownership token first (flair init --chain).",
    params=(REPO, Param("mint", {"type": "boolean"}, "mint the ownership token (owner only)", required=False,
                        default=False)),
    result=OBJECT)
async def repo_owner(ctx: ApiContext, repo: str, mint: bool) -> dict[str, Any]:
    r = await ctx.off_thread(lambda: ctx.repos.open(repo))
    if mint:
        await ctx.need_ownership().mint(r)
    if ctx.ownership is None:
        membership = await ctx.off_thread(r.members.current)
        return ownership_json(membership, await ctx.off_thread(r.members.changes), "")
    return await ctx.ownership.describe(r)


@methods.method(
    "repo.handover", "Hand a repository over: move its ownership token to a current member on chain and record "
    "it (owner); or, with claim, record a transfer to this node made elsewhere (the new holder).",
    params=(REPO,
            Param("member", PUBLIC_KEY, "the new owner's public key (base58)", required=False, default=None),
            Param("claim", {"type": "string", "maxLength": 88}, "the signature of a transaction that moved "
                  "the token to this node", required=False, default=None)),
    result=OBJECT)
async def repo_handover(ctx: ApiContext, repo: str, member: str | None, claim: str | None) -> dict[str, Any]:
    if (member is None) == (claim is None):
        raise InvalidInput("give the new owner (member), or the transfer this node received (claim)")
    service = ctx.need_ownership()
    r = await ctx.off_thread(lambda: ctx.repos.open(repo))
    if member is not None:
        await service.hand_over(r, member)
    else:
        assert claim is not None
        await service.claim(r, claim)
    return await service.describe(r)
