"""The key material of secure aggregation (SecAgg, Bonawitz et al. CCS 2017; SecAgg+, Bell et al. CCS 2020).

A contributor to a secure round masks its update so that no one -- the aggregator, another member, a peer holding
every block -- can read it, while the masks of all contributors cancel in the sum. This module holds the pure
parts; ``tensors.masking`` expands seeds into masks over Flair's int64 fixed-point ring.

- Each contributor makes a fresh X25519 key pair per round (``ephemeral_keypair``), never its identity key, so
  what the round reveals about a dropped contributor (its ephemeral secret, below) reveals nothing else.
- Two contributors agree on a pair seed (``pair_seed``): X25519 of one's secret and the other's public key,
  hashed with both public keys and the round's context, so both sides derive the same 32 bytes and no other round
  or repository ever does. One adds the mask the seed expands to, the other subtracts it.
- With SecAgg+, each contributor pairs with a few neighbours only (``neighbours``: a ring in a seeded order,
  each linked to ``degree`` others), so the work per contributor grows with log n, not n.
- Each contributor also adds a self mask from a secret seed of its own, and splits both that seed and its
  ephemeral secret into Shamir shares (``split``), one per neighbour, sealed to them. If it drops out after
  masking, ``threshold`` survivors reveal their shares of its ephemeral secret, and the sum is freed of its pair
  masks; if it survives, they reveal shares of its self seed instead. Never both, so no single update is revealed.
- ``recover`` refuses a secret whose hash differs from the one its owner committed to, so a member who reveals a
  wrong share cannot make the round unmask wrongly: it is caught, not believed.

Shamir sharing is pycryptodome's (``Crypto.Protocol.SecretSharing.Shamir``, GF(2^128)); a 32-byte secret is shared
as two 16-byte halves at the same points. A seed expands into its mask (``expand``) as the AES-256-CTR keystream
under the seed (the counter block: ``_STREAM_NONCE``, then a 64-bit big-endian counter from 0), computed by OpenSSL
through ``cryptography``: 1.9 GB/s here, where pycryptodome's AES-CTR gave 0.55-0.85 GB/s and SHAKE-256, the
first choice, 235-400 MB/s. A round expands several masks the model's size on every member, and a profile of a
10-member round (``bench/secure_rounds.py``) found 15 % of all its CPU there with pycryptodome.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import nacl.bindings as sodium
import nacl.exceptions
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import IntegrityError, InvalidInput

SEED_BYTES = 32
KEY_BYTES = 32
SHARE_BYTES = 32  # the two 16-byte halves of one share
MAX_HOLDERS = 255  # Shamir points are 1..255 here
MAX_STREAM = 16 << 30  # bytes one seed expands to, at most: far above any model here
_STREAM_NONCE = b"flairmsk"  # every seed is drawn fresh for one use, so one fixed nonce per purpose is enough


def expand(seed: bytes, size: int) -> bytearray:
    """``size`` pseudorandom bytes from ``seed`` (32 bytes): the AES-256-CTR keystream under it."""
    _check_length(seed, SEED_BYTES, "a mask seed")
    if not 0 <= size <= MAX_STREAM:
        raise InvalidInput(f"a seed expands to 0 to {MAX_STREAM} bytes, not {size}")
    stream = Cipher(algorithms.AES(seed), modes.CTR(_STREAM_NONCE + bytes(8))).encryptor()
    out = bytearray(size + 15)  # ``update_into`` asks for a block of room beyond what it writes
    written = stream.update_into(bytes(size), out)
    del out[written:]
    return out


@dataclass(frozen=True)
class Share:
    """One holder's share of a secret: the point ``x`` (1..255) and the 32 bytes at it."""

    x: int
    y: bytes

    def __post_init__(self) -> None:
        if not 1 <= self.x <= MAX_HOLDERS or len(self.y) != SHARE_BYTES:
            raise InvalidInput(f"a share is a point from 1 to {MAX_HOLDERS} and {SHARE_BYTES} bytes")


def ephemeral_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair for one round: (secret, public)."""
    public, secret = sodium.crypto_box_keypair()
    return secret, public


def public_of(secret: bytes) -> bytes:
    """The X25519 public key of ``secret``."""
    _check_length(secret, KEY_BYTES, "an X25519 secret key")
    return sodium.crypto_scalarmult_base(secret)


def pair_seed(secret: bytes, mine: bytes, theirs: bytes, context: bytes) -> bytes:
    """The seed two contributors share: X25519(``secret``, ``theirs``) hashed with both public keys (in a fixed
    order, so both sides agree) and ``context`` (repository, branch and round: no seed serves two rounds)."""
    _check_length(secret, KEY_BYTES, "an X25519 secret key")
    _check_length(mine, KEY_BYTES, "an X25519 public key")
    _check_length(theirs, KEY_BYTES, "an X25519 public key")
    if mine == theirs:
        raise InvalidInput("a contributor has no pair seed with itself")
    try:
        shared = sodium.crypto_scalarmult(secret, theirs)
    except nacl.exceptions.RuntimeError:  # a low-order point: libsodium refuses the all-zero result
        raise InvalidInput("the other contributor's key is not a usable X25519 public key") from None
    low, high = sorted((mine, theirs))
    digest = hashlib.blake2b(digest_size=SEED_BYTES, person=b"flair-secagg-pr")
    for part in (shared, low, high, context):
        digest.update(len(part).to_bytes(4, "big") + part)
    return digest.digest()


def sign_of(mine: bytes, theirs: bytes) -> int:
    """+1 if the contributor holding ``mine`` adds the pair's mask, -1 if it subtracts it: the lower key adds."""
    if mine == theirs:
        raise InvalidInput("a contributor has no pair mask with itself")
    return 1 if mine < theirs else -1


def degree_for(count: int) -> int:
    """How many neighbours each of ``count`` contributors pairs with: every other one up to 8 contributors, then
    2 * ceil(log2 n) (SecAgg+'s logarithmic graph), always even so the ring links the same number each way."""
    if count < 2:
        return 0
    if count <= 8:
        return count - 1
    return min(count - 1, 2 * math.ceil(math.log2(count)))


def neighbours(keys: Sequence[bytes], seed: bytes, degree: int | None = None) -> dict[bytes, frozenset[bytes]]:
    """Who pairs with whom: the keys in an order drawn from ``seed`` (which no contributor chooses alone: the
    round's head, say), each linked to ``degree // 2`` on either side of it in that ring; every key gets at least
    one neighbour when there are two or more. Symmetric: if a pairs with b, b pairs with a."""
    unique = sorted(set(keys))
    if len(unique) != len(keys):
        raise InvalidInput("every contributor must have its own key")
    n = len(unique)
    want = degree_for(n) if degree is None else degree
    if not 0 <= want <= max(n - 1, 0):
        raise InvalidInput(f"a degree of {want} is impossible with {n} contributors")
    order = unique[:]
    random.Random(hashlib.sha256(b"flair-secagg-ring" + seed).digest()).shuffle(order)
    links: dict[bytes, set[bytes]] = {key: set() for key in order}
    if n >= 2:
        reach = max(1, want // 2)
        for i, key in enumerate(order):
            for step in range(1, reach + 1):
                other = order[(i + step) % n]
                if other != key:
                    links[key].add(other)
                    links[other].add(key)
        if want == n - 1:  # everyone with everyone
            links = {key: set(order) - {key} for key in order}
    return {key: frozenset(linked) for key, linked in links.items()}


def commitment(secret: bytes) -> bytes:
    """What a contributor publishes of a secret it shares: its SHA-256, checked by ``recover``."""
    return hashlib.sha256(b"flair-secagg-commit" + secret).digest()


def split(secret: bytes, threshold: int, holders: int) -> list[Share]:
    """``holders`` Shamir shares of a 32-byte ``secret``, any ``threshold`` of which recover it (fewer reveal
    nothing about it)."""
    _check_length(secret, SEED_BYTES, "a shared secret")
    if not 1 <= threshold <= holders <= MAX_HOLDERS:
        raise InvalidInput(f"a threshold of {threshold} of {holders} holders is not possible "
                           f"(1 <= threshold <= holders <= {MAX_HOLDERS})")
    if threshold == 1:  # pycryptodome's polynomials have degree >= 1: a threshold of one is the secret itself
        return [Share(x, secret) for x in range(1, holders + 1)]
    low = Shamir.split(threshold, holders, secret[:16], False)
    high = Shamir.split(threshold, holders, secret[16:], False)
    return [Share(x, a + b) for (x, a), (_, b) in zip(low, high, strict=True)]


def recover(shares: Iterable[Share], threshold: int, committed: bytes) -> bytes:
    """The secret behind ``threshold`` of ``shares``, checked against its owner's ``committed`` hash.

    ``InvalidInput`` if there are too few distinct shares; ``IntegrityError`` if what they give is not the
    committed secret (a holder revealed a wrong share).
    """
    by_point: dict[int, Share] = {}
    for share in shares:
        by_point.setdefault(share.x, share)
    if len(by_point) < threshold:
        raise InvalidInput(f"{len(by_point)} distinct shares cannot recover a secret split with a threshold of "
                           f"{threshold}")
    chosen = [by_point[x] for x in sorted(by_point)[:threshold]]
    if threshold == 1:
        secret = chosen[0].y
    else:
        low = Shamir.combine([(s.x, s.y[:16]) for s in chosen], False)
        high = Shamir.combine([(s.x, s.y[16:]) for s in chosen], False)
        secret = low + high
    if commitment(secret) != committed:
        raise IntegrityError("the revealed shares do not give the secret its owner committed to: at least one of "
                             "them is wrong")
    return secret


def pair_seeds(secret: bytes, mine: bytes, links: Mapping[bytes, frozenset[bytes]],
               context: bytes) -> dict[bytes, bytes]:
    """The seed ``mine`` shares with each of its neighbours in ``links``."""
    return {theirs: pair_seed(secret, mine, theirs, context) for theirs in sorted(links.get(mine, frozenset()))}


def _check_length(value: bytes, length: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise InvalidInput(f"{what} is {length} bytes")
