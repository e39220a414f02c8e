"""Finding the nodes of this node's repositories with no address given: locators in the DHT.

Every ``interval`` seconds (the sync interval), and at once when woken (this node signed something), the service:

- works out which locators this node provides (``protocol.locators.provided``, in a worker thread, remembered per
  membership head), publishes the new ones and those last published ``REPROVIDE_EVERY`` ago (a node's addresses
  change; one no DHT peer took is tried again after ``RETRY_PROVIDE``), and stops republishing those it no
  longer provides (an invitation window that ended, a role that lapsed);
- for each repository where it is connected to fewer than ``WANT_PEERS`` member peers, looks up the members'
  locator (at once for a repository new here, then at most every ``LOOK_UP_EVERY`` seconds, or
  ``LOOK_UP_ALONE_EVERY`` while connected to none of them) and dials what it finds, at most ``MAX_DIALS``
  providers a lookup. Once connected, a peer proves what it is through member cards (``peer_cards``); a provider
  that lied gets nothing.

``candidates`` serves a clone with no address (``P2PService.pull_from``): the providers of this node's invitation
locator, and of the members' locator where this node holds the first key (a member re-cloning), looked up again
each ``SEARCH_EVERY`` seconds for up to ``SEARCH_FOR`` while none is found (an invitation just signed takes a pass
to be published). ``dial`` tries a
provider's published addresses one after the other, each for at most ``DIAL_TIMEOUT``; ``discovered`` keeps what
the last lookups found, for ``flair status``.

A pass publishes, then looks up, up to ``AT_ONCE`` locators or repositories at a time: a publication can take
``network.discovery.PROVIDE_TIMEOUT`` and a lookup ``FIND_TIMEOUT``, so one by one, a node with many repositories
(or cut off from the DHT) would take minutes a pass. Each repository and each locator is isolated: whatever one
raises is logged and the pass goes on.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from ..core.errors import FlairError
from ..core.ids import RepoId, short
from ..network.discovery import Discovery, Found
from ..network.host import Host, Peer, connect
from ..protocol import locators
from ..storage.repo import now_ms
from ..storage.repos import RepoSet

log = logging.getLogger(__name__)

REPROVIDE_EVERY = 3600.0  # s between two publications of the same locator
RETRY_PROVIDE = 3.0  # s before publishing again a locator no DHT peer took (none may be known yet)
WANT_PEERS = 4  # member peers a repository's node wants; with fewer it looks up more
LOOK_UP_EVERY = 60.0  # s between two lookups for the same repository
LOOK_UP_ALONE_EVERY = 2.0  # the same, while this node is connected to none of the repository's nodes
MAX_DIALS = 8  # providers dialled from one lookup (and tried by one clone)
DIAL_TIMEOUT = 10.0  # s for one address
MAX_DISCOVERED = 64  # lookups remembered for status
SEARCH_FOR = 20.0  # s a clone keeps looking when the DHT names no provider yet (records spread in seconds)
SEARCH_EVERY = 1.0  # s between two lookups of a clone
AT_ONCE = 4  # publications, or lookups, a pass runs at a time


class DiscoveryService:
    def __init__(self, host: Host, finder: Discovery, repos: RepoSet, *,
                 member_peers: Callable[[RepoId], int], interval: float = 30.0,
                 dial: Callable[[str], Awaitable[Peer]] | None = None) -> None:
        self.host, self.finder, self.repos = host, finder, repos
        self._dial: Callable[[str], Awaitable[Peer]] = dial or partial(connect, host)
        self.member_peers, self.interval = member_peers, interval
        self._due: dict[bytes, float] = {}  # locator -> when to provide it next (trio clock)
        self._published: set[bytes] = set()  # locators some DHT peer took the last time
        #: repository -> (membership head, when worked out, its locators)
        self._mine: dict[RepoId, tuple[str, float, list[bytes]]] = {}
        #: the latest lookups: what each found, newest last
        self.discovered: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._looked: dict[RepoId, float] = {}  # repository -> when its peers were last looked up (trio clock)
        self._pass_done = trio.Event()
        self._wake = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self.step()
            except Exception:  # this node's own trouble (its disk): the next pass tries again
                log.exception("a discovery pass failed")
            self._pass_done.set()
            self._pass_done = trio.Event()
            with trio.move_on_after(self.interval):
                await self._wake.wait()
            self._wake = trio.Event()

    def wake(self) -> None:
        """Something was signed here (an invitation, say): make the next pass now."""
        self._wake.set()

    async def step(self) -> None:
        """One pass: publish, withdraw, and look up where peers are few."""
        wanted = await trio.to_thread.run_sync(self._wanted, trio.current_time())
        now = trio.current_time()
        limit = trio.CapacityLimiter(AT_ONCE)
        async with trio.open_nursery() as nursery:
            for repo_id, mine in wanted.items():
                for locator in mine:
                    if now >= self._due.get(locator, now):
                        nursery.start_soon(self._provide, repo_id, locator, now, limit)
        keep = {locator for mine in wanted.values() for locator in mine}
        for locator in set(self._due) - keep:
            del self._due[locator]
            self._published.discard(locator)
            self.finder.withdraw(locator)
        for repo_id in set(self._looked) - set(wanted):
            del self._looked[repo_id]
        async with trio.open_nursery() as nursery:
            for repo_id, mine in wanted.items():
                peers = self.member_peers(repo_id) if mine else WANT_PEERS
                every = LOOK_UP_EVERY if peers else LOOK_UP_ALONE_EVERY  # with no member peer, it is cut off: sooner
                if peers < WANT_PEERS and now - self._looked.get(repo_id, -every) >= every:
                    self._looked[repo_id] = now
                    nursery.start_soon(self._look_up_isolated, repo_id, mine[0], limit)

    async def _provide(self, repo_id: RepoId, locator: bytes, now: float, limit: trio.CapacityLimiter) -> None:
        async with limit:
            try:
                published = await self.finder.provide(locator)
            except Exception as exc:  # one locator's trouble never stops the others'
                log.warning("publishing a locator of %s failed: %r", short(repo_id), exc)
                published = False
        self._due[locator] = now + (REPROVIDE_EVERY if published else RETRY_PROVIDE)
        if published:
            self._published.add(locator)
        else:
            self._published.discard(locator)
            log.debug("no DHT peer took a locator of %s; trying again in %g s", short(repo_id), RETRY_PROVIDE)

    async def _look_up_isolated(self, repo_id: RepoId, locator: bytes, limit: trio.CapacityLimiter) -> None:
        async with limit:
            try:
                await self._look_up(repo_id, locator)
            except Exception as exc:  # one repository's trouble never stops the others'
                log.warning("looking up peers of %s failed: %r", short(repo_id), exc)

    async def wait_pass(self) -> None:
        """Until the pass under way (or the next) ends."""
        await self._pass_done.wait()

    def _wanted(self, clock: float) -> dict[RepoId, list[bytes]]:
        """Each kept repository's locators, worked out again where its membership moved, or hourly (an invitation
        window closes with time, not with a change). In a worker thread."""
        me, at = self.repos.identity.public_key, now_ms()
        out: dict[RepoId, tuple[str, float, list[bytes]]] = {}
        for repo in self.repos.all():
            try:
                head = repo.members.current().head
                known = self._mine.get(repo.id)
                fresh = known is not None and known[0] == head and clock - known[1] < REPROVIDE_EVERY
                out[repo.id] = known if fresh and known is not None else \
                    (head, clock, locators.provided(repo, me, now_ms=at))
            except Exception as exc:  # one repository's trouble never stops the others'
                log.warning("working out the locators of %s failed: %r", short(repo.id), exc)
        self._mine = out
        return {repo: mine for repo, (_, _, mine) in out.items()}

    async def _look_up(self, repo: RepoId, locator: bytes) -> list[Peer]:
        found = await self.finder.find(locator)
        connected = {str(p) for p in self.host.get_connected_peers()}
        fresh = [f for f in found if f.peer not in connected][:MAX_DIALS]
        dialled = [peer for f in fresh if (peer := await self.dial(f)) is not None]
        self._remember(repo, found, dialled)
        return dialled

    async def candidates(self, repo: RepoId) -> list[Found]:
        """The nodes a clone of ``repo`` with no address may pull from (see the module docstring)."""
        wanted = [locators.invitation(repo, self.repos.identity.public_key)]
        try:
            own = locators.members_of(await trio.to_thread.run_sync(self.repos.open_id, repo))
            if own is not None:
                wanted.append(own)
        except FlairError:
            pass  # not kept here: a first clone
        found: dict[str, Found] = {}
        with trio.move_on_after(SEARCH_FOR):
            while True:
                for locator in wanted:
                    for provider in await self.finder.find(locator):
                        found.setdefault(provider.peer, provider)
                if found:
                    break
                await trio.sleep(SEARCH_EVERY)
        result = list(found.values())[:MAX_DIALS]
        self._remember(repo, result, [])
        return result

    async def dial(self, found: Found) -> Peer | None:
        """Connect to ``found`` through the first of its addresses that answers; None if none does."""
        return await dial_found(self._dial, found)

    def addresses(self, peer: str) -> tuple[str, ...]:
        """The addresses the latest lookups found ``peer`` publishing, if any."""
        return tuple(dict.fromkeys(a for record in self.discovered.values() for f in record["found"]
                                   if f["peer"] == peer for a in f["addrs"]))

    def _remember(self, repo: RepoId, found: list[Found], dialled: list[Peer]) -> None:
        self.discovered[repo] = {"repo": repo, "at_ms": now_ms(), "found": [f.json() for f in found],
                                 "dialled": [str(p) for p in dialled]}
        self.discovered.move_to_end(repo)
        while len(self.discovered) > MAX_DISCOVERED:
            self.discovered.popitem(last=False)

    def status(self) -> dict[str, Any]:
        return {**self.finder.status(), "published": len(self._published),
                "discovered": list(self.discovered.values())}


async def dial_found(dial: Callable[[str], Awaitable[Peer]], found: Found) -> Peer | None:
    """Connect to ``found`` with ``dial`` through the first of its addresses that answers, each given
    ``DIAL_TIMEOUT``; None if none does. An address naming another peer than ``found``'s is skipped."""
    for address in found.addrs:
        # a provider record's addresses leave out the provider's own id (a relayed one ends in /p2p-circuit)
        full = address if address.endswith(f"/p2p/{found.peer}") else f"{address}/p2p/{found.peer}"
        if full.count("/p2p/") > 1 + full.count("/p2p-circuit"):
            continue  # naming another peer than the provider: whoever published it lied
        with trio.move_on_after(DIAL_TIMEOUT):
            try:
                return await dial(full)
            except FlairError as exc:
                log.debug("peer %s at %s: %s", found.peer, address, exc)
    return None
