"""The node's libp2p host on its own Ed25519 identity: the peer id and the Solana address share one key."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import Ed25519PublicKey, create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from ..core.errors import InvalidInput, RemoteError
from ..core.identity import Identity, public_key_bytes, public_key_text
from ..core.ids import PublicKey

# py-libp2p's Yamux sends a window update after every read unless told to batch them as go-yamux does (an update
# once half the window is consumed); each update is a Noise frame both sides pay for. Its own tuning variable,
# read on every read; set here unless the user set it.
os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")


@asynccontextmanager
async def running_host(identity: Identity, listen: str = "/ip4/127.0.0.1/tcp/0", *,
                       mdns: bool = False) -> AsyncIterator[Any]:
    """A started libp2p host (TCP, Noise, Yamux) listening on ``listen``; ``mdns`` finds peers on the LAN."""
    host = new_host(key_pair=create_new_key_pair(identity.keypair_bytes()[:32]), enable_mDNS=mdns)
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


def member_key(peer: Any) -> PublicKey | None:
    """The Flair public key (base58, as ``flair whoami`` prints it) of a libp2p peer id; None for a peer whose
    id does not embed an Ed25519 key (an RSA Kubo, say): such a peer is never a member."""
    key = peer.extract_public_key() if isinstance(peer, ID) else None
    return public_key_text(key.to_bytes()) if isinstance(key, Ed25519PublicKey) else None


def peer_id(key: PublicKey) -> Any:
    """The libp2p peer id of a Flair public key."""
    return ID.from_pubkey(Ed25519PublicKey.from_bytes(public_key_bytes(key)))


def peer_from_text(text: str) -> Any:
    """The libp2p peer id written as ``text`` (base58); ``InvalidInput`` if it is not one."""
    try:
        return ID.from_base58(text)
    except Exception as exc:
        raise InvalidInput(f"{text[:80]!r} is not a peer id: {exc}") from None


def peer_addrs(host: Any, peer: Any) -> list[str]:
    """The addresses ``host`` knows for ``peer`` (none if it knows none)."""
    try:
        return [str(a) for a in host.get_peerstore().addrs(peer)]
    except Exception:  # py-libp2p raises when it holds no address for a peer
        return []
