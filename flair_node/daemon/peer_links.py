"""The peers a pull works with beyond the one it pulls from: which to ask for its payloads, and which to dial
again: a holder no longer connected, and a peer after a pull from it failed in transport.

- Payloads (``holders``): the peer pulled from and the other connected members, ``MAX_HOLDERS`` in all, those
  connected directly before those reached only through a relay (``payload_order``): a relay bounds its
  circuits' bytes and time, and carries everyone's traffic. ``BlockExchange.fetch_from_any`` asks them in turn,
  so a cut link or a peer lacking the blocks costs a fetch no more than moving to the next.
- Holders no longer connected (``connect``): one whose connection closed while a fetch waited for it (a link
  back from a cut, or the peer closing a connection it judged stale), or the peer pulled from once its connection
  closed, is dialled again before the fetch asks it: py-libp2p's own dial, which opening a stream to a peer not
  connected makes, skips relayed addresses, and a peer behind NAT has no other.
- Dropped peers (``drop``, ``redial``): a pull that fails in transport closes its peer's connections that were
  open when it began (a connection a cut link left behind can stay registered yet open no stream, and py-libp2p
  notices nothing); one opened since, a link back or the peer dialling again, stays: a fetch may be running on
  it (two catch-up pulls failing on a stale connection had cut a clone off its fresh one twice). The
  peer is dialled again at each catch-up pass for ``REDIAL_FOR`` seconds, at the addresses this node knew for it
  (``MAX_PROVIDER_ADDRS`` at most), so a partition heals as soon as its link returns, not at the next lookup.
  At most ``MAX_REDIAL`` peers are remembered; each is isolated, and forgotten once connected.

Each dial goes to the addresses this node knows for the peer (its peer store's, then those discovery found it at),
a relayed one through its relay (``dial``: ``network.relay.Relays.connect``), one after the other
(``discovery_service.dial_found``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import trio

from ..core.ids import RepoId
from ..network.discovery import MAX_PROVIDER_ADDRS, Found
from ..network.host import Host, Peer, close_connections, connections, peer_addrs, peer_from_text
from .discovery_service import dial_found

log = logging.getLogger(__name__)

MAX_HOLDERS = 4  # connected members one payload is asked of in turn, when those before fail
REDIAL_FOR = 300.0  # s a peer dropped after a pull failed in transport is dialled again, at each catch-up pass
MAX_REDIAL = 64  # such peers remembered


class PeerLinks:
    """``member(repo, peer)``: whether a connected peer is a current member; ``relayed_only(peer)``: whether
    every connection to it crosses a relay; ``known(peer)``: addresses discovery found it at."""

    def __init__(self, host: Host, dial: Callable[[str], Awaitable[Peer]], *, member: Callable[[RepoId, str], bool],
                 relayed_only: Callable[[Peer], bool], known: Callable[[str], tuple[str, ...]]) -> None:
        self.host, self.dial = host, dial
        self.member, self.relayed_only, self.known = member, relayed_only, known
        #: Peers dropped after a failed pull: their addresses, and until when to dial them again (trio clock).
        self._redial: OrderedDict[str, tuple[tuple[str, ...], float]] = OrderedDict()
        self._redialling = False
        self._connecting: dict[Peer, trio.Event] = {}  # peers ``connect`` dials now: set once each dial ends

    def holders(self, repo: RepoId, peer: Peer) -> list[Peer]:
        """The peers to ask for a payload of ``repo`` while pulling it from ``peer``, in turn."""
        others = [p for p in self.host.get_connected_peers() if p != peer and self.member(repo, str(p))]
        return payload_order(peer, others, self.relayed_only)

    async def connect(self, peer: Peer) -> bool:
        """Dial ``peer`` unless this node is connected to it (``BlockExchange.Connect``); whether it is now. One
        dial per peer at a time: a caller while one runs waits for it."""
        if peer in self.host.get_connected_peers():
            return True
        dialling = self._connecting.get(peer)
        if dialling is not None:
            await dialling.wait()
        else:
            dialling = self._connecting[peer] = trio.Event()
            try:
                if addresses := self._addresses(peer):
                    await dial_found(self.dial, Found(str(peer), addresses))
            except Exception as exc:  # this node's trouble, not the peer's: the fetch asks the next one
                log.warning("dialling %s again failed: %r", peer, exc)
            finally:
                del self._connecting[peer]
                dialling.set()
        return peer in self.host.get_connected_peers()

    def connections(self, peer: Peer) -> list[Any]:
        """The connections to ``peer`` now: what ``drop`` closes if a pull that begins now fails."""
        return connections(self.host, peer)

    async def drop(self, peer: str, stale: Collection[Any]) -> None:
        """Close the connections to ``peer`` among ``stale`` (those a pull from it, which failed in transport,
        began with), and dial it again from now on."""
        if addresses := self._addresses(peer_from_text(peer)):
            self._redial[peer] = (addresses, trio.current_time() + REDIAL_FOR)
            self._redial.move_to_end(peer)
            while len(self._redial) > MAX_REDIAL:
                self._redial.popitem(last=False)
        await close_connections(self.host, peer_from_text(peer), stale)

    def redial_due(self) -> bool:
        """Whether peers wait to be dialled again and no pass of ``redial`` runs."""
        return bool(self._redial) and not self._redialling

    async def redial(self) -> None:
        """Dial each dropped peer once more; one pass at a time (a peer still cut off costs seconds a dial)."""
        self._redialling = True
        try:
            connected = {str(p) for p in self.host.get_connected_peers()}
            for peer, (addresses, until) in list(self._redial.items()):
                if peer in connected or trio.current_time() > until:
                    self._redial.pop(peer, None)
                elif await dial_found(self.dial, Found(peer, addresses)) is not None:
                    log.info("peer %s, dropped after a failed pull, answers again", peer)
                    self._redial.pop(peer, None)
        except Exception as exc:  # this node's trouble: the next pass tries again
            log.warning("dialling dropped peers again failed: %r", exc)
        finally:
            self._redialling = False

    def _addresses(self, peer: Peer) -> tuple[str, ...]:
        """The addresses to dial ``peer`` at: its peer store's, then those discovery found it at; as many as a
        provider record keeps (a peer store can hold many more, each costing a dial's timeout)."""
        known = (*peer_addrs(self.host, peer), *self.known(str(peer)))
        return tuple(dict.fromkeys(known))[:MAX_PROVIDER_ADDRS]


def payload_order(peer: Peer, others: list[Peer], relayed_only: Callable[[Peer], bool]) -> list[Peer]:
    """The peers to ask for a payload in turn: ``peer`` (the one pulled from) and ``others``, those reached only
    through a relay last, ``peer`` first of its kind; ``MAX_HOLDERS`` at most."""
    return sorted([peer, *others], key=relayed_only)[:MAX_HOLDERS]  # sorted is stable
