"""One-of-one Token-2022 NFTs: the builder and the checker that commit NFTs, repository tokens and contribution
NFTs share.

Every Flair NFT is minted by one transaction that, in order,

1. creates the mint account (owned by Token-2022) with room for the base mint and a metadata pointer, funded
   with the rent of its final size, since Token-2022 grows the account for the metadata but pays nothing;
2. points the mint's metadata at the mint itself, with no authority, so the pointer can never move;
3. initializes the mint: 0 decimals, the payer may mint, nobody may freeze;
4. writes the metadata on the mint (name, symbol, URI, then the additional fields in order); the payer stays
   its update authority (commit NFTs, which the payer keeps) or revokes it at once, so that nobody can ever
   rewrite it (repository tokens and contribution NFTs, which are or may come to be held by someone else);
5. creates the holder's associated token account (idempotently, the payer pays) and mints exactly one token
   into it;
6. revokes the mint authority, so the supply is 1 forever;
7. optionally writes a memo, signed by the payer.

Either all of it lands or none of it does. The mint key is derived from a node secret and the ids the NFT is
for (``derived_keypair``), so a retry after a crash aims at the mint the first attempt may have created, and
its ``create_account`` fails on an account that exists: one node never mints two NFTs for the same thing.

``verify_one_of_one`` is the read side: from a mint's account data (as ``getAccountInfo`` returns it) it checks
everything above. ``holds_one`` says whether the account at a holder's associated address holds the token.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any

from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.system_program import CreateAccountParams, create_account
from solders.transaction import Transaction

from ...core.errors import IntegrityError, InvalidInput
from . import token2022 as t22
from .memo import memo_instruction

NFT_SYMBOL = "FLAIR"
#: Solana's largest serialized transaction (its packet size).
MAX_TRANSACTION_BYTES = 1232
#: ``ipfs://<CIDv1>`` is 66 bytes, ``https://ipfs.io/ipfs/<CIDv1>`` 80: with the longest anchor memo, more would
#: not fit a commit NFT's transaction.
MAX_URI_BYTES = 80
MINT_EXTENSIONS = {t22.ExtensionType.METADATA_POINTER: t22.METADATA_POINTER_SIZE}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_URI = re.compile(rf"[\x21-\x7e]{{1,{MAX_URI_BYTES}}}")

Fields = tuple[tuple[str, str], ...]


def check_hex_id(value: object, what: str, key: str) -> str:
    """``value`` if it is 64 lower-case hex digits; ``InvalidInput`` naming ``what`` (and ``key`` in its data)."""
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise InvalidInput(f"{what} {value!r} is not 64 lower-case hex digits", **{key: str(value)})
    return value


def derived_keypair(tag: bytes, seed_secret: bytes, *ids: str) -> Keypair:
    """The keypair seeded by ``sha256(tag + seed_secret + ids as bytes)``: the same for the same node secret
    (32 bytes) and ids, and apart for different tags. The caller checks the ids are 64-hex-digit ids."""
    if not isinstance(seed_secret, bytes) or len(seed_secret) != 32:
        got = f"{len(seed_secret)} bytes" if isinstance(seed_secret, bytes) else f"a {type(seed_secret).__name__}"
        raise InvalidInput(f"the seed secret is {got}, not 32 bytes")
    return Keypair.from_seed(hashlib.sha256(tag + seed_secret + b"".join(bytes.fromhex(i) for i in ids)).digest())


def check_uri(uri: str) -> None:
    if not isinstance(uri, str) or not _URI.fullmatch(uri):
        raise InvalidInput(f"metadata URI {uri!r} is not 1-{MAX_URI_BYTES} printable ASCII characters")


def one_of_one_mint_size(name: str, symbol: str, uri: str, fields: Fields) -> int:
    """The mint account's final size once its metadata is written: the size whose rent the payer funds."""
    check_uri(uri)
    return t22.mint_space(MINT_EXTENSIONS) + t22.token_metadata_size(name, symbol, uri, fields)


def one_of_one_instructions(*, payer: Pubkey, mint: Pubkey, holder: Pubkey, name: str, symbol: str, uri: str,
                            fields: Fields, memo: bytes | None, rent: Callable[[int], int],
                            keep_update_authority: bool = True) -> list[Instruction]:
    """The instructions minting a one-of-one NFT at ``mint`` into ``holder``'s associated token account, paid
    by ``payer`` (who signs, with ``mint``), then ``memo`` if given. ``rent`` gives the rent-exempt balance of an
    account size (``getMinimumBalanceForRentExemption``). The payer stays the metadata's update authority if
    ``keep_update_authority``; otherwise the update authority is revoked once the fields are written."""
    if mint in (payer, holder):
        raise InvalidInput(f"the mint {mint} cannot also pay for or hold its own NFT: derive the mint's key")
    lamports = rent(one_of_one_mint_size(name, symbol, uri, fields))
    instructions = [
        create_account(CreateAccountParams(from_pubkey=payer, to_pubkey=mint, lamports=lamports,
                                           space=t22.mint_space(MINT_EXTENSIONS), owner=t22.TOKEN_2022_PROGRAM_ID)),
        t22.initialize_metadata_pointer(mint, authority=None, metadata_address=mint),
        t22.initialize_mint2(mint, decimals=0, mint_authority=payer, freeze_authority=None),
        t22.initialize_token_metadata(mint, update_authority=payer, mint_authority=payer, name=name, symbol=symbol,
                                      uri=uri),
    ]
    for key, value in fields:
        instructions.append(t22.update_token_metadata_field(mint, payer, key, value))
    if not keep_update_authority:
        instructions.append(t22.update_token_metadata_authority(mint, payer, None))
    instructions += [
        t22.create_associated_token_account_idempotent(payer, holder, mint),
        t22.mint_to(mint, t22.associated_token_address(holder, mint), payer, 1),
        t22.set_authority(mint, payer, t22.AuthorityType.MINT_TOKENS, None),
    ]
    if memo is not None:
        instructions.append(memo_instruction(memo, payer))
    return instructions


def signed_within_packet(instructions: Sequence[Instruction], payer: Keypair, signers: Sequence[Keypair],
                         blockhash: Hash, *, what: str, advice: str, **ids: str) -> Transaction:
    """``instructions`` signed by ``signers`` (``payer`` first, paying the fee); ``InvalidInput`` saying
    "``what`` is N bytes, more than Solana's 1232: ``advice``" if the transaction would not fit in a packet."""
    tx = Transaction.new_signed_with_payer(list(instructions), payer.pubkey(), list(signers), blockhash)
    size = len(bytes(tx))
    if size > MAX_TRANSACTION_BYTES:
        raise InvalidInput(f"{what} is {size} bytes, more than Solana's {MAX_TRANSACTION_BYTES}: {advice}", **ids)
    return tx


def verify_one_of_one(*, what: str, mint: Pubkey, owner: Pubkey, data: bytes, name: str, symbol: str,
                      fields: Fields, update_authority: Pubkey | None, **ids: str) -> t22.MintAccount:
    """Check that the account at ``mint`` (its ``owner`` and ``data`` as an RPC node reports them) is a one-of-one
    NFT as ``one_of_one_instructions`` mints it: one token, no mint or freeze authority, no extension but the
    metadata pointer and the metadata (a permanent delegate, say, could take the token), metadata on the mint
    with this name, symbol, fields and update authority (``None``: the metadata must have none, so that it can
    never change). ``IntegrityError`` opens with ``what`` and says what differs; ``ids`` go into its data beside
    the mint."""
    data_ids: dict[str, Any] = {**ids, "mint": str(mint)}
    if owner != t22.TOKEN_2022_PROGRAM_ID:
        raise IntegrityError(f"{what} is owned by {owner}, not Token-2022", **data_ids)
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
        if metadata.mint != mint:
            problems.append(f"metadata belongs to mint {metadata.mint}")
        if update_authority is None and metadata.update_authority is not None:
            problems.append(f"metadata can still be rewritten by {metadata.update_authority}: its update authority "
                            "was never revoked")
        elif metadata.update_authority != update_authority:
            problems.append(f"metadata is updated by {metadata.update_authority or 'nobody'}, not {update_authority}")
        if metadata.name != name or metadata.symbol != symbol:
            problems.append(f"metadata names {metadata.name!r} ({metadata.symbol!r}), not {name!r} ({symbol!r})")
        if metadata.additional != fields:
            problems.append(f"metadata fields {metadata.additional!r} do not name the record")
    if problems:
        raise IntegrityError(f"{what}: " + "; ".join(problems), **data_ids)
    return account


def holds_one(*, holder: Pubkey, mint: Pubkey, owner: Pubkey, data: bytes) -> bool:
    """Whether the account at ``associated_token_address(holder, mint)`` (its ``owner`` program and ``data`` as an
    RPC node reports them) is a Token-2022 account of ``mint`` owned by ``holder`` holding exactly one token.

    False for an account that is not a token account (not created yet, or only sent lamports); ``IntegrityError``
    for one Token-2022 owns whose data is malformed."""
    if owner != t22.TOKEN_2022_PROGRAM_ID or not data:
        return False
    account = t22.parse_token_account(data)
    return account.mint == mint and account.owner == holder and account.amount == 1
