"""Member cards: how two connected nodes learn which members they are to each other, and nobody else learns it.

A node's libp2p identity is its transport key (``daemon.home``), not its member key, so a connection tells a
peer nothing about who the node is. Right after connecting, two nodes swap their cards (``/flair/hello/1.0.0``,
``daemon.peer_cards``). A node writes one card for each repository it is a current member of, for that one
peer:

- ``tag``: 16 bytes of HMAC-SHA256, under the repository's latest payload key the node holds, of both transport
  peer ids (writer's first). A reader holding that key finds the card's repository by recomputing the tags of
  its own keys; to anyone else the tag is random bytes.
- ``box``: sealed with the same key (XChaCha20-Poly1305, bound to the repository and both peer ids), the
  writer's member key and its signature of the repository id and both peer ids.

So a card opens only for a member (present or past) of its repository, proves that the writer's transport peer
holds that member key, and is good only on the connection it was written for: the reader checks that the
signed peer ids are the connection's. Whether the key holds a role is asked of the reader's own membership view
whenever it matters (``daemon.p2p``). Cards are padded with random ones to a multiple of ``PAD_TO``, so a
stranger learns from a hello at most roughly how many repositories its writer is in.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from ..core import crypto, encoding
from ..core.errors import FlairError, IntegrityError, InvalidInput
from ..core.identity import Identity, verify
from ..core.ids import PublicKey, RepoId
from ..network import rpc
from ..network.host import Host, Peer
from ..storage.clock import now_ms
from ..storage.repo import Repository

PROTOCOL = "/flair/hello/1.0.0"
MAX_CARDS = 256  # cards in one hello: a node in more repositories makes itself known in its first 256
PAD_TO = 4
TAG_BYTES = 16
MAX_BOX = 512  # a box holds a key (44 chars) and a signature (64 bytes), sealed
_BOX_SIZE = 165  # what a real box measures: padding cards are made the same size


def cards(repos: Iterable[Repository], identity: Identity, me: str, them: str) -> list[dict[str, bytes]]:
    """This node's cards for peer ``them`` (transport peer ids, as text): one per repository in ``repos`` where
    ``identity`` holds a role at the latest epoch it has a key of, then random padding (see the module
    docstring)."""
    out: list[dict[str, bytes]] = []
    for repo in repos:
        if len(out) == MAX_CARDS:
            break
        membership = repo.members.current()
        if membership.role(identity.public_key, epoch=membership.epoch, at_ms=now_ms()) is None:
            continue
        try:
            key = repo.keys.key(membership.epoch)
        except FlairError:
            continue  # no key of that epoch here (not sealed to this node yet): no card to write
        box = crypto.encrypt(key, encoding.encode({"key": identity.public_key,
                                                   "sig": identity.sign(_statement(repo.id, me, them))}),
                             _context(repo.id, me, them))
        out.append({"tag": _tag(key, repo.id, me, them), "box": box})
    while len(out) % PAD_TO or not out:
        out.append({"tag": os.urandom(TAG_BYTES), "box": os.urandom(_BOX_SIZE)})
    return out


def read(hello: Any, repos: Iterable[Repository], me: str, them: str) -> dict[RepoId, PublicKey]:
    """The member key peer ``them`` proves it holds in each of ``repos`` whose key (of any epoch this node holds)
    one of its cards in ``hello`` is sealed with; ``InvalidInput`` if ``hello`` is not a list of cards. A card
    that matches no key here is someone else's business (or padding); one that matches but does not open or
    verify is ``IntegrityError``: a member (present or past) sent nonsense."""
    if not isinstance(hello, list) or len(hello) > MAX_CARDS + PAD_TO:
        raise InvalidInput(f"a hello is a list of at most {MAX_CARDS} cards")
    expected = {_tag(key, repo.id, them, me): (repo.id, key) for repo in repos for key in _held_keys(repo)}
    found: dict[RepoId, PublicKey] = {}
    for card in hello:
        if not (isinstance(card, Mapping) and isinstance(card.get("tag"), bytes)
                and isinstance(card.get("box"), bytes) and len(card["box"]) <= MAX_BOX):
            raise InvalidInput("a card is {tag: bytes, box: bytes}")
        match = expected.get(card["tag"])
        if match is None:
            continue
        repo_id, key = match
        opened = encoding.decode(crypto.decrypt(key, card["box"], _context(repo_id, them, me)))
        member, signature = (opened.get("key"), opened.get("sig")) if isinstance(opened, dict) else (None, None)
        if not isinstance(member, str) or not isinstance(signature, bytes):
            raise IntegrityError("a member card holds no key and signature")
        verify(PublicKey(member), _statement(repo_id, them, me), signature)
        found[repo_id] = PublicKey(member)
    return found


async def greet(host: Host, peer: Peer, cards: list[dict[str, bytes]]) -> Any:
    """Send ``cards`` to ``peer`` and return what it sent back (its cards, unchecked: ``read`` them)."""
    reply = await rpc.request(host, peer, PROTOCOL, {"cards": cards})
    return reply.get("cards") if isinstance(reply, dict) else None


def _held_keys(repo: Repository) -> list[bytes]:
    """Every payload key of ``repo`` this node holds or can open."""
    held = []
    for epoch in range(repo.members.current().epoch + 1):
        try:
            held.append(repo.keys.key(epoch))
        except FlairError:
            continue
    return held


def _tag(key: bytes, repo: RepoId, writer: str, reader: str) -> bytes:
    return bytes.fromhex(crypto.keyed_tag(key, f"flair/hello/tag/{repo}".encode(), f"{writer}\0{reader}",
                                          size=TAG_BYTES))


def _statement(repo: RepoId, writer: str, reader: str) -> bytes:
    return f"flair/hello/1\0{repo}\0{writer}\0{reader}".encode()


def _context(repo: RepoId, writer: str, reader: str) -> bytes:
    return f"flair/hello/box/{repo}/{writer}/{reader}".encode()
