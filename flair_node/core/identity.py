"""Ed25519 identities: the member key, which signs commits and records, and the keys derived from it.

A node's member key never appears on chain or on the wire in the clear: its libp2p host runs on a transport key of
its own, and in each repository it pays for and holds what it puts on Solana with a wallet derived from the member
key's secret for that repository (``wallet``), which nobody without the secret can tie to the member key or to the
node's wallets in other repositories. Members learn it from the records the member signs.

The secret is kept as a Solana CLI keypair (64 bytes: 32-byte seed then 32-byte public key); the public key's
base58 text is the Solana address. This module only computes; reading and writing the key file is storage's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import base58
import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import IntegrityError, InvalidInput
from .ids import PublicKey


def public_key_bytes(key: PublicKey | str) -> bytes:
    try:
        raw = base58.b58decode(key)
    except ValueError as exc:
        raise InvalidInput(f"public key {key!r} is not base58", key=str(key)) from exc
    if len(raw) != 32:
        raise InvalidInput(f"public key {key!r} is {len(raw)} bytes, not 32", key=str(key))
    return raw


def public_key_text(raw: bytes) -> PublicKey:
    return PublicKey(base58.b58encode(raw).decode("ascii"))


@dataclass(frozen=True)
class Identity:
    """A signing identity. ``repr`` never shows the secret."""

    _signing_key: nacl.signing.SigningKey = field(repr=False)

    @classmethod
    def generate(cls) -> Identity:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_keypair_bytes(cls, keypair: bytes) -> Identity:
        """From the 64 bytes of a Solana keypair (seed + public key); the halves must agree."""
        if len(keypair) != 64:
            raise InvalidInput(f"a keypair is 64 bytes, got {len(keypair)}")
        key = nacl.signing.SigningKey(keypair[:32])
        if bytes(key.verify_key) != keypair[32:]:
            raise InvalidInput("keypair's public half does not belong to its secret half")
        return cls(key)

    def keypair_bytes(self) -> bytes:
        return bytes(self._signing_key) + bytes(self._signing_key.verify_key)

    @property
    def public_key(self) -> PublicKey:
        return public_key_text(bytes(self._signing_key.verify_key))

    def sign(self, message: bytes) -> bytes:
        return bytes(self._signing_key.sign(message).signature)

    def derived(self, label: str) -> Identity:
        """A key of its own, derived from this one's secret for ``label`` (HKDF-SHA256): the same label gives the
        same key, and without the secret neither key tells anything of the other."""
        seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=b"flair/derived-key/v1\0" + label.encode()).derive(bytes(self._signing_key))
        return Identity(nacl.signing.SigningKey(seed))


def wallet(identity: Identity, repo: str) -> Identity:
    """``identity``'s wallet in repository ``repo``: the Solana key that signs, pays for and holds what its node
    puts on chain for that repository (anchors, NFTs), in place of the member key."""
    return identity.derived(f"wallet/{repo}")


def verify(public_key: PublicKey, message: bytes, signature: bytes) -> None:
    """Raise ``IntegrityError`` unless ``signature`` is ``public_key``'s signature of ``message``."""
    try:
        nacl.signing.VerifyKey(public_key_bytes(public_key)).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, ValueError) as exc:
        raise IntegrityError(f"signature does not verify for {public_key}", key=str(public_key)) from exc
