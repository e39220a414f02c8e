"""What every signed record shares (commits, repository records, membership changes, branch moves).

A record's id is the SHA-256 of the canonical msgpack of its body (everything but the signature); the key the
record names as its signer signs a domain tag, one per record type, plus the id's 32 bytes. Nothing in a record
can change without changing its id, and a record read back is accepted only if both still check out.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar, Self

from . import encoding
from .errors import IntegrityError, InvalidInput
from .identity import Identity, verify
from .ids import sha256_hex


class SignedRecord:
    """Mixin for frozen record dataclasses with a ``signature`` field and a ``body()``."""

    TAG: ClassVar[bytes]  # domain separation: a signature over one kind of record never verifies another
    KIND: ClassVar[str]  # the record's name in messages
    SIGNER: ClassVar[str] = "author"  # the field holding the signer's public key
    signature: bytes

    def body(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def digest(self) -> str:
        """The record's id as hex (each record type offers it typed, as ``id``)."""
        return sha256_hex(encoding.encode(self.body()))

    def signed(self, identity: Identity) -> Self:
        signer = getattr(self, self.SIGNER)
        if identity.public_key != signer:
            raise InvalidInput(f"a {self.KIND} is signed by its {self.SIGNER}", signer=str(signer))
        return replace(self, signature=identity.sign(self.TAG + bytes.fromhex(self.digest)))  # type: ignore[type-var]

    def verify(self, expected_id: str | None = None) -> None:
        """Raise ``IntegrityError`` if the id (when given) or the signer's signature does not check out."""
        digest = self.digest
        if expected_id is not None and digest != expected_id:
            raise IntegrityError(f"{self.KIND} stored as {expected_id} hashes to {digest}", record=expected_id)
        verify(getattr(self, self.SIGNER), self.TAG + bytes.fromhex(digest), self.signature)

    def encode(self) -> bytes:
        return encoding.encode({"body": self.body(), "sig": self.signature})
