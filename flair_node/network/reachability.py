"""Whether others can dial this node: a dial-back on a new connection (``/flair/dialback/1.0.0``).

A node behind NAT can dial out but cannot be dialled; it should then reserve a slot on a relay and publish the
relayed address instead of its own. To learn which it is, it asks a few connected peers to dial it back.

py-libp2p 0.8.1 ships AutoNAT for this, and it was measured on the emulated internet before use: its server "dials
back" through ``host.connect``, which returns at once because the asker is already connected (it opened the
request), so every node is declared public, one behind NAT included; and its default needs four agreeing servers.
Flair asks with its own small protocol instead:

- The asker names the TCP port it listens on. The server opens a new TCP connection to that port at the address
  the asker's connection comes from (never anywhere else: nobody can make a server dial a third party), within
  ``DIAL_TIMEOUT``, and answers whether it was accepted, and the address it tried. A NAT drops or refuses the SYN,
  so the answer is no; a listening node accepts it.
- The server checks only that something accepts TCP there, not that it is the asker: a node would have to share
  its public address with another listener on the same port to be told wrongly, and then the worst outcome is
  that it publishes an address others cannot dial (its relayed one still works).
- Bounded: one check per asking peer per ``PEER_EVERY`` seconds, ``MAX_CHECKS`` at once (a stranger can make a
  node send at most that many SYNs, each to the stranger's own address). A check asked over a relayed
  connection is refused: the address it comes from is the relay's.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import trio

from ..core.errors import InvalidInput, RemoteError, ResourceExhausted
from . import rpc
from .host import Host, Peer, direct_address, peer_from_text

PROTOCOL = "/flair/dialback/1.0.0"
DIAL_TIMEOUT = 5.0  # s the server waits for the dial-back's TCP handshake
PEER_EVERY = 10.0  # s between two checks asked by the same peer
MAX_CHECKS = 8  # dial-backs under way at once
MAX_ASKERS = 4096  # askers remembered for the per-peer limit


@dataclass(frozen=True)
class Answer:
    """One peer's dial-back: whether the node was reachable at ``address`` (the one the peer tried)."""

    peer: str
    reachable: bool
    address: str


def serve(host: Host) -> rpc.Served:
    """Answer dial-back requests (see the module docstring)."""
    asked: OrderedDict[str, float] = OrderedDict()  # asker -> when it last asked (monotonic)
    slots = trio.Semaphore(MAX_CHECKS)

    async def handle(peer: str, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict) or set(request) != {"port"} or not isinstance(request["port"], int) \
                or not 0 < request["port"] < 65536:
            raise InvalidInput("a dial-back request is {port: 1 to 65535}")
        now = time.monotonic()
        if now - asked.get(peer, -PEER_EVERY) < PEER_EVERY:
            raise ResourceExhausted(f"one dial-back per {PEER_EVERY:g} s")
        asked[peer] = now
        asked.move_to_end(peer)
        while len(asked) > MAX_ASKERS:
            asked.popitem(last=False)
        ip = _remote_ip(direct_address(host, peer_from_text(peer)))
        if ip is None:
            raise InvalidInput("ask for a dial-back over a direct connection: over a relay, the address seen is "
                               "the relay's")
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            raise ResourceExhausted(f"{MAX_CHECKS} dial-backs under way; ask again later") from None
        try:
            reachable = await _dial(ip, request["port"])
        finally:
            slots.release()
        version = "ip6" if ipaddress.ip_address(ip).version == 6 else "ip4"
        return {"reachable": reachable, "address": f"/{version}/{ip}/tcp/{request['port']}"}

    return rpc.serve(host, PROTOCOL, handle)


async def ask(host: Host, peer: Peer, port: int) -> Answer:
    """Ask ``peer`` to dial this node back at ``port``; ``RemoteError`` if it cannot say."""
    reply = await rpc.request(host, peer, PROTOCOL, {"port": port})
    if not isinstance(reply, dict) or not isinstance(reply.get("reachable"), bool) \
            or not isinstance(reply.get("address"), str) or not _dialled(reply["address"], port):
        raise RemoteError(f"peer {peer} sent a malformed dial-back answer: the address it dialled is "
                          f"/ip4/<ip>/tcp/{port} (or /ip6/...)")
    return Answer(str(peer), reply["reachable"], reply["address"])


def _dialled(address: str, port: int) -> bool:
    """Whether ``address`` is what a dial-back to ``port`` can have dialled: one IP address, that TCP port."""
    parts = address.split("/")
    if len(parts) != 5 or parts[0] or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp" or parts[4] != str(port):
        return False
    try:
        return ipaddress.ip_address(parts[2]).version == int(parts[1][2])
    except ValueError:
        return False


def _remote_ip(address: str | None) -> str | None:
    """The IP address in a direct connection's ``address`` (``/ip4/<ip>/tcp/<port>``, or ip6)."""
    parts = (address or "").split("/")
    return parts[2] if len(parts) > 2 and parts[1] in ("ip4", "ip6") else None


async def _dial(ip: str, port: int) -> bool:
    with trio.move_on_after(DIAL_TIMEOUT):
        try:
            stream = await trio.open_tcp_stream(ip, port)
        except OSError:
            return False
        await stream.aclose()
        return True
    return False
