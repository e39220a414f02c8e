"""A ``protocol.sync.Source`` that reads another node's stores directly: the pull logic without a network."""

from __future__ import annotations

from typing import Any

from ..core.ids import Cid, PublicKey, RepoId
from ..protocol.sync import SyncServer
from ..storage import unixfs
from ..storage.repos import RepoSet


class LocalSource:
    def __init__(self, peer: RepoSet, asker: PublicKey, into: RepoSet) -> None:
        self.server, self.asker, self.peer, self.into = SyncServer(peer), asker, peer, into

    async def heads(self, repo: RepoId) -> Any:
        return await self.server.handle(self.asker, {"op": "heads", "repo": repo})

    async def records(self, repo: RepoId, ids: list[str]) -> list[bytes]:
        reply = await self.server.handle(self.asker, {"op": "records", "repo": repo, "ids": ids})
        return list(reply["records"])

    async def blocks(self, cid: Cid, max_size: int) -> None:
        for block_cid, block in unixfs.walk(self.peer.blocks, cid, max_size=max_size):
            self.into.blocks.put(block_cid, block)
