"""The commit NFT: one transaction that mints a one-of-one Token-2022 token for a merged commit and carries its
anchor memo.

It is a one-of-one NFT as ``nft`` mints them (the mint created and funded for its final size, the metadata on
the mint itself, one token in the payer's associated token account, the mint authority revoked), whose metadata
holds a name with the round and the commit's short id, the ``FLAIR`` symbol, the URI of the metadata JSON (on
IPFS, see ``commit_nft_metadata``) and the fields ``repository`` and ``commit``, followed by the anchor memo
(``memo``), signed by the payer.

Either all of it lands or none of it does. It must fit in Solana's 1232-byte packet, which is why the metadata
on chain is lean (the memo beside it names the branch's tag and the proof, the name holds the round) and the URI is
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

import json
from collections.abc import Callable, Mapping
from typing import Any

from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.transaction import Transaction

from ...core.errors import InvalidInput
from ...core.ids import CommitId, short
from . import token2022 as t22
from .memo import AnchorRecord, anchor_memo
from .nft import MAX_TRANSACTION_BYTES as MAX_TRANSACTION_BYTES  # importable from here, where they began
from .nft import MAX_URI_BYTES as MAX_URI_BYTES
from .nft import NFT_SYMBOL as NFT_SYMBOL
from .nft import (
    check_hex_id,
    derived_keypair,
    one_of_one_instructions,
    one_of_one_mint_size,
    signed_within_packet,
    verify_one_of_one,
)

MAX_CONTRIBUTORS = 256
_MINT_SEED_TAG = b"flair/commit-nft/v1\0"


def commit_mint(seed_secret: bytes, commit: CommitId) -> Keypair:
    """The mint keypair of ``commit``'s NFT: the same for the same node secret (32 bytes) and commit, so a retry
    after a crash aims at the mint the first attempt may have created."""
    return derived_keypair(_MINT_SEED_TAG, seed_secret, check_hex_id(commit, "commit id", "commit"))


def commit_nft_name(record: AnchorRecord) -> str:
    """The NFT's display name, e.g. ``Flair r12 7f3a9c01d2``: the round and the commit's short id."""
    return f"Flair r{record.round} {short(record.commit)}"


def commit_nft_fields(record: AnchorRecord) -> tuple[tuple[str, str], ...]:
    """The additional metadata fields written on the mint, in order."""
    return (("repository", record.repo), ("commit", record.commit))


def commit_nft_mint_size(record: AnchorRecord, uri: str) -> int:
    """The mint account's final size once its metadata is written: the size whose rent the payer funds."""
    return one_of_one_mint_size(commit_nft_name(record), NFT_SYMBOL, uri, commit_nft_fields(record))


def commit_nft_instructions(*, payer: Pubkey, mint: Pubkey, record: AnchorRecord, uri: str,
                            rent: Callable[[int], int]) -> list[Instruction]:
    """The instructions minting ``record``'s NFT at ``mint`` to ``payer``, then its memo. ``rent`` gives the
    rent-exempt balance of an account size (``getMinimumBalanceForRentExemption``)."""
    return one_of_one_instructions(payer=payer, mint=mint, holder=payer, name=commit_nft_name(record),
                                   symbol=NFT_SYMBOL, uri=uri, fields=commit_nft_fields(record),
                                   memo=anchor_memo(record), rent=rent)


def commit_nft_transaction(*, payer: Keypair, mint: Keypair, record: AnchorRecord, uri: str,
                           rent: Callable[[int], int], blockhash: Hash) -> Transaction:
    """The signed transaction (payer and mint sign) of ``commit_nft_instructions``; ``InvalidInput`` if it
    would not fit in a Solana packet."""
    if payer.pubkey() == mint.pubkey():
        raise InvalidInput(f"the payer {payer.pubkey()} cannot be the mint of its own NFT: use commit_mint")
    instructions = commit_nft_instructions(payer=payer.pubkey(), mint=mint.pubkey(), record=record, uri=uri,
                                           rent=rent)
    return signed_within_packet(instructions, payer, [payer, mint], blockhash,
                                what=f"the anchor transaction for commit {short(record.commit)}",
                                advice="use a shorter metadata URI", commit=record.commit)


# -- metadata JSON ----------------------------------------------------------------------------------------

def commit_nft_metadata(record: AnchorRecord, *, contributors: int) -> dict[str, Any]:
    """The NFT's off-chain metadata in Metaplex's JSON standard, for the caller to store on IPFS and name in
    the URI. It is public (an unencrypted block anyone holding its CID may fetch), so it holds what the chain
    shows already and a count: ids, the branch's tag, the round and how many contributions were merged. Never
    a key, a branch name, a metric or anything derived from data."""
    if isinstance(contributors, bool) or not isinstance(contributors, int) or not 0 <= contributors <= MAX_CONTRIBUTORS:
        raise InvalidInput(f"contributors is a count from 0 to {MAX_CONTRIBUTORS}")
    attributes: list[dict[str, Any]] = [
        {"trait_type": "repository", "value": record.repo},
        {"trait_type": "branch tag", "value": record.branch},
        {"trait_type": "round", "value": record.round},
        {"trait_type": "commit", "value": record.commit},
        {"trait_type": "contributors", "value": contributors},
    ]
    if record.proof is not None:
        attributes.append({"trait_type": "proof", "value": record.proof})
    return {
        "name": commit_nft_name(record),
        "symbol": NFT_SYMBOL,
        "description": f"Flair merged commit {record.commit} of repository {record.repo}, round {record.round}.",
        "attributes": attributes,
        "properties": {"category": "model"},
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
    naming the record (``nft.verify_one_of_one``). ``IntegrityError`` says what differs."""
    return verify_one_of_one(what=f"commit NFT {mint} for commit {short(record.commit)}", mint=mint, owner=owner,
                             data=data, name=commit_nft_name(record), symbol=NFT_SYMBOL,
                             fields=commit_nft_fields(record), update_authority=aggregator, commit=record.commit)
