"""Finding peers by a locator: Kademlia provider records, the IPFS DHT's protocol (``/ipfs/kad/1.0.0``), on
py-libp2p's ``KadDHT``.

A node *provides* a locator (32 bytes; Flair derives them in ``protocol.locators``) and anyone may *find* the
providers of one: their peer ids and the addresses they published. Nothing here says what a locator stands for;
whoever finds a provider still proves everything else over its own protocols (a provider is a hint to dial, never a
source of records).

What Flair adds to py-libp2p's DHT, and why:

- **No values.** The DHT is used for provider records only. Every ``PUT_VALUE`` is refused (a strict validator
  with no namespace), so no stranger can park records in a node's memory.
- **Bounded provider records.** py-libp2p caps providers per key (20) and ADD_PROVIDER messages per peer, but not
  the number of keys or the addresses per provider, and peer ids cost nothing: a node keeps at most
  ``MAX_PROVIDER_KEYS`` keys (new ones are refused once full, after expired ones are dropped) and
  ``MAX_PROVIDER_ADDRS`` addresses of each provider.
- **A routing table fed by connections.** py-libp2p adds peers to its table only when told: each peer this host
  connects to goes in once identify shows it serves the DHT (py-libp2p would also take a peer identify has not
  described yet, and its lookups would then wait on clients); connected peers outside the table are looked at
  again every ``RECHECK_EVERY`` seconds, since a node starts serving once it learns it is reachable.
- **Lookups of Flair's own.** py-libp2p's lookup answers from the local store alone whenever it holds a record of
  the key, and a node holds its own record of every locator it provides: its members would never find each
  other. And it first walks the network for the closest peers, dialling each at the addresses others know, so one
  peer behind NAT (whose listen address others learnt through identify) stalls it past any deadline, and what it
  found by then is lost (and its ``provide`` walks the same way). ``find`` asks the closest peers it is connected
  to, a few at a time, each within ``PEER_TIMEOUT``, keeps what each answer brings, and goes on to the closer peers
  they name;
  ``provide`` walks so, then sends the record to the closest peers that answered.
- **Bounded, de-duplicated lookups.** ``find`` gives each provider once (py-libp2p may return the same one many
  times) and ends within ``FIND_TIMEOUT``; ``provide`` within ``PROVIDE_TIMEOUT``.
- **Server or client.** A server answers DHT queries and stores others' records: what a node reachable from the
  internet should be. A node behind NAT is a client: it asks and provides, and is never put in others' tables.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import trio
from libp2p.kad_dht.common import BUCKET_SIZE, MAX_PROVIDERS_PER_MSG
from libp2p.kad_dht.common import PROTOCOL_ID as KAD_PROTOCOL
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.kad_dht.provider_store import ProviderStore
from libp2p.kad_dht.utils import sort_peer_ids_by_distance
from libp2p.peer.peerinfo import PeerInfo
from libp2p.records.validator import NamespacedValidator
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from ..core.errors import InvalidInput, RemoteError
from .host import ConnectionEvents, Host, Peer, map_libp2p_errors, peer_protocols

log = logging.getLogger(__name__)

LOCATOR_BYTES = 32
MAX_PROVIDER_KEYS = 65_536  # provider keys this node stores for others (about 20 MB at most)
MAX_PROVIDER_ADDRS = 8  # addresses kept per provider
FIND_COUNT = 20  # providers asked for in one lookup
FIND_TIMEOUT = 20.0  # s for one lookup
LOOKUP_WIDTH = 3  # peers asked at once in a lookup
MAX_ASKED = 60  # peers asked in one lookup at most
PEER_TIMEOUT = 5.0  # s one peer has to answer a lookup
PROVIDE_TIMEOUT = 40.0  # s for one provide (a lookup's walk, then the records sent)
IDENTIFY_WAIT = 10.0  # s a new peer has to tell (through identify) whether it serves the DHT
MAX_OFFERS = 32  # new peers waited for at once; more wait their turn
RECHECK_EVERY = 5.0  # s between two looks at connected peers outside the routing table
_MULTIHASH_SHA256 = b"\x12\x20"  # a provider key is a multihash, as IPFS's are: sha2-256, 32 bytes

# py-libp2p's DHT logs a warning for every stream a peer closes before answering (routine in a network), and an
# error for each lookup that found nothing: neither is a failure here.
logging.getLogger("libp2p.kad_dht").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class Found:
    """A provider of a locator: its peer id and the addresses it published (it may have lied about them)."""

    peer: str
    addrs: tuple[str, ...]

    def json(self) -> dict[str, Any]:
        return {"peer": self.peer, "addrs": list(self.addrs)}


class Discovery(Protocol):
    """Providing and finding locators."""

    async def provide(self, locator: bytes) -> bool:
        """Publish this node as a provider of ``locator``; whether any peer took the record."""
        ...

    def withdraw(self, locator: bytes) -> None:
        """Stop republishing ``locator`` (records already published expire on their own)."""
        ...

    async def find(self, locator: bytes, *, count: int = FIND_COUNT) -> list[Found]:
        """Up to ``count`` providers of ``locator`` other than this node, each once."""
        ...

    def status(self) -> dict[str, Any]: ...


def locator_key(locator: bytes) -> str:
    """The DHT key of ``locator``, as py-libp2p takes it (hex of a sha2-256 multihash)."""
    if len(locator) != LOCATOR_BYTES:
        raise InvalidInput(f"a locator is {LOCATOR_BYTES} bytes, not {len(locator)}")
    return (_MULTIHASH_SHA256 + locator).hex()


def locator(*parts: bytes) -> bytes:
    """A locator made of ``parts`` (each length-prefixed, so no two lists of parts give the same bytes)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(4, "big") + part)
    return digest.digest()


#: Set in the task of a lookup (and only there: a context variable, so the DHT's own handlers never see it).
_ASKING_THE_NETWORK: ContextVar[bool] = ContextVar("asking_the_network", default=False)


class _BoundedProviders(ProviderStore):
    """py-libp2p's provider store with a cap on keys and on each provider's addresses, and lookups that ask the
    network (see the module docstring)."""

    refused = 0

    def get_providers(self, key: bytes) -> list[PeerInfo]:
        # py-libp2p's lookup answers from the local store alone when it holds any record of the key, and a node
        # holds its own as soon as it provides: it would never find another provider of what it provides itself.
        return [] if _ASKING_THE_NETWORK.get() else super().get_providers(key)

    async def find_elsewhere(self, key: bytes, count: int) -> list[PeerInfo]:
        """Providers of ``key``: a lookup of Flair's own through the network (see the module docstring), then
        what this node's store holds (others' records kept here, and what the lookup brought)."""
        token = _ASKING_THE_NETWORK.set(True)
        try:
            with trio.move_on_after(FIND_TIMEOUT):
                await self._look_up(key, count)
        finally:
            _ASKING_THE_NETWORK.reset(token)
        return super().get_providers(key)

    async def provide_elsewhere(self, key: bytes) -> int:
        """Publish this node as a provider of ``key`` (and keep it to republish): walk to the closest peers as a
        lookup does, then send the record to the ``BUCKET_SIZE`` closest that answered, each within
        ``PEER_TIMEOUT``. How many took it."""
        self.providing_keys.add(key)
        self.add_provider(key, PeerInfo(self.host.get_id(), self.host.get_addrs()))
        token = _ASKING_THE_NETWORK.set(True)
        try:
            answered: list[Peer] = []
            with trio.move_on_after(FIND_TIMEOUT):
                answered = await self._look_up(key, 1 << 30)
        finally:
            _ASKING_THE_NETWORK.reset(token)
        took: list[Peer] = []

        async def send(peer: Peer) -> None:
            with trio.move_on_after(PEER_TIMEOUT):
                try:
                    with map_libp2p_errors(f"sending a provider record to {peer}"):
                        if await self._send_add_provider(peer, key):
                            took.append(peer)
                except RemoteError as exc:  # one peer's trouble: the others take it
                    log.debug("%s", exc)

        async with trio.open_nursery() as nursery:
            for peer in sort_peer_ids_by_distance(key, answered)[:BUCKET_SIZE]:
                nursery.start_soon(send, peer)
        return len(took)

    async def _look_up(self, key: bytes, count: int) -> list[Peer]:
        """Ask the peers closest to ``key`` for its providers, ``LOOKUP_WIDTH`` at a time, each within
        ``PEER_TIMEOUT``, going on to the closer peers they name, until ``count`` providers are known, nobody is
        left to ask or ``MAX_ASKED`` were asked. Each answer's providers go to the store as they arrive. Returns the
        peers that answered (the DHT servers around the key)."""
        me = self.host.get_id()
        # It starts from the table's peers this node is connected to: dialling the others first would have a node
        # cut off (its link down) wait out a dial per peer, and its next lookup, once the link is back, behind it.
        connected = set(self.host.get_connected_peers())
        candidates = [p for p in self.peer_routing.routing_table.find_local_closest_peers(key, BUCKET_SIZE)
                      if p in connected]
        asked: set[Peer] = set()
        answered: list[Peer] = []
        while len(super().get_providers(key)) < count and len(asked) < MAX_ASKED:
            batch = [p for p in sort_peer_ids_by_distance(key, candidates) if p not in asked and p != me]
            if not batch:
                break
            closer: list[Peer] = []
            async with trio.open_nursery() as nursery:
                for peer in batch[:LOOKUP_WIDTH]:
                    asked.add(peer)
                    nursery.start_soon(self._ask, peer, key, closer, answered)
            candidates = [p for p in {*candidates, *closer} if p not in asked]
        return answered

    async def _ask(self, peer: Peer, key: bytes, closer: list[Peer], answered: list[Peer]) -> None:
        """One peer's answer to a lookup: its providers into the store, the closer peers it names into ``closer``,
        itself into ``answered``."""
        with trio.move_on_after(PEER_TIMEOUT):
            try:
                with map_libp2p_errors(f"asking {peer} for providers"):
                    providers, nearer = await self._get_providers_from_peer_with_closers(peer, key)
            except RemoteError as exc:  # one peer's trouble: the others answer
                log.debug("%s", exc)
                return
            answered.append(peer)
            for provider in providers[:MAX_PROVIDERS_PER_MSG]:
                self.add_provider(key, provider)
            closer.extend(nearer[:MAX_PROVIDERS_PER_MSG])

    def add_provider(self, key: bytes, provider: PeerInfo) -> None:
        if key not in self.providers and len(self.providers) >= MAX_PROVIDER_KEYS:
            self.cleanup_expired()
            if len(self.providers) >= MAX_PROVIDER_KEYS:
                self.refused += 1
                return
        if provider is not None and len(provider.addrs) > MAX_PROVIDER_ADDRS:
            provider = PeerInfo(provider.peer_id, list(provider.addrs[:MAX_PROVIDER_ADDRS]))
        super().add_provider(key, provider)


class _Publishing:
    """``host`` as the provider store sees it: the addresses it publishes are ``addresses()`` (a node behind NAT
    publishes its relayed ones, never the private ones it listens on), with the host's own when that gives none."""

    def __init__(self, host: Host, addresses: Callable[[], list[str]]) -> None:
        self._host, self._addresses = host, addresses

    def get_addrs(self) -> list[Multiaddr]:
        published = [Multiaddr(a.rsplit("/p2p/", 1)[0] if a.endswith(f"/p2p/{self._host.get_id()}") else a)
                     for a in self._addresses()]
        return published or self._host.get_addrs()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)


class Kademlia:
    """``Discovery`` on py-libp2p's ``KadDHT`` over ``host``; ``server``: answer queries and store records;
    ``addresses``: what this node publishes as its own addresses (by default the host's)."""

    def __init__(self, host: Host, *, server: bool, addresses: Callable[[], list[str]] | None = None) -> None:
        self.host, self.server = host, server
        mode = DHTMode.SERVER if server else DHTMode.CLIENT
        # py-libp2p's DHT stays in here: the rest of Flair sees ``Discovery`` and ``status()``
        self._dht = KadDHT(host,  # type: ignore[arg-type]  # a py-libp2p host is an IHost
                           mode, validator=NamespacedValidator({}, strict_validation=True), validator_changed=True,
                           strict_validation=True, max_peers_per_subnet=0)
        publishing = host if addresses is None else _Publishing(host, addresses)
        self._dht.provider_store = self._providers = _BoundedProviders(host=publishing,  # type: ignore[arg-type]
                                                                       peer_routing=self._dht.peer_routing)
        self.counts: dict[str, int] = {"provided": 0, "provide_failures": 0, "lookups": 0, "found": 0}
        self._last_provide: dict[str, float] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        send, receive = trio.open_memory_channel[Peer](256)
        feed = ConnectionEvents(lambda conn: self._new_peer(send, conn.muxed_conn.peer_id))
        self.host.get_network().register_notifee(feed)
        try:
            async with background_trio_service(self._dht), trio.open_nursery() as nursery:
                for peer in self.host.get_connected_peers():
                    send.send_nowait(peer)
                nursery.start_soon(self._feed_loop, receive)
                nursery.start_soon(self._recheck_loop, send)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self.host.get_network().remove_notifee(feed)

    @staticmethod
    def _new_peer(send: trio.MemorySendChannel[Peer], peer: Peer) -> None:
        """Offer a newly connected peer to the routing table (``_feed_loop``)."""
        try:
            send.send_nowait(peer)
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass  # a burst of connections: the recheck loop offers the rest

    async def _recheck_loop(self, send: trio.MemorySendChannel[Peer]) -> None:
        """Offer again, every ``RECHECK_EVERY`` seconds, the connected peers outside the table: a peer may start
        serving the DHT after it connected (one that learnt it is reachable)."""
        while True:
            await trio.sleep(RECHECK_EVERY)
            for peer in self.host.get_connected_peers():
                if not self._dht.routing_table.peer_in_table(peer):
                    try:
                        send.send_nowait(peer)
                    except trio.WouldBlock:
                        break

    async def _feed_loop(self, receive: trio.MemoryReceiveChannel[Peer]) -> None:
        slots = trio.Semaphore(MAX_OFFERS)
        offering: set[Peer] = set()  # a peer may connect twice (both dialled at once): offered once
        async with trio.open_nursery() as nursery:
            async for peer in receive:
                if peer not in offering:
                    await slots.acquire()
                    offering.add(peer)
                    nursery.start_soon(self._offer, peer, slots, offering)

    async def _offer(self, peer: Peer, slots: trio.Semaphore, offering: set[Peer]) -> None:
        """Put ``peer`` in the routing table once identify shows it serves the DHT (a client, or a peer that never
        says, stays out: lookups would wait on it in vain)."""
        try:
            with trio.move_on_after(IDENTIFY_WAIT):
                while not (protocols := peer_protocols(self.host, peer)):  # noqa: ASYNC110 - identify sets no event
                    await trio.sleep(0.1)
                if str(KAD_PROTOCOL) in protocols:
                    with map_libp2p_errors(f"adding {peer} to the DHT's table"):
                        await self._dht.add_peer(peer)
        except RemoteError as exc:  # one peer's trouble never stops the others'
            log.debug("%s", exc)
        finally:
            offering.discard(peer)
            slots.release()

    async def set_server(self, server: bool) -> None:
        """Answer others' DHT queries (and store their records) or stop. py-libp2p's ``switch_mode`` also empties
        the routing table when going client, and a client needs one to ask anything: so the handler is swapped
        here, and the table kept."""
        if server == self.server:
            return
        self.server = server
        self._dht.mode = DHTMode.SERVER if server else DHTMode.CLIENT
        with map_libp2p_errors("switching the DHT's mode"):
            if server:
                self.host.set_stream_handler(KAD_PROTOCOL, self._dht.handle_stream)  # type: ignore[arg-type]
            else:
                self.host.remove_stream_handler(KAD_PROTOCOL)
        # Peers learnt this node's protocols through identify when they connected; py-libp2p pushes an update only
        # when a listen address changes, so a peer would never put this node in its table (or keep it there).
        try:
            with trio.move_on_after(PEER_TIMEOUT), map_libp2p_errors("telling peers of the DHT's new mode"):
                await self.host._push_identify_to_all_peers()  # type: ignore[attr-defined]
        except RemoteError as exc:  # best effort: peers that missed it keep the old view until they reconnect
            log.info("%s", exc)

    async def provide(self, locator: bytes) -> bool:
        key = locator_key(locator)
        ok = False
        with trio.move_on_after(PROVIDE_TIMEOUT):
            try:
                with map_libp2p_errors("providing a locator"):
                    ok = await self._providers.provide_elsewhere(bytes.fromhex(key)) > 0
            except RemoteError as exc:
                log.info("%s", exc)
        self.counts["provided" if ok else "provide_failures"] += 1
        self._last_provide[key] = time.time()
        return ok

    def withdraw(self, locator: bytes) -> None:
        key = locator_key(locator)
        self._last_provide.pop(key, None)
        self._providers.providing_keys.discard(bytes.fromhex(key))
        self._providers.providers.get(bytes.fromhex(key), {}).pop(str(self.host.get_id()), None)

    async def find(self, locator: bytes, *, count: int = FIND_COUNT) -> list[Found]:
        key = locator_key(locator)
        self.counts["lookups"] += 1
        infos = await self._providers.find_elsewhere(bytes.fromhex(key), count)
        found = _unique(infos, me=str(self.host.get_id()))[:count]
        self.counts["found"] += len(found)
        return found

    def status(self) -> dict[str, Any]:
        return {"mode": "server" if self.server else "client", "routing_table": self._dht.get_routing_table_size(),
                "providing": len(self._last_provide), "stored_keys": len(self._providers.providers),
                "refused_keys": self._providers.refused,
                "stored_values": self._dht.value_store.size(),  # none: every PUT_VALUE is refused
                **self.counts}


def _unique(infos: Iterable[PeerInfo], *, me: str) -> list[Found]:
    seen: dict[str, set[str]] = {}
    for info in infos:
        peer = str(info.peer_id)
        if peer != me:
            seen.setdefault(peer, set()).update(str(a) for a in info.addrs)
    return [Found(peer, tuple(sorted(addrs))[:MAX_PROVIDER_ADDRS]) for peer, addrs in seen.items()]
