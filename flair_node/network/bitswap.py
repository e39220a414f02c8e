"""Block exchange over Bitswap on a libp2p host: this node serves its block store, and fetches DAGs it lacks.

py-libp2p's Bitswap client does the protocol; this module keeps it at arm's length. Its block store is an
adapter over Flair's ``unixfs.BlockStore`` that accepts only blocks this node is fetching right now, each
re-hashed against its CID before it is stored, so a peer can neither plant unrequested blocks nor pass off
bytes under a CID they do not hash to. DAG fetches are bounded in depth and in declared size.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from libp2p.bitswap import BitswapClient
from libp2p.bitswap import BlockStore as LibBlockStore
from libp2p.bitswap.cid import cid_to_text

from ..core.errors import FlairError, IntegrityError, RemoteError
from ..core.ids import Cid
from ..storage import unixfs

log = logging.getLogger(__name__)
# py-libp2p's Bitswap logs every block at INFO; that is its debugging, not ours.
logging.getLogger("libp2p.bitswap").setLevel(logging.WARNING)


class _Store(LibBlockStore):
    """What the Bitswap client sees: Flair's block store, writable only for blocks being fetched."""

    def __init__(self, blocks: unixfs.BlockStore) -> None:
        self.blocks = blocks
        self.wanted: set[Cid] = set()
        self.refused = 0

    async def get_block(self, cid: Any) -> bytes | None:
        text = Cid(cid_to_text(cid))
        try:
            return await trio.to_thread.run_sync(self.blocks.get, text)
        except FlairError:  # missing or damaged here: the peer asking gets nothing
            return None

    async def put_block(self, cid: Any, data: bytes) -> None:
        text = Cid(cid_to_text(cid))
        if text not in self.wanted:
            self.refused += 1
            log.debug("refused unrequested block %s", text)
            return
        try:
            await trio.to_thread.run_sync(self.blocks.put, text, data)
        except IntegrityError:
            self.refused += 1
            log.warning("refused block %s: its bytes do not hash to its CID", text)

    async def has_block(self, cid: Any) -> bool:
        return self.blocks.has(Cid(cid_to_text(cid)))

    async def delete_block(self, cid: Any) -> None:
        """Peers never delete here: gc does, by pins."""

    def get_all_cids(self) -> list[bytes]:
        return []  # never advertised in bulk


class BlockExchange:
    def __init__(self, host: Any, blocks: unixfs.BlockStore) -> None:
        self.host = host
        self.blocks = blocks
        self._store = _Store(blocks)
        self._client = BitswapClient(host, self._store)

    @property
    def refused_blocks(self) -> int:
        return self._store.refused

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._client.set_nursery(nursery)
            await self._client.start()
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await self._client.stop()

    async def fetch_dag(self, root: Cid, peer: Any, *, max_size: int, block_timeout: float = 30.0,
                        parallel: int = 32) -> int:
        """Fetch every block of the DAG under ``root`` that this node lacks from ``peer``; returns how many.

        A node's children are fetched concurrently (up to ``parallel`` wants in flight). Raises ``RemoteError``
        if the peer does not deliver a block in time (or delivers bytes that do not match it),
        ``IntegrityError`` if the DAG is deeper or larger than ``max_size`` allows.
        """
        session = self._client.new_session()
        limiter = trio.CapacityLimiter(parallel)
        fetched = 0

        async def get(cid: Cid) -> None:
            nonlocal fetched
            async with limiter:
                self._store.wanted.add(cid)
                try:
                    await session.get_block(cid, peer, block_timeout)
                except Exception as exc:  # py-libp2p raises its own and plain errors alike
                    log.debug("fetching %s failed: %r", cid, exc)
                finally:
                    self._store.wanted.discard(cid)
            if not self.blocks.has(cid):
                raise RemoteError(f"peer {peer} did not deliver block {cid} of {root}", cid=cid)
            fetched += 1

        level: list[tuple[Cid, int]] = [(root, max_size)]  # (cid, bytes it may hold), one DAG level at a time
        for _ in range(unixfs.MAX_DEPTH + 1):
            missing = [cid for cid, _ in level if not self.blocks.has(cid)]
            try:
                async with trio.open_nursery() as nursery:
                    for cid in missing:
                        nursery.start_soon(get, cid)
            except BaseExceptionGroup as group:
                errors = group.subgroup(FlairError)
                if errors is None:
                    raise
                raise errors.exceptions[0] from None
            level = [child for cid, allowed in level
                     for child in unixfs.children(root, cid, self.blocks.get(cid), allowed)]
            if not level:
                return fetched
        raise IntegrityError(f"DAG under {root} is deeper than {unixfs.MAX_DEPTH}", cid=root)
