"""Contribution NFTs: optional one-of-one tokens, one per contribution merged by a round, that the round's
aggregator mints to each contributor (``RoundPolicy.contribution_nfts``).

Each is a one-of-one NFT as ``nft`` mints them, held in the contributor's associated token account: the
aggregator pays for everything and signs (with the mint), the contributor never signs and need hold no SOL.
The metadata names the round and the merged commit (``Flair r12 7f3a9c01d2 contribution``) and holds the fields
``repository``, ``commit`` (the merged commit) and ``contribution`` (the contribution's commit id). The same
transaction revokes the metadata's update authority once the fields are written, so nobody, the aggregator
included, can ever rewrite an NFT that is the contributor's. The mint's key is derived from the aggregator's
node secret, the merged commit and the contribution (``contribution_mint``), so a retry never mints a second NFT
for a contribution.

No memo: the mint's metadata already names the repository, the merge and the contribution, and the merge's own
anchor transaction carries the attributable record of the round. A memo spelling those three ids (215 bytes)
would make the largest transaction 1326 bytes, over Solana's 1232; one naming the contribution alone would fit
but say nothing the metadata does not. Without it the largest contribution NFT transaction (the largest round,
a URI of ``MAX_URI_BYTES``) is 1074 bytes.

``verify_contribution_nft`` checks a minted NFT from its mint's account data, including that its metadata has
no update authority. Who minted it is no longer in the mint's data: a node reading an anchor checks, from the
token balances of the transaction the anchor names, that it minted the NFT to the contributor.
"""

from __future__ import annotations

from collections.abc import Callable

from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.transaction import Transaction

from ...core.ids import CommitId, short
from . import token2022 as t22
from .memo import AnchorRecord
from .nft import (
    NFT_SYMBOL,
    Fields,
    check_hex_id,
    derived_keypair,
    one_of_one_instructions,
    one_of_one_mint_size,
    signed_within_packet,
    verify_one_of_one,
)

_MINT_SEED_TAG = b"flair/contribution-nft/v1\0"


def contribution_mint(seed_secret: bytes, merge: CommitId, contribution: CommitId) -> Keypair:
    """The mint keypair of the NFT for ``contribution`` merged by ``merge``: the same for the same node secret
    (32 bytes) and ids, so a retry after a crash aims at the mint the first attempt may have created."""
    return derived_keypair(_MINT_SEED_TAG, seed_secret, check_hex_id(merge, "merged commit id", "commit"),
                           check_hex_id(contribution, "contribution id", "contribution"))


def contribution_nft_name(record: AnchorRecord) -> str:
    """The NFT's display name, e.g. ``Flair r12 7f3a9c01d2 contribution``: the round and the merge's short id."""
    return f"Flair r{record.round} {short(record.commit)} contribution"


def contribution_nft_fields(record: AnchorRecord, contribution: CommitId) -> Fields:
    """The additional metadata fields written on the mint, in order."""
    contribution = CommitId(check_hex_id(contribution, "contribution id", "contribution"))
    return (("repository", record.repo), ("commit", record.commit), ("contribution", contribution))


def contribution_nft_mint_size(record: AnchorRecord, contribution: CommitId, uri: str) -> int:
    """The mint account's final size once its metadata is written: the size whose rent the aggregator funds."""
    return one_of_one_mint_size(contribution_nft_name(record), NFT_SYMBOL, uri,
                                contribution_nft_fields(record, contribution))


def contribution_nft_instructions(*, payer: Pubkey, mint: Pubkey, record: AnchorRecord, contributor: Pubkey,
                                  contribution: CommitId, uri: str,
                                  rent: Callable[[int], int]) -> list[Instruction]:
    """The instructions minting the NFT of ``contribution`` (merged by ``record``'s commit) at ``mint`` into
    ``contributor``'s associated token account with its metadata's update authority revoked, all paid by
    ``payer``. ``rent`` gives the rent-exempt balance of
    an account size (``getMinimumBalanceForRentExemption``)."""
    return one_of_one_instructions(payer=payer, mint=mint, holder=contributor, name=contribution_nft_name(record),
                                   symbol=NFT_SYMBOL, uri=uri, fields=contribution_nft_fields(record, contribution),
                                   memo=None, rent=rent, keep_update_authority=False)


def contribution_nft_transaction(*, payer: Keypair, mint: Keypair, record: AnchorRecord, contributor: Pubkey,
                                 contribution: CommitId, uri: str, rent: Callable[[int], int],
                                 blockhash: Hash) -> Transaction:
    """The signed transaction (payer and mint sign; the contributor does not) of
    ``contribution_nft_instructions``; ``InvalidInput`` if it would not fit in a Solana packet (it always does
    for a URI of at most ``MAX_URI_BYTES``)."""
    instructions = contribution_nft_instructions(payer=payer.pubkey(), mint=mint.pubkey(), record=record,
                                                 contributor=contributor, contribution=contribution, uri=uri,
                                                 rent=rent)
    return signed_within_packet(instructions, payer, [payer, mint], blockhash,
                                what=f"the NFT transaction for contribution {short(contribution)}",
                                advice="use a shorter metadata URI", contribution=contribution)


def verify_contribution_nft(*, mint: Pubkey, owner: Pubkey, data: bytes, record: AnchorRecord,
                            contribution: CommitId) -> t22.MintAccount:
    """Check that the account at ``mint`` (its ``owner`` and ``data`` as an RPC node reports them) is the NFT of
    ``contribution`` merged by ``record``'s commit: one token, no mint or freeze authority, metadata on the mint
    naming both with no update authority, so it can never change (``nft.verify_one_of_one``).
    ``IntegrityError`` says what differs. Who minted the token (the minting transaction) and who holds it
    (``nft.holds_one``) are other questions."""
    return verify_one_of_one(what=f"contribution NFT {mint} for contribution {short(contribution)}", mint=mint,
                             owner=owner, data=data, name=contribution_nft_name(record), symbol=NFT_SYMBOL,
                             fields=contribution_nft_fields(record, contribution), update_authority=None,
                             commit=record.commit, contribution=contribution)
