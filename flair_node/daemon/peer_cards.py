"""Which member key each connected peer has proved it holds, per repository (``protocol.hello``'s cards).

A node greets each connected peer once it is connected and again whenever the node's own repositories or
memberships change (their membership heads, checked every ``GREET_EVERY`` seconds): it sends its cards for
that peer on ``/flair/hello/1.0.0`` and gets the peer's cards back in the reply. Whoever greets first, both
learn what the other proves. The last well-formed cards of each connected peer are kept, so that when this node
gets a new key (it cloned a repository, a key was rotated) it reads them again and needs no second greeting; a
peer that disconnects is forgotten there, and greeted again if it comes back.

Everything is bounded: ``MAX_PEERS`` peers remembered (the least recently heard forgotten), a hello's cards
capped (``protocol.hello.MAX_CARDS``) and its size by ``network.rpc``. A peer whose hello does not parse, or
whose card opens under a repository's key but does not verify, is counted as bad input and logged once a
minute (``status``); what it proved before stays until it proves something else.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import trio

from ..core.errors import FlairError
from ..core.ids import PublicKey, RepoId
from ..network import rpc
from ..network.gossip import BadInputLog, Offences
from ..network.host import Host, peer_from_text
from ..protocol import hello
from ..storage.repos import RepoSet

log = logging.getLogger(__name__)

GREET_EVERY = 0.5  # s between two looks for peers to greet
MAX_PEERS = 4096
MAX_GREETINGS = 8  # greetings under way at once


class PeerCards:
    """The member keys peers of ``host`` proved to this node (``identity`` of ``repos``); ``on_learned(repo,
    peer)`` is called when a peer proves a key in a repository it had not proved one in."""

    def __init__(self, host: Host, repos: RepoSet, *,
                 on_learned: Callable[[RepoId, str], object] = lambda repo, peer: None) -> None:
        self.host, self.repos, self.on_learned = host, repos, on_learned
        self.me = str(host.get_id())
        self._known: OrderedDict[str, dict[RepoId, PublicKey]] = OrderedDict()
        self._heard: OrderedDict[str, Any] = OrderedDict()  # the last cards of each peer
        self._greeted: dict[str, frozenset[tuple[RepoId, str]]] = {}  # what this node held when it last greeted
        self._mine: frozenset[tuple[RepoId, str]] = frozenset()
        self.bad = Offences(BadInputLog(time.monotonic))
        self.served: rpc.Served | None = None

    def member(self, repo: RepoId, peer: str) -> PublicKey | None:
        """The member key ``peer`` proved it holds in ``repo``, if any (whether it holds a role is the caller's
        question, asked of its own membership view)."""
        return self._known.get(peer, {}).get(repo)

    def key(self, peer: str) -> PublicKey | None:
        """The member key ``peer`` proved in any repository (one node has one), if any."""
        return next(iter(self._known.get(peer, {}).values()), None)

    def status(self) -> dict[str, Any]:
        return {"peers": len(self._known), "bad": dict(self.bad.counts),
                **({"served": self.served.status()} if self.served else {})}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.served = rpc.serve(self.host, hello.PROTOCOL, self._on_hello)
        task_status.started()
        limit = trio.CapacityLimiter(MAX_GREETINGS)
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    mine = await trio.to_thread.run_sync(self._holdings)
                    if mine != self._mine:
                        self._mine = mine
                        for heard in list(self._heard):  # a new key may open cards heard before
                            await self._read(heard, self._heard[heard])
                    connected = {str(peer) for peer in self.host.get_connected_peers()}
                    for gone in (self._heard.keys() | self._greeted.keys()) - connected:
                        self._heard.pop(gone, None)  # greeted again, and heard again, if it comes back
                        self._greeted.pop(gone, None)
                    for peer in connected:
                        if self._greeted.get(peer) != mine:
                            self._greeted[peer] = mine
                            nursery.start_soon(self._greet, peer, limit)
                except Exception as exc:  # this node's own trouble (a damaged repository): the next look retries
                    log.warning("greeting peers failed: %r", exc)
                await trio.sleep(GREET_EVERY)

    async def _greet(self, peer: str, limit: trio.CapacityLimiter) -> None:
        async with limit:
            try:
                mine = await trio.to_thread.run_sync(self._cards, peer)
                await self._read(peer, await hello.greet(self.host, peer_from_text(peer), mine))
            except FlairError as exc:  # gone, or not a Flair node: greeted again once this node's holdings change
                log.debug("greeting %s failed: %s", peer, exc)

    async def _on_hello(self, peer: str, request: Any) -> Any:
        await self._read(peer, request.get("cards") if isinstance(request, dict) else None)
        return {"cards": await trio.to_thread.run_sync(self._cards, peer)}

    async def _read(self, peer: str, cards: Any) -> None:
        try:
            found = await trio.to_thread.run_sync(lambda: hello.read(cards, self.repos.all(), self.me, peer))
        except FlairError as exc:
            self.bad.add(peer, "a hello that does not hold: %s", exc)
            return
        self._heard[peer] = cards  # well-formed: kept while the peer is connected, read again on a new key
        self._heard.move_to_end(peer)
        while len(self._heard) > MAX_PEERS:
            self._heard.popitem(last=False)
        before = self._known.get(peer, {})
        self._known[peer] = {**before, **found}
        self._known.move_to_end(peer)
        while len(self._known) > MAX_PEERS:
            self._known.popitem(last=False)
        for repo in found.keys() - before.keys():
            self.on_learned(repo, peer)

    def _cards(self, peer: str) -> list[dict[str, bytes]]:
        return hello.cards(self.repos.all(), self.repos.identity, self.me, peer)

    def _holdings(self) -> frozenset[tuple[RepoId, str]]:
        return frozenset((repo.id, repo.members.current().head) for repo in self.repos.all())
