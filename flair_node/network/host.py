"""The node's libp2p host on its own Ed25519 identity (the peer id and the Solana address share one key), and the
one boundary between Flair and py-libp2p.

py-libp2p is loosely typed and its modules are large, so the rest of Flair sees it through this module only:

- ``Host``, ``Stream``, ``PeerStore`` and ``Peer``: what Flair uses of py-libp2p's host, its streams, its peer
  store and its peer ids, as typed protocols (a py-libp2p ``IHost`` is a ``Host``).
- ``map_libp2p_errors``: every call into py-libp2p that can fail runs inside it, and what it raises becomes a
  ``FlairError`` there (``RemoteError`` unless the caller names another), as httpx maps httpcore's errors.
  ``close_stream`` and ``reset_stream`` end a stream best effort, for every protocol alike.
- ``apply_process_defaults``: the process-wide tuning py-libp2p reads from the environment. ``flair-node run``
  applies it, and so does whatever else starts hosts in its own process (the test harness, benchmarks); importing
  this module changes nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INotifee
from libp2p.connection_types import ConnectionType
from libp2p.crypto.ed25519 import Ed25519PublicKey, create_new_key_pair
from libp2p.crypto.keys import PrivateKey
from libp2p.crypto.keys import PublicKey as Libp2pPublicKey
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr

from ..core.errors import FlairError, InvalidInput, RemoteError
from ..core.identity import Identity, public_key_bytes
from ..core.ids import PublicKey

log = logging.getLogger(__name__)

#: A peer as py-libp2p names it (its ``ID``: hashable, ``str()`` gives the base58 text that ``core.ids.PeerId``
#: holds, ``to_bytes()`` the multihash).
Peer = ID

#: Process-wide settings py-libp2p reads from the environment, applied unless the user set them.
#: ``PY_YAMUX_RELEASE_ON_READ``: py-libp2p's Yamux sends a window update after every read unless told to batch
#: them as go-yamux does (an update once half the window is consumed); each update is a Noise frame both sides
#: pay for. Read on every read.
PROCESS_DEFAULTS = {"PY_YAMUX_RELEASE_ON_READ": "0"}

#: py-libp2p loggers whose records are lowered to DEBUG. Identify-push logs an ERROR for every push it cannot read
#: (and for every push of ours a peer cuts short), and the peer-store update a WARNING or an ERROR for each pushed
#: field it refuses (a key that is not the peer's, a bad address): any connected peer, a stranger too, can send
#: those as fast as it likes, a log flood. Nothing is lost to whoever debugs; nothing else reports them
#: (py-libp2p's handler catches its own failures, so ``handlers.StreamGuard`` never sees one).
DEBUG_ONLY_LOGGERS = ("libp2p.identity.identify_push.identify_push", "libp2p.identity.update",
                      "libp2p.identity.identify.identify")


class Connection(Protocol):
    """The connection a stream runs on: who is at the other end, as the connection authenticated it."""

    @property
    def peer_id(self) -> Peer: ...


class Stream(Protocol):
    """What Flair uses of a py-libp2p stream (``INetStream``)."""

    @property
    def muxed_conn(self) -> Connection: ...

    async def read(self, n: int | None = None) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...

    async def reset(self) -> None: ...

    def get_protocol(self) -> TProtocol | None: ...


#: Called with each stream a peer opens on a protocol this node serves.
StreamHandler = Callable[[Stream], Awaitable[None]]


class PeerStore(Protocol):
    def addrs(self, peer_id: Peer) -> list[multiaddr.Multiaddr]: ...


class Network(Protocol):
    """The host's swarm: whoever wants connection events registers a notifee."""

    def register_notifee(self, notifee: INotifee) -> None: ...

    def remove_notifee(self, notifee: INotifee) -> None: ...

    def get_connections(self, peer_id: Peer | None = None) -> list[Any]: ...


class Host(Protocol):
    """What Flair uses of a py-libp2p host (``IHost``)."""

    def get_id(self) -> Peer: ...

    def get_public_key(self) -> Libp2pPublicKey: ...

    def get_private_key(self) -> PrivateKey: ...

    def get_addrs(self) -> list[multiaddr.Multiaddr]: ...

    def get_peerstore(self) -> PeerStore: ...

    def get_network(self) -> Network: ...

    def get_connected_peers(self) -> list[Peer]: ...

    async def connect(self, peer_info: PeerInfo) -> None: ...

    async def disconnect(self, peer_id: Peer) -> None: ...

    async def new_stream(self, peer_id: Peer, protocol_ids: Sequence[TProtocol]) -> Stream: ...

    def set_stream_handler(self, protocol_id: TProtocol, stream_handler: StreamHandler) -> None: ...

    def remove_stream_handler(self, protocol_id: TProtocol) -> None: ...


class ConnectionEvents(INotifee):
    """py-libp2p's network events, reduced to connections opening and closing: ``opened(conn)`` and
    ``closed(conn)`` are called with each (a py-libp2p ``INetConn``). The swarm awaits its notifees inline, so
    they must return at once (note the event, hand it to a task)."""

    def __init__(self, opened: Callable[[Any], object], closed: Callable[[Any], object] = lambda conn: None) -> None:
        self._opened, self._closed = opened, closed

    async def connected(self, network: Any, conn: Any) -> None:
        self._opened(conn)

    async def disconnected(self, network: Any, conn: Any) -> None:
        self._closed(conn)

    async def opened_stream(self, network: Any, stream: Any) -> None:
        pass

    async def closed_stream(self, network: Any, stream: Any) -> None:
        pass

    async def listen(self, network: Any, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        pass


class _ToDebug(logging.Filter):
    """Lowers every record that passes it to DEBUG, and drops it unless its logger is enabled for DEBUG:
    ``logger.error`` checked the logger's level for ERROR, and a handler at level NOTSET (as ``logging.basicConfig``
    makes them) takes whatever reaches it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_TO_DEBUG = _ToDebug()


def apply_process_defaults() -> None:
    """Set ``PROCESS_DEFAULTS`` in this process's environment, leaving any the user set: before hosts run."""
    for name, value in PROCESS_DEFAULTS.items():
        os.environ.setdefault(name, value)


@contextmanager
def map_libp2p_errors(message: str, *, to: type[FlairError] = RemoteError, **data: str) -> Iterator[None]:
    """Run a call into py-libp2p: what it raises becomes ``to`` ("<message>: <its error>", with ``data``), from
    nothing (py-libp2p's tracebacks say nothing a caller can act on). A ``FlairError`` raised inside passes as it
    is, and so does cancellation (trio's ``Cancelled`` is a ``BaseException``)."""
    try:
        yield
    except FlairError:
        raise
    # py-libp2p raises its own errors (``BaseLibp2pError``), but as loosely typed as it is, its calls also let
    # through what its internals and parsers hit (trio's broken streams, OSError, multiaddr's and base58's
    # ValueError, KeyError from its peer store): every one of them is the peer's or the transport's failure.
    except Exception as exc:
        raise to(f"{message}: {str(exc) or repr(exc)}", **data) from None


async def close_stream(stream: Stream) -> None:
    """Close ``stream``, best effort: one the other side reset or closed first cannot be closed, and that is
    nobody's error."""
    try:
        with map_libp2p_errors("closing a stream"):
            await stream.close()
    except RemoteError as exc:
        log.debug("%s", exc)


async def reset_stream(stream: Stream) -> None:
    """Reset ``stream`` (drop it both ways: the peer's further writes fail), best effort as ``close_stream``."""
    try:
        with map_libp2p_errors("resetting a stream"):
            await stream.reset()
    except RemoteError as exc:
        log.debug("%s", exc)


@asynccontextmanager
async def running_host(identity: Identity, listen: str = "/ip4/127.0.0.1/tcp/0", *,
                       mdns: bool = False) -> AsyncIterator[Host]:
    """A started libp2p host (TCP, Noise, Yamux) with ``identity`` as its key (a node's transport key, never its
    member key), listening on ``listen``; ``mdns`` finds peers on the LAN.

    Three py-libp2p defects are mended here, for every host Flair runs: a stream whose negotiation or handler
    raises no longer ends its connection's streams or the host (``handlers.guard_streams``), leaving the block
    closes the listening socket (py-libp2p's own close of it is cut short by the cancellation that stops it), and
    what peers can make py-libp2p log at will is logged at DEBUG (``DEBUG_ONLY_LOGGERS``)."""
    # Imported here, not at the top: ``handlers`` builds on this module (its ``Stream`` and ``reset_stream``).
    from .handlers import guard_streams

    for name in DEBUG_ONLY_LOGGERS:  # (a logger's filters see only its own records: each is named exactly)
        logging.getLogger(name).addFilter(_TO_DEBUG)  # once: a logger keeps one of each filter

    host = new_host(key_pair=create_new_key_pair(identity.keypair_bytes()[:32]), enable_mDNS=mdns)
    network = host.get_network()
    # Before the host runs: no stream may reach the host's handler unguarded, not even the first.
    guard_streams(network)  # type: ignore[arg-type]  # a py-libp2p ``Swarm`` keeps its handler as the slot says
    with map_libp2p_errors(f"listen address {listen!r} is not a multiaddr", to=InvalidInput):
        addrs = [multiaddr.Multiaddr(listen)]
    async with host.run(listen_addrs=addrs):
        # py-libp2p's auto-connector dials every peer its peerstore holds whenever a connection closes: a node
        # redials its own bootstrap peers (``daemon.p2p``), and a dial still under way when the host stops
        # leaks its socket.
        connector = getattr(host.get_network(), "auto_connector", None)
        if connector is not None:
            await connector.stop()
        try:
            yield host
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                # py-libp2p's swarm closes its listeners as it stops, but inside the cancelled scope that stops it,
                # so each close ends at its first await: the socket keeps accepting (and its file descriptor and
                # serve tasks outlive the host). Closed here first, shielded, so no dial arrives meanwhile.
                for listener in list(network.listeners.values()):
                    try:
                        with map_libp2p_errors("closing a listener"):
                            await listener.close()
                    except RemoteError as exc:  # best effort: the next listener, and the connections, still close
                        log.debug("%s", exc)
                # py-libp2p leaves connections open when its host stops; close each one we hold.
                for peer in list(host.get_connected_peers()):
                    await host.disconnect(peer)


def full_addrs(host: Host) -> list[str]:
    """The host's dialable addresses, each ending in /p2p/<peer id>."""
    return [str(a) for a in host.get_addrs()]


async def connect(host: Host, address: str) -> Peer:
    """Dial ``address`` (a multiaddr ending in /p2p/<peer id>); returns the peer id."""
    with map_libp2p_errors(f"{address!r} is not a multiaddr ending in /p2p/<peer id>", to=InvalidInput):
        info = info_from_p2p_addr(multiaddr.Multiaddr(address))
    with map_libp2p_errors(f"cannot reach peer {address}"):
        # py-libp2p refuses for a while to dial a peer whose addresses all failed (its negative cache): a link that
        # was down and is back would stay unused. A dial Flair asks for is tried.
        unblock = getattr(host.get_network(), "unblock_peer", None)
        if unblock is not None:
            unblock(info.peer_id)
        await host.connect(info)
    return info.peer_id


def peer_id(key: PublicKey) -> Peer:
    """The libp2p peer id of a host whose key is ``key`` (a transport key: see ``daemon.home``)."""
    return ID.from_pubkey(Ed25519PublicKey.from_bytes(public_key_bytes(key)))


def peer_from_text(text: str) -> Peer:
    """The libp2p peer id written as ``text`` (base58); ``InvalidInput`` if it is not one."""
    with map_libp2p_errors(f"{text[:80]!r} is not a peer id", to=InvalidInput):
        return ID.from_base58(text)


def peer_protocols(host: Host, peer: Peer) -> list[str]:
    """The protocols ``peer`` said it serves, through identify (none before identify ran)."""
    try:
        with map_libp2p_errors(f"the protocols of {peer}"):
            return list(host.get_peerstore().get_protocols(peer) or [])  # type: ignore[attr-defined]
    except RemoteError:  # py-libp2p raises for a peer it knows nothing of yet
        return []


def direct_address(host: Host, peer: Peer) -> str | None:
    """The address of ``peer``'s direct (not relayed) connection with ``host``, whichever side dialled: the IP and
    port at its other end (``/ip4/<ip>/tcp/<port>``, without /p2p); None if it has none."""
    try:
        with map_libp2p_errors(f"the connections of {peer}"):
            for conn in connections(host, peer):
                if conn.get_connection_type() == ConnectionType.DIRECT:
                    for address in conn.get_transport_addresses():
                        text = str(address)
                        if "/p2p-circuit" not in text:
                            return text.split("/p2p/", 1)[0]
    except RemoteError as exc:  # a connection closing under us
        log.debug("%s", exc)
    return None


def connections(host: Host, peer: Peer) -> list[Any]:
    """The connections ``host`` holds to ``peer`` now (py-libp2p ``INetConn``s; a peer may have several: one
    each way, a relayed one and the direct one hole punching made, a stale one and a fresh one)."""
    try:
        with map_libp2p_errors(f"the connections of {peer}"):
            return list(host.get_network().get_connections(peer))
    except RemoteError as exc:
        log.debug("%s", exc)
        return []


async def close_connections(host: Host, peer: Peer, stale: Collection[Any]) -> int:
    """Close those of ``stale`` that ``host`` still holds to ``peer``, best effort; returns how many it closed.
    A connection opened since ``stale`` was taken stays open: a link back from a cut, or a peer that dialled
    again, answers on it (closing every connection to the peer would end what runs on the fresh one too)."""
    closed = 0
    for conn in connections(host, peer):
        if any(conn is old for old in stale):
            try:
                with trio.move_on_after(5), map_libp2p_errors(f"closing a connection to {peer}"):
                    await conn.close()
                    closed += 1
            except RemoteError as exc:
                log.debug("%s", exc)
    return closed


def peer_addrs(host: Host, peer: Peer) -> list[str]:
    """The addresses ``host`` knows for ``peer`` (none if it knows none)."""
    try:
        with map_libp2p_errors(f"no address of {peer}"):
            return [str(a) for a in host.get_peerstore().addrs(peer)]
    except RemoteError:  # py-libp2p raises when it holds no address for a peer
        return []
