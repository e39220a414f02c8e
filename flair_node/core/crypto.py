"""Payload encryption: IPFS blocks are public to whoever has their CID, so payloads are encrypted first.

Each repository has a random 32-byte key. Payloads are sealed with XChaCha20-Poly1305 (random 24-byte nonce,
the repository id and codec as associated data, so a ciphertext cannot be replayed into another repository or
decoded as another codec). Payloads stored in pieces (``storage.pieces``) are sealed piece by piece with
``PieceCipher``, deterministically, so that equal pieces are equal blocks. The key is given to each member
sealed to the X25519 form of their Ed25519 identity (libsodium's sealed boxes): only that member's secret key
opens it.
"""

from __future__ import annotations

import hashlib
import hmac
import os

import nacl.bindings as sodium
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import IntegrityError, InvalidInput
from .identity import Identity, public_key_bytes
from .ids import PublicKey

KEY_BYTES = 32
CIPHER = "xchacha20poly1305-v1"
PIECE_CIPHER = "aes256gcm-hmac-pieces-v1"
_MAGIC = b"FLE1"
_NONCE = sodium.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
_TAG = sodium.crypto_aead_xchacha20poly1305_ietf_ABYTES


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def seal_key(key: bytes, member: PublicKey) -> bytes:
    """``key`` sealed to ``member``: only the holder of that Ed25519 identity can open it."""
    return seal_to(member, key)


def open_sealed_key(sealed: bytes, identity: Identity) -> bytes:
    key = open_sealed(sealed, identity, "the repository key")
    if len(key) != KEY_BYTES:
        raise IntegrityError("a sealed repository key is not 32 bytes")
    return key


def seal_to(member: PublicKey, data: bytes) -> bytes:
    """``data`` sealed to ``member`` (a sealed box to the X25519 form of its Ed25519 key): only that member
    opens it, and the box does not say who sealed it (a signed record around it does)."""
    try:
        recipient = sodium.crypto_sign_ed25519_pk_to_curve25519(public_key_bytes(member))
    except nacl.exceptions.RuntimeError:  # 32 bytes that are not a point of the curve
        raise InvalidInput(f"{member} is not an Ed25519 public key", key=member) from None
    return bytes(sodium.crypto_box_seal(data, recipient))


def open_sealed(sealed: bytes, identity: Identity, what: str) -> bytes:
    """What ``seal_to`` sealed to ``identity``; ``IntegrityError`` naming ``what`` if it was sealed to another
    key or altered."""
    keypair = identity.keypair_bytes()
    secret = sodium.crypto_sign_ed25519_sk_to_curve25519(keypair)
    public = sodium.crypto_sign_ed25519_pk_to_curve25519(keypair[32:])
    try:
        return bytes(sodium.crypto_box_seal_open(sealed, public, secret))
    except nacl.exceptions.CryptoError:
        raise IntegrityError(f"{what} is not sealed to this node's identity") from None


def keyed_tag(key: bytes, context: bytes, value: str, *, size: int = 16) -> str:
    """``size`` bytes (hex) of HMAC-SHA256 of ``value`` under ``key`` in ``context``: a stand-in for a name that
    whoever holds ``key`` can recompute and nobody else can tell from a random string."""
    return hmac.new(key, context + b"\0" + value.encode(), hashlib.sha256).digest()[:size].hex()


def encrypt(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    """``FLE1 || nonce || ciphertext+tag``, authenticated together with ``context``."""
    nonce = os.urandom(_NONCE)
    sealed = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, _MAGIC + context, nonce, key)
    return _MAGIC + nonce + bytes(sealed)


def decrypt(key: bytes, data: bytes, context: bytes) -> bytes:
    if len(key) != KEY_BYTES:
        raise InvalidInput("a repository key is 32 bytes")
    if len(data) < len(_MAGIC) + _NONCE + _TAG or not data.startswith(_MAGIC):
        raise IntegrityError("encrypted payload is truncated or not in Flair's format")
    nonce = data[len(_MAGIC):len(_MAGIC) + _NONCE]
    try:
        return bytes(sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(data[len(_MAGIC) + _NONCE:],
                                                                       _MAGIC + context, nonce, key))
    except nacl.exceptions.CryptoError:
        raise IntegrityError("encrypted payload fails authentication: it was altered, truncated, or sealed "
                             "with another repository's key") from None


class PieceCipher:
    """Deterministic authenticated encryption of the pieces of one payload context (``context``: a repository and
    codec), under a repository key.

    A piece is sealed with AES-256-GCM under a key derived from the repository key, with a 96-bit nonce that is
    HMAC-SHA256 of the context and the piece under a second derived key: the construction of a synthetic-IV
    scheme (as in AES-GCM-SIV, RFC 8452, with a standard PRF in place of POLYVAL). Equal pieces give equal
    ciphertexts, which is the point (an unchanged piece of the weights is the same block in every commit), and
    all it reveals to whoever holds blocks but not the key is that equality; different pieces get different
    nonces unless HMAC-SHA256 collides in 96 bits (below 2^-32 for the first 2^32 pieces under one key, 2 PiB of
    512 KiB pieces). AES-GCM from OpenSSL runs at several GB/s here where libsodium's XChaCha20-Poly1305 runs at
    about 250 MB/s (``docs/benchmarks.md``), and the HMAC pass is what a deterministic scheme costs.

    A sealed piece is ``FLP1 || nonce || ciphertext || tag``, ``OVERHEAD`` bytes longer than the piece. A sealed
    delta (what a piece changed against another, ``storage.piece_delta``) is the same with ``FLD1``, which is bound
    into the tag and the nonce: one can never be opened as the other.
    """

    MAGIC = b"FLP1"
    DELTA_MAGIC = b"FLD1"
    OVERHEAD = 4 + 12 + 16

    def __init__(self, key: bytes, context: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise InvalidInput("a repository key is 32 bytes")
        self._aead = AESGCM(hmac.digest(key, b"flair/pieces/encryption", "sha256"))
        self._nonce_key = hmac.digest(key, b"flair/pieces/nonce", "sha256")
        self._context = context

    def seal(self, piece: bytes | memoryview, *, delta: bool = False) -> bytes:
        """``piece`` sealed, or with ``delta`` a piece delta (``open_leaf`` tells them apart)."""
        magic = self.DELTA_MAGIC if delta else self.MAGIC
        mac = hmac.new(self._nonce_key, self._context + (b"\1" if delta else b"\0"), "sha256")
        mac.update(piece)
        nonce = mac.digest()[:12]
        return magic + nonce + self._aead.encrypt(nonce, piece, magic + self._context)

    def open(self, sealed: bytes | memoryview) -> bytes:
        """The piece ``seal`` sealed; ``IntegrityError`` if it was altered, sealed under another key or context,
        or is a delta."""
        delta, piece = self.open_leaf(sealed)
        if delta:
            raise IntegrityError("an encrypted piece is a delta where a whole piece was expected")
        return piece

    def open_leaf(self, sealed: bytes | memoryview) -> tuple[bool, bytes]:
        """(whether it is a delta, its plaintext) of what ``seal`` sealed; ``IntegrityError`` as ``open``."""
        data = memoryview(sealed)
        magic = bytes(data[:4])
        if len(data) < self.OVERHEAD or magic not in (self.MAGIC, self.DELTA_MAGIC):
            raise IntegrityError("an encrypted piece is truncated or not in Flair's format")
        try:
            return magic == self.DELTA_MAGIC, self._aead.decrypt(data[4:16], data[16:], magic + self._context)
        except InvalidTag:
            raise IntegrityError("an encrypted piece fails authentication: it was altered, or sealed with another "
                                 "repository's key or for another codec") from None
