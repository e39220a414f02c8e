"""The payload keys of one repository as this node holds them, and the encryption of payloads with them.

There is one key per epoch of the membership chain. The owner's node makes each one (``Repository.create``,
``remove``, ``rotate_key``) and holds it from then on; every other node opens it, when first needed, from the
chain, where it is sealed to each member who may read that epoch. A node whose identity holds no sealed key of an
epoch gets ``NotAMember``: payloads stay ciphertext to non-members.

A payload is authenticated as belonging to one repository and one codec (the associated data of ``context``), so a
ciphertext cannot be replayed into another repository, or decoded as another codec.
"""

from __future__ import annotations

from ..core import crypto
from ..core.errors import IntegrityError, NotAMember
from ..core.identity import Identity
from ..core.objects import RepositoryRecord
from .members import MembershipLog


class PayloadKeys:
    """The keys of ``record``'s payloads, opened from ``members`` with ``reader`` (None: this node reads none)."""

    def __init__(self, record: RepositoryRecord, members: MembershipLog, reader: Identity | None) -> None:
        self.record = record
        self.members = members
        self.reader = reader
        self._keys: dict[int, bytes] = {}  # by epoch
        self._ciphers: dict[tuple[int, str], crypto.PieceCipher] = {}

    def key(self, epoch: int) -> bytes:
        """The key of ``epoch``: ``IntegrityError`` if the chain has not reached it, ``NotAMember`` if it is not
        sealed to this node."""
        key = self._keys.get(epoch)
        if key is not None:
            return key
        membership = self.members.current()
        if epoch > membership.epoch:
            raise IntegrityError(f"payload key epoch {epoch} is unknown to repository {self.record.name} (its "
                                 f"membership is at epoch {membership.epoch})", repo=self.record.id)
        sealed = membership.sealed_key(self.reader.public_key, epoch) if self.reader else None
        if sealed is None or self.reader is None:
            raise NotAMember(f"this node holds no key of epoch {epoch} for repository {self.record.name}: its "
                             "payloads stay ciphertext to non-members", repo=self.record.id)
        key = self._keys[epoch] = crypto.open_sealed_key(sealed, self.reader)
        return key

    def add(self, epoch: int, key: bytes) -> None:
        """Hold ``key`` as the key of ``epoch``: one this node made, which it need not open from the chain."""
        self._keys[epoch] = key

    def forget(self) -> None:
        """Drop every key held: after a change from a peer (which may seal the next epoch's key to this node), each
        is opened from the chain again."""
        self._keys.clear()
        self._ciphers.clear()

    def context(self, codec: str) -> bytes:
        """Associated data: a payload authenticates only in this repository and as this codec."""
        return f"flair/payload/{self.record.id}/{codec}".encode()

    def tag(self, value: str, *, epoch: int, purpose: str) -> str:
        """The tag of ``value`` (a branch name, say) under the key of ``epoch``, for ``purpose``: what is written
        where non-members read (on chain) in place of the name, which members recompute to check it."""
        return crypto.keyed_tag(self.key(epoch), f"flair/tag/{self.record.id}/{purpose}".encode(), value)

    def encrypt(self, data: bytes, *, epoch: int, codec: str) -> bytes:
        """``data`` sealed with the key of ``epoch``, as a payload of this repository in ``codec``."""
        return crypto.encrypt(self.key(epoch), data, self.context(codec))

    def pieces(self, *, epoch: int, codec: str) -> crypto.PieceCipher:
        """What seals and opens the pieces of a payload in ``codec`` under the key of ``epoch``
        (``storage.pieces``)."""
        cipher = self._ciphers.get((epoch, codec))
        if cipher is None:
            cipher = self._ciphers[(epoch, codec)] = crypto.PieceCipher(self.key(epoch), self.context(codec))
        return cipher

    def decrypt(self, data: bytes, *, epoch: int, codec: str) -> bytes:
        """The plaintext of a payload sealed by ``encrypt``; ``IntegrityError`` if it does not authenticate."""
        return crypto.decrypt(self.key(epoch), data, self.context(codec))
