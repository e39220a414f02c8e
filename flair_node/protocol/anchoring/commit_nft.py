"""The commit NFT: one transaction that mints a one-of-one Token-2022 token for a merged commit and carries its
anchor memo.

In order, the transaction

1. creates the mint account (owned by Token-2022) with room for the base mint and a metadata pointer, funded
   with the rent of its final size, since Token-2022 grows the account for the metadata but pays nothing;
2. points the mint's metadata at the mint itself, with no authority, so the pointer can never move;
3. initializes the mint: 0 decimals, the payer may mint, nobody may freeze;
4. writes the metadata on the mint: a name holding the round and the commit's short id, the ``FLAIR`` symbol,
   the URI of the metadata JSON (on IPFS, see ``commit_nft_metadata``), and the fields ``repository`` and
   ``commit``; the payer stays the update authority;
5. creates the payer's associated token account (idempotently) and mints exactly one token into it;
6. revokes the mint authority, so the supply is 1 forever;
7. writes the anchor memo (``memo``), signed by the payer.

Either all of it lands or none of it does. It must fit in Solana's 1232-byte packet, which is why the metadata
on chain is lean (the memo beside it names the branch and the proof, the name holds the round) and the URI is
bounded: with the longest memo and URI the transaction is 1232 bytes, exactly the limit (a test keeps it so).

Retrying is safe because the mint's key is derived from a node secret and the commit id (``commit_mint``): a
retry targets the same address, and its ``create_account`` fails on an account that exists, so one node never
mints two NFTs for a commit. The caller looks the mint up first (``getAccountInfo``): when it exists, an earlier
attempt landed, and ``verify_commit_nft`` confirms it without paying the fee of a failed transaction. (Anyone
who learns the address before the mint exists can block it by sending it lamports, which makes
``create_account`` fail too; the address is revealed only by a sent attempt.)

``verify_commit_nft`` is the read side: from a mint's account data (as ``getAccountInfo`` returns it) it checks
everything above, so any node can confirm an anchor without trusting whoever reported it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.system_program import CreateAccountParams, create_account
from solders.transaction import Transaction

from ...core.errors import IntegrityError, InvalidInput
from ...core.identity import public_key_bytes
from ...core.ids import CommitId, PublicKey, short
from . import token2022 as t22
from .memo import AnchorRecord, anchor_memo, memo_instruction

NFT_SYMBOL = "FLAIR"
#: Solana's largest serialized transaction (its packet size).
MAX_TRANSACTION_BYTES = 1232
#: ``ipfs://<CIDv1>`` is 66 bytes, ``https://ipfs.io/ipfs/<CIDv1>`` 80: with the longest memo, more would not fit.
MAX_URI_BYTES = 80
MAX_CONTRIBUTORS = 256
MAX_METRICS = 16
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MINT_SEED_TAG = b"flair/commit-nft/v1\0"
_URI = re.compile(rf"[\x21-\x7e]{{1,{MAX_URI_BYTES}}}")
_METRIC_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_MINT_EXTENSIONS = {t22.ExtensionType.METADATA_POINTER: t22.METADATA_POINTER_SIZE}


def commit_mint(seed_secret: bytes, commit: CommitId) -> Keypair:
    """The mint keypair of ``commit``'s NFT: the same for the same node secret (32 bytes) and commit, so a retry
    after a crash aims at the mint the first attempt may have created."""
    if len(seed_secret) != 32:
        raise InvalidInput(f"the seed secret is {len(seed_secret)} bytes, not 32")
    if not isinstance(commit, str) or not _HEX64.fullmatch(commit):
        raise InvalidInput(f"commit id {commit!r} is not 64 lower-case hex digits", commit=str(commit))
    return Keypair.from_seed(hashlib.sha256(_MINT_SEED_TAG + seed_secret + bytes.fromhex(commit)).digest())


def commit_nft_name(record: AnchorRecord) -> str:
    """The NFT's display name, e.g. ``Flair r12 7f3a9c01d2``: the round and the commit's short id."""
    return f"Flair r{record.round} {short(record.commit)}"


def commit_nft_fields(record: AnchorRecord) -> tuple[tuple[str, str], ...]:
    """The additional metadata fields written on the mint, in order."""
    return (("repository", record.repo), ("commit", record.commit))


def _check_uri(uri: str) -> None:
    if not isinstance(uri, str) or not _URI.fullmatch(uri):
        raise InvalidInput(f"metadata URI {uri!r} is not 1-{MAX_URI_BYTES} printable ASCII characters")


def commit_nft_mint_size(record: AnchorRecord, uri: str) -> int:
    """The mint account's final size once its metadata is written: the size whose rent the payer funds."""
    _check_uri(uri)
    metadata = t22.token_metadata_size(commit_nft_name(record), NFT_SYMBOL, uri, commit_nft_fields(record))
    return t22.mint_space(_MINT_EXTENSIONS) + metadata


def commit_nft_instructions(*, payer: Pubkey, mint: Pubkey, record: AnchorRecord, uri: str,
                            rent: Callable[[int], int]) -> list[Instruction]:
    """The instructions minting ``record``'s NFT at ``mint`` to ``payer``, then its memo. ``rent`` gives the
    rent-exempt balance of an account size (``getMinimumBalanceForRentExemption``)."""
    lamports = rent(commit_nft_mint_size(record, uri))
    ata = t22.associated_token_address(payer, mint)
    instructions = [
        create_account(CreateAccountParams(from_pubkey=payer, to_pubkey=mint, lamports=lamports,
                                           space=t22.mint_space(_MINT_EXTENSIONS), owner=t22.TOKEN_2022_PROGRAM_ID)),
        t22.initialize_metadata_pointer(mint, authority=None, metadata_address=mint),
        t22.initialize_mint2(mint, decimals=0, mint_authority=payer, freeze_authority=None),
        t22.initialize_token_metadata(mint, update_authority=payer, mint_authority=payer,
                                      name=commit_nft_name(record), symbol=NFT_SYMBOL, uri=uri),
    ]
    for key, value in commit_nft_fields(record):
        instructions.append(t22.update_token_metadata_field(mint, payer, key, value))
    instructions += [
        t22.create_associated_token_account_idempotent(payer, payer, mint),
        t22.mint_to(mint, ata, payer, 1),
        t22.set_authority(mint, payer, t22.AuthorityType.MINT_TOKENS, None),
        memo_instruction(anchor_memo(record), payer),
    ]
    return instructions


def commit_nft_transaction(*, payer: Keypair, mint: Keypair, record: AnchorRecord, uri: str,
                           rent: Callable[[int], int], blockhash: Hash) -> Transaction:
    """The signed transaction (payer and mint sign) of ``commit_nft_instructions``; ``InvalidInput`` if it
    would not fit in a Solana packet."""
    if payer.pubkey() == mint.pubkey():
        raise InvalidInput(f"the payer {payer.pubkey()} cannot be the mint of its own NFT: use commit_mint")
    instructions = commit_nft_instructions(payer=payer.pubkey(), mint=mint.pubkey(), record=record, uri=uri,
                                           rent=rent)
    tx = Transaction.new_signed_with_payer(instructions, payer.pubkey(), [payer, mint], blockhash)
    size = len(bytes(tx))
    if size > MAX_TRANSACTION_BYTES:
        raise InvalidInput(f"the anchor transaction for commit {short(record.commit)} is {size} bytes, more than "
                           f"Solana's {MAX_TRANSACTION_BYTES}: use a shorter metadata URI", commit=record.commit)
    return tx


# -- metadata JSON ----------------------------------------------------------------------------------------

def commit_nft_metadata(record: AnchorRecord, *, aggregator: PublicKey, contributors: Sequence[PublicKey],
                        metrics: Mapping[str, int | float | str] | None = None) -> dict[str, Any]:
    """The NFT's off-chain metadata in Metaplex's JSON standard, for the caller to store on IPFS and name in
    the URI. Only ids, counts, keys and named scalar metrics: never weights or anything derived from data."""
    if isinstance(contributors, str):
        raise InvalidInput("contributors is one string: give a list of public keys")
    for key in (aggregator, *contributors):
        public_key_bytes(key)
    if len(contributors) > MAX_CONTRIBUTORS or len(set(contributors)) != len(contributors):
        raise InvalidInput(f"contributors must be at most {MAX_CONTRIBUTORS} distinct keys")
    metrics = dict(metrics or {})
    if len(metrics) > MAX_METRICS:
        raise InvalidInput(f"{len(metrics)} metrics, at most {MAX_METRICS} may be published")
    for name, value in metrics.items():
        if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
            raise InvalidInput(f"metric name {name!r} is not 1-64 of A-Z a-z 0-9 _ . -, starting with a letter")
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise InvalidInput(f"metric {name} is {type(value).__name__}: publish a number or short text")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInput(f"metric {name} is {value}: publish a finite number")
        if isinstance(value, str) and len(value) > 64:
            raise InvalidInput(f"metric {name} is {len(value)} characters of text, at most 64")
    attributes: list[dict[str, Any]] = [
        {"trait_type": "repository", "value": record.repo},
        {"trait_type": "branch", "value": record.branch},
        {"trait_type": "round", "value": record.round},
        {"trait_type": "commit", "value": record.commit},
        {"trait_type": "aggregator", "value": aggregator},
        {"trait_type": "contributors", "value": len(contributors)},
    ]
    if record.proof is not None:
        attributes.append({"trait_type": "proof", "value": record.proof})
    attributes += [{"trait_type": f"metric:{name}", "value": metrics[name]} for name in sorted(metrics)]
    return {
        "name": commit_nft_name(record),
        "symbol": NFT_SYMBOL,
        "description": f"Flair merged commit {record.commit} of repository {record.repo}, "
                       f"branch {record.branch}, round {record.round}.",
        "attributes": attributes,
        "properties": {"category": "model", "contributors": list(contributors)},
    }


def metadata_json(document: Mapping[str, Any]) -> bytes:
    """``document`` as canonical JSON bytes (sorted keys, no spaces): the same metadata, the same CID."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


# -- verification -----------------------------------------------------------------------------------------

def verify_commit_nft(*, mint: Pubkey, owner: Pubkey, data: bytes, record: AnchorRecord,
                      aggregator: Pubkey) -> t22.MintAccount:
    """Check that the account at ``mint`` (its ``owner`` and ``data`` as an RPC node reports them) is
    ``record``'s commit NFT minted by ``aggregator``: one token, no mint or freeze authority, no extension but
    the metadata pointer and the metadata (a permanent delegate, say, could burn the token), metadata on the mint
    naming the record. ``IntegrityError`` says what differs."""
    what = f"commit NFT {mint} for commit {short(record.commit)}"
    if owner != t22.TOKEN_2022_PROGRAM_ID:
        raise IntegrityError(f"{what} is owned by {owner}, not Token-2022", commit=record.commit)
    account = t22.parse_mint(data)
    metadata = account.metadata
    problems = []
    if account.supply != 1 or account.decimals != 0:
        problems.append(f"supply {account.supply} with {account.decimals} decimals, not exactly 1 token")
    if account.mint_authority is not None:
        problems.append(f"mint authority {account.mint_authority} was never revoked")
    if account.freeze_authority is not None:
        problems.append(f"freeze authority {account.freeze_authority} is set")
    if account.extensions != (t22.ExtensionType.METADATA_POINTER, t22.ExtensionType.TOKEN_METADATA):
        problems.append(f"extensions {list(account.extensions)} are not just a metadata pointer and metadata")
    if account.metadata_pointer != t22.MetadataPointer(authority=None, metadata_address=mint):
        problems.append("metadata pointer does not point at the mint itself, permanently")
    if metadata is None:
        problems.append("no metadata on the mint")
    else:
        if metadata.mint != mint or metadata.update_authority != aggregator:
            problems.append(f"metadata belongs to mint {metadata.mint}, updated by {metadata.update_authority}")
        if metadata.name != commit_nft_name(record) or metadata.symbol != NFT_SYMBOL:
            problems.append(f"metadata names {metadata.name!r} ({metadata.symbol!r})")
        if metadata.additional != commit_nft_fields(record):
            problems.append(f"metadata fields {metadata.additional!r} do not name the record")
    if problems:
        raise IntegrityError(f"{what}: " + "; ".join(problems), commit=record.commit, mint=str(mint))
    return account
