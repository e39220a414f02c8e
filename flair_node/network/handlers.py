"""Inbound streams that cannot take their connection, or the node, down with them.

py-libp2p 0.8.1 runs every stream a peer opens, from the multistream negotiation to the protocol's handler, as a
task in the nursery that accepts that connection's streams, and lets whatever the task raises escape into it. So
one stream whose failure nobody caught ends the acceptance of every later stream on its connection, and through
the swarm's service manager the host itself: a stranger naming a protocol in bytes that are not UTF-8 stops a
node (py-libp2p decodes the name unguarded), and a handler that lets ``StreamEOF`` or a parser's ``ValueError``
through would do as much. Flair's handlers catch their own errors (``rpc.serve``, ``gossipsub``, ``bitswap``),
but py-libp2p's negotiation and its own handlers (identify, ping, Kademlia) are out of their reach.

``guard_streams`` puts a ``StreamGuard`` between the swarm and the host's stream handler (negotiation, then the
protocol's handler): what escapes is counted against the peer (``StreamGuard.status``: ``failed_streams`` in
``node.status``), logged once per peer per minute (by ``gossip.BadInputLog``, as every peer's offences are), and
the stream is reset; the connection goes on accepting streams. Cancellation is never caught.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from .gossip import BadInputLog, Offences
from .host import Host, Stream, reset_stream

#: How long a failed stream's reset may take before the guard gives up on it (the peer may have gone).
RESET_TIMEOUT = 2.0


class StreamHandlerSlot(Protocol):
    """Where py-libp2p's swarm keeps the one handler every inbound stream goes to (``Swarm``)."""

    common_stream_handler: Callable[[Any], Awaitable[None]]

    def set_stream_handler(self, stream_handler: Callable[[Any], Awaitable[None]]) -> None: ...


class StreamGuard:
    """Runs ``handler`` on each inbound stream; what it raises (bar cancellation) stays with that stream.

    ``failed`` counts the streams that ended so, per peer (see ``Offences``: bounded, and logged once per peer
    per minute, as a peer chooses what its errors say and how often); ``status`` shows the counts."""

    def __init__(self, handler: Callable[[Stream], Awaitable[None]]) -> None:
        self.handler = handler
        self.failed = Offences(BadInputLog(time.monotonic))

    async def __call__(self, stream: Stream) -> None:
        try:
            await self.handler(stream)
        # ``except*``: a handler's nursery can raise a group holding both a failure and a Cancelled. The
        # failures are handled here, the Cancelled goes on up to the scope that was cancelled.
        except* Exception as group:
            failures = group.exceptions
            # A lone failure arrives wrapped in a group by ``except*``: logged as itself, it says more.
            what = failures[0] if len(failures) == 1 else group
            # ``repr`` here: the log clips each argument, and ``str`` of an exception drops its type.
            self.failed.add(str(stream.muxed_conn.peer_id), "its stream (%s) failed: %s",
                            stream.get_protocol() or "protocol not negotiated", repr(what))
            # Whatever state the stream was left in, the peer learns it is over; shielded so that a host
            # stopping meanwhile still gets the reset sent, and bounded as the peer may not read.
            with trio.CancelScope(shield=True), trio.move_on_after(RESET_TIMEOUT):
                await reset_stream(stream)

    def status(self) -> dict[str, int]:
        """Peer -> streams of it that failed (at most ``gossip.MAX_OFFENDERS`` peers, the least failing forgotten
        first)."""
        return dict(self.failed.counts)


def guard_streams(network: StreamHandlerSlot) -> StreamGuard:
    """Route every stream peers open on ``network`` (a py-libp2p swarm) through a ``StreamGuard`` around the
    handler the host set there; returns the guard, for its counts. Call it once, after the host is made."""
    guard = StreamGuard(network.common_stream_handler)
    network.set_stream_handler(guard)
    return guard


def stream_guard(host: Host) -> StreamGuard | None:
    """The guard on ``host``'s inbound streams (every host ``host.running_host`` runs has one), for its counts."""
    handler = getattr(host.get_network(), "common_stream_handler", None)
    return handler if isinstance(handler, StreamGuard) else None
