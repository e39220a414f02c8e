"""Flair's one door to a Solana cluster: solana-py's async RPC client behind a small interface of Flair's types.

``Chain(cluster)`` takes ``chain.cluster`` from the node's config: ``local`` (``flair-node localnet`` on its
default port), ``devnet``, ``testnet``, ``mainnet-beta``, or any ``http(s)://`` RPC URL. Every call returns
plain values (lamports, bytes, statuses) or raises ``ChainError`` saying which call failed and why, so the rest
of Flair never sees solana-py's response types. Airdrops are refused except on devnet and local chains (``local``
or any RPC URL on this machine's loopback, such as a localnet on another port).

solana-py's client is asyncio-flavoured but speaks HTTP through httpx, whose async client runs on trio too
(anyio), so the daemon awaits it directly. ``explorer_url`` gives the link a person opens to audit a
transaction or an account on the configured cluster.

What a cluster answers is checked before it becomes Flair's: a landed transaction (``Chain.transaction``) must
fit in a packet and name at most one token balance per account it touches, with raw amounts as canonical u64
decimals, or the call fails with ``ChainError``. Whether the answer tells the truth is for the caller to judge
with what it knows (``verify_commit_nft`` and friends check account data against records).

Whatever Solana's Python clients raise is translated in one place, ``map_exceptions``: solana-py's exceptions, the
httpx errors beneath them and solders' parse errors become ``ChainError`` (a call to the cluster failed) or
``InvalidInput`` (a key or signature given here is malformed), and nothing else is caught. Addresses cross this
boundary as ``Address`` (base58 text, made by ``parse_address``), never as solders' ``Pubkey``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, NewType
from urllib.parse import quote, urlparse

from ...core.errors import FlairError, InvalidInput, RemoteError

if TYPE_CHECKING:
    from solders.pubkey import Pubkey
    from solders.signature import Signature

LOCAL_URL = "http://127.0.0.1:8899"  # flair-node localnet's default
CLUSTERS = {"local": LOCAL_URL, "devnet": "https://api.devnet.solana.com",
            "testnet": "https://api.testnet.solana.com", "mainnet-beta": "https://api.mainnet-beta.solana.com"}
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MEMO_PROGRAM = "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr"
PACKET_BYTES = 1232
#: A transaction's accounts are indexed by a byte: no more token balances than that on either side.
MAX_TOKEN_BALANCES = 256
#: ``Landed.error`` of a transaction the cluster returned without its status meta: not known to have succeeded.
UNKNOWN_STATUS = "unknown: the cluster returned the transaction without its status"
_AMOUNT = re.compile(r"0|[1-9][0-9]{0,19}")


#: A Solana account address (a wallet, a mint, a program, an account a program derives): an Ed25519 public key
#: in base58, its one spelling. ``parse_address`` makes one from text; a node's ``PublicKey`` is one too.
Address = NewType("Address", str)


class ChainError(RemoteError):
    """A Solana RPC call failed: the cluster is unreachable, refused the call, or answered malformed."""


@cache
def client_errors() -> tuple[type[Exception], ...]:
    """What Solana's Python clients raise when a call to a cluster fails or what it answered does not parse:
    solana-py's own exceptions (an RPC error answer, no result, and httpx's errors, which it wraps), httpx's errors
    outside that wrapping (a malformed URL, a stream used twice), a socket error beneath them, solders' errors
    decoding an answer, and the ``ValueError`` solders raises for malformed keys, signatures and hashes. Imported on
    first use: solana-py takes a while to import, and a node without a cluster never needs it."""
    import httpx
    from solana.exceptions import SolanaExceptionBase
    from solana.rpc.core import (
        RPCException,
        RPCNoResultException,
        TransactionExpiredBlockheightExceededError,
        UnconfirmedTxError,
    )
    from solders.errors import BincodeError, CborError, SerdeJSONError, SignerError

    return (SolanaExceptionBase, RPCException, RPCNoResultException, UnconfirmedTxError,
            TransactionExpiredBlockheightExceededError, httpx.HTTPError, httpx.InvalidURL, httpx.StreamError,
            OSError, SerdeJSONError, BincodeError, CborError, SignerError, ValueError)


@contextmanager
def map_exceptions(message: str, error: type[FlairError] = ChainError, *, reason: bool = True) -> Iterator[None]:
    """The one place where the exceptions of Solana's Python clients become Flair's: inside the block, one of
    ``client_errors()`` is raised again as ``error(message)``, followed by ``": <what it said>"`` when ``reason``
    (at most 2,000 characters of it). Anything else, a ``FlairError`` or ``trio.Cancelled`` say, passes untouched.
    The original is dropped (``from None``): what it said is in the message, and its traceback is the client's.

        with map_exceptions(f"Solana RPC getBalance at {url} failed"):
            return await client.get_balance(key)
    """
    try:
        yield
    except client_errors() as exc:
        raise error(f"{message}: {_reason(exc)}" if reason else message) from None


def parse_address(text: object) -> Address:
    """``text`` as an ``Address`` if it is a Solana address (an Ed25519 public key in base58); ``InvalidInput``
    saying it is not otherwise."""
    if not isinstance(text, str):
        raise InvalidInput(f"{text!r} is not a Solana address")
    return Address(str(solana_key(text)))


def solana_key(address: str) -> Pubkey:
    """``address`` as solders' ``Pubkey``, for the builders of this package; ``InvalidInput`` if it is not one."""
    from solders.pubkey import Pubkey

    with map_exceptions(f"{address!r} is not a Solana address", InvalidInput, reason=False):
        return Pubkey.from_string(address)


def cluster_url(cluster: str) -> str:
    """The RPC URL of ``cluster`` (a name in ``CLUSTERS`` or an http(s) URL); ``InvalidInput`` otherwise."""
    if cluster in CLUSTERS:
        return CLUSTERS[cluster]
    parsed = urlparse(cluster)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidInput(f"chain.cluster is local, devnet, testnet, mainnet-beta or an http(s) RPC URL, not "
                           f"{cluster!r}")
    return cluster


def explorer_url(cluster: str, *, tx: str | None = None, address: str | None = None) -> str:
    """The Solana Explorer page of transaction ``tx`` or account ``address`` on ``cluster``."""
    if (tx is None) == (address is None):
        raise InvalidInput("an explorer link is for one transaction or one address")
    path = f"tx/{tx}" if tx is not None else f"address/{address}"
    if cluster == "mainnet-beta":
        query = ""
    elif cluster in ("devnet", "testnet"):
        query = f"?cluster={cluster}"
    else:
        query = f"?cluster=custom&customUrl={quote(cluster_url(cluster), safe='')}"
    return f"https://explorer.solana.com/{path}{query}"


@dataclass(frozen=True)
class Account:
    lamports: int
    owner: str
    data: bytes
    executable: bool


@dataclass(frozen=True)
class Status:
    slot: int
    confirmation: str  # processed, confirmed or finalized
    error: str | None  # why the transaction failed, None if it succeeded


@dataclass(frozen=True)
class TokenMove:
    """The raw amount of ``mint`` that ``owner`` held before and after a transaction, summed over the owner's
    token accounts of that mint the transaction names (0 where it names none on that side)."""

    mint: str
    owner: str
    before: int
    after: int


@dataclass(frozen=True)
class Landed:
    """A transaction as the cluster holds it."""

    slot: int
    error: str | None  # why it failed (``UNKNOWN_STATUS`` without a status), None if it succeeded
    memos: tuple[bytes, ...]  # the data of its SPL Memo instructions, in order
    token_moves: tuple[TokenMove, ...]  # sorted by mint, then owner; unchanged holdings included
    signers: tuple[str, ...] = ()  # the keys that signed it, fee payer first


class Chain:
    """A Solana cluster, reached over JSON-RPC."""

    def __init__(self, cluster: str, *, timeout: float = 10.0) -> None:
        from solana.rpc.async_api import AsyncClient

        self.cluster = cluster
        self.url = cluster_url(cluster)
        self._client = AsyncClient(self.url, timeout=timeout)

    async def close(self) -> None:
        await self._client.close()

    async def balance(self, address: str) -> int:
        return int((await self._call("getBalance", self._client.get_balance(solana_key(address)))).value)

    async def latest_blockhash(self) -> Any:
        """The cluster's latest blockhash (a ``solders.hash.Hash``, as transactions take it)."""
        return (await self._call("getLatestBlockhash", self._client.get_latest_blockhash())).value.blockhash

    async def rent(self, size: int) -> int:
        """Lamports that keep an account of ``size`` bytes rent-exempt."""
        return int((await self._call("getMinimumBalanceForRentExemption",
                                     self._client.get_minimum_balance_for_rent_exemption(size))).value)

    async def account(self, address: str) -> Account | None:
        value = (await self._call("getAccountInfo", self._client.get_account_info(solana_key(address)))).value
        if value is None:
            return None
        return Account(int(value.lamports), str(value.owner), bytes(value.data), bool(value.executable))

    async def send(self, transaction: bytes) -> str:
        """Send a signed, serialized transaction (preflight on); its signature. ``ChainError`` with the
        cluster's reason (and program logs) if preflight refuses it."""
        return str((await self._call("sendTransaction", self._client.send_raw_transaction(transaction))).value)

    async def status(self, signature: str) -> Status | None:
        """Where transaction ``signature`` stands, searching history; None if the cluster has not seen it."""
        value = (await self._call("getSignatureStatuses", self._client.get_signature_statuses(
            [_signature(signature)], search_transaction_history=True))).value[0]
        if value is None:
            return None
        confirmation = value.confirmation_status
        return Status(int(value.slot), str(confirmation).rsplit(".", 1)[-1].lower() if confirmation else "processed",
                      None if value.err is None else str(value.err))

    async def genesis_hash(self) -> str:
        """The cluster's genesis hash: what tells clusters apart, whatever URL reaches them."""
        return str((await self._call("getGenesisHash", self._client.get_genesis_hash())).value)

    async def transaction(self, signature: str) -> Landed | None:
        """Transaction ``signature`` as the cluster holds it (None if it holds none): its slot, error, memos, what
        it did to token holdings (from ``preTokenBalances`` and ``postTokenBalances``) and its signers."""
        value = (await self._call("getTransaction", self._client.get_transaction(
            _signature(signature), encoding="base64", max_supported_transaction_version=0))).value
        if value is None:
            return None
        return landed(value, f"getTransaction {signature} at {self.url}", signature=signature)

    async def memos(self, signature: str) -> list[bytes]:
        """The SPL Memo texts transaction ``signature`` carries, in order ([] if the cluster does not hold it)."""
        found = await self.transaction(signature)
        return [] if found is None else list(found.memos)

    async def holds(self, holder: str, mint: str) -> bool:
        """Whether ``holder``'s associated Token-2022 account of ``mint`` holds exactly its one token."""
        from .nft import holds_one
        from .token2022 import associated_token_address

        holder_key, mint_key = solana_key(holder), solana_key(mint)
        account = await self.account(str(associated_token_address(holder_key, mint_key)))
        if account is None:
            return False
        return holds_one(holder=holder_key, mint=mint_key, owner=solana_key(account.owner), data=account.data)

    async def airdrop(self, address: str, lamports: int) -> str:
        """Ask the cluster for ``lamports`` (``local`` and devnet only); the airdrop's signature."""
        if self.cluster != "devnet" and urlparse(self.url).hostname not in LOOPBACK:
            raise InvalidInput(f"airdrops are for local chains and devnet, not {self.cluster}")
        return str((await self._call("requestAirdrop", self._client.request_airdrop(solana_key(address),
                                                                                     lamports))).value)

    async def _call(self, method: str, pending: Any) -> Any:
        """Await solana-py's ``pending`` call of RPC ``method``; its failures are ``ChainError``, naming both."""
        with map_exceptions(f"Solana RPC {method} at {self.url} failed"):
            return await pending


def landed(value: Any, source: str, *, signature: str | None = None) -> Landed:
    """A ``Landed`` from solders' ``EncodedConfirmedTransactionWithStatusMeta`` (base64-encoded transaction), as
    ``source`` answered it for ``signature``; ``ChainError`` if the answer is malformed or another transaction."""
    from solders.pubkey import Pubkey
    from solders.transaction import VersionedTransaction

    tx, meta = value.transaction.transaction, value.transaction.meta
    if not isinstance(tx, VersionedTransaction):
        raise ChainError(f"{source} answered a transaction in another encoding than base64")
    if len(bytes(tx)) > PACKET_BYTES:
        raise ChainError(f"{source} answered a transaction of {len(bytes(tx))} bytes, larger than Solana allows")
    if signature is not None and (not tx.signatures or str(tx.signatures[0]) != signature):
        raise ChainError(f"{source} answered another transaction than {signature}")
    slot = value.slot
    if isinstance(slot, bool) or not isinstance(slot, int) or slot < 0:
        raise ChainError(f"{source} answered slot {slot!r}")
    memo_program = Pubkey.from_string(MEMO_PROGRAM)
    keys = tx.message.account_keys
    memos = tuple(bytes(ix.data) for ix in tx.message.instructions
                  if ix.program_id_index < len(keys) and keys[ix.program_id_index] == memo_program)
    signers = tuple(str(key) for key in keys[:tx.message.header.num_required_signatures])
    if meta is None:
        return Landed(slot, UNKNOWN_STATUS, memos, (), signers)
    return Landed(slot, None if meta.err is None else str(meta.err), memos,
                  token_moves(meta.pre_token_balances, meta.post_token_balances, source), signers)


def token_moves(pre: Sequence[Any] | None, post: Sequence[Any] | None, source: str) -> tuple[TokenMove, ...]:
    """Token holdings before and after, per (mint, owner), from an RPC's ``preTokenBalances`` and
    ``postTokenBalances`` (solders' ``UiTransactionTokenBalance``); ``ChainError`` for malformed entries."""
    before, after = _holdings(pre, "preTokenBalances", source), _holdings(post, "postTokenBalances", source)
    return tuple(TokenMove(mint, owner, before.get((mint, owner), 0), after.get((mint, owner), 0))
                 for mint, owner in sorted(before.keys() | after.keys()))


def _holdings(balances: Sequence[Any] | None, what: str, source: str) -> dict[tuple[str, str], int]:
    if balances is None:
        return {}
    if len(balances) > MAX_TOKEN_BALANCES:
        raise ChainError(f"{source} answered {len(balances)} {what}, more than a transaction has accounts")
    held: dict[tuple[str, str], int] = {}
    accounts: set[int] = set()
    for balance in balances:
        index, owner, amount = balance.account_index, balance.owner, balance.ui_token_amount.amount
        if index in accounts:
            raise ChainError(f"{source} answered {what} naming account {index} twice")
        accounts.add(index)
        if owner is None:
            raise ChainError(f"{source} answered {what} without the owner of account {index}: use an RPC node "
                             "that reports token account owners")
        if not isinstance(amount, str) or not _AMOUNT.fullmatch(amount) or int(amount) >= 1 << 64:
            raise ChainError(f"{source} answered {what} with amount {str(amount)[:30]!r} for account {index}, "
                             "not a u64 in decimal")
        key = (str(balance.mint), str(owner))
        held[key] = held.get(key, 0) + int(amount)
    return held


def _signature(text: str) -> Signature:
    from solders.signature import Signature

    with map_exceptions(f"{text!r} is not a transaction signature", InvalidInput, reason=False):
        return Signature.from_string(text)


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 2000 else text[:2000] + "..."
