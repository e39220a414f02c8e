"""Reaching nodes behind NAT: circuit relay v2 and hole punching (DCUtR), on py-libp2p's implementations.

A node behind NAT can dial out but nobody can dial it. So it reserves a slot on a relay (a public node serving the
hop protocol: ``p2p.relay_service``), and publishes ``<relay address>/p2p/<relay>/p2p-circuit/p2p/<itself>``; a peer
dials that address, the relay joins the two connections, and the peers talk end to end encrypted through it. Both
then try to upgrade to a direct connection by hole punching (DCUtR: each dials the other's public address at the
same moment, so each NAT sees an outgoing connection that the other's SYN answers). A direct connection, once
there, carries every new stream (py-libp2p picks it over the relayed one); the relayed one closes a minute later.

What was measured on the emulated internet (``testing.wan``), and what it means here:

- **Relaying works**: a reservation takes 6-8 ms, a relayed dial 33-49 ms, and 20 MB crosses a relay at 18.8-18.9
  Mbit/s on 20 Mbit/s links, what plain TCP reaches. py-libp2p's ``host.connect`` drops ``/p2p-circuit``
  addresses, so ``Relays.connect`` dials them through the relay transport itself.
- **Hole punching works where the NAT drops unsolicited SYNs** (most home NATs): a direct connection 1.5 s after the
  relayed one, then 19.1 Mbit/s. Where the NAT answers them with a reset, the SYNs never cross and the peers stay
  relayed (DCUtR gives up after three tries). Masquerading kept source ports, and DCUtR predicts the public port
  from the listen port: a node behind NAT should listen on a fixed port.
- **Relay limits are the relay's own.** py-libp2p's defaults allow 4 reservations on the whole relay; a Flair
  relay passes ``RelayLimits`` from ``p2p.relay_*``. A circuit over its data or time budget is reset, and nothing
  redials it: ``Relays`` does, at the next use. Its per-IP and bandwidth settings are never applied by py-libp2p,
  so a relay operator bounds reservations and circuits, and data per circuit.

``Relays.kind`` tells each connection apart: ``direct``, ``relayed``, or ``hole-punched``: a direct connection to a
peer this node was once relayed to (DCUtR records a punched connection on the side that started it only, so each
side remembers the peers it saw relayed).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio
from libp2p.connection_types import ConnectionType
from libp2p.relay.circuit_v2.config import RelayConfig
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service

from ..core.errors import FlairError, InvalidInput, RemoteError
from .host import (
    ConnectionEvents,
    Host,
    Peer,
    connect,
    connections,
    direct_address,
    map_libp2p_errors,
    peer_from_text,
    peer_protocols,
)

log = logging.getLogger(__name__)

CIRCUIT = "/p2p-circuit"
RESERVE_TIMEOUT = 10.0  # s for a reservation
DIAL_TIMEOUT = 15.0  # s for a relayed dial
#: s DCUtR gives a direct dial. py-libp2p's 10 s was spent first dialling the peer's private listen addresses,
#: which a NAT drops, before hole punching began; a handshake across links takes well under a second.
PUNCH_DIAL_TIMEOUT = 3
MAX_REMEMBERED = 4096  # peers remembered as once relayed

# py-libp2p's relay logs errors for every stream a peer closes (routine), and its connection manager an INFO line
# every 10 s: neither says anything an operator can act on.
for _name in ("libp2p.relay", "libp2p.network.auto_connector"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class Limits:
    """What a relay lets each circuit and the whole relay take (``p2p.relay_*``)."""

    reservations: int = 128  # peers holding a slot at once
    circuits: int = 16  # circuits per reserved peer at once
    circuit_mb: int = 1024  # data per circuit, both directions together
    circuit_s: int = 3600  # a circuit's life (checked when data passes)

    def relay_limits(self) -> RelayLimits:
        return RelayLimits(duration=self.circuit_s, data=self.circuit_mb << 20, max_circuit_conns=self.circuits,
                           max_reservations=self.reservations)


class Relays:
    """Circuit relay v2 and DCUtR on ``host``; ``serve``: also be a relay for others, within ``limits``."""

    def __init__(self, host: Host, *, serve: bool = False, limits: Limits = Limits()) -> None:
        self.host, self.serve, self.limits = host, serve, limits
        # Every node takes the stop role (accepting relayed connections); a relay also the hop role.
        self.protocol = CircuitV2Protocol(host,  # type: ignore[arg-type]  # a py-libp2p host is an IHost
                                          limits=limits.relay_limits(), allow_hop=serve)
        self.transport = CircuitV2Transport(host, self.protocol, RelayConfig())  # type: ignore[arg-type]
        self.dcutr = DCUtRProtocol(host, dial_timeout=PUNCH_DIAL_TIMEOUT)  # type: ignore[arg-type]
        self._nursery: trio.Nursery | None = None
        self.reserved: dict[str, str] = {}  # relay peer -> this node's circuit address through it
        #: Peers this node had a relayed connection to (the latest ``MAX_REMEMBERED``): a direct connection to one
        #: of them came from hole punching, whichever side started it (DCUtR records only the initiator's side).
        self._relayed: OrderedDict[Peer, None] = OrderedDict()
        self.counts: dict[str, int] = {"reservations": 0, "reservation_failures": 0, "relayed_dials": 0,
                                       "relayed_dial_failures": 0}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        watch = ConnectionEvents(self._opened)
        self.host.get_network().register_notifee(watch)
        try:
            async with background_trio_service(self.protocol), background_trio_service(self.dcutr), \
                    trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self.host.get_network().remove_notifee(watch)

    def _opened(self, conn: Any) -> None:
        """Remember the peer of each relayed connection as it opens (see ``kind``)."""
        try:
            relayed = conn.get_connection_type() == ConnectionType.RELAYED
        except Exception as exc:  # a connection closing as it opens: nothing to remember
            log.debug("reading a new connection: %r", exc)
            return
        if relayed:
            self._saw_relayed(conn.muxed_conn.peer_id)

    def _saw_relayed(self, peer: Peer) -> None:
        self._relayed[peer] = None
        self._relayed.move_to_end(peer)
        while len(self._relayed) > MAX_REMEMBERED:
            self._relayed.popitem(last=False)

    # -- being reachable through a relay -------------------------------------------------------------------

    def offers_relay(self, peer: Peer) -> bool:
        """Whether ``peer`` said (through identify) that it serves as a relay."""
        return str(HOP_PROTOCOL) in peer_protocols(self.host, peer)

    async def reserve(self, relay: Peer) -> str:
        """Reserve a slot on ``relay`` (connected); returns this node's circuit address through it."""
        if self._nursery is None:
            raise FlairError("the relay service is not running")
        relay_address = direct_address(self.host, relay)
        if relay_address is None:
            raise InvalidInput(f"no direct connection to relay {relay}")
        ok = False
        with trio.move_on_after(RESERVE_TIMEOUT), map_libp2p_errors(f"reserving a slot on relay {relay}"):
            stream = await self.host.new_stream(relay, [HOP_PROTOCOL])
            try:
                ok = await self.transport.reserve(stream, relay, self._nursery)  # type: ignore[arg-type]
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await stream.close()
        if not ok:
            self.counts["reservation_failures"] += 1
            raise RemoteError(f"relay {relay} refused a reservation (or did not answer in {RESERVE_TIMEOUT:g} s)")
        self.counts["reservations"] += 1
        address = f"{relay_address}/p2p/{relay}{CIRCUIT}/p2p/{self.host.get_id()}"
        self.reserved[str(relay)] = address
        return address

    def holds(self, relay: str) -> bool:
        """Whether this node still holds its slot on ``relay``: reserved, and still connected to it."""
        return relay in self.reserved and peer_from_text(relay) in self.host.get_connected_peers() \
            and peer_from_text(relay) in reservations(self.transport)

    def drop(self, relay: str) -> None:
        self.reserved.pop(relay, None)

    # -- dialling ------------------------------------------------------------------------------------------

    async def connect(self, address: str) -> Peer:
        """Dial ``address``, relayed (``.../p2p-circuit/p2p/<peer>``) or not; returns the peer id."""
        if CIRCUIT not in address:
            return await connect(self.host, address)
        with map_libp2p_errors(f"{address!r} is not a relayed multiaddr", to=InvalidInput):
            target = multiaddr.Multiaddr(address)
            peer = peer_from_text(address.rsplit("/p2p/", 1)[1])
        if peer in self.host.get_connected_peers():
            return peer
        try:
            with trio.fail_after(DIAL_TIMEOUT), map_libp2p_errors(f"cannot reach peer {address} through its relay"):
                await self.transport.dial(target)
        except trio.TooSlowError:
            self.counts["relayed_dial_failures"] += 1
            raise RemoteError(f"peer {address} did not answer through its relay in {DIAL_TIMEOUT:g} s") from None
        except RemoteError:
            self.counts["relayed_dial_failures"] += 1
            raise
        self.counts["relayed_dials"] += 1
        return peer

    # -- what each connection is ---------------------------------------------------------------------------

    def kind(self, peer: Peer) -> list[dict[str, Any]]:
        """Each connection to ``peer``: ``kind`` (direct, relayed or hole-punched) and its ``addrs``."""
        out = []
        for conn in connections(self.host, peer):
            try:
                relayed = conn.get_connection_type() == ConnectionType.RELAYED
                addrs = [str(a) for a in conn.get_transport_addresses()]
            except Exception as exc:  # a connection closing under us: left out
                log.debug("reading a connection to %s: %r", peer, exc)
                continue
            if relayed:
                self._saw_relayed(peer)
            punched = peer in self._relayed or peer in hole_punched(self.dcutr)
            kind = "relayed" if relayed else "hole-punched" if punched else "direct"
            out.append({"kind": kind, "addrs": addrs})
        return out

    def relayed_only(self, peer: Peer) -> bool:
        """Whether this node is connected to ``peer`` and every connection to it crosses a relay."""
        types = []
        for conn in connections(self.host, peer):
            try:
                types.append(conn.get_connection_type())
            except Exception as exc:  # a connection closing under us: left out
                log.debug("reading a connection to %s: %r", peer, exc)
        return bool(types) and all(t == ConnectionType.RELAYED for t in types)

    def status(self) -> dict[str, Any]:
        return {"relay_service": self.serve, "reserved": dict(self.reserved),
                "hole_punched": len(hole_punched(self.dcutr)), **self.counts}


# py-libp2p 0.8.1 offers no public reading of these two; each private read is here, once, and
# tests/contracts/test_py_libp2p.py runs it against real py-libp2p objects, so an upgrade that renames one fails there.

def reservations(transport: CircuitV2Transport) -> Collection[Peer]:
    """The relays ``transport`` holds a reservation on (dropped by py-libp2p as each expires unrefreshed)."""
    return transport._reservations.keys()


def hole_punched(dcutr: DCUtRProtocol) -> Collection[Peer]:
    """The peers ``dcutr`` upgraded to a direct connection by hole punching, on the side that started it. py-libp2p
    forgets a peer when any connection to it closes: the relayed one too, a minute after the punch."""
    return dcutr._direct_connections
