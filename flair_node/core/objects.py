"""Commit and repository records, their canonical encodings, ids and signatures.

A record's id is the SHA-256 of the canonical msgpack of everything but its signature; the signature is the
author's Ed25519 signature of a domain tag plus the id's 32 bytes. Nothing in a record can change without
changing its id, and a record read back is accepted only if both still check out (``verify``).

A commit is dated no earlier than any of its parents and no later than the clock of the node judging it plus
``refs.MAX_CLOCK_SKEW_MS`` (``check_commit_time``): so the time at which its author's role is judged is never
before the history it builds on (a removed member cannot date work back into its term on a head made after
its removal), and no commit claims a time that has not come.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from . import encoding, schema
from .crypto import CIPHER, PIECE_CIPHER
from .errors import IntegrityError, InvalidInput
from .ids import Cid, CommitId, PublicKey, RepoId, short
from .refs import MAX_CLOCK_SKEW_MS
from .schema import RECORD_VERSION
from .signed import SignedRecord

COMMIT_KINDS = ("init", "commit", "merge", "revert", "contribution", "round")
#: Codecs a payload can be stored in (see ``flair_node.tensors.codec``).
CODECS = ("snapshot-v1", "full-v1", "bitdelta-v1", "float16-v1", "int8-v1", "topk-v1")
#: The codec whose payloads are sealed in pieces (``storage.pieces``, ``crypto.PieceCipher``), the others whole.
PIECES_CODEC = "snapshot-v1"
DTYPES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL")
MAX_MESSAGE = 4096
#: The longest adapter_config.json an adapter repository's record holds (canonical JSON text).
MAX_ADAPTER_CONFIG = 64 << 10
#: The highest LoRA rank an adapter repository's merges produce (``tensors.lora.MAX_RANK``).
MAX_ADAPTER_RANK = 1024
MAX_METRICS = 64
_METRIC_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Payload:
    """Where a commit's tensors are: the root CID of their UnixFS DAG, the codec, the size in bytes of the
    (encrypted) content, and which cipher and key epoch sealed it (by default, the codec's cipher)."""

    cid: Cid
    codec: str
    size: int
    cipher: str = ""
    key_epoch: int = 0

    def __post_init__(self) -> None:
        if not self.cipher:
            object.__setattr__(self, "cipher", PIECE_CIPHER if self.codec == PIECES_CODEC else CIPHER)


@dataclass(frozen=True)
class Commit(SignedRecord):
    TAG: ClassVar[bytes] = b"flair/commit/v1\0"
    KIND: ClassVar[str] = "commit"

    repo: RepoId
    parents: tuple[CommitId, ...]
    author: PublicKey
    timestamp_ms: int
    kind: str
    message: str
    payload: Payload
    #: Integer and string facts: ``examples``, merge ``strategy``/``scale_bits``/``weights``/``base``, ``reverts``.
    meta: Mapping[str, Any] = field(default_factory=dict)
    #: Reported metrics, kept as decimal strings so the record holds no floats.
    metrics: Mapping[str, str] = field(default_factory=dict)
    signature: bytes = b""

    def body(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "type": "commit",
            "repo": self.repo,
            "parents": list(self.parents),
            "author": self.author,
            "timestamp_ms": self.timestamp_ms,
            "kind": self.kind,
            "message": self.message,
            "payload": {"cid": self.payload.cid, "codec": self.payload.codec, "size": self.payload.size,
                        "cipher": self.payload.cipher, "key_epoch": self.payload.key_epoch},
            "meta": dict(self.meta),
            "metrics": dict(self.metrics),
        }

    @property
    def id(self) -> CommitId:
        return CommitId(self.digest)

    @classmethod
    def decode(cls, data: bytes) -> Commit:
        outer = encoding.decode(data)
        body, sig = schema.outer(outer, "commit")
        try:
            payload = body["payload"]
            commit = cls(
                repo=RepoId(schema.hex_id(body["repo"], "repo")),
                parents=tuple(CommitId(schema.hex_id(p, "parent")) for p in schema.listing(body["parents"], "parents")),
                author=PublicKey(schema.text(body["author"], "author", 64)),
                timestamp_ms=schema.natural(body["timestamp_ms"], "timestamp_ms"),
                kind=schema.choice(body["kind"], "kind", COMMIT_KINDS),
                message=schema.text(body["message"], "message", MAX_MESSAGE),
                payload=Payload(
                    cid=schema.cid(payload["cid"], "payload.cid"),
                    codec=schema.choice(payload["codec"], "payload.codec", CODECS),
                    size=schema.natural(payload["size"], "payload.size"),
                    cipher=schema.choice(payload["cipher"], "payload.cipher", (CIPHER, PIECE_CIPHER)),
                    key_epoch=schema.natural(payload["key_epoch"], "payload.key_epoch"),
                ),
                meta=schema.mapping(body["meta"], "meta"),
                metrics={schema.text(k, "metric name", 64): schema.text(v, "metric", 64)
                         for k, v in schema.mapping(body["metrics"], "metrics").items()},
                signature=sig,
            )
        except (KeyError, TypeError) as exc:
            raise IntegrityError(f"commit record is missing or mistypes a field: {exc}") from exc
        if commit.body() != body:
            raise IntegrityError("commit record has unknown fields")
        if (commit.payload.codec == PIECES_CODEC) != (commit.payload.cipher == PIECE_CIPHER):
            raise IntegrityError(f"a {commit.payload.codec} payload is not sealed with {commit.payload.cipher}")
        return commit


def check_commit_time(commit: Commit, parents: Iterable[Commit], *, now_ms: int) -> None:
    """``IntegrityError`` unless ``commit`` is dated no earlier than each of ``parents`` (those at hand: the
    caller passes every parent it holds) and no later than ``now_ms`` plus the clock skew allowed."""
    if commit.timestamp_ms > now_ms + MAX_CLOCK_SKEW_MS:
        raise IntegrityError(f"commit {short(commit.id)} is dated {commit.timestamp_ms}, more than "
                             f"{MAX_CLOCK_SKEW_MS // 60_000} minutes ahead of this node's clock ({now_ms}): it is "
                             "taken once that time comes", commit=commit.id)
    for parent in parents:
        if commit.timestamp_ms < parent.timestamp_ms:
            raise IntegrityError(f"commit {short(commit.id)} is dated {commit.timestamp_ms}, before its parent "
                                 f"{short(parent.id)} ({parent.timestamp_ms}): a commit is dated no earlier than "
                                 "what it builds on", commit=commit.id, parent=parent.id)


@dataclass(frozen=True)
class AdapterSpec:
    """What makes a repository hold LoRA adapters (``storage.adapters``) rather than whole models: the base model
    they adapt, a commit of another repository (named by both ids: the base's weights are fetched like any
    payload, by members of that repository), the adapter_config.json its adapters share (canonical JSON text,
    ``r`` and ``lora_alpha`` those of the first adapter), and how merges bound the rank: stacked exactly up to
    ``max_rank``, re-compressed to ``rank`` above it (``tensors.lora``)."""

    base_repo: RepoId
    base_commit: CommitId
    config: str
    rank: int
    max_rank: int

    def __post_init__(self) -> None:
        if len(self.config.encode()) > MAX_ADAPTER_CONFIG:
            raise InvalidInput(f"an adapter config is at most {MAX_ADAPTER_CONFIG:,} bytes of JSON")
        if not 1 <= self.rank <= self.max_rank <= MAX_ADAPTER_RANK:
            raise InvalidInput(f"an adapter repository needs 1 <= rank <= max_rank <= {MAX_ADAPTER_RANK}, not "
                               f"rank {self.rank} and max_rank {self.max_rank}")
        self.parsed_config()

    def parsed_config(self) -> dict[str, Any]:
        """The adapter_config.json the adapters share, as an object (``InvalidInput`` if it is none)."""
        try:
            parsed = encoding.loads_json(self.config.encode(), max_depth=8, what="adapter config")
        except IntegrityError as exc:
            raise InvalidInput(str(exc)) from None
        if not isinstance(parsed, dict):
            raise InvalidInput("an adapter config is a JSON object")
        return parsed

    def body(self) -> dict[str, Any]:
        return {"base_repo": self.base_repo, "base_commit": self.base_commit, "config": self.config,
                "rank": self.rank, "max_rank": self.max_rank}

    @classmethod
    def decode(cls, body: Any) -> AdapterSpec:
        body = schema.mapping(body, "adapter")
        try:
            return cls(base_repo=RepoId(schema.hex_id(body["base_repo"], "adapter.base_repo")),
                       base_commit=CommitId(schema.hex_id(body["base_commit"], "adapter.base_commit")),
                       config=schema.text(body["config"], "adapter.config", MAX_ADAPTER_CONFIG),
                       rank=schema.natural(body["rank"], "adapter.rank"),
                       max_rank=schema.natural(body["max_rank"], "adapter.max_rank"))
        except InvalidInput as exc:
            raise IntegrityError(f"repository record: {exc}") from None


@dataclass(frozen=True)
class RepositoryRecord(SignedRecord):
    """A repository's genesis: its name, owner, tensor layout and first payload key (sealed to the owner), and for
    a repository of LoRA adapters, what they adapt (``adapter``).

    The repository id is this record's hash.
    """

    TAG: ClassVar[bytes] = b"flair/repository/v1\0"
    KIND: ClassVar[str] = "repository record"
    SIGNER: ClassVar[str] = "owner"

    name: str
    owner: PublicKey
    created_ms: int
    nonce: str
    layout: tuple[TensorSpec, ...]
    #: Payload key of epoch 0, sealed to each member (``core.crypto.seal_key``); at genesis, the owner only.
    sealed_keys: Mapping[str, bytes] = field(default_factory=dict)
    adapter: AdapterSpec | None = None
    signature: bytes = b""

    def body(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "type": "repository",
            "name": self.name,
            "owner": self.owner,
            "created_ms": self.created_ms,
            "nonce": self.nonce,
            "layout": [[t.name, t.dtype, list(t.shape)] for t in self.layout],
            "keys": dict(self.sealed_keys),
            **({"adapter": self.adapter.body()} if self.adapter is not None else {}),
        }

    @property
    def id(self) -> RepoId:
        return RepoId(self.digest)

    @classmethod
    def decode(cls, data: bytes) -> RepositoryRecord:
        body, sig = schema.outer(encoding.decode(data), "repository")
        try:
            layout = []
            for entry in schema.listing(body["layout"], "layout"):
                name, dtype, shape = schema.listing(entry, "layout entry")
                layout.append(TensorSpec(schema.text(name, "tensor name", 1024), schema.choice(dtype, "dtype", DTYPES),
                                         tuple(schema.natural(d, "shape") for d in schema.listing(shape, "shape"))))
            record = cls(
                name=schema.text(body["name"], "name", 200),
                owner=PublicKey(schema.text(body["owner"], "owner", 64)),
                created_ms=schema.natural(body["created_ms"], "created_ms"),
                nonce=schema.text(body["nonce"], "nonce", 64),
                layout=tuple(layout),
                sealed_keys={schema.text(k, "member key", 64): schema.blob(v, "sealed key", 256)
                             for k, v in schema.mapping(body["keys"], "keys").items()},
                adapter=AdapterSpec.decode(body["adapter"]) if "adapter" in body else None,
                signature=sig,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"repository record is missing or mistypes a field: {exc}") from exc
        if record.body() != body:
            raise IntegrityError("repository record has unknown fields")
        return record


def metric_text(name: str, value: float | int | str) -> tuple[str, str]:
    """A metric as stored: a checked name and the shortest decimal text that round-trips the value."""
    if not _METRIC_NAME.fullmatch(name):
        raise InvalidInput(f"metric name {name!r}: use 1-64 of A-Z a-z 0-9 _ . : / -", metric=name)
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"metric {name}={value!r} is not a number", metric=name) from exc
    if number != number or number in (float("inf"), float("-inf")):
        raise InvalidInput(f"metric {name}={value!r} is not finite", metric=name)
    return name, repr(number)


MAX_PROVEN_CHUNKS = 4096  # chunk indices one proof record lists


@dataclass(frozen=True)
class ProofRecord(SignedRecord):
    """Proofs of round merge ``commit`` of ``repo``: the chunks proven (indices, ascending), where the proofs are
    (``proofs``: a UnixFS file of ``size`` bytes, JSON, public) and the SHA-256 of the verifying key they were
    made for (``vk``: every node builds its own from the repository's SRS, and compares), signed by the merge's
    author."""

    TAG: ClassVar[bytes] = b"flair/proof/v1\0"
    KIND: ClassVar[str] = "proof"

    repo: RepoId
    commit: CommitId
    chunks: tuple[int, ...]
    proofs: Cid
    size: int
    vk: str
    author: PublicKey
    timestamp_ms: int
    signature: bytes = b""

    def body(self) -> dict[str, Any]:
        return {"v": RECORD_VERSION, "type": "proof", "repo": self.repo, "commit": self.commit,
                "chunks": list(self.chunks), "proofs": self.proofs, "size": self.size, "vk": self.vk,
                "author": self.author, "timestamp_ms": self.timestamp_ms}

    @property
    def id(self) -> str:
        return self.digest

    @classmethod
    def decode(cls, data: bytes) -> ProofRecord:
        body, sig = schema.outer(encoding.decode(data), "proof")
        try:
            chunks = schema.listing(body["chunks"], "chunks")
            record = cls(
                repo=RepoId(schema.hex_id(body["repo"], "repo")),
                commit=CommitId(schema.hex_id(body["commit"], "commit")),
                chunks=tuple(schema.natural(j, "chunk") for j in chunks),
                proofs=schema.cid(body["proofs"], "proofs"),
                size=schema.natural(body["size"], "size"),
                vk=schema.hex_id(body["vk"], "vk"),
                author=PublicKey(schema.text(body["author"], "author", 64)),
                timestamp_ms=schema.natural(body["timestamp_ms"], "timestamp_ms"),
                signature=sig,
            )
        except (KeyError, TypeError) as exc:
            raise IntegrityError(f"proof record is missing or mistypes a field: {exc}") from exc
        if record.body() != body:
            raise IntegrityError("proof record has unknown fields")
        if not 0 < len(record.chunks) <= MAX_PROVEN_CHUNKS or list(record.chunks) != sorted(set(record.chunks)):
            raise IntegrityError(f"a proof record lists 1 to {MAX_PROVEN_CHUNKS} chunks, ascending, each once")
        return record


@dataclass(frozen=True)
class AnchorClaim(SignedRecord):
    """Round merge ``commit`` of ``repo`` is anchored on the Solana cluster whose genesis hash is ``genesis``, by
    transaction ``transaction`` (its signature, base58), as the NFT ``mint``: a claim the merge's author signs
    and every node checks on chain for itself. With contribution NFTs on, ``contributions`` names each merged
    contribution's NFT as (contribution commit, mint, transaction)."""

    TAG: ClassVar[bytes] = b"flair/anchor/v1\0"
    KIND: ClassVar[str] = "anchor"

    repo: RepoId
    commit: CommitId
    genesis: str
    transaction: str
    mint: str
    author: PublicKey
    timestamp_ms: int
    contributions: tuple[tuple[CommitId, str, str], ...] = ()
    wallet: str = ""  # the author's wallet in the repository, which signed the transaction ("": the author's key)
    signature: bytes = b""

    @property
    def payer(self) -> str:
        """The key that signed the transaction and holds the NFT's authority: the wallet, or the author's key."""
        return self.wallet or self.author

    def body(self) -> dict[str, Any]:
        body = {"v": RECORD_VERSION, "type": "anchor", "repo": self.repo, "commit": self.commit,
                "genesis": self.genesis, "transaction": self.transaction, "mint": self.mint, "author": self.author,
                "timestamp_ms": self.timestamp_ms}
        if self.contributions:  # left out when there are none, so claims made before them keep their ids
            body["contributions"] = [list(entry) for entry in self.contributions]
        if self.wallet:  # the same
            body["wallet"] = self.wallet
        return body

    @property
    def id(self) -> str:
        return self.digest

    @classmethod
    def decode(cls, data: bytes) -> AnchorClaim:
        body, sig = schema.outer(encoding.decode(data), "anchor")
        try:
            claim = cls(
                repo=RepoId(schema.hex_id(body["repo"], "repo")),
                commit=CommitId(schema.hex_id(body["commit"], "commit")),
                genesis=schema.base58(body["genesis"], "genesis", 44),
                transaction=schema.base58(body["transaction"], "transaction", 88),
                mint=schema.base58(body["mint"], "mint", 44),
                author=PublicKey(schema.text(body["author"], "author", 64)),
                timestamp_ms=schema.natural(body["timestamp_ms"], "timestamp_ms"),
                contributions=tuple(_contribution_nft(entry) for entry in schema.listing(
                    body.get("contributions", []), "contributions")[:MAX_CONTRIBUTION_NFTS + 1]),
                wallet=schema.base58(body["wallet"], "wallet", 44) if "wallet" in body else "",
                signature=sig,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"anchor record is missing or mistypes a field: {exc}") from exc
        if claim.body() != body or len({c for c, _, _ in claim.contributions}) != len(claim.contributions):
            raise IntegrityError(f"anchor record has unknown fields, more than {MAX_CONTRIBUTION_NFTS} contribution "
                                 "NFTs, or one contribution twice")
        return claim


MAX_CONTRIBUTION_NFTS = 256


def _contribution_nft(entry: Any) -> tuple[CommitId, str, str]:
    commit, mint, transaction = schema.listing(entry, "contribution NFT")
    return (CommitId(schema.hex_id(commit, "contribution")), schema.base58(mint, "contribution mint", 44),
            schema.base58(transaction, "contribution transaction", 88))
