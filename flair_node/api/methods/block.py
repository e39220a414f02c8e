"""``block.*``: IPFS blocks -- fetching a DAG from a peer over Bitswap, and whether one is stored here."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ...core.cid import parse_cid
from ...core.errors import NotFound
from ...storage import unixfs
from ..context import ApiContext
from ..dispatch import MethodTable
from ..params import CID, MAX_SIZE, OBJECT, PEER

methods = MethodTable()


@methods.method("block.fetch", "Fetch the DAG under a CID from a peer over Bitswap; every block is re-hashed.",
                params=(replace(CID, description="root CID (CIDv1, base32)"), PEER, MAX_SIZE), result=OBJECT)
async def block_fetch(ctx: ApiContext, cid: str, peer: str, max_size: int) -> dict[str, Any]:
    root = parse_cid(cid).text
    fetched = await ctx.need_p2p().fetch(root, peer, max_size)
    return {"cid": root, "fetched_blocks": fetched}


@methods.method("block.has", "Whether every block of the DAG under a CID is stored on this node.",
                params=(CID, MAX_SIZE), result=OBJECT)
async def block_has(ctx: ApiContext, cid: str, max_size: int) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        root = parse_cid(cid).text
        try:
            blocks = sum(1 for _ in unixfs.walk(ctx.repos.blocks, root, max_size=max_size))
        except NotFound:
            return {"cid": root, "complete": False}
        return {"cid": root, "complete": True, "blocks": blocks}

    return await ctx.off_thread(work)
