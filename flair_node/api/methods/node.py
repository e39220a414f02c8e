"""``node.*``: the node itself -- who it is, what it runs, its block store, and what its gossip carried lately."""

from __future__ import annotations

import os
from typing import Any

from ... import __version__
from ..context import ApiContext
from ..dispatch import MethodTable, Param
from ..params import ARRAY, OBJECT

methods = MethodTable()


@methods.method("node.whoami", "The node's member key: commit author and Solana address (its peer id is a "
                "transport key of its own).", result=OBJECT)
async def node_whoami(ctx: ApiContext) -> dict[str, Any]:
    return {"public_key": ctx.identity.public_key}


@methods.method("node.status", "Version, identity and repositories of this node.", result=OBJECT)
async def node_status(ctx: ApiContext) -> dict[str, Any]:
    listed = await ctx.off_thread(ctx.repos.all)
    return {"version": __version__, "public_key": ctx.identity.public_key, "pid": os.getpid(),
            "repositories": len(listed), **ctx.service_status()}


@methods.method("node.gc", "Delete every block no commit of a local repository reaches (unpinned blocks).",
                result=OBJECT)
async def node_gc(ctx: ApiContext) -> dict[str, Any]:
    kept, removed = await ctx.off_thread(ctx.repos.gc)
    return {"blocks_kept": kept, "blocks_removed": removed}


@methods.method(
    "node.arrivals", "Records this node took from gossip lately, oldest first, for measuring propagation: "
    "kind, id, branch (moves), signed and arrival time (Unix ms, this node's clock).",
    params=(Param("since_ms", {"type": "integer", "minimum": 0}, "only those arrived at or after this time",
                  required=False, default=0),),
    result=ARRAY)
async def node_arrivals(ctx: ApiContext, since_ms: int) -> list[dict[str, Any]]:
    return [{"kind": k, "id": i, "branch": b, "signed_ms": s, "arrived_ms": a}
            for k, i, b, s, a in ctx.need_p2p().arrivals() if a >= since_ms]


@methods.method(
    "node.announced", "Records this node signed and announced lately, oldest first, for measuring propagation: "
    "kind, id, when it was stored and handed to the announcer (queued) and when its announcement was published "
    "(Unix ms, this node's clock).",
    params=(Param("since_ms", {"type": "integer", "minimum": 0}, "only those published at or after this time",
                  required=False, default=0),),
    result=ARRAY)
async def node_announced(ctx: ApiContext, since_ms: int) -> list[dict[str, Any]]:
    return [{"kind": k, "id": i, "queued_ms": q, "published_ms": p}
            for k, i, q, p in ctx.need_p2p().announced() if p >= since_ms]
