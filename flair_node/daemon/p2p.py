"""The node's peer-to-peer side: gossip of what it signs, intake of what peers announce, and catch-up.

- Announcing: records signed here (``RepoSet.outbox``: commits, branch moves, membership changes) are packed
  into as few announcements as fit and published on their repository's topic: a lone record at once, a burst
  at most every ``ANNOUNCE_EVERY`` seconds, many records a message (each message costs every node several
  transport frames).
- Members only: each repository's topic is joined with a closed mesh (``network.gossip``) that admits the
  peers that proved a member key (``peer_cards``) of a current member in this node's view: a non-member is
  never told this node is on the topic, never sent or relayed an announcement, and what it sends there is
  ignored before any check.
- Intake: every announcement is checked (``protocol.announce.check``) before gossip delivers or relays it.
  Accepted ones are noted as they arrive and taken in batches in a worker thread: membership changes in
  order, per branch only the move that comes last. Commits (whose payloads must come as blocks first) are
  pulled (``protocol.sync``): from the publisher if connected, else from connected members, each second for
  ``WANT_FOR`` seconds. A pull's payloads are asked of the peer pulled from and the other connected members in
  turn (``peer_links``), those connected directly before those reached through a relay: when one lacks a payload,
  stalls or is cut off, the next is asked for the blocks still missing. Secure round messages are kept as they
  come, before the moves (a secure merge is checked against them), except a masked update whose blocks are not
  here yet: it is pulled like a commit (a pull brings it with its blocks).
- Lagging: an announcement this node cannot judge yet (``announce.Lagging``) would make it pull, so its
  forwarder is judged first: a forwarder that is not a current member of the repository is refused (counted as
  bad input; no stream is opened to it); a member is pulled from at most once per ``LAGGING_EVERY`` seconds.
  After that pull the announcement is checked again: if it now holds, it is taken; if not, the claim was
  false, it counts as bad input and the member's next claims are ignored for ``LAGGING_PENALTY`` seconds.
- One pull at a time per repository and peer, however many announcements ask for it and whether gossip, the
  catch-up or the API (``pull_from``, ``flair pull``) asks: a request while one runs joins it (one more pass
  after it), so no peer is ever asked for the same records and blocks twice at once.
- Catch-up: every ``sync_interval`` seconds the node dials its bootstrap peers if it lost them and pulls each
  repository from every connected peer that proved to be a member of it (and at once from one that just did),
  so a node that was offline or cut off ends up with what its peers hold. On the owner's node each pass also
  starts a new payload key where a member whose role has expired still holds the current one
  (``RepoSet.rotate_expired``): how an expiry stops reads.

Nothing a peer sends ends a loop here: each item (a message, a batch, a pull, a repository in a pass) is
isolated, and whatever it raises is logged and skipped. Bad input is counted per peer and logged once per
peer per minute (``network.gossip.Offences``): announcements refused (``bad_announcements`` in ``status``) and
pulls whose replies failed their checks or broke something (``bad_pulls``). A failure of this node's own
disk (``OSError``) is nobody's bad input.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from ..core.errors import FlairError, Forbidden, IntegrityError, InvalidInput, NotFound, RemoteError
from ..core.ids import CommitId, PeerId, RepoId, short
from ..core.refs import BranchMove
from ..core.round_messages import RoundMessage
from ..network.bitswap import BlockExchange
from ..network.gossip import BadInputLog, Offences
from ..network.gossipsub import GossipSub
from ..network.handlers import stream_guard
from ..network.host import Host, Peer, connect, peer_addrs, peer_from_text
from ..network.liveness import Liveness
from ..protocol import announce, rounds, sync
from ..protocol.rounds import RoundMemory
from ..storage.repo import Repository, now_ms
from ..storage.repos import Outgoing, RepoSet
from .discovery_service import DiscoveryService
from .peer_cards import PeerCards
from .peer_links import PeerLinks
from .reachability_service import ReachabilityService

log = logging.getLogger(__name__)

WANT_FOR = 60.0  # s to keep pulling an announced commit this node lacks
MAX_WANTED = 10_000  # announced commits awaited per repository
ANNOUNCE_EVERY = 0.05  # s between two announcing rounds: a lone record goes at once, a burst in few messages
INTAKE_QUEUE = 4096  # accepted announcements waiting to be written; beyond, they are pulled instead
INTAKE_BATCH = 256  # announcements taken per worker-thread call
ARRIVALS = 100_000  # records remembered for ``node.arrivals`` and ``node.announced`` (measuring propagation)
MAX_PULLS = 32  # pulls running at once; more requests wait for the next catch-up round
REFUSED_MERGES = 20  # refused round merges remembered for `flair status`
LAGGING_EVERY = 5.0  # s: a member's announcements this node is behind on start at most one pull from it this often
LAGGING_PENALTY = 60.0  # s a member's claims are ignored after a pull proved one false
MAX_LAGGING = 4096  # (repository, peer) pairs whose last claim-triggered pull is remembered


@dataclass(eq=False)
class _Pull:
    """A pull of one repository from one peer, and whoever waits for it (``pull_from``)."""

    again: bool = False  # asked for again while running: one more pass once this one ends
    claim: bytes | None = None  # the announcement that claimed this peer has news this node lacks (``Lagging``)
    done: trio.Event = field(default_factory=trio.Event)
    result: sync.PullResult | None = None  # what its passes brought, together
    error: FlairError | None = None  # the last pass's


class P2PService:
    def __init__(self, host: Host, exchange: BlockExchange, repos: RepoSet, *, memory: RoundMemory,
                 bootstrap: tuple[str, ...] = (), sync_interval: float = 30.0,
                 dial: Callable[[str], Awaitable[Peer]] | None = None) -> None:
        self.host, self.exchange, self.repos = host, exchange, repos
        #: Dials a multiaddr, relayed ones included (``network.relay.Relays.connect``).
        self.dial: Callable[[str], Awaitable[Peer]] = dial or partial(connect, host)
        #: Finds peers by locator (``daemon.discovery_service``), once running; None when the DHT is off.
        self.discovery: DiscoveryService | None = None
        #: Whether this node can be dialled, and its relay slots (``daemon.reachability_service``), once running.
        self.reachability: ReachabilityService | None = None
        #: Pings peers and drops connections that stopped answering (``network.liveness``), once running.
        self.liveness: Liveness | None = None
        #: The node's round memory: round merges peers announce are noted and checked there.
        self.memory = memory
        self.bootstrap, self.sync_interval = bootstrap, sync_interval
        self.gossip = GossipSub(host)
        #: Which member key each peer proved: a peer learned to be a member is pulled from at once.
        self.cards = PeerCards(host, repos, on_learned=self._learned)
        self._joined: set[RepoId] = set()
        self._wake = trio.Event()
        self._pulling: dict[tuple[RepoId, str], _Pull] = {}
        #: Commits announced but not here yet: who published each, and until when to keep asking.
        self._wanted: dict[RepoId, dict[CommitId, tuple[str, float]]] = {}
        #: When each (repository, peer) last started a pull by a claim (``Lagging``), or until when it may not.
        self._claimed: OrderedDict[tuple[RepoId, str], float] = OrderedDict()
        self._take_send, self._take_receive = trio.open_memory_channel[tuple[RepoId, announce.Announcement, str]](
            INTAKE_QUEUE)
        self._nursery: trio.Nursery | None = None
        #: Which peers a pull's payloads are asked of, and the peers dropped after a failed pull, dialled again.
        self.links = PeerLinks(host, lambda address: self.dial(address), member=self._member_of,
                               relayed_only=self._relayed_only,
                               known=lambda peer: self.discovery.addresses(peer) if self.discovery else ())
        # peer -> announcements refused; on a clock a worker thread can read (``_take`` reports from one)
        self._bad = Offences(BadInputLog(time.monotonic))
        self._refused_log = BadInputLog(time.monotonic)  # round messages refused when taken: nobody's fault
        self._bad_pulls = Offences()  # peer -> pulls whose replies failed their checks or broke something
        self._checked: OrderedDict[bytes, announce.Announcement] = OrderedDict()  # accepted, not yet taken in
        #: announced, accepted, replays, lagging (lagging_refused, lagging_limited, lagging_taken,
        #: lagging_unfounded), pulls, pull_failures, intake_overflow, take_failures, refused_merges
        self.counts: Counter[str] = Counter()
        #: (kind, record id, branch or "", signed ms, arrived ms) of records taken from gossip, newest last.
        self.arrivals: deque[tuple[str, str, str, int, int]] = deque(maxlen=ARRIVALS)
        #: (kind, record id, queued ms, published ms) of records this node announced, newest last.
        self.announced: deque[tuple[str, str, int, int]] = deque(maxlen=ARRIVALS)
        #: The latest round merges this node refused to follow (``rounds.check_move`` failed), newest last.
        self.refused_merges: deque[dict[str, Any]] = deque(maxlen=REFUSED_MERGES)

    @property
    def bad_input(self) -> Counter[str]:
        """Peer -> announcements refused."""
        return self._bad.counts

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.gossip.run)
            await nursery.start(self.cards.run)
            for repo in await trio.to_thread.run_sync(self.repos.all):
                await self._join(repo.id)
            nursery.start_soon(self._announce_loop)
            nursery.start_soon(self._intake_loop)
            nursery.start_soon(self._catch_up_loop)
            nursery.start_soon(self._wanted_loop)
            task_status.started()

    async def pull_from(self, repo: RepoId, address: str | None) -> dict[str, Any]:
        """Catch ``repo`` up with the node at multiaddr ``address`` now (a clone if it is new here), or with no
        address, with the first node discovery finds that serves it (``DiscoveryService.candidates``). A pull of
        ``repo`` from that peer under way is joined, not doubled: this waits for one more pass of it, and
        reports what its passes brought together."""
        if address is not None:
            return await self._pull_now(repo, await self.dial(address))
        if self.discovery is None:
            raise InvalidInput("no peer address given, and discovery is off (p2p.dht is \"off\")")
        found = await self.discovery.candidates(repo)
        failures = []
        for provider in found:
            peer = await self.discovery.dial(provider)
            if peer is None:
                failures.append(f"{provider.peer}: no address answered")
                continue
            try:
                return await self._pull_now(repo, peer)
            except FlairError as exc:  # a provider that does not serve it (or lied): the next one
                failures.append(f"{peer}: {exc}")
        if not found:
            raise NotFound(f"no node serving {short(repo)} was found in the DHT: was this node's key invited, and "
                           "does it reach a DHT server (p2p.bootstrap)? `flair clone --peer` takes a member node's "
                           "address instead", repo=repo)
        raise NotFound(f"none of the {len(found)} nodes the DHT named served {short(repo)}: {'; '.join(failures)}",
                       repo=repo)

    async def _pull_now(self, repo: RepoId, peer: Peer) -> dict[str, Any]:
        state = self._pull_later(repo, str(peer), force=True)
        if state is None:
            raise FlairError("the peer-to-peer service is not running")
        await state.done.wait()
        if state.result is None:
            raise state.error or RemoteError(f"pulling {short(repo)} from {peer} was stopped")
        return {**state.result.json(), "peer": str(peer)}

    def member_peers(self, repo_id: RepoId) -> int:
        """How many connected peers proved a member key of ``repo_id`` that holds a role now."""
        return sum(self._member_of(repo_id, str(peer)) for peer in self.host.get_connected_peers())

    def _member_of(self, repo_id: RepoId, peer: str) -> bool:
        try:
            return self._is_member(self.repos.open_id(repo_id), peer)
        except FlairError:  # not kept here
            return False

    def _learned(self, repo: RepoId, peer: str) -> None:
        """``peer`` just proved a member key of ``repo``: admit it to the topic now, and catch up from it."""
        self.gossip.reconsider(PeerId(peer))
        self._pull_later(repo, peer)

    def wake(self) -> None:
        """Something was signed here: announce it (and publish any new locator)."""
        self._wake.set()
        if self.discovery is not None:
            self.discovery.wake()

    def status(self) -> dict[str, Any]:

        peers = []
        reach = self.reachability
        guard = stream_guard(self.host)
        failed_streams = guard.status() if guard is not None else {}  # inbound streams whose handler failed
        for peer in self.host.get_connected_peers():
            peers.append({"peer": str(peer), "key": self.cards.key(str(peer)), "addrs": peer_addrs(self.host, peer),
                          "connections": reach.relays.kind(peer) if reach is not None else [],
                          "bad_announcements": self._bad.counts.get(str(peer), 0),
                          "bad_pulls": self._bad_pulls.counts.get(str(peer), 0),
                          "failed_streams": failed_streams.get(str(peer), 0)})
        return {"gossip": self.gossip.status(), "cards": self.cards.status(), "announcements": dict(self.counts),
                "discovery": self.discovery.status() if self.discovery is not None else None,
                "reachability": reach.status() if reach is not None else None,
                "liveness": self.liveness.status() if self.liveness is not None else None,
                "peers": peers, "bad_announcements": dict(self._bad.counts), "bad_pulls": dict(self._bad_pulls.counts),
                "failed_streams": failed_streams,
                "topics": sorted(announce.topic(r) for r in self._joined), "refused_merges": list(self.refused_merges)}

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
                try:
                    await self._announce(repo, records)
                except Exception:  # one repository's trouble never stops the others' announcements
                    log.exception("announcing %d records in %s failed; peers get them by pulling", len(records),
                                  short(repo))

    async def _announce(self, repo: RepoId, records: list[Outgoing]) -> None:
        await self._join(repo)
        try:
            messages = announce.pack(repo, [(r.kind, r.record) for r in records], self.gossip.max_message_size)
        except FlairError as exc:  # a record too large to announce: peers get it by pulling
            log.info("not announcing in %s: %s", short(repo), exc)
            return
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
            await self.gossip.join(announce.topic(repo), self._validator(repo), admit=self._admission(repo))

    def _admission(self, repo_id: RepoId) -> Any:
        """The repository's topic is its current members' (as this node knows them) and nobody else's: a peer
        that is not one is never told this node is on it, never sent an announcement and never listened to."""
        def admit(peer: PeerId) -> bool:
            try:
                return self._is_member(self.repos.open_id(repo_id), peer)
            except NotFound:  # deleted here
                return False
        return admit

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
            except announce.Lagging as exc:
                self.counts["lagging"] += 1
                self._lagging(repo, forwarder, data, exc)
            except FlairError as exc:
                self._bad.add(forwarder, "announcement refused in %s: %s", short(repo_id), exc)
            return False  # anything else it raises is the gossip layer's to count (``gossip.judge``)
        return validate

    def _lagging(self, repo: Repository, forwarder: str, data: bytes, why: announce.Lagging) -> None:
        """An announcement this node is behind on, from ``forwarder``: pull from it if it is a current member
        and has not started such a pull lately; otherwise refuse it (see the module docstring)."""
        if not self._is_member(repo, forwarder):
            self.counts["lagging_refused"] += 1
            self._bad.add(forwarder, "announcement in %s is ahead of this node (%s) and its forwarder is not a "
                          "member to pull from: refused", short(repo.id), why)
            return
        now, pair = trio.current_time(), (repo.id, forwarder)
        if now < self._claimed.get(pair, -LAGGING_EVERY) + LAGGING_EVERY:
            self.counts["lagging_limited"] += 1  # one claim-triggered pull at a time, and not too often
            return
        if self._pull_later(repo.id, forwarder, claim=data) is not None:
            self._claimed[pair] = now
            self._claimed.move_to_end(pair)
            if len(self._claimed) > MAX_LAGGING:
                self._claimed.popitem(last=False)

    def _judge_claim(self, repo_id: RepoId, peer: str, data: bytes) -> None:
        """After the pull a ``Lagging`` announcement from ``peer`` started: take the announcement if it now
        holds; if it still cannot be judged, or is refused, the peer's claim was false."""
        try:
            taken = announce.decode(data, repo_id)
            announce.check(self.repos.open_id(repo_id), taken, now_ms())
        except announce.Replay:
            return  # what it announced is here now
        except Exception as exc:  # still Lagging, or refused: the claim was false
            self.counts["lagging_unfounded"] += 1
            self._claimed[(repo_id, peer)] = trio.current_time() + LAGGING_PENALTY
            self._bad.add(peer, "announced news of %s that pulling from it did not bear out (%s); its claims are "
                          "ignored for %.0f s", short(repo_id), exc, LAGGING_PENALTY)
            return
        self.counts["lagging_taken"] += 1
        try:
            self._take_send.send_nowait((repo_id, taken, peer))
        except trio.WouldBlock:
            self.counts["intake_overflow"] += 1

    async def _intake_loop(self) -> None:
        """Note each accepted announcement as it arrives; take them in batches (``_take_loop``), so records are
        written while gossip keeps flowing."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._take_loop, self._take_receive)
            async for message in self.gossip.messages:
                repo_id = RepoId(message.topic.removeprefix(announce.TOPIC_PREFIX))
                try:
                    taken = self._checked.pop(message.data, None) or announce.decode(message.data, repo_id)
                except Exception as exc:  # per message (checked by the validator already: not expected)
                    self._bad.add(message.from_peer, "announcement in %s unreadable: %s", short(repo_id), exc)
                    continue
                arrived = now_ms()
                self.arrivals.extend([("commit", c.id, "", c.timestamp_ms, arrived) for c in taken.commits] +
                                     [("move", m.id, m.branch, m.timestamp_ms, arrived) for m in taken.moves])
                self.counts["accepted"] += 1
                try:
                    self._take_send.send_nowait((repo_id, taken, message.from_peer))
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
                    missing = await self._take_batch(repo_id, messages)
                    wanted = self._wanted.setdefault(repo_id, {})
                    for cid, publisher in missing.items():
                        if len(wanted) < MAX_WANTED:  # beyond, the periodic catch-up brings them
                            wanted.setdefault(cid, (publisher, trio.current_time() + WANT_FOR))
                    self._pull_wanted(repo_id)
                except Exception as exc:  # this node's own trouble (its disk): the catch-up brings what was missed
                    self.counts["take_failures"] += 1
                    log.warning("announcements in %s not taken: %r", short(repo_id), exc)

    async def _take_batch(self, repo_id: RepoId,
                          messages: list[tuple[announce.Announcement, str]]) -> dict[CommitId, str]:
        """``_take`` in a worker thread; if the batch fails on something other than a check or the disk, take its
        messages one by one, so the one that breaks taking counts against its publisher and the rest go in."""
        try:
            return await trio.to_thread.run_sync(self._take, repo_id, messages)
        except FlairError as exc:  # checked on arrival; the state moved meanwhile: catch up instead
            log.info("announcements in %s not taken: %s", short(repo_id), exc)
            return _announced(messages)
        except OSError:
            raise  # this node's disk: nobody's bad input
        except Exception as exc:  # per message: the one that breaks taking counts against its publisher alone
            if len(messages) == 1:  # what this message holds breaks taking it: its publisher's bad input
                self.counts["take_failures"] += 1
                self._bad.add(messages[0][1], "announcement in %s could not be taken (%s: %s)", short(repo_id),
                              type(exc).__name__, exc)
                return {}
        missing: dict[CommitId, str] = {}
        for message in messages:
            missing.update(await self._take_batch(repo_id, [message]))
        return missing

    def _take(self, repo_id: RepoId, messages: list[tuple[announce.Announcement, str]]) -> dict[CommitId, str]:
        """Take a batch of announcements about one repository (in a worker thread): membership changes in
        order, then secure round messages, then per branch only the move that comes last; returns the records
        to pull (by publisher): the announced commits (their payloads come as blocks), the commits of moves not
        taken for want of them, and masked updates whose blocks are not here."""
        repo = self.repos.open_id(repo_id)
        for taken, publisher in messages:
            for change in taken.changes:
                try:
                    repo.ingest.accept_membership(change)
                except (Forbidden, IntegrityError) as exc:  # the chain moved since it was checked: catch-up decides
                    log.info("membership change %s in %s from %s not taken: %s", short(change.id), short(repo_id),
                             publisher, exc)
        latest: dict[str, tuple[BranchMove, str]] = {}
        pull: dict[CommitId, str] = {}
        for taken, publisher in messages:
            for commit in taken.commits:  # a peer's merge of a round: this node holds its own while it is checked
                if commit.kind == "round" and rounds.note_merge(repo, commit, memory=self.memory):
                    self.counts["held_merges"] += 1
            pull.update((c.id, publisher) for c in taken.commits if not repo.objects.has(c.id))
            # proof and anchor records come by pulling from their publisher (a proof record with its blocks)
            pull.update((CommitId(c.id), publisher) for c in taken.claims if not repo.objects.has(c.id))
            for message in taken.messages:
                if self._take_round_message(repo, message, publisher):
                    pull[CommitId(message.id)] = publisher  # the wanted set takes any record's id
            for move in taken.moves:
                if move.branch not in latest or move.comes_after(latest[move.branch][0]):
                    latest[move.branch] = (move, publisher)
        for move, publisher in latest.values():
            if not repo.objects.has(move.commit):
                pull[move.commit] = publisher
                continue
            try:
                rounds.check_move(repo, move, memory=self.memory)
            except IntegrityError as exc:  # a forged or unentitled round merge: the branch stays where it is
                self._refused_merges(repo_id, [(move, str(exc))])
                log.warning("refused a move of %s in %s by %s: %s", move.branch, short(repo_id), short(move.author),
                            exc)
                continue
            try:
                repo.ingest.accept_move(move)
            except (Forbidden, IntegrityError) as exc:  # one refused move leaves the batch's others to go in
                self._bad.add(publisher, "move of %s in %s not taken: %s", move.branch, short(repo_id), exc)
        return pull

    def _take_round_message(self, repo: Repository, message: RoundMessage, publisher: str) -> bool:
        """Keep a peer's secure round message (in a worker thread); True if it must be pulled instead: a masked
        update whose blocks are not here (a pull from its publisher brings them with it). A message refused now
        (its round full, the membership moved since it was checked) is logged, counted against nobody."""
        try:
            repo.ingest.accept_round_message(message)
        except NotFound:  # a masked update's blocks (or its round's commit, if this node moved on meanwhile)
            repo.secure.arriving(message)  # its round's aggregator waits for it
            return True
        except (Forbidden, IntegrityError) as exc:
            self._refused_log.warn(publisher, "secure round %s %s in %s not taken: %s", message.phase,
                                   short(message.id), short(repo.id), exc)
        return False

    def _pull_wanted(self, repo_id: RepoId) -> None:
        """Pull the commits this node was told of and lacks: from their publisher if connected, else from the
        connected members (they relayed the news, so they are fetching it too; a non-member, such as a relay, is
        never told the repository or this node's member key); again each second until they arrive or
        ``WANT_FOR`` passes (catch-up covers the rest)."""
        wanted = self._wanted.get(repo_id, {})
        repo = self.repos.open_id(repo_id)
        now = trio.current_time()
        for cid, (_, until) in list(wanted.items()):
            if until < now or repo.objects.has(cid):
                del wanted[cid]
        if not wanted:
            self._wanted.pop(repo_id, None)
            return
        # members only: a pull names the repository and this node's member key to whom it asks
        connected = [str(p) for p in self.host.get_connected_peers() if self._is_member(repo, str(p))]
        publishers = {publisher for publisher, _ in wanted.values() if publisher in connected}
        for peer in publishers or connected[:MAX_PULLS // 4]:
            self._pull_later(repo_id, peer)

    # -- catching up ---------------------------------------------------------------------------------------

    def _pull_later(self, repo: RepoId, peer: str, *, claim: bytes | None = None,
                    force: bool = False) -> _Pull | None:
        """Pull ``repo`` from ``peer`` soon: once, however often asked while a pull of it is under way (then one
        more pass follows it). ``claim``: the announcement that asked (judged after the pull); ``force``: even
        if ``MAX_PULLS`` run (the API's). The pull, or None if none was started or joined."""
        key = (repo, peer)
        state = self._pulling.get(key)
        if state is not None:
            state.again = True
        elif (force or len(self._pulling) < MAX_PULLS) and self._nursery is not None:
            state = self._pulling[key] = _Pull()
            self._nursery.start_soon(self._pull, key, state)
        else:
            return None
        if claim is not None:
            state.claim = claim
        return state

    async def _pull(self, key: tuple[RepoId, str], state: _Pull) -> None:
        repo, peer = key
        try:
            while True:
                state.again = False
                self.counts["pulls"] += 1
                state.error = None
                stale: list[Any] = []  # the connections this pass begins with: closed if it fails in transport
                try:
                    peer_id = peer_from_text(peer)
                    stale = self.links.connections(peer_id)
                    source = sync.PeerSource(self.host, peer_id, self.exchange, self.repos.identity,
                                             holders=partial(self.links.holders, repo, peer_id),
                                             connect=self.links.connect)
                    result = await sync.pull(self.repos, repo, source, memory=self.memory)
                    self._refused_merges(repo, result.refused_merges)
                    await self._join(repo)
                    if result.commits or result.changes or result.moved or result.secure:
                        log.info("pulled %s from %s: %s", short(repo), peer, result.json())
                    if result.refused:  # records it served that failed their checks
                        rid, why = next(iter(result.refused.items()))
                        self._bad_pulls.add(peer, "pulling %s: %d records refused, %s: %s", short(repo),
                                            len(result.refused), short(rid), why)
                    state.result = result if state.result is None else state.result.then(result)
                except IntegrityError as exc:  # the peer sent what fails its checks
                    self.counts["pull_failures"] += 1
                    state.error = exc
                    self._bad_pulls.add(peer, "pulling %s: %s", short(repo), exc)
                except RemoteError as exc:  # the transport's failure (or the peer's): a fresh connection next time
                    self.counts["pull_failures"] += 1
                    state.error = exc
                    log.info("pulling %s from %s failed: %s", short(repo), peer, exc)
                    await self._drop(peer, stale)
                except FlairError as exc:
                    self.counts["pull_failures"] += 1
                    state.error = exc
                    log.info("pulling %s from %s failed: %s", short(repo), peer, exc)
                except OSError as exc:  # this node's own disk, or its side of the connection: nobody's fault
                    self.counts["pull_failures"] += 1
                    state.error = RemoteError(f"pulling {short(repo)} from {peer} failed here: {exc}")
                    log.warning("pulling %s from %s failed: %r", short(repo), peer, exc)
                except Exception as exc:  # whatever the peer's replies broke: skipped, counted against it
                    self.counts["pull_failures"] += 1
                    state.error = RemoteError(f"pulling {short(repo)} from {peer} failed: {type(exc).__name__}")
                    self._bad_pulls.add(peer, "pulling %s failed (%s: %s)", short(repo), type(exc).__name__, exc)
                # Asked again while it ran: one more pass, unless this one failed (the catch-up asks every few
                # seconds, and a peer that keeps failing would keep whoever waits for this pull waiting for ever).
                if not state.again or state.error is not None:
                    break
        finally:
            if self._pulling.get(key) is state:
                del self._pulling[key]
            state.done.set()
        if state.claim is not None:
            self._judge_claim(repo, peer, state.claim)

    def _relayed_only(self, peer: Peer) -> bool:
        return self.reachability is not None and self.reachability.relays.relayed_only(peer)

    async def _drop(self, peer: str, stale: Collection[Any]) -> None:
        """Close the connections to ``peer`` among ``stale`` after a pull from it failed in transport, and dial it
        again from now on (``PeerLinks.drop``); its repositories' nodes are looked up again too."""
        await self.links.drop(peer, stale)
        if self.discovery is not None:
            self.discovery.wake()

    async def _wanted_loop(self) -> None:
        while True:
            await trio.sleep(1.0)
            for repo_id in list(self._wanted):
                try:
                    self._pull_wanted(repo_id)
                except Exception as exc:  # this node's trouble with one repository: the others go on
                    self._wanted.pop(repo_id, None)
                    log.warning("pulling the commits announced in %s failed: %r", short(repo_id), exc)

    async def _catch_up_loop(self) -> None:
        while True:
            if self.links.redial_due() and self._nursery is not None:  # in the background
                self._nursery.start_soon(self.links.redial)
            connected = {str(p) for p in self.host.get_connected_peers()}
            for address in self.bootstrap:
                if address.rsplit("/p2p/", 1)[-1] not in connected:
                    try:
                        await self.dial(address)
                    except FlairError as exc:
                        log.debug("bootstrap peer %s: %s", address, exc)
            try:
                repos = await trio.to_thread.run_sync(self.repos.all)
            except Exception as exc:  # this node's disk: try again at the next pass
                log.warning("catch-up cannot list the repositories: %r", exc)
                repos = []
            try:  # on the owner's node: an expired member still holding the current key makes a new one
                if await trio.to_thread.run_sync(self.repos.rotate_expired):
                    self.wake()
            except Exception as exc:  # this node's own trouble: the next pass tries again
                log.warning("rotating the keys of expired members failed: %r", exc)
            for repo in repos:
                try:
                    await self._catch_up(repo)
                except Exception as exc:  # one repository's trouble never stops the others' catch-up
                    log.warning("catching up %s failed: %r", short(repo.id), exc)
            await trio.sleep(self.sync_interval)

    async def _catch_up(self, repo: Repository) -> None:
        await trio.to_thread.run_sync(repo.members.current)  # read (and cached) off the event loop
        for peer in self.host.get_connected_peers():
            if self._is_member(repo, str(peer)):
                self._pull_later(repo.id, str(peer))

    def _is_member(self, repo: Repository, peer: str) -> bool:
        """Whether ``peer`` proved a member key of ``repo`` (``peer_cards``) that has a role now, in this node's
        view of its membership."""
        key = self.cards.member(repo.id, peer)
        membership = repo.members.current()
        return key is not None and membership.role(key, epoch=membership.epoch, at_ms=now_ms()) is not None


def _announced(messages: list[tuple[announce.Announcement, str]]) -> dict[CommitId, str]:
    """Every commit the announcements name (their own, and those their moves point to) and every secure round
    message they hold, by publisher."""
    return {cid: publisher for taken, publisher in messages
            for cid in [*(c.id for c in taken.commits), *(m.commit for m in taken.moves),
                        *(CommitId(m.id) for m in taken.messages)]}
