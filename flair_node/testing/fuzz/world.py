"""What fuzz inputs are mutations of (``World``: a repository with history and members, its genuine records, a
member's node) and the hostile peers that send them (``Publisher``, ``HostileSource`` with ``lie``)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from ...core import encoding
from ...core.errors import RemoteError
from ...core.identity import Identity
from ...core.membership import MembershipChange
from ...core.objects import AnchorClaim, Commit, ProofRecord, RepositoryRecord
from ...core.refs import BranchMove
from ...protocol import announce
from ...storage.repos import RepoSet
from ..commit_graph import tiny_state
from .mutate import deep, membership_ahead, mutate_bytes, mutate_msgpack, mutate_protobuf, mutate_value, pack, resign

# -- what inputs are mutations of ---------------------------------------------------------------------------------

#: Record classes by announcement item kind, and by the ``type`` field of their body.
CLASSES: dict[str, Any] = {"commit": Commit, "move": BranchMove, "membership": MembershipChange,
                           "proof": ProofRecord, "anchor": AnchorClaim}
BY_TYPE: dict[str, Any] = {"commit": Commit, "branch-move": BranchMove, "membership": MembershipChange,
                           "proof": ProofRecord, "anchor": AnchorClaim, "repository": RepositoryRecord}


def seeded_identity(rng: random.Random) -> Identity:
    """An identity whose key comes from ``rng``: the same seed, the same keys."""
    import nacl.signing

    key = nacl.signing.SigningKey(rng.randbytes(32))
    return Identity.from_keypair_bytes(bytes(key) + bytes(key.verify_key))


class World:
    """What inputs are mutations of: an owner's repository with history and members (a contributor, alice, and
    a reader), its genuine records and announcements, and alice's node holding only the genesis. The attacker's
    keys (``signers``) are the reader's and a stranger's."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.owner, self.alice, self.reader, self.stranger = (seeded_identity(rng) for _ in range(4))
        # The attacker's keys: neither may author a commit, a branch move or a membership change, so every record
        # they sign that a node accepts is forged (alice, a contributor, is the node's own key).
        self.signers = [self.stranger, self.reader]
        self.owner_set = RepoSet.on_disk(root / "owner", self.owner)
        repo = self.repo = self.owner_set.create("fuzzed", tiny_state(0))
        repo.create_branch(self.owner, "exp", repo.head("main"))
        repo.commit_weights(self.owner, tiny_state(1), message="one", branch="exp")
        repo.commit_weights(self.owner, tiny_state(2), message="two", branch="main")
        repo.invite(self.owner, self.alice.public_key, "contributor")
        repo.invite(self.owner, self.reader.public_key, "reader")
        self.genuine_keys = set(self.owner_set.objects.keys())
        commits = [repo.commit(repo.head(b)) for b in ("exp", "main")]
        moves = [move for b in ("exp", "main") if (move := repo.branch_move(b)) is not None]
        changes = repo.members.changes()
        self.records = [("commit", c.encode()) for c in commits] + [("move", m.encode()) for m in moves] + \
            [("membership", c.encode()) for c in changes]
        self.genuine_ids = {hashlib.sha256(encoding.encode(msgpack.unpackb(r, raw=False)["body"])).hexdigest()
                            for _, r in self.records}
        self.announcements = [announce.pack(repo.id, [item], 60_000)[0] for item in self.records] + \
            announce.pack(repo.id, self.records, 60_000)
        self.node_set = RepoSet.in_memory(self.alice)
        self.node = self.node_set.adopt(repo.record)  # a member's node that holds only the genesis

    def verdict(self, data: bytes) -> str:
        """What an announcement a node accepted holds: ``"forged"`` if any record in it is not one of the genuine
        records (by id: a record whose id is genuine carries its author's valid signature), ``"noncanonical"``
        if a genuine record came in other bytes than its canonical encoding (the same signed record, written
        another way), else ``"accepted"``."""
        taken = announce.decode(data, self.repo.id)
        decoded = [*taken.changes, *taken.commits, *taken.moves, *taken.proofs, *taken.anchors]
        if any(record.digest not in self.genuine_ids for record in decoded):
            return "forged"
        if any(CLASSES[kind].decode(raw).encode() != raw for kind, raw in taken.items):
            return "noncanonical"
        return "accepted"


# -- hostile peers -------------------------------------------------------------------------------------------------


class Publisher:
    """Pubsub messages signed with one host's key (StrictSign), and valid RPC frames holding them."""

    def __init__(self, origin: bytes, key: Any, topic: str, rng: random.Random) -> None:
        self.origin, self.key, self.topic, self.rng = origin, key, topic, rng
        self._seqno = rng.getrandbits(48) << 16

    def signed(self, data: bytes, *, mutate: bool = False) -> bytes:
        """A message of ``data`` on the topic, signed; ``mutate``: its fields changed first (then signed, so the
        signature holds) and, sometimes, after (so it does not)."""
        from dataclasses import replace

        from flair_node.network import gossipsub_wire as wire

        rng = self.rng
        self._seqno += 1
        message = wire.Message(self.origin, data, self._seqno.to_bytes(8, "big"), (self.topic,))
        if mutate:
            changes: list[dict[str, Any]] = [
                {"topics": rng.choice([(), (self.topic,) * 20, (self.topic, "other"), ("x" * 2000,)])},
                {"seqno": rng.choice([b"", b"\x00" * 200, rng.randbytes(3)])},
                {"origin": rng.choice([b"", self.origin[:-1], rng.randbytes(38), self.origin + b"\x00"])},
                {"key": rng.choice([b"\x08\x01", rng.randbytes(36)])}]
            message = replace(message, **rng.choice(changes))
        message = replace(message, signature=self.key.sign(message.signed_part()))
        encoded = message.encode()
        if mutate and rng.random() < 0.3:
            encoded = mutate_protobuf(rng, encoded)  # after signing: the signature no longer holds
        return encoded

    def seeds(self, announcements: list[bytes]) -> list[bytes]:
        """Valid RPC frames (without their length): subscriptions, messages and every kind of control entry."""
        from flair_node.network import gossipsub_wire as wire

        topic, some_id = self.topic, self.origin + b"\x00" * 8
        return [wire.subscription(topic, True) + wire.publish(self.signed(announcements[0])) + wire.graft(topic),
                wire.ihave(topic, [some_id, b"\x01" * 40]) + wire.iwant([some_id]),
                wire.prune(topic, 60) + wire.subscription(topic, False) + wire.subscription(topic, True),
                wire.publish(self.signed(announcements[-1])) + wire.graft(topic) + wire.prune(topic, 1)]


class HostileSource:
    """A ``sync.Source`` that answers honestly from the owner's node except where it was told to lie: in the
    heads reply, the records replies, or the blocks. Replies pass through msgpack as over the wire (a
    non-canonical reply is refused there, as ``rpc.request`` refuses it)."""

    def __init__(self, world: World, into: RepoSet, rng: random.Random, mode: str) -> None:
        from flair_node.protocol.sync import SyncServer

        self.world, self.into, self.rng, self.mode = world, into, rng, mode
        self.server = SyncServer(world.owner_set)

    async def heads(self, repo: Any) -> Any:
        reply = await self.server.handle(self.world.alice.public_key, {"op": "heads", "repo": repo})
        return self._lie(reply) if self.mode == "heads" else reply

    async def records(self, repo: Any, ids: list[str]) -> list[bytes]:
        reply = await self.server.handle(self.world.alice.public_key, {"op": "records", "repo": repo, "ids": ids})
        if self.mode == "records" and self.rng.random() < 0.7:
            reply = self._lie(reply)
        records = reply.get("records") if isinstance(reply, dict) else None
        if not isinstance(records, list):
            raise RemoteError("the peer sent a malformed records reply")
        return records

    async def blocks(self, cid: Any, max_size: int) -> None:
        from flair_node.storage import unixfs

        if self.mode == "blocks":
            how = self.rng.randrange(3)
            if how == 0:
                raise RemoteError(f"the peer does not have block {cid}")
            if how == 1:
                return  # says nothing, sends nothing
            for block_cid, block in unixfs.walk(self.world.owner_set.blocks, cid, max_size=max_size):
                self.into.blocks.put(block_cid, mutate_bytes(self.rng, block)
                                     if self.rng.random() < 0.5 else block)  # put re-hashes: refused or kept
            return
        for block_cid, block in unixfs.walk(self.world.owner_set.blocks, cid, max_size=max_size):
            self.into.blocks.put(block_cid, block)

    def _lie(self, value: Any) -> Any:
        return encoding.decode(pack(lie(self.rng, value, self.world)))  # what rpc.request would refuse


def records_in(value: Any) -> list[tuple[Any, Any]]:
    """Where signed records (bytes) sit in a heads or records reply: (container, key)."""
    found: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, bytes):
                found.append((value, k))
            elif isinstance(v, list):
                found.extend((v, i) for i, x in enumerate(v) if isinstance(x, bytes))
    return found


def lie(rng: random.Random, value: Any, world: World) -> Any:
    """A sync reply (heads or records) changed: one record in it re-signed, mutated, nested 600+ deep or
    replaced by a membership change from ahead of the chain; or the reply's structure mutated."""
    records = records_in(value)
    if records and rng.random() < 0.55:
        container, k = rng.choice(records)
        record = container[k]
        try:
            cls = BY_TYPE.get(msgpack.unpackb(record, raw=False)["body"].get("type"), Commit)
        except Exception:  # not a record after all: any class will do for re-signing garbage
            cls = Commit
        makers: list[Callable[[], bytes]] = [
            lambda: resign(rng, record, cls, rng.choice(world.signers)),
            lambda: mutate_msgpack(rng, record),
            lambda: deep(rng.choice((600, 1_000, 3_000)), rng.random() < 0.5).msgpack,
            lambda: membership_ahead(rng, world.records[-1][1], MembershipChange, rng.choice(world.signers))]
        container[k] = rng.choice(makers)()
        return value
    return mutate_value(rng, value)


