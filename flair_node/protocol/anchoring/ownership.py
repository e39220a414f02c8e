"""The repository's ownership token: one one-of-one Token-2022 NFT per repository; whoever holds it owns it.

The repository's creator mints the token to itself (``repo_token_transaction``): a one-of-one NFT as ``nft``
mints them, named ``Flair repo <short id>`` with the ``FLAIR`` symbol, whose metadata fields name the
repository's id and (up to 64 bytes of) its name, followed by the memo ``flair:1:own:<repository id>`` signed by
the creator. The same transaction revokes the metadata's update authority once the fields are written, so the
metadata can never change: not by the creator after it has handed the repository over, nor by anyone else. The
mint's key is derived from the creator's node secret and the repository id (``repo_token_mint``), so a retry
after a crash aims at the mint the first attempt may have created and can never mint a second token.

The holder hands the repository over by moving the token (``handover_transaction``): it creates the new
owner's associated token account if need be, transfers the one token with ``TransferChecked`` and writes
``flair:1:handover:<repository id>:<new owner>``, all paid and signed by the holder. Token-2022 refuses a
transfer not signed by the token account's owner, so only the holder can hand over. Which membership change
the transfer backs, and whether it is later than the token's last move, is for the membership chain
(``core.membership``) and the node applying it to check, from ``Chain.transaction``'s token moves.

``verify_repo_token`` checks a minted token from its mint's account data, including that its metadata has no
update authority; ``nft.holds_one`` (and ``Chain.holds``) say who holds it. Who minted the token is not in the
mint's data once the authorities are gone: the node checks it from the minting transaction's token balances
(``Chain.transaction``). What binds the token to the repository is the owner's signed token change naming the
mint, not the metadata alone.
"""

from __future__ import annotations

from collections.abc import Callable

from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.transaction import Transaction

from ...core.errors import InvalidInput
from ...core.ids import PublicKey, RepoId, short
from . import token2022 as t22
from .memo import handover_memo, memo_instruction, ownership_memo
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

#: The most bytes of the repository's name the token's metadata keeps (cut at a character boundary).
MAX_NAME_BYTES = 64
_MINT_SEED_TAG = b"flair/repo-token/v1\0"


def repo_token_mint(seed_secret: bytes, repo: RepoId) -> Keypair:
    """The mint keypair of ``repo``'s ownership token: the same for the same node secret (32 bytes) and
    repository, so a retry after a crash aims at the mint the first attempt may have created."""
    return derived_keypair(_MINT_SEED_TAG, seed_secret, check_hex_id(repo, "repository id", "repo"))


def repo_token_name(repo: RepoId) -> str:
    """The token's display name, e.g. ``Flair repo 7f3a9c01d2``."""
    return f"Flair repo {short(check_hex_id(repo, 'repository id', 'repo'))}"


def _short_name(name: str) -> str:
    if not isinstance(name, str):
        raise InvalidInput(f"repository name {name!r} is not text")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"repository name {name!r} is not valid Unicode text") from None
    # A cut inside a character leaves an incomplete sequence at the end only: dropping it keeps whole characters.
    return raw[:MAX_NAME_BYTES].decode("utf-8", errors="ignore")


def repo_token_fields(repo: RepoId, name: str) -> Fields:
    """The additional metadata fields written on the mint, in order: the repository id and its name, cut to at
    most 64 UTF-8 bytes at a character boundary."""
    return (("repository", check_hex_id(repo, "repository id", "repo")), ("name", _short_name(name)))


def repo_token_mint_size(repo: RepoId, name: str, uri: str) -> int:
    """The mint account's final size once its metadata is written: the size whose rent the creator funds."""
    return one_of_one_mint_size(repo_token_name(repo), NFT_SYMBOL, uri, repo_token_fields(repo, name))


def repo_token_instructions(*, payer: Pubkey, mint: Pubkey, repo: RepoId, name: str, uri: str,
                            rent: Callable[[int], int]) -> list[Instruction]:
    """The instructions minting ``repo``'s ownership token at ``mint`` to ``payer``, with its metadata's update
    authority revoked, then its ownership memo. ``rent`` gives the rent-exempt balance of an account size
    (``getMinimumBalanceForRentExemption``)."""
    return one_of_one_instructions(payer=payer, mint=mint, holder=payer, name=repo_token_name(repo),
                                   symbol=NFT_SYMBOL, uri=uri, fields=repo_token_fields(repo, name),
                                   memo=ownership_memo(repo), rent=rent, keep_update_authority=False)


def repo_token_transaction(*, payer: Keypair, mint: Keypair, repo: RepoId, name: str, uri: str,
                           rent: Callable[[int], int], blockhash: Hash) -> Transaction:
    """The signed transaction (payer and mint sign) of ``repo_token_instructions``; ``InvalidInput`` if it would
    not fit in a Solana packet (it always does for a URI of at most ``MAX_URI_BYTES``)."""
    if payer.pubkey() == mint.pubkey():
        raise InvalidInput(f"the payer {payer.pubkey()} cannot be the mint of its own token: use repo_token_mint")
    instructions = repo_token_instructions(payer=payer.pubkey(), mint=mint.pubkey(), repo=repo, name=name, uri=uri,
                                           rent=rent)
    return signed_within_packet(instructions, payer, [payer, mint], blockhash,
                                what=f"the ownership token transaction of repository {short(repo)}",
                                advice="use a shorter metadata URI", repo=repo)


def verify_repo_token(*, mint: Pubkey, owner: Pubkey, data: bytes, repo: RepoId, name: str) -> t22.MintAccount:
    """Check that the account at ``mint`` (its ``owner`` and ``data`` as an RPC node reports them) is ``repo``'s
    ownership token: one token, no mint or freeze authority, metadata on the mint naming the repository with no
    update authority, so it can never change (``nft.verify_one_of_one``). ``IntegrityError`` says what differs.
    Who minted the token (the minting transaction's token balances) and who holds it (``nft.holds_one``) are
    other questions."""
    return verify_one_of_one(what=f"ownership token {mint} of repository {short(repo)}", mint=mint, owner=owner,
                             data=data, name=repo_token_name(repo), symbol=NFT_SYMBOL,
                             fields=repo_token_fields(repo, name), update_authority=None, repo=repo)


def handover_instructions(*, holder: Pubkey, mint: Pubkey, to: Pubkey, repo: RepoId) -> list[Instruction]:
    """The instructions moving the token ``mint`` from ``holder``'s associated token account to ``to``'s (created
    if need be, paid by ``holder``), then the handover memo, signed by ``holder``."""
    if to == holder:
        raise InvalidInput(f"{to} already holds the ownership token of repository {short(repo)}: hand it to "
                           "another key", repo=str(repo))
    memo = handover_memo(repo, PublicKey(str(to)))
    return [
        t22.create_associated_token_account_idempotent(holder, to, mint),
        t22.transfer_checked(t22.associated_token_address(holder, mint), mint, t22.associated_token_address(to, mint),
                             holder, 1, 0),
        memo_instruction(memo, holder),
    ]


def handover_transaction(*, holder: Keypair, mint: Pubkey, to: Pubkey, repo: RepoId,
                         blockhash: Hash) -> Transaction:
    """The signed transaction (the holder signs and pays) of ``handover_instructions``."""
    instructions = handover_instructions(holder=holder.pubkey(), mint=mint, to=to, repo=repo)
    return signed_within_packet(instructions, holder, [holder], blockhash,
                                what=f"the handover of repository {short(repo)}", advice="report this as a bug",
                                repo=repo)
