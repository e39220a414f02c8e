"""The node's libp2p host on its own Ed25519 identity: the peer id and the Solana address share one key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr

from ..core.errors import InvalidInput, RemoteError
from ..core.identity import Identity


@asynccontextmanager
async def running_host(identity: Identity, listen: str = "/ip4/127.0.0.1/tcp/0") -> AsyncIterator[Any]:
    """A started libp2p host (TCP, Noise, Yamux) listening on ``listen``."""
    host = new_host(key_pair=create_new_key_pair(identity.keypair_bytes()[:32]))
    try:
        addrs = [multiaddr.Multiaddr(listen)]
    except Exception as exc:
        raise InvalidInput(f"listen address {listen!r} is not a multiaddr: {exc}") from None
    async with host.run(listen_addrs=addrs):
        try:
            yield host
        finally:
            # py-libp2p leaves connections open when its host stops; close each one we hold.
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                for peer in list(host.get_connected_peers()):
                    await host.disconnect(peer)


def full_addrs(host: Any) -> list[str]:
    """The host's dialable addresses, each ending in /p2p/<peer id>."""
    return [str(a) for a in host.get_addrs()]


async def connect(host: Any, address: str) -> Any:
    """Dial ``address`` (a multiaddr ending in /p2p/<peer id>); returns the peer id."""
    try:
        info = info_from_p2p_addr(multiaddr.Multiaddr(address))
    except Exception as exc:
        raise InvalidInput(f"{address!r} is not a multiaddr ending in /p2p/<peer id>: {exc}") from None
    try:
        await host.connect(info)
    except Exception as exc:
        raise RemoteError(f"cannot reach peer {address}: {exc}") from None
    return info.peer_id
