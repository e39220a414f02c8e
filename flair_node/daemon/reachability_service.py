"""Whether this node can be dialled, and what it does about it: dial-backs, DHT mode, relay slots.

- **Checking.** The node asks up to ``ASK_PEERS`` connected peers that serve dial-backs (``network.reachability``)
  to dial it at its listen port: ``public`` if any reached it, ``private`` if all that answered could not, else
  still ``unknown``. It asks again each ``RETRY_EVERY`` seconds while unknown, and every ``CHECK_EVERY`` seconds
  after (a network changes under a laptop).
- **DHT mode** (``p2p.dht = "auto"``): a server once public, a client while private or unknown, so a node behind NAT
  never sits in others' routing tables where lookups would wait on it in vain.
- **Relay slots.** A private node keeps a slot on up to ``MAX_RELAYS`` connected peers that serve as relays
  (``p2p.relay_service``; its bootstrap peers, typically), reserving again when it loses one (the relay restarted,
  the link was cut).
- **Addresses it publishes** (provider records in the DHT, ``flair peers``): the addresses dial-backs reached when
  public (those more peers reached first, ``MAX_PUBLISHED`` at most: a node may have several); its circuit
  addresses through its relays when private; its own listen addresses, wildcards left out, while unknown.

Every peer asked and every relay is isolated: whatever one does is logged and the pass goes on.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import trio

from ..core.errors import FlairError
from ..network import reachability
from ..network.discovery import Kademlia
from ..network.host import Host, Peer, full_addrs, map_libp2p_errors, peer_protocols
from ..network.relay import Relays

log = logging.getLogger(__name__)

CHECK_EVERY = 600.0  # s between two checks once known
RETRY_EVERY = 2.0  # s between two checks while unknown, and between two looks at relay slots
ASK_PEERS = 3  # peers asked per check
MAX_RELAYS = 2  # relay slots a private node keeps
MAX_PUBLISHED = 4  # addresses a public node publishes


class ReachabilityService:
    def __init__(self, host: Host, relays: Relays, dht: Kademlia | None, *, auto_dht: bool) -> None:
        self.host, self.relays, self.dht, self.auto_dht = host, relays, dht, auto_dht
        self.state = "unknown"
        self.answers: list[reachability.Answer] = []  # the last check's
        self.served: Any = None
        self._checked = -CHECK_EVERY  # trio clock of the last conclusive check

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.served = reachability.serve(self.host)
        task_status.started()
        while True:
            try:
                await self.step()
            except Exception:  # this node's own trouble: the next pass tries again
                log.exception("a reachability pass failed")
            await trio.sleep(RETRY_EVERY)

    async def step(self) -> None:
        now = trio.current_time()
        if self.state == "unknown" or now - self._checked >= CHECK_EVERY:
            await self.check()
        if self.state == "private":
            await self._keep_relays()

    async def check(self) -> None:
        """Ask up to ``ASK_PEERS`` peers for a dial-back, and act on what they say."""
        port = self._listen_port()
        if port is None:
            return
        answers = []
        for peer in self._askable()[:ASK_PEERS]:
            try:
                answers.append(await reachability.ask(self.host, peer, port))
            except FlairError as exc:  # one peer's trouble never stops the check
                log.debug("dial-back from %s: %s", peer, exc)
        if not answers:
            return
        self.answers = answers
        state = "public" if any(a.reachable for a in answers) else "private"
        self._checked = trio.current_time()
        if state != self.state:
            log.info("this node is %s (dial-backs from %d peers)", "reachable" if state == "public" else
                     "not reachable from outside: it will be reached through a relay", len(answers))
        self.state = state
        if self.auto_dht and self.dht is not None:
            await self.dht.set_server(state == "public")

    async def _keep_relays(self) -> None:
        for relay in [r for r in self.relays.reserved if not self.relays.holds(r)]:
            log.info("lost the slot on relay %s; reserving again", relay)
            self.relays.drop(relay)
        for peer in self.host.get_connected_peers():
            if len(self.relays.reserved) >= MAX_RELAYS:
                break
            if str(peer) in self.relays.reserved or not self.relays.offers_relay(peer):
                continue
            try:
                address = await self.relays.reserve(peer)
                log.info("reachable through relay %s at %s", peer, address)
            except FlairError as exc:  # one relay's trouble: the next one, and this one again next pass
                log.info("%s", exc)

    def addresses(self) -> list[str]:
        """The addresses this node publishes (see the module docstring)."""
        if self.state == "public":  # most reported first: one peer's false answer never displaces the others'
            reached = Counter(a.address for a in self.answers if a.reachable)
            return [f"{address}/p2p/{self.host.get_id()}" for address, _ in reached.most_common(MAX_PUBLISHED)]
        if self.state == "private" and self.relays.reserved:
            return list(self.relays.reserved.values())
        return [a for a in full_addrs(self.host) if "/0.0.0.0/" not in a and "/::/" not in a]

    def _listen_port(self) -> int | None:
        for address in self.host.get_addrs():
            try:
                with map_libp2p_errors("reading a listen address"):
                    return int(address.value_for_protocol("tcp"))
            except FlairError:
                continue
        return None

    def _askable(self) -> list[Peer]:
        """Connected peers that serve dial-backs."""
        return [p for p in self.host.get_connected_peers() if reachability.PROTOCOL in peer_protocols(self.host, p)]

    def status(self) -> dict[str, Any]:
        return {"reachability": self.state, "addresses": self.addresses(),
                "dial_backs": [{"peer": a.peer, "reachable": a.reachable, "address": a.address}
                               for a in self.answers], **self.relays.status()}
