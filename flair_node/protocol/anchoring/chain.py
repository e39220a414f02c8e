"""Flair's one door to a Solana cluster: solana-py's async RPC client behind a small interface of Flair's types.

``Chain(cluster)`` takes ``chain.cluster`` from the node's config: ``local`` (``flair-node localnet`` on its
default port), ``devnet``, ``testnet``, ``mainnet-beta``, or any ``http(s)://`` RPC URL. Every call returns
plain values (lamports, bytes, statuses) or raises ``ChainError`` saying which call failed and why, so the rest
of Flair never sees solana-py's response types. Airdrops are refused except on devnet and local chains (``local``
or any RPC URL on this machine's loopback, such as a localnet on another port).

solana-py's client is asyncio-flavoured but speaks HTTP through httpx, whose async client runs on trio too
(anyio), so the daemon awaits it directly. ``explorer_url`` gives the link a person opens to audit a
transaction or an account on the configured cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlparse

from ...core.errors import InvalidInput, RemoteError

LOCAL_URL = "http://127.0.0.1:8899"  # flair-node localnet's default
CLUSTERS = {"local": LOCAL_URL, "devnet": "https://api.devnet.solana.com",
            "testnet": "https://api.testnet.solana.com", "mainnet-beta": "https://api.mainnet-beta.solana.com"}
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MEMO_PROGRAM = "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr"


class ChainError(RemoteError):
    """A Solana RPC call failed: the cluster is unreachable, refused the call, or answered malformed."""


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
        return int((await self._call("getBalance", self._client.get_balance(_pubkey(address)))).value)

    async def latest_blockhash(self) -> Any:
        """The cluster's latest blockhash (a ``solders.hash.Hash``, as transactions take it)."""
        return (await self._call("getLatestBlockhash", self._client.get_latest_blockhash())).value.blockhash

    async def rent(self, size: int) -> int:
        """Lamports that keep an account of ``size`` bytes rent-exempt."""
        return int((await self._call("getMinimumBalanceForRentExemption",
                                     self._client.get_minimum_balance_for_rent_exemption(size))).value)

    async def account(self, address: str) -> Account | None:
        value = (await self._call("getAccountInfo", self._client.get_account_info(_pubkey(address)))).value
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

    async def memos(self, signature: str) -> list[bytes]:
        """The SPL Memo texts transaction ``signature`` carries, in order ([] if the cluster does not hold it)."""
        from solders.pubkey import Pubkey

        memo_program = Pubkey.from_string(MEMO_PROGRAM)
        value = (await self._call("getTransaction", self._client.get_transaction(
            _signature(signature), encoding="base64", max_supported_transaction_version=0))).value
        if value is None:
            return []
        message = value.transaction.transaction.message
        keys = message.account_keys
        return [bytes(ix.data) for ix in message.instructions
                if ix.program_id_index < len(keys) and keys[ix.program_id_index] == memo_program]

    async def airdrop(self, address: str, lamports: int) -> str:
        """Ask the cluster for ``lamports`` (``local`` and devnet only); the airdrop's signature."""
        if self.cluster != "devnet" and urlparse(self.url).hostname not in LOOPBACK:
            raise InvalidInput(f"airdrops are for local chains and devnet, not {self.cluster}")
        return str((await self._call("requestAirdrop", self._client.request_airdrop(_pubkey(address),
                                                                                     lamports))).value)

    async def _call(self, method: str, pending: Any) -> Any:
        try:
            return await pending
        except Exception as exc:  # httpx transport errors, RPC errors, malformed answers: all say the same
            raise ChainError(f"Solana RPC {method} at {self.url} failed: {_reason(exc)}") from None


def _pubkey(address: str) -> Any:
    from solders.pubkey import Pubkey

    try:
        return Pubkey.from_string(address)
    except ValueError:
        raise InvalidInput(f"{address!r} is not a Solana address") from None


def _signature(text: str) -> Any:
    from solders.signature import Signature

    try:
        return Signature.from_string(text)
    except ValueError:
        raise InvalidInput(f"{text!r} is not a transaction signature") from None


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 2000 else text[:2000] + "..."
