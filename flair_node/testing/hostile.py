"""A hostile peer for adversarial tests: a stranger on 127.0.0.1 that speaks the wire as any libp2p node would.

It is built on py-libp2p's own host and its own pubsub and GossipSub (``testing.pylibp2p_gossip``), never on
Flair's routers in ``network/``, so what it sends is what a foreign implementation could send::

    async with hostile_peer() as mallory:                    # a fresh identity, nobody's member
        await mallory.introduce(daemon_address, repo)          # or a member's, proving it as a member's node does
        mallory.serve_sync(lambda request: sync_reply({...}))  # answer /flair/sync/1.0.0 as it likes
        await mallory.connect(daemon_address)
        await mallory.join(topic)                              # subscribed, and the daemon is in its mesh
        await mallory.publish(topic, b"any bytes")             # signed by mallory, as GossipSub requires
        await mallory.push(daemon_address, topic, [b"any bytes"])  # the same, to a router that never meshed
        await mallory.send_frames(daemon_address, [rpc_frame(b"\\x0a\\xff")])  # raw meshsub frames

- ``introduce`` is how a peer holding a member's identity gets recognised: it clones the repository from the
  daemon (its sync requests claiming the membership) and greets it with its member cards (``protocol.hello``);
  unless ``serve_sync`` set a handler, it then answers sync from its clone, as a member's node does. Without
  it, a daemon treats even a member's identity as a stranger, whatever the peer id.
- ``publish`` hands bytes to py-libp2p's GossipSub (signed by this peer, so the daemon's router passes them to
  its validator): the way to test what a node does with an announcement's content.
- ``push`` writes signed messages straight onto a new ``/meshsub/1.1.0`` stream, one frame each, whether or not
  the daemon told this peer it is on the topic: what a peer outside a closed mesh can still make a router read.
- ``send_frames`` writes bytes as they are on a new ``/meshsub/1.1.0`` stream: the way to test the router's
  parsing. ``rpc_frame`` length-prefixes an RPC (py-libp2p's ``rpc_pb2.RPC`` or its bytes) and
  ``signed_message`` builds a message this peer signed, carrying any data and topics.
- ``serve_sync`` answers Flair's sync protocol with any handler: it gets each request (decoded) and returns
  the reply frame's bytes, which may be anything (``sync_reply`` wraps a value as a well-formed reply;
  ``deep_msgpack`` makes a record nested past every decoder's bound). ``sync_requests`` lists what was asked.

``wiretap()`` records every byte the hosts of this process read off their connections, as they are once
decrypted (Noise handshake payloads and transport messages alike): what a peer received, whoever it came from
and whatever protocol carried it. It patches py-libp2p's Noise reader for the block's duration, so it is for a
test process whose only host is the hostile peer (the daemons under test run in their own processes).

Everything waits with a deadline, and leaving the block closes the host and its connections.
"""

from __future__ import annotations

import inspect
import itertools
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import trio
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX
from libp2p.security.noise.io import BaseNoiseMsgReadWriter

from ..core import encoding
from ..core.errors import FlairError, RemoteError
from ..core.identity import Identity
from ..core.ids import RepoId
from ..core.protobuf import varint
from ..network.bitswap import BlockExchange
from ..network.host import Host, Peer, Stream, close_stream, connect, full_addrs, peer_from_text, running_host
from ..protocol import hello, sync
from ..protocol.rounds import RoundMemory
from ..protocol.sync import PROTOCOL as SYNC_PROTOCOL
from ..storage.repos import RepoSet
from .pylibp2p_gossip import Libp2pGossip

MESHSUB = "/meshsub/1.1.0"
MAX_MESSAGE_SIZE = 1 << 19  # what ``publish`` lets through: past the daemon's limit, to test it
MAX_REQUEST = 1 << 20  # bytes of one sync request read from the daemon
TIMEOUT = 20.0  # seconds any one step may take

#: Answers one sync request (the decoded request) with the reply frame's bytes.
SyncHandler = Callable[[Any], "bytes | Awaitable[bytes]"]


class HostilePeer:
    """A running stranger (see the module docstring); made by ``hostile_peer``."""

    def __init__(self, identity: Identity, host: Host, gossip: Libp2pGossip, repos: RepoSet,
                 exchange: BlockExchange) -> None:
        self.identity, self.host, self.gossip = identity, host, gossip
        self.repos, self.exchange = repos, exchange  # what ``introduce`` cloned, and how its blocks came
        self._seqno = itertools.count(time.time_ns())
        #: Sync requests received, decoded, oldest first.
        self.sync_requests: list[Any] = []
        self._serving_sync = False  # a handler of the test's own answers sync

    @property
    def peer_id(self) -> str:
        return str(self.host.get_id())

    @property
    def public_key(self) -> str:
        """This peer's Flair public key (to make it a member, when a test wants an insider)."""
        return self.identity.public_key

    @property
    def address(self) -> str:
        return full_addrs(self.host)[0]

    async def connect(self, address: str) -> Peer:
        """Dial ``address`` (ending in /p2p/<peer id>); the peer's py-libp2p id."""
        with trio.fail_after(TIMEOUT):
            return await connect(self.host, address)

    async def introduce(self, address_or_peer: str, repo: str) -> None:
        """Clone ``repo`` from a connected peer, claiming this peer's identity as a member, then greet it with
        this peer's member cards: from then on it knows this peer as that member (see the module docstring)."""
        peer = peer_from_text(address_or_peer.rsplit("/p2p/", 1)[-1])
        with trio.fail_after(TIMEOUT):
            await sync.pull(self.repos, RepoId(repo), sync.PeerSource(self.host, peer, self.exchange, self.identity),
                            memory=RoundMemory())
            if not self._serving_sync:  # answer sync from the clone, as a member's node does
                sync.serve(self.host, self.repos)
            cards = hello.cards(self.repos.all(), self.identity, self.peer_id, str(peer))
            await hello.greet(self.host, peer, cards)

    async def join(self, topic: str, *, mesh_with: str | None = None) -> None:
        """Subscribe to ``topic`` (accepting everything) and wait until a peer (``mesh_with``, a peer id, or any)
        is in this peer's mesh for it, so that ``publish`` reaches it."""
        await self.gossip.join(topic, lambda forwarder, data: True)
        with trio.fail_after(TIMEOUT):
            # noqa below: py-libp2p signals no mesh change; its heartbeat grafts within a second or two
            while not any(mesh_with in (None, p) for p in self.gossip.peers(topic)):  # noqa: ASYNC110
                await trio.sleep(0.05)

    async def publish(self, topic: str, data: bytes) -> None:
        """Publish ``data`` on a joined ``topic`` through py-libp2p's GossipSub, signed by this peer."""
        with trio.fail_after(TIMEOUT):
            await self.gossip.publish(topic, data)

    async def send_frames(self, address_or_peer: str, frames: Sequence[bytes], *, protocol: str = MESHSUB) -> None:
        """Open a stream to a connected peer (a multiaddr ending in /p2p/<id>, or the id) and write each of
        ``frames`` as it is; then close the stream."""
        peer = peer_from_text(address_or_peer.rsplit("/p2p/", 1)[-1])
        with trio.fail_after(TIMEOUT):
            stream = await self.host.new_stream(peer, [TProtocol(protocol)])
            try:
                for frame in frames:
                    await stream.write(frame)
            finally:
                await _close(stream)

    async def push(self, address_or_peer: str, topic: str, messages: Sequence[bytes]) -> None:
        """Each of ``messages`` on ``topic``, signed by this peer, written to a connected peer as raw frames."""
        await self.send_frames(address_or_peer, [
            rpc_frame(rpc_pb2.RPC(publish=[self.signed_message([topic], data, next(self._seqno))]))
            for data in messages])

    def signed_message(self, topics: Sequence[str], data: bytes, seqno: int) -> rpc_pb2.Message:
        """A pubsub message from this peer, signed as py-libp2p signs (StrictSign), with any data and topics."""
        message = rpc_pb2.Message(from_id=self.host.get_id().to_bytes(), data=data, seqno=seqno.to_bytes(8, "big"),
                                  topicIDs=list(topics))
        message.signature = self.host.get_private_key().sign(PUBSUB_SIGNING_PREFIX.encode()
                                                             + message.SerializeToString())
        message.key = self.host.get_public_key().serialize()
        return message

    def serve_sync(self, handler: SyncHandler) -> None:
        """Answer ``/flair/sync/1.0.0`` with ``handler`` (see the module docstring), replacing any earlier one."""

        async def on_stream(stream: Stream) -> None:
            try:
                with trio.fail_after(TIMEOUT):
                    request = encoding.decode(await _read_frame(stream))
                    self.sync_requests.append(request)
                    reply = handler(request)
                    if inspect.isawaitable(reply):
                        reply = await reply
                    await stream.write(struct.pack(">I", len(reply)) + reply)
            except (FlairError, trio.TooSlowError, EOFError, OSError, BaseLibp2pError):
                pass  # the daemon went away, gave up or sent nonsense: nothing for a hostile peer to do
            finally:
                await _close(stream)

        self.host.set_stream_handler(TProtocol(SYNC_PROTOCOL), on_stream)
        self._serving_sync = True


@asynccontextmanager
async def hostile_peer(identity: Identity | None = None) -> AsyncIterator[HostilePeer]:
    """A ``HostilePeer`` on 127.0.0.1 with ``identity`` (a fresh one by default), its GossipSub running."""
    identity = identity or Identity.generate()
    async with running_host(identity) as host, trio.open_nursery() as nursery:
        gossip = Libp2pGossip(host, max_message_size=MAX_MESSAGE_SIZE)
        await nursery.start(gossip.run)
        repos = RepoSet.in_memory(identity)
        exchange = BlockExchange(host, repos.blocks)
        await nursery.start(exchange.run)
        try:
            yield HostilePeer(identity, host, gossip, repos, exchange)
        finally:
            nursery.cancel_scope.cancel()


@contextmanager
def wiretap() -> Iterator[list[bytes]]:
    """Every decrypted message this process's libp2p connections read while the block runs, in order."""
    heard: list[bytes] = []
    read_msg = BaseNoiseMsgReadWriter.read_msg

    async def tapped(self: BaseNoiseMsgReadWriter, prefix_encoded: bool = False) -> bytes:
        message = await read_msg(self, prefix_encoded)
        heard.append(bytes(message))
        return message

    BaseNoiseMsgReadWriter.read_msg = tapped  # type: ignore[method-assign]
    try:
        yield heard
    finally:
        BaseNoiseMsgReadWriter.read_msg = read_msg  # type: ignore[method-assign]


def rpc_frame(rpc: rpc_pb2.RPC | bytes) -> bytes:
    """One meshsub frame: ``rpc`` (py-libp2p's ``RPC``, or any bytes) after its varint length."""
    body = rpc if isinstance(rpc, bytes) else rpc.SerializeToString()
    return varint(len(body)) + body


def sync_reply(value: Any) -> bytes:
    """A well-formed sync reply carrying ``value`` (canonical msgpack ``{"ok": value}``)."""
    return encoding.encode({"ok": value})


def deep_msgpack(depth: int) -> bytes:
    """msgpack of ``depth`` one-element lists nested in each other around a nil: small, and deeper than any
    decoder should follow (msgpack's C unpacker itself stops at 1024 levels)."""
    return b"\x91" * depth + b"\xc0"


async def _read_frame(stream: Stream) -> bytes:
    header = await _read_exactly(stream, 4)
    (length,) = struct.unpack(">I", header)
    if length > MAX_REQUEST:
        raise RemoteError(f"a sync request of {length} bytes")
    return await _read_exactly(stream, length)


async def _read_exactly(stream: Stream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        try:
            chunk = await stream.read(n - len(data))
        except EOFError:  # py-libp2p's end of stream
            chunk = b""
        if not chunk:
            raise RemoteError(f"stream ended after {len(data)} of {n} bytes")
        data += chunk
    return data


async def _close(stream: Stream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(2):
        await close_stream(stream)
