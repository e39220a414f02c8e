"""The signed messages of a secure round (``protocol.secure_rounds`` runs them; ``core.secagg`` holds the keys).

A secure round on a branch is named by the commit it starts from (its ``head``) and runs in five kinds of
message, each a ``RoundMessage`` signed by its author, in this order:

- ``advert`` (each contributor): how many examples it trained on, how many bits its change needs (``bits``: the
  bit length of its largest fixed-point change, which sizes the ring the round masks in), the X25519 public key
  its pair masks are agreed with, the commitments of its two secrets (the self-mask seed and the mask key's
  secret), and, for each other member (a **holder**), one Shamir share of each secret sealed to that member's
  identity, with the hash of each share so a share revealed later is checked on its own.
- ``roster`` (the aggregator): which adverts the round takes. It fixes the weights, the ring's width and who
  pairs with whom.
- ``masked`` (each contributor in the roster): where its masked update is (a UnixFS file, encrypted under the
  repository key like every payload, though the masks alone hide it) and, in a repository with norm proofs,
  where the proof that what it masks is within the norm bound is (a UnixFS file).
- ``unmask`` (the aggregator): which masked updates the merge takes, and the adverts of their contributors; the
  other contributors of the roster count as dropped out.
- ``reveal`` (each holder): for each contributor of the roster, the share it holds of the self-mask seed if the
  contributor's update is taken, or of the mask key's secret if it dropped out; never both.

Everything here is schema: sizes are bounded and a message decodes only if it re-encodes to the same bytes.
What a message means for the round (who may send it, whether it fits the others) is ``protocol.secure_rounds``'.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from . import encoding, schema
from .errors import IntegrityError
from .ids import BranchName, Cid, CommitId, PublicKey, RepoId
from .schema import RECORD_VERSION
from .secagg import KEY_BYTES, MAX_HOLDERS, SHARE_BYTES
from .signed import SignedRecord

PHASES = ("advert", "roster", "masked", "unmask", "reveal")
SHARE_KINDS = ("self", "key")  # the self-mask seed's share; the mask key secret's share
MAX_BITS = 62  # a change's fixed-point values are below 2^62 (``tensors.fixedpoint.ACC_LIMIT``)
MAX_EXAMPLES = 1 << 53
_SEALED_SHARE = 1 + 2 * SHARE_BYTES + 48  # a point, two shares, and the sealed box's key and tag
_BRANCH = 100


def share_hash(kind: str, x: int, y: bytes) -> bytes:
    """What an advert publishes of each share it deals: a share revealed later must hash to it."""
    return hashlib.sha256(b"flair-secagg-share\0" + kind.encode() + bytes([x]) + y).digest()


@dataclass(frozen=True)
class DealtShare:
    """One holder's shares of an advert's two secrets: sealed to the holder, and the hash of each share."""

    holder: PublicKey
    sealed: bytes  # seal_to(holder, x ‖ self-seed share ‖ mask-key share)
    self_hash: bytes
    key_hash: bytes

    def as_list(self) -> list[Any]:
        return [self.holder, self.sealed, self.self_hash, self.key_hash]

    @classmethod
    def from_list(cls, value: Any) -> DealtShare:
        holder, sealed, self_hash, key_hash = schema.fixed(value, "a dealt share", 4)
        return cls(PublicKey(schema.text(holder, "share holder", 64)),
                   _exact(sealed, "sealed share", _SEALED_SHARE), _exact(self_hash, "share hash", 32),
                   _exact(key_hash, "share hash", 32))


@dataclass(frozen=True)
class Advert:
    PHASE: ClassVar[str] = "advert"

    examples: int
    bits: int
    mask_key: bytes  # X25519 public key
    self_commit: bytes  # core.secagg.commitment of the self-mask seed
    key_commit: bytes  # ... and of the mask key's secret
    shares: tuple[DealtShare, ...]  # one per holder, sorted by holder; holder i (from 0) holds the point i + 1
    wallet: str = ""  # where the contribution's NFT goes (its author's wallet in the repository); "": its key

    def as_dict(self) -> dict[str, Any]:
        body = {"examples": self.examples, "bits": self.bits, "mask_key": self.mask_key,
                "self_commit": self.self_commit, "key_commit": self.key_commit,
                "shares": [s.as_list() for s in self.shares]}
        if self.wallet:
            body["wallet"] = self.wallet
        return body

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Advert:
        shares = schema.listing(body["shares"], "shares")
        if not 2 <= len(shares) <= MAX_HOLDERS:
            raise IntegrityError(f"an advert deals shares to 2 to {MAX_HOLDERS} holders")
        advert = cls(examples=_bounded(body["examples"], "examples", MAX_EXAMPLES),
                     bits=_bounded(body["bits"], "bits", MAX_BITS),
                     mask_key=_exact(body["mask_key"], "mask_key", KEY_BYTES),
                     self_commit=_exact(body["self_commit"], "self_commit", 32),
                     key_commit=_exact(body["key_commit"], "key_commit", 32),
                     shares=tuple(DealtShare.from_list(s) for s in shares),
                     wallet=schema.base58(body["wallet"], "wallet", 44) if "wallet" in body else "")
        holders = [s.holder for s in advert.shares]
        if holders != sorted(set(holders)):
            raise IntegrityError("an advert deals its shares to each holder once, sorted by holder")
        return advert


@dataclass(frozen=True)
class Roster:
    PHASE: ClassVar[str] = "roster"

    adverts: tuple[str, ...]  # advert ids, sorted

    def as_dict(self) -> dict[str, Any]:
        return {"adverts": list(self.adverts)}

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Roster:
        return cls(_ids(body["adverts"], "adverts"))


@dataclass(frozen=True)
class Masked:
    PHASE: ClassVar[str] = "masked"

    roster: str
    cid: Cid  # the masked update: a UnixFS file, encrypted under the repository key of ``key_epoch``
    size: int
    key_epoch: int
    #: With the policy's ``norm_bound``: the norm proof of what it masks (``protocol.proofs.norms``: its chunks'
    #: commitments and the proof), a UnixFS file of ``proof_size`` bytes; absent otherwise.
    proof: Cid | None = None
    proof_size: int = 0

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"roster": self.roster, "cid": self.cid, "size": self.size, "key_epoch": self.key_epoch}
        if self.proof is not None:
            body.update(proof=self.proof, proof_size=self.proof_size)
        return body

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Masked:
        proven = "proof" in body
        return cls(schema.hex_id(body["roster"], "roster"), schema.cid(body["cid"], "cid"),
                   schema.natural(body["size"], "size"), schema.natural(body["key_epoch"], "key_epoch"),
                   schema.cid(body["proof"], "proof") if proven else None,
                   schema.natural(body["proof_size"], "proof_size") if proven else 0)

    def files(self) -> list[tuple[Cid, int]]:
        """The UnixFS files it names, with their sizes: the masked update, and its norm proof if it has one."""
        return [(self.cid, self.size), *([(self.proof, self.proof_size)] if self.proof is not None else [])]


@dataclass(frozen=True)
class Unmask:
    PHASE: ClassVar[str] = "unmask"

    roster: str
    masked: tuple[str, ...]  # masked-message ids, sorted
    #: The adverts of their contributors, sorted: what a holder needs to know which share to reveal, before the
    #: masked updates themselves (megabytes each) have reached it.
    adverts: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"roster": self.roster, "masked": list(self.masked), "adverts": list(self.adverts)}

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Unmask:
        unmask = cls(schema.hex_id(body["roster"], "roster"), _ids(body["masked"], "masked"),
                     _ids(body["adverts"], "adverts"))
        if len(unmask.adverts) != len(unmask.masked):
            raise IntegrityError("an unmask names as many adverts as masked updates")
        return unmask


@dataclass(frozen=True)
class RevealedShare:
    advert: str  # whose secret
    kind: str  # "self" or "key"
    x: int
    y: bytes

    def as_list(self) -> list[Any]:
        return [self.advert, self.kind, self.x, self.y]

    @classmethod
    def from_list(cls, value: Any) -> RevealedShare:
        advert, kind, x, y = schema.fixed(value, "a revealed share", 4)
        return cls(schema.hex_id(advert, "advert"), schema.choice(kind, "share kind", SHARE_KINDS),
                   _bounded(x, "share point", MAX_HOLDERS), _exact(y, "share", SHARE_BYTES))


@dataclass(frozen=True)
class Reveal:
    PHASE: ClassVar[str] = "reveal"

    unmask: str
    shares: tuple[RevealedShare, ...]  # sorted by advert, one per advert

    def as_dict(self) -> dict[str, Any]:
        return {"unmask": self.unmask, "shares": [s.as_list() for s in self.shares]}

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Reveal:
        shares = schema.listing(body["shares"], "shares")
        if len(shares) > MAX_HOLDERS + 1:
            raise IntegrityError(f"a reveal holds at most {MAX_HOLDERS + 1} shares")
        reveal = cls(schema.hex_id(body["unmask"], "unmask"), tuple(RevealedShare.from_list(s) for s in shares))
        adverts = [s.advert for s in reveal.shares]
        if adverts != sorted(set(adverts)):
            raise IntegrityError("a reveal holds one share per advert, sorted by advert")
        return reveal


Content = Advert | Roster | Masked | Unmask | Reveal
C = TypeVar("C", Advert, Roster, Masked, Unmask, Reveal)
_CONTENT: dict[str, Any] = {c.PHASE: c for c in (Advert, Roster, Masked, Unmask, Reveal)}


@dataclass(frozen=True)
class RoundMessage(SignedRecord):
    """One message of the secure round that ``head`` opened on ``branch`` of ``repo``, by ``author``."""

    TAG: ClassVar[bytes] = b"flair/secure-round/v1\0"
    KIND: ClassVar[str] = "secure round message"

    repo: RepoId
    branch: BranchName
    head: CommitId
    author: PublicKey
    timestamp_ms: int
    content: Content
    signature: bytes = b""

    @property
    def phase(self) -> str:
        return self.content.PHASE

    def body(self) -> dict[str, Any]:
        return {"v": RECORD_VERSION, "type": "secure-round", "repo": self.repo, "branch": self.branch,
                "head": self.head, "author": self.author, "timestamp_ms": self.timestamp_ms, "phase": self.phase,
                "content": self.content.as_dict()}

    @property
    def id(self) -> str:
        return self.digest

    @classmethod
    def decode(cls, data: bytes) -> RoundMessage:
        body, sig = schema.outer(encoding.decode(data), "secure-round")
        try:
            phase = schema.choice(body["phase"], "phase", PHASES)
            message = cls(
                repo=RepoId(schema.hex_id(body["repo"], "repo")),
                branch=BranchName(schema.text(body["branch"], "branch", _BRANCH)),
                head=CommitId(schema.hex_id(body["head"], "head")),
                author=PublicKey(schema.text(body["author"], "author", 64)),
                timestamp_ms=schema.natural(body["timestamp_ms"], "timestamp_ms"),
                content=_CONTENT[phase].from_dict(schema.mapping(body["content"], "content")),
                signature=sig,
            )
        except (KeyError, TypeError) as exc:
            raise IntegrityError(f"secure round message is missing or mistypes a field: {exc}") from exc
        if message.body() != body:
            raise IntegrityError("secure round message has unknown fields")
        return message


def content_of(message: RoundMessage, kind: type[C]) -> C:
    """``message``'s content if it is of ``kind`` (``Advert``, ``Roster``, ...); ``IntegrityError`` otherwise."""
    if not isinstance(message.content, kind):
        raise IntegrityError(f"message {message.id[:10]} is not a {kind.PHASE} message")
    return message.content


def _exact(value: Any, what: str, size: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise IntegrityError(f"{what} must be {size} bytes")
    return value


def _bounded(value: Any, what: str, most: int) -> int:
    number = schema.natural(value, what)
    if number > most:
        raise IntegrityError(f"{what} must be at most {most}")
    return number


def _ids(value: Any, what: str) -> tuple[str, ...]:
    ids = schema.listing(value, what)
    if not 0 < len(ids) <= MAX_HOLDERS + 1:
        raise IntegrityError(f"{what} lists 1 to {MAX_HOLDERS + 1} ids")
    checked = [schema.hex_id(i, what) for i in ids]
    if checked != sorted(set(checked)):
        raise IntegrityError(f"{what} are sorted, each once")
    return tuple(checked)
