"""Dropping connections that no longer carry anything, so they are dialled afresh.

Measured on the emulated internet: when a site's link is cut for 30 s, py-libp2p keeps every connection that
crossed it registered, and after the link returns they stay wedged: Yamux notices nothing, a new stream waits out
its 10 s negotiation, and a fetch under way waits out its block timeout. The node then keeps asking peers it
cannot reach, and nothing redials them (the bootstrap node and the relay included: they count as connected).

So every ``EVERY`` seconds the node pings each connected peer (``/ipfs/ping/1.0.0``, which every libp2p host
answers) within ``TIMEOUT``; after ``MISSES`` pings in a row go unanswered, it closes the connections to that peer
that were open at the first of them. One opened since (the peer dialling back over a link that returned, or
through its relay) stays: a ping goes over whichever connection py-libp2p prefers, a stale direct one before a
fresh relayed one, and a fetch may already run on the fresh one.
What needs the peer dials it again: the catch-up redials bootstrap peers, a node behind NAT reserves a relay slot
again, discovery looks up its repositories' nodes, and a fetch resumes where it stopped (the blocks it got are
kept). A ping waits behind whatever is queued on the same connection: ``TIMEOUT`` leaves room for a few
megabytes on a slow link, and ``MISSES`` makes one slow answer no reason to drop anything. A connection that
merely paused (a link down for 30 s with nothing in flight) survives, and carries on at once when the link returns:
only silence of about 45 s closes one.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import trio
from libp2p.host.ping import PingService

from ..core.errors import RemoteError
from .host import Host, Peer, close_connections, connections, map_libp2p_errors

log = logging.getLogger(__name__)

EVERY = 10.0  # s between two rounds of pings
TIMEOUT = 15.0  # s a ping has to come back
MISSES = 3  # unanswered pings in a row before the connections are closed (about 45 s of silence)
MAX_PINGS = 16  # pings under way at once


class Liveness:
    """Pings every peer of ``host`` and closes the connections of those that stopped answering."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.ping = PingService(host)  # type: ignore[arg-type]  # a py-libp2p host is an IHost
        self.misses: Counter[str] = Counter()
        self._suspects: dict[str, list[Any]] = {}  # peer -> its connections at the first of its missed pings
        self.counts: Counter[str] = Counter()  # pings, missed, dropped

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        slots = trio.Semaphore(MAX_PINGS)
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                await trio.sleep(EVERY)
                peers = list(self.host.get_connected_peers())
                for name in set(self.misses) - {str(p) for p in peers}:
                    del self.misses[name]  # gone: forgotten
                    self._suspects.pop(name, None)
                for peer in peers:
                    await slots.acquire()
                    nursery.start_soon(self._check, peer, slots)

    async def _check(self, peer: Peer, slots: trio.Semaphore) -> None:
        name = str(peer)
        try:
            self.counts["pings"] += 1
            answered = False
            with trio.move_on_after(TIMEOUT):
                try:
                    with map_libp2p_errors(f"pinging {peer}"):
                        await self.ping.ping(peer, 1)
                    answered = True
                except RemoteError as exc:
                    log.debug("%s", exc)
            if answered:
                self.misses.pop(name, None)
                self._suspects.pop(name, None)
                return
            self.counts["missed"] += 1
            self.misses[name] += 1
            if self.misses[name] == 1:
                self._suspects[name] = connections(self.host, peer)
            if self.misses[name] >= MISSES:
                del self.misses[name]
                stale = self._suspects.pop(name, [])
                self.counts["dropped"] += 1
                closed = await close_connections(self.host, peer, stale)
                log.info("peer %s answered none of %d pings: %d of its connections closed, to be dialled afresh",
                         peer, MISSES, closed)
        finally:
            slots.release()

    def status(self) -> dict[str, Any]:
        return dict(self.counts)
