"""The node's peer-to-peer side: gossip of what it signs, intake of what peers announce, and catch-up.

- Announcing: records signed here (``RepoSet.outbox``: commits, branch moves, membership changes) are packed
  into as few announcements as fit and published on their repository's topic: a lone record at once, a burst
  at most every ``ANNOUNCE_EVERY`` seconds, many records a message (each message costs every node several
  transport frames).
- Intake: every announcement is checked (``protocol.announce.check``) before gossip delivers or relays it.
  Accepted ones are noted as they arrive and taken in batches in a worker thread: membership changes in
  order, per branch only the move that comes last. Commits (whose payloads must come as blocks first) and
  anything this node is behind on are pulled (``protocol.sync``): from the publisher if connected, else from
  connected peers, each second for ``WANT_FOR`` seconds; one pull at a time per repository and peer, however
  many announcements ask for it.
- Catch-up: every ``sync_interval`` seconds the node dials its bootstrap peers if it lost them and pulls each
  repository from every connected peer that is a member of it, so a node that was offline or cut off ends
  up with what its peers hold.

Bad input (announcements failing their checks) is counted per peer and logged once per peer per minute.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import Any

import trio

from ..api.registry import Param, Registry
from ..core.errors import FlairError, IntegrityError
from ..core.ids import CommitId, PeerId, RepoId, short
from ..core.refs import BranchMove
from ..network.bitswap import BlockExchange
from ..network.gossip import BadInputLog
from ..network.gossipsub import GossipSub
from ..network.host import connect, member_key, peer_addrs, peer_from_text
from ..protocol import announce, rounds, sync
from ..storage.repo import now_ms
from ..storage.repos import Outgoing, RepoSet

log = logging.getLogger(__name__)

WANT_FOR = 60.0  # s to keep pulling an announced commit this node lacks
MAX_WANTED = 10_000  # announced commits awaited per repository
ANNOUNCE_EVERY = 0.05  # s between two announcing rounds: a lone record goes at once, a burst in few messages
INTAKE_QUEUE = 4096  # accepted announcements waiting to be written; beyond, they are pulled instead
INTAKE_BATCH = 256  # announcements taken per worker-thread call
ARRIVALS = 100_000  # records remembered for ``node.arrivals`` and ``node.announced`` (measuring propagation)
MAX_PULLS = 32  # pulls running at once; more requests wait for the next catch-up round
REFUSED_MERGES = 20  # refused round merges remembered for `flair status`
MAX_PEERS_COUNTED = 4096  # peers whose refused announcements are counted (the least offending forgotten first)


class P2PService:
    def __init__(self, host: Any, exchange: BlockExchange, repos: RepoSet, *, bootstrap: tuple[str, ...] = (),
                 sync_interval: float = 30.0) -> None:
        self.host, self.exchange, self.repos = host, exchange, repos
        self.bootstrap, self.sync_interval = bootstrap, sync_interval
        self.gossip = GossipSub(host)
        self._joined: set[RepoId] = set()
        self._wake = trio.Event()
        self._pulling: set[tuple[RepoId, str]] = set()
        #: Commits announced but not here yet: who published each, and until when to keep asking.
        self._wanted: dict[RepoId, dict[CommitId, tuple[str, float]]] = {}
        self._again: set[tuple[RepoId, str]] = set()
        self._nursery: trio.Nursery | None = None
        self._bad_log = BadInputLog()
        self._checked: OrderedDict[bytes, announce.Announcement] = OrderedDict()  # accepted, not yet taken in
        self.bad_input: Counter[str] = Counter()  # peer -> announcements refused
        self.counts: Counter[str] = Counter()  # announced, accepted, replays, lagging, pulls, pull_failures
        #: (kind, record id, branch or "", signed ms, arrived ms) of records taken from gossip, newest last.
        self.arrivals: deque[tuple[str, str, str, int, int]] = deque(maxlen=ARRIVALS)
        #: (kind, record id, queued ms, published ms) of records this node announced, newest last.
        self.announced: deque[tuple[str, str, int, int]] = deque(maxlen=ARRIVALS)
        #: The latest round merges this node refused to follow (``rounds.check_move`` failed), newest last.
        self.refused_merges: deque[dict[str, Any]] = deque(maxlen=REFUSED_MERGES)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.gossip.run)
            for repo in await trio.to_thread.run_sync(self.repos.all):
                await self._join(repo.id)
            nursery.start_soon(self._announce_loop)
            nursery.start_soon(self._intake_loop)
            nursery.start_soon(self._catch_up_loop)
            nursery.start_soon(self._wanted_loop)
            task_status.started()

    async def pull_from(self, repo: RepoId, address: str) -> dict[str, Any]:
        """Catch ``repo`` up with the node at multiaddr ``address`` now (a clone if it is new here)."""
        peer = await connect(self.host, address)
        result = await sync.pull(self.repos, repo, sync.PeerSource(self.host, peer, self.exchange))
        self._refused_merges(repo, result.refused_merges)
        await self._join(repo)
        return result.json()

    def wake(self) -> None:
        """Something was signed here: announce it."""
        self._wake.set()

    def status(self) -> dict[str, Any]:
        peers = []
        for peer in self.host.get_connected_peers():
            peers.append({"peer": str(peer), "key": member_key(peer), "addrs": peer_addrs(self.host, peer),
                          "bad_announcements": self.bad_input.get(str(peer), 0)})
        return {"gossip": self.gossip.status(), "announcements": dict(self.counts), "peers": peers,
                "bad_announcements": dict(self.bad_input), "topics": sorted(announce.topic(r) for r in self._joined),
                "refused_merges": list(self.refused_merges)}

    def _refused_merges(self, repo: RepoId, refused: list[tuple[BranchMove, str]]) -> None:
        """Count and remember round merges this node would not follow: ``flair status`` shows them."""
        for move, why in refused:
            if any(m["commit"] == move.commit for m in self.refused_merges):
                continue  # the same merge again, from another peer or at the next catch-up
            self.counts["refused_merges"] += 1
            self.refused_merges.append({"repo": repo, "branch": move.branch, "commit": move.commit,
                                        "author": move.author, "reason": why})

    # -- announcing ----------------------------------------------------------------------------------------

    async def _announce_loop(self) -> None:
        last = -ANNOUNCE_EVERY
        while True:
            with trio.move_on_after(1.0):  # woken at once after API calls; the timeout catches any other writer
                await self._wake.wait()
            self._wake = trio.Event()
            if trio.current_time() - last < ANNOUNCE_EVERY:  # a burst: let records gather into fewer messages
                await trio.sleep(ANNOUNCE_EVERY - (trio.current_time() - last))
            last = trio.current_time()
            items: dict[RepoId, list[Outgoing]] = {}
            while self.repos.outbox:
                outgoing = self.repos.outbox.popleft()
                items.setdefault(outgoing.repo, []).append(outgoing)
            for repo, records in items.items():
                await self._join(repo)
                try:
                    messages = announce.pack(repo, [(r.kind, r.record) for r in records],
                                             self.gossip.max_message_size)
                except FlairError as exc:  # a record too large to announce: peers get it by pulling
                    log.info("not announcing in %s: %s", short(repo), exc)
                    continue
                for message in messages:
                    try:
                        await self.gossip.publish(announce.topic(repo), message)
                    except FlairError as exc:
                        log.warning("announcing in %s failed: %s", short(repo), exc)
                    self.counts["announced"] += 1
                published = now_ms()
                self.announced.extend((r.kind, r.record_id, r.queued_ms, published) for r in records)

    async def _join(self, repo: RepoId) -> None:
        if repo not in self._joined:
            self._joined.add(repo)
            await self.gossip.join(announce.topic(repo), self._validator(repo))

    # -- intake --------------------------------------------------------------------------------------------

    def _validator(self, repo_id: RepoId) -> Any:
        def validate(forwarder: PeerId, data: bytes) -> bool:
            try:
                repo = self.repos.open_id(repo_id)
                taken = announce.decode(data, repo_id)
                announce.check(repo, taken, now_ms())
                self._checked[data] = taken  # delivered next: spare the intake decoding it again
                if len(self._checked) > INTAKE_QUEUE:
                    self._checked.popitem(last=False)
                return True
            except announce.Replay:
                self.counts["replays"] += 1
            except announce.Lagging:
                self.counts["lagging"] += 1
                self._pull_later(repo_id, forwarder)
            except FlairError as exc:
                if forwarder not in self.bad_input and len(self.bad_input) >= MAX_PEERS_COUNTED:
                    del self.bad_input[min(self.bad_input, key=self.bad_input.__getitem__)]
                self.bad_input[forwarder] += 1
                self._bad_log.warn(forwarder, "announcement refused in %s: %s", short(repo_id), exc)
            return False
        return validate

    async def _intake_loop(self) -> None:
        """Note each accepted announcement as it arrives; take them in batches (``_take_loop``), so records are
        written while gossip keeps flowing."""
        send, receive = trio.open_memory_channel[tuple[RepoId, announce.Announcement, str]](INTAKE_QUEUE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._take_loop, receive)
            async for message in self.gossip.messages:
                repo_id = RepoId(message.topic.removeprefix(announce.TOPIC_PREFIX))
                try:
                    taken = self._checked.pop(message.data, None) or announce.decode(message.data, repo_id)
                except FlairError as exc:  # checked by the validator already: not expected
                    log.warning("announcement in %s from %s unreadable: %s", short(repo_id), message.from_peer, exc)
                    continue
                arrived = now_ms()
                self.arrivals.extend([("commit", c.id, "", c.timestamp_ms, arrived) for c in taken.commits] +
                                     [("move", m.id, m.branch, m.timestamp_ms, arrived) for m in taken.moves])
                self.counts["accepted"] += 1
                try:
                    send.send_nowait((repo_id, taken, message.from_peer))
                except trio.WouldBlock:  # writing fell behind: what was missed comes by pulling
                    self.counts["intake_overflow"] += 1
                    self._pull_later(repo_id, message.from_peer)

    async def _take_loop(self, receive: trio.MemoryReceiveChannel[tuple[RepoId, announce.Announcement, str]]) -> None:
        async for first in receive:
            batch = [first]
            while len(batch) < INTAKE_BATCH:
                try:
                    batch.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            by_repo: dict[RepoId, list[tuple[announce.Announcement, str]]] = {}
            for repo_id, taken, publisher in batch:
                by_repo.setdefault(repo_id, []).append((taken, publisher))
            for repo_id, messages in by_repo.items():
                try:
                    missing = await trio.to_thread.run_sync(self._take, repo_id, messages)
                except FlairError as exc:  # checked on arrival; the state moved meanwhile: catch up instead
                    log.info("announcements in %s not taken: %s", short(repo_id), exc)
                    missing = {cid: publisher for taken, publisher in messages
                               for cid in [*(c.id for c in taken.commits), *(m.commit for m in taken.moves)]}
                wanted = self._wanted.setdefault(repo_id, {})
                for cid, publisher in missing.items():
                    if len(wanted) < MAX_WANTED:  # beyond, the periodic catch-up brings them
                        wanted.setdefault(cid, (publisher, trio.current_time() + WANT_FOR))
                self._pull_wanted(repo_id)

    def _take(self, repo_id: RepoId, messages: list[tuple[announce.Announcement, str]]) -> dict[CommitId, str]:
        """Take a batch of announcements about one repository (in a worker thread): membership changes in
        order, then per branch only the move that comes last; returns the commits to pull (by publisher): the
        announced ones (their payloads come as blocks) and those of moves not taken for want of them."""
        repo = self.repos.open_id(repo_id)
        for taken, _ in messages:
            for change in taken.changes:
                repo.accept_membership(change)
        latest: dict[str, tuple[BranchMove, str]] = {}
        pull: dict[CommitId, str] = {}
        for taken, publisher in messages:
            pull.update((c.id, publisher) for c in taken.commits if not repo.objects.has(c.id))
            # proof and anchor records come by pulling from their publisher (a proof record with its blocks)
            pull.update((CommitId(c.id), publisher) for c in (*taken.proofs, *taken.anchors)
                        if not repo.objects.has(c.id))
            for move in taken.moves:
                if move.branch not in latest or move.comes_after(latest[move.branch][0]):
                    latest[move.branch] = (move, publisher)
        for move, publisher in latest.values():
            if not repo.objects.has(move.commit):
                pull[move.commit] = publisher
                continue
            try:
                rounds.check_move(repo, move)
            except IntegrityError as exc:  # a forged or unentitled round merge: the branch stays where it is
                self._refused_merges(repo_id, [(move, str(exc))])
                log.warning("refused a move of %s in %s by %s: %s", move.branch, short(repo_id), short(move.author),
                            exc)
                continue
            repo.accept_move(move)
        return pull

    def _pull_wanted(self, repo_id: RepoId) -> None:
        """Pull the commits this node was told of and lacks: from their publisher if connected, else from every
        connected peer (they relayed the news, so they are fetching it too); again each second until they
        arrive or ``WANT_FOR`` passes (catch-up covers the rest)."""
        wanted = self._wanted.get(repo_id, {})
        repo = self.repos.open_id(repo_id)
        now = trio.current_time()
        for cid, (_, until) in list(wanted.items()):
            if until < now or repo.objects.has(cid):
                del wanted[cid]
        if not wanted:
            self._wanted.pop(repo_id, None)
            return
        connected = [str(p) for p in self.host.get_connected_peers()]
        publishers = {publisher for publisher, _ in wanted.values() if publisher in connected}
        for peer in publishers or connected[:MAX_PULLS // 4]:
            self._pull_later(repo_id, peer)

    # -- catching up ---------------------------------------------------------------------------------------

    def _pull_later(self, repo: RepoId, peer: str) -> None:
        """Pull ``repo`` from ``peer`` soon: once, however often asked while a pull of it is under way."""
        key = (repo, peer)
        if key in self._pulling:
            self._again.add(key)
        elif len(self._pulling) < MAX_PULLS and self._nursery is not None:
            self._pulling.add(key)
            self._nursery.start_soon(self._pull, key)

    async def _pull(self, key: tuple[RepoId, str]) -> None:
        repo, peer = key
        try:
            while True:
                self._again.discard(key)
                self.counts["pulls"] += 1
                try:
                    peer_id = peer_from_text(peer)
                    result = await sync.pull(self.repos, repo, sync.PeerSource(self.host, peer_id, self.exchange))
                    self._refused_merges(repo, result.refused_merges)
                    await self._join(repo)
                    if result.commits or result.changes or result.moved:
                        log.info("pulled %s from %s: %s", short(repo), peer, result.json())
                except FlairError as exc:
                    self.counts["pull_failures"] += 1
                    log.info("pulling %s from %s failed: %s", short(repo), peer, exc)
                if key not in self._again:
                    return
        finally:
            self._pulling.discard(key)

    async def _wanted_loop(self) -> None:
        while True:
            await trio.sleep(1.0)
            for repo_id in list(self._wanted):
                self._pull_wanted(repo_id)

    async def _catch_up_loop(self) -> None:
        while True:
            connected = {str(p) for p in self.host.get_connected_peers()}
            for address in self.bootstrap:
                if address.rsplit("/p2p/", 1)[-1] not in connected:
                    try:
                        await connect(self.host, address)
                    except FlairError as exc:
                        log.debug("bootstrap peer %s: %s", address, exc)
            for repo in await trio.to_thread.run_sync(self.repos.all):
                membership = await trio.to_thread.run_sync(repo.members.current)
                for peer in self.host.get_connected_peers():
                    key = member_key(peer)
                    if key is not None and membership.role(key, epoch=membership.epoch, at_ms=now_ms()):
                        self._pull_later(repo.id, str(peer))
            await trio.sleep(self.sync_interval)


def register_methods(registry: Registry, service: Callable[[], P2PService]) -> None:
    """The daemon's API methods that need its peer-to-peer side (``service`` raises if it is not running)."""

    @registry.method(
        "node.arrivals", "Records this node took from gossip lately, oldest first, for measuring propagation: "
        "kind, id, branch (moves), signed and arrival time (Unix ms, this node's clock).",
        params=(Param("since_ms", {"type": "integer", "minimum": 0}, "only those arrived at or after this time",
                      required=False, default=0),),
        result={"type": "array"})
    async def arrivals(since_ms: int) -> list[dict[str, Any]]:
        return [{"kind": k, "id": i, "branch": b, "signed_ms": s, "arrived_ms": a}
                for k, i, b, s, a in service().arrivals if a >= since_ms]

    @registry.method(
        "node.announced", "Records this node signed and announced lately, oldest first, for measuring propagation: "
        "kind, id, when it was stored and handed to the announcer (queued) and when its announcement was published "
        "(Unix ms, this node's clock).",
        params=(Param("since_ms", {"type": "integer", "minimum": 0}, "only those published at or after this time",
                      required=False, default=0),),
        result={"type": "array"})
    async def announced(since_ms: int) -> list[dict[str, Any]]:
        return [{"kind": k, "id": i, "queued_ms": q, "published_ms": p}
                for k, i, q, p in service().announced if p >= since_ms]
