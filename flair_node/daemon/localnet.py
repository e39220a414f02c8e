"""``flair-node localnet``: a development Solana chain on 127.0.0.1, served as Solana JSON-RPC, backed by LiteSVM.

    chain = LocalChain(Path("~/.flair-localnet").expanduser())   # takes the folder's lock, replays its ledger
    server = LocalnetServer(chain, port=8899)
    url = await nursery.start(server.run)                       # "http://127.0.0.1:8899"

This is a development chain, not a validator: one node, no consensus, no gossip, no leader schedule. Every
transaction runs in solders' LiteSVM (the real SVM, with SPL Memo, SPL Token, Token-2022 and Associated Token
Account preloaded), lands in a slot of its own and is finalized at once. The slot moves only when a transaction
lands. The methods Flair uses answer with the same JSON shapes as an Agave validator, so solana-py's
``AsyncClient`` talks to it as it talks to devnet:

    getHealth  getVersion  getGenesisHash  getSlot  getBlockHeight  getLatestBlockhash  isBlockhashValid
    getBalance  getAccountInfo  getMinimumBalanceForRentExemption  getFeeForMessage  requestAirdrop
    sendTransaction  getSignatureStatuses  getTransaction

``sendTransaction`` simulates first (preflight) and answers a failing transaction with error -32002 and the
logs in ``data``, recording nothing. With ``skipPreflight`` a transaction that fails while executing lands with
``err`` set and its fee charged, as on a real cluster; one that cannot land at all (unknown blockhash, bad
signature, fee payer without funds) is refused with an error rather than silently dropped. A blockhash stays
valid for 150 slots, and ``getSignatureStatuses`` without ``searchTransactionHistory`` looks back 300 slots, as
a validator's status cache does. Airdrops are real transfers from a faucet account, so they have a transaction.

State lives in the folder given with ``--dir`` (default ``$FLAIR_HOME/localnet``, else ``~/.flair-localnet``):

    DIR/localnet.lock               held while a localnet serves the folder
    DIR/faucet.json                 the faucet's keypair (Solana CLI format, 0600)
    DIR/ledger/SLOT-SIGNATURE.json  one record per landed transaction: its wire bytes, its meta, and the state
                                    after it of every account it could write (null for a closed account)

A record is written atomically (temp file, fsync, rename) before the transaction is acknowledged, so a
transaction and its effects are on disk together or not at all. On start the ledger is replayed in slot order
into a fresh LiteSVM with ``set_account``: balances, mints and token accounts, and the answers of
``getTransaction`` and ``getSignatureStatuses`` for old signatures, survive a restart; the slot keeps counting.

Known differences from a real validator: priority fees are not charged (LiteSVM charges 5000 lamports per
signature only, and ``getFeeForMessage`` says the same); durable-nonce transactions are refused (only recent
blockhashes are accepted); ``jsonParsed`` answers carry base64 data for accounts and are refused for
transactions; ``base64+zstd`` is not offered; programs deployed by transactions are not kept across restarts.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any

import base58
import h11
import trio
from solders.account import Account
from solders.address_lookup_table_account import AddressLookupTable
from solders.hash import Hash
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message, MessageV0, from_bytes_versioned
from solders.pubkey import Pubkey
from solders.rpc.responses import RpcSimulateTransactionResult
from solders.signature import Signature
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction, VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata, TransactionMetadata

from ..api.errors import InternalError, InvalidRequest, MethodNotFound, ParseError
from ..core.errors import FlairError, InvalidInput
from ..core.identity import Identity
from ..storage.atomic import atomic_write, remove_stale_temp_files
from ..storage.keyfile import read_keypair, write_keypair

log = logging.getLogger(__name__)

SOLANA_CORE_VERSION = "2.2.0"  # the Agave runtime crates solders 0.26's LiteSVM is built from
FEATURE_SET = 0
LAMPORTS_PER_SIGNATURE = 5000
MAX_PROCESSING_AGE = 150  # slots a blockhash stays valid
STATUS_CACHE_SLOTS = 300  # slots getSignatureStatuses looks back without searchTransactionHistory
MAX_SIGNATURE_STATUSES = 256
PACKET_DATA_SIZE = 1232  # largest transaction on the wire
MAX_BASE58_ACCOUNT_BYTES = 128
FAUCET_LAMPORTS = 500_000_000 * 10**9
MAX_BODY = 1 << 20
MAX_BATCH = 1000
REQUEST_TIMEOUT = 30.0  # for the next request on a connection to arrive in full, and for its answer to be taken
RECEIVE_SIZE = 64 * 1024
TOKEN_PROGRAMS = {"TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA", "TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb"}
PRECOMPILES = {"Ed25519SigVerify111111111111111111111111111", "KeccakSecp256k1Verify11111111111111111111111",
               "Secp256r1SigVerify1111111111111111111111111"}
SYSTEM_PROGRAM = Pubkey.from_string("11111111111111111111111111111111")
SYSVAR_OWNER = Pubkey.from_string("Sysvar1111111111111111111111111111111111111")
RECORD_VERSION = 1


class LocalnetRpcError(FlairError):
    """A Solana-specific JSON-RPC error (-32002 preflight failure, -32003, -32015, -32016), with structured data."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.rpc_data = data


@dataclass(frozen=True)
class TxStatus:
    slot: int
    err: Any  # the TransactionError as Agave writes it in JSON; None for a successful transaction


@dataclass(frozen=True)
class _Keys:
    """A message's accounts: the static keys, then those loaded from lookup tables (writable, then readonly)."""

    static: list[Pubkey]
    loaded_writable: list[Pubkey]
    loaded_readonly: list[Pubkey]
    writable: list[bool]

    @property
    def all(self) -> list[Pubkey]:
        return self.static + self.loaded_writable + self.loaded_readonly


class LocalChain:
    """The chain: a LiteSVM, the ledger of landed transactions in ``path``, a faucet and the recent blockhashes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_file = _lock_folder(path)
        try:
            self._open()
        except BaseException:
            self._lock_file.close()
            raise

    def _open(self) -> None:
        remove_stale_temp_files(self.path)
        self.ledger = self.path / "ledger"
        self.ledger.mkdir(exist_ok=True)
        faucet_file = self.path / "faucet.json"
        if not faucet_file.exists():
            write_keypair(faucet_file, Identity.generate())
        self.faucet = Keypair.from_bytes(read_keypair(faucet_file).keypair_bytes())
        self.genesis_hash = str(Hash(hashlib.sha256(b"flair-localnet:" + bytes(self.faucet.pubkey())).digest()))
        self.svm = LiteSVM().with_blockhash_check(False)  # recent blockhashes are checked here, 150 slots deep
        self.statuses: dict[str, TxStatus] = {}
        self.slot = 0
        for name in sorted(os.listdir(self.ledger)):
            if not name.startswith(".") and name.endswith(".json"):
                self._replay(self.ledger / name)
        if self.svm.get_account(self.faucet.pubkey()) is None:
            self.svm.set_account(self.faucet.pubkey(), Account(FAUCET_LAMPORTS, b"", SYSTEM_PROGRAM))
        self._recent: dict[str, int] = {str(self.svm.latest_blockhash()): 0}  # blockhash -> slot, oldest first
        for slot in range(1, self.slot + 1):  # LiteSVM's blockhashes follow from the genesis one, one per slot
            self._next_blockhash(slot)
        self._unix_time = int(time.time())
        self._set_clock(self.slot)
        log.info("localnet state in %s: slot %d, %d transactions", self.path, self.slot, len(self.statuses))

    def _replay(self, path: Path) -> None:
        try:
            record = json.loads(path.read_bytes())
            accounts = {Pubkey.from_string(k): _account_from_json(v) for k, v in record["accounts"].items()}
            status = TxStatus(int(record["slot"]), record["meta"]["err"])
            signature = str(Signature.from_string(record["signature"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FlairError(f"ledger record {path} is unreadable ({exc}): move it out of the way to start without "
                             "it", path=str(path)) from None
        for key, account in accounts.items():
            self.svm.set_account(key, account)
        self.statuses[signature] = status
        self.slot = max(self.slot, status.slot)

    def close(self) -> None:
        self._lock_file.close()

    def __enter__(self) -> LocalChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading

    def latest_blockhash(self) -> str:
        return next(reversed(self._recent))

    def is_recent(self, blockhash: str) -> bool:
        return blockhash in self._recent

    def account(self, key: Pubkey) -> Account | None:
        account = self.svm.get_account(key)
        return None if account is None or account.lamports == 0 else account

    def status(self, signature: str, *, search_history: bool) -> TxStatus | None:
        status = self.statuses.get(signature)
        if status is None or (not search_history and status.slot < self.slot - STATUS_CACHE_SLOTS):
            return None
        return status

    def read_record(self, signature: str) -> dict[str, Any] | None:
        status = self.statuses.get(signature)
        if status is None:
            return None
        record: dict[str, Any] = json.loads((self.ledger / f"{status.slot:012d}-{signature}.json").read_bytes())
        return record

    def airdrop_transaction(self, to: Pubkey, lamports: int) -> VersionedTransaction:
        """A transfer of ``lamports`` from the faucet to ``to``, signed by the faucet, on the latest blockhash."""
        message = Message([transfer(TransferParams(from_pubkey=self.faucet.pubkey(), to_pubkey=to,
                                                   lamports=lamports))], self.faucet.pubkey())
        legacy = Transaction([self.faucet], message, Hash.from_string(self.latest_blockhash()))
        return VersionedTransaction.from_legacy(legacy)

    # -- landing transactions

    def execute(self, tx: VersionedTransaction, *, preflight: bool) -> dict[str, Any] | None:
        """Run ``tx`` and return its ledger record, to be persisted with ``persist`` before it is acknowledged.

        None when ``tx`` already landed and ``preflight`` is off (a validator drops the duplicate). Raises
        ``LocalnetRpcError`` for a transaction refused by preflight or unable to land.
        """
        signature = str(tx.signatures[0])
        if signature in self.statuses:
            if not preflight:
                return None
            raise _refusal("AlreadyProcessed", [], 0)
        if not self.is_recent(str(tx.message.recent_blockhash)):
            raise _refusal("BlockhashNotFound", [], 0)
        slot = self.slot + 1
        self._set_clock(slot)
        keys = self._keys(tx.message)
        if preflight:
            simulated = self.svm.simulate_transaction(tx)
            if isinstance(simulated, FailedTransactionMetadata):
                raise _refusal(_error_json(simulated.err()), simulated.meta().logs(),
                               simulated.meta().compute_units_consumed())
        pre = [self.svm.get_account(key) for key in keys.all]
        result = self.svm.send_transaction(tx)
        if isinstance(result, FailedTransactionMetadata):
            if self.svm.get_transaction(tx.signatures[0]) is None:  # it never landed: nothing changed
                raise _refusal(_error_json(result.err()), result.meta().logs(), result.meta().compute_units_consumed())
            err, meta = _error_json(result.err()), result.meta()
        else:
            err, meta = None, result
        post = [self.svm.get_account(key) for key in keys.all]
        self.slot = slot
        self._next_blockhash(slot)
        self.statuses[signature] = TxStatus(slot, err)
        return {
            "version": RECORD_VERSION, "signature": signature, "slot": slot, "blockTime": self._unix_time,
            "transaction": base64.b64encode(bytes(tx)).decode(),
            "meta": _meta(tx, keys, err, meta, pre, post, self.svm),
            "accounts": {str(key): _account_json(account) for key, account, writable
                         in zip(keys.all, post, keys.writable, strict=True) if writable and _kept(account)},
        }

    def persist(self, record: dict[str, Any]) -> None:
        path = self.ledger / f"{record['slot']:012d}-{record['signature']}.json"
        atomic_write(path, json.dumps(record, separators=(",", ":")).encode())

    def _keys(self, message: Message | MessageV0) -> _Keys:
        static = list(message.account_keys)
        header = message.header
        signed, readonly_signed = header.num_required_signatures, header.num_readonly_signed_accounts
        last_writable_unsigned = len(static) - header.num_readonly_unsigned_accounts
        writable = [i < signed - readonly_signed if i < signed else i < last_writable_unsigned
                    for i in range(len(static))]
        loaded_w: list[Pubkey] = []
        loaded_r: list[Pubkey] = []
        if isinstance(message, MessageV0):
            try:
                for lookup in message.address_table_lookups:
                    table = self.svm.get_account(lookup.account_key)
                    addresses = AddressLookupTable.deserialize(bytes(table.data)).addresses if table else []
                    loaded_w += [addresses[i] for i in lookup.writable_indexes]
                    loaded_r += [addresses[i] for i in lookup.readonly_indexes]
            except (IndexError, ValueError):  # LiteSVM refuses the transaction with the precise error
                loaded_w, loaded_r = [], []
        return _Keys(static, loaded_w, loaded_r, writable + [True] * len(loaded_w) + [False] * len(loaded_r))

    def _set_clock(self, slot: int) -> None:
        self._unix_time = max(self._unix_time, int(time.time()))
        clock = self.svm.get_clock()
        clock.slot = slot
        clock.epoch = self.svm.get_epoch_schedule().get_epoch(slot)
        clock.unix_timestamp = self._unix_time
        self.svm.set_clock(clock)

    def _next_blockhash(self, slot: int) -> None:
        self.svm.expire_blockhash()
        self._recent[str(self.svm.latest_blockhash())] = slot
        while len(self._recent) > MAX_PROCESSING_AGE + 1:
            del self._recent[next(iter(self._recent))]


# -- the JSON shapes of Agave's RPC


def _error_json(err: Any) -> Any:
    """A solders TransactionError as Agave writes it in JSON ("BlockhashNotFound", {"InstructionError": [0, ...]})."""
    return json.loads(RpcSimulateTransactionResult(err=err).to_json())["err"]


_ERROR_TEXT = {
    "AccountNotFound": "Attempt to debit an account but found no record of a prior credit.",
    "AlreadyProcessed": "This transaction has already been processed",
    "BlockhashNotFound": "Blockhash not found",
    "InsufficientFundsForFee": "Insufficient funds for fee",
    "InvalidAccountForFee": "This account may not be used to pay transaction fees",
    "ProgramAccountNotFound": "Attempt to load a program that does not exist",
    "InsufficientFunds": "insufficient funds for instruction",
    "InvalidAccountData": "invalid account data for instruction",
    "InvalidInstructionData": "invalid instruction data",
    "MissingRequiredSignature": "missing required signature for instruction",
    "AccountAlreadyInitialized": "instruction requires an uninitialized account",
    "UninitializedAccount": "instruction requires an initialized account",
    "IncorrectProgramId": "incorrect program id for instruction",
}


def _error_text(err: Any) -> str:
    """Agave's wording for a TransactionError in JSON form, for the common ones; the variant's name otherwise."""
    if isinstance(err, str):
        return _ERROR_TEXT.get(err, err)
    if isinstance(err, dict) and "InstructionError" in err:
        index, inner = err["InstructionError"]
        if isinstance(inner, dict) and "Custom" in inner:
            return f"Error processing Instruction {index}: custom program error: {inner['Custom']:#x}"
        return f"Error processing Instruction {index}: {_error_text(inner)}"
    if isinstance(err, dict) and "InsufficientFundsForRent" in err:
        return (f"Transaction results in an account ({err['InsufficientFundsForRent']['account_index']}) with "
                "insufficient funds for rent")
    return json.dumps(err)


def _refusal(err: Any, logs: list[str], units: int) -> LocalnetRpcError:
    """The error sendTransaction answers for a transaction that did not land, as Agave's preflight does."""
    if err == "SignatureFailure":
        return LocalnetRpcError(-32003, "Transaction signature verification failure")
    if err == "SanitizeFailure":
        return LocalnetRpcError(-32602, "invalid transaction: Transaction failed to sanitize accounts offsets "
                                        "correctly")
    result = {"err": err, "logs": logs, "accounts": None, "unitsConsumed": units, "returnData": None,
              "innerInstructions": None, "replacementBlockhash": None}
    return LocalnetRpcError(-32002, f"Transaction simulation failed: {_error_text(err)}", result)


def _fee(message: Message | MessageV0) -> int:
    """The fee LiteSVM charges: 5000 lamports a signature, counting those checked by precompile instructions."""
    signatures = message.header.num_required_signatures
    for ix in message.instructions:
        if str(message.account_keys[ix.program_id_index]) in PRECOMPILES and ix.data:
            signatures += ix.data[0]
    return signatures * LAMPORTS_PER_SIGNATURE


def _ui_instruction(ix: Any, stack_height: int | None) -> dict[str, Any]:
    return {"programIdIndex": ix.program_id_index, "accounts": list(ix.accounts),
            "data": base58.b58encode(bytes(ix.data)).decode(), "stackHeight": stack_height}


def _transaction_json(tx: VersionedTransaction) -> dict[str, Any]:
    message = tx.message
    header = message.header
    ui: dict[str, Any] = {
        "accountKeys": [str(key) for key in message.account_keys],
        "header": {"numRequiredSignatures": header.num_required_signatures,
                   "numReadonlySignedAccounts": header.num_readonly_signed_accounts,
                   "numReadonlyUnsignedAccounts": header.num_readonly_unsigned_accounts},
        "recentBlockhash": str(message.recent_blockhash),
        "instructions": [_ui_instruction(ix, None) for ix in message.instructions],
    }
    if isinstance(message, MessageV0):
        ui["addressTableLookups"] = [{"accountKey": str(lookup.account_key),
                                      "writableIndexes": list(lookup.writable_indexes),
                                      "readonlyIndexes": list(lookup.readonly_indexes)}
                                     for lookup in message.address_table_lookups]
    return {"signatures": [str(s) for s in tx.signatures], "message": ui}


def _meta(tx: VersionedTransaction, keys: _Keys, err: Any, meta: TransactionMetadata, pre: list[Account | None],
          post: list[Account | None], svm: LiteSVM) -> dict[str, Any]:
    inner = [{"index": index, "instructions": [_ui_instruction(i.instruction(), json.loads(i.to_json())["stackHeight"])
                                               for i in group]}
             for index, group in enumerate(meta.inner_instructions()) if group]
    ui: dict[str, Any] = {
        "err": err, "status": {"Ok": None} if err is None else {"Err": err}, "fee": _fee(tx.message),
        "preBalances": [a.lamports if a else 0 for a in pre], "postBalances": [a.lamports if a else 0 for a in post],
        "innerInstructions": inner, "logMessages": meta.logs(),
        "preTokenBalances": _token_balances(keys.all, pre, svm),
        "postTokenBalances": _token_balances(keys.all, post, svm),
        "rewards": [],
        "loadedAddresses": {"writable": [str(k) for k in keys.loaded_writable],
                            "readonly": [str(k) for k in keys.loaded_readonly]},
        "computeUnitsConsumed": meta.compute_units_consumed(),
    }
    return_data = meta.return_data()  # type: ignore[attr-defined]  # there at run time, missing from the stubs
    if return_data.data:
        ui["returnData"] = {"programId": str(return_data.program_id),
                            "data": [base64.b64encode(return_data.data).decode(), "base64"]}
    return ui


def _token_balances(keys: list[Pubkey], accounts: list[Account | None], svm: LiteSVM) -> list[dict[str, Any]]:
    """preTokenBalances / postTokenBalances: the SPL Token and Token-2022 accounts among ``keys``."""
    balances = []
    by_key = dict(zip(keys, accounts, strict=True))
    for index, account in enumerate(accounts):
        if account is None or str(account.owner) not in TOKEN_PROGRAMS:
            continue
        data = bytes(account.data)
        is_token_account = len(data) == 165 or (len(data) > 165 and data[165] == 2)  # 2: AccountType::Account
        if not is_token_account or data[108] == 0:  # 0: AccountState::Uninitialized
            continue
        mint = Pubkey(data[0:32])
        mint_account = by_key.get(mint) or svm.get_account(mint)
        if mint_account is None or len(mint_account.data) < 82:
            continue
        amount, decimals = int.from_bytes(data[64:72], "little"), bytes(mint_account.data)[44]
        digits = str(amount).rjust(decimals + 1, "0")
        whole, fraction = (digits[:-decimals], digits[-decimals:].rstrip("0")) if decimals else (digits, "")
        balances.append({
            "accountIndex": index, "mint": str(mint), "owner": str(Pubkey(data[32:64])),
            "programId": str(account.owner),
            "uiTokenAmount": {"uiAmount": amount / 10**decimals, "decimals": decimals, "amount": str(amount),
                              "uiAmountString": f"{whole}.{fraction}" if fraction else whole},
        })
    return balances


def _kept(account: Account | None) -> bool:
    """Whether a ledger record keeps this written account: not programs (preloaded) nor sysvars (set on start)."""
    return account is None or not (account.executable or account.owner == SYSVAR_OWNER)


def _account_json(account: Account | None) -> dict[str, Any] | None:
    if account is None or account.lamports == 0:
        return None
    return {"lamports": account.lamports, "owner": str(account.owner),
            "data": base64.b64encode(bytes(account.data)).decode(), "executable": account.executable,
            "rentEpoch": account.rent_epoch}


def _account_from_json(value: dict[str, Any] | None) -> Account:
    if value is None:  # closed by the transaction: an empty account is what LiteSVM leaves too
        return Account(0, b"", SYSTEM_PROGRAM)
    return Account(int(value["lamports"]), base64.b64decode(value["data"], validate=True),
                   Pubkey.from_string(value["owner"]), bool(value["executable"]), int(value["rentEpoch"]))


def _lock_folder(path: Path) -> IO[str]:
    lock_file = open(path / "localnet.lock", "a")  # noqa: SIM115 - held for the chain's lifetime
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise FlairError(f"another flair-node localnet is already serving {path}: stop it, or pass another --dir",
                         path=str(path)) from None
    return lock_file


def default_state_dir() -> Path:
    home = os.environ.get("FLAIR_HOME")
    return Path(home) / "localnet" if home else Path.home() / ".flair-localnet"


# -- JSON-RPC over HTTP

Handler = Callable[[list[Any]], Awaitable[Any]]


class LocalnetServer:
    """Serves ``chain`` as Solana JSON-RPC 2.0 (single and batch requests, ``POST /``) until cancelled."""

    def __init__(self, chain: LocalChain, *, host: str = "127.0.0.1", port: int = 0, max_body: int = MAX_BODY) -> None:
        if host not in ("127.0.0.1", "::1"):
            raise InvalidInput(f"localnet host {host} is not a loopback address: it serves only 127.0.0.1 or ::1",
                               host=host)
        self.chain = chain
        self.host = host
        self.port = port
        self.max_body = max_body
        #: ``http://127.0.0.1:PORT`` once ``run`` is listening.
        self.url: str | None = None
        self._landing = trio.Lock()  # transactions land one at a time, each persisted before the next
        self._methods: dict[str, Handler] = {
            "getHealth": _constant("ok"), "getGenesisHash": _constant(chain.genesis_hash),
            "getVersion": _constant({"solana-core": SOLANA_CORE_VERSION, "feature-set": FEATURE_SET}),
            "getSlot": self._get_slot, "getBlockHeight": self._get_slot,
            "getLatestBlockhash": self._get_latest_blockhash, "isBlockhashValid": self._is_blockhash_valid,
            "getBalance": self._get_balance, "getAccountInfo": self._get_account_info,
            "getMinimumBalanceForRentExemption": self._get_minimum_balance_for_rent_exemption,
            "getFeeForMessage": self._get_fee_for_message, "requestAirdrop": self._request_airdrop,
            "sendTransaction": self._send_transaction, "getSignatureStatuses": self._get_signature_statuses,
            "getTransaction": self._get_transaction,
        }

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, report the URL through ``task_status.started``, and serve until cancelled."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        try:
            port = listeners[0].socket.getsockname()[1]
            self.url = f"http://[{self.host}]:{port}" if ":" in self.host else f"http://{self.host}:{port}"
            log.info("localnet JSON-RPC listening on %s", self.url)
            task_status.started(self.url)
            await trio.serve_listeners(self._serve_connection, listeners)
        finally:
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        try:
            await _Connection(self, stream).serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, h11.ProtocolError) as exc:
            log.debug("localnet connection dropped: %r", exc)
        except Exception:  # one connection's failure must not end the server
            log.exception("localnet connection failed")
        finally:
            await trio.aclose_forcefully(stream)

    async def answer(self, request: h11.Request, body: bytes) -> tuple[int, bytes, str]:
        """HTTP status, body and content type answering one complete request."""
        if request.method == b"GET" and request.target == b"/health":
            return 200, b"ok", "text/plain"
        if request.target != b"/":
            return 404, _error_body(InvalidRequest("Invalid request: POST JSON-RPC 2.0 requests to /")), \
                "application/json"
        if request.method != b"POST":
            return 405, _error_body(InvalidRequest("Invalid request: use POST")), "application/json"
        content_type = _header(request, b"content-type")
        if content_type is not None and content_type.split(b";")[0].strip().lower() != b"application/json":
            return 415, _error_body(InvalidRequest("Invalid request: send Content-Type application/json")), \
                "application/json"
        return 200, await self.dispatch(body) or b"", "application/json"

    async def dispatch(self, body: bytes) -> bytes | None:
        """The encoded JSON-RPC answer to a request body; None when it held only notifications."""
        try:
            message = json.loads(body, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return _error_body(ParseError("Parse error"))
        if not isinstance(message, list):
            reply = await self._call(message)
            return None if reply is None else json.dumps(reply).encode()
        if not message or len(message) > MAX_BATCH:
            return _error_body(InvalidRequest(f"Invalid request: a batch holds 1 to {MAX_BATCH} requests"))
        replies = [reply for reply in [await self._call(m) for m in message] if reply is not None]
        return json.dumps(replies).encode() if replies else None

    async def _call(self, message: Any) -> dict[str, Any] | None:
        """The answer to one request object; None for a notification."""
        if not isinstance(message, dict):
            return _error_reply(None, InvalidRequest("Invalid request: not a JSON object"))
        req_id = message.get("id")
        if req_id is not None and (isinstance(req_id, bool) or not isinstance(req_id, str | int | float)):
            return _error_reply(None, InvalidRequest("Invalid request: id must be a string, a number or null"))
        name = message.get("method")
        if message.get("jsonrpc") != "2.0" or not isinstance(name, str):
            return _error_reply(req_id, InvalidRequest('Invalid request: needs "jsonrpc": "2.0" and a method'))
        notification = "id" not in message
        try:
            handler = self._methods.get(name)
            if handler is None:
                raise MethodNotFound("Method not found", method=name)
            params = message.get("params")
            if params is None:
                params = []
            if not isinstance(params, list):
                raise InvalidInput("Invalid params: Solana methods take their parameters as an array")
            result = await handler(params)
        except FlairError as exc:
            log.debug("%s failed: %s", name, exc)
            return None if notification else _error_reply(req_id, exc)
        except Exception:
            log.exception("internal error in %s", name)
            return None if notification else _error_reply(req_id, InternalError("Internal error", method=name))
        return None if notification else {"jsonrpc": "2.0", "result": result, "id": req_id}

    # -- the methods; each takes the params array

    def _context(self, value: Any) -> dict[str, Any]:
        return {"context": {"slot": self.chain.slot, "apiVersion": SOLANA_CORE_VERSION}, "value": value}

    def _config(self, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise InvalidInput("Invalid params: the configuration must be an object")
        if value.get("commitment", "finalized") not in ("processed", "confirmed", "finalized"):
            raise InvalidInput(f"Invalid params: unknown commitment {value['commitment']!r}")
        min_slot = value.get("minContextSlot")
        if min_slot is not None and _uint(min_slot, "minContextSlot") > self.chain.slot:
            raise LocalnetRpcError(-32016, "Minimum context slot has not been reached",
                                   {"contextSlot": self.chain.slot})
        return value

    async def _get_slot(self, params: list[Any]) -> int:
        (config,) = _args(params, 0, 1)
        self._config(config)
        return self.chain.slot  # one block per slot: the block height is the slot

    async def _get_latest_blockhash(self, params: list[Any]) -> dict[str, Any]:
        (config,) = _args(params, 0, 1)
        self._config(config)
        return self._context({"blockhash": self.chain.latest_blockhash(),
                              "lastValidBlockHeight": self.chain.slot + MAX_PROCESSING_AGE})

    async def _is_blockhash_valid(self, params: list[Any]) -> dict[str, Any]:
        blockhash, config = _args(params, 1, 1)
        self._config(config)
        return self._context(self.chain.is_recent(str(_parse(Hash, blockhash, "blockhash"))))

    async def _get_balance(self, params: list[Any]) -> dict[str, Any]:
        key, config = _args(params, 1, 1)
        self._config(config)
        account = self.chain.account(_parse(Pubkey, key, "pubkey"))
        return self._context(account.lamports if account else 0)

    async def _get_account_info(self, params: list[Any]) -> dict[str, Any]:
        key, config = _args(params, 1, 1)
        config = self._config(config)
        account = self.chain.account(_parse(Pubkey, key, "pubkey"))
        return self._context(None if account is None else _ui_account(account, config))

    async def _get_minimum_balance_for_rent_exemption(self, params: list[Any]) -> int:
        length, config = _args(params, 1, 1)
        self._config(config)
        return self.chain.svm.minimum_balance_for_rent_exemption(_uint(length, "data length", 10 << 20))

    async def _get_fee_for_message(self, params: list[Any]) -> dict[str, Any]:
        encoded, config = _args(params, 1, 1)
        self._config(config)
        try:
            message = from_bytes_versioned(_decode(encoded, "base64", "message"))
        except ValueError as exc:
            raise InvalidInput(f"Invalid params: not a message: {exc}") from None
        fee = _fee(message) if self.chain.is_recent(str(message.recent_blockhash)) else None
        return self._context(fee)

    async def _request_airdrop(self, params: list[Any]) -> str:
        key, lamports, config = _args(params, 2, 1)
        self._config(config)
        to, amount = _parse(Pubkey, key, "pubkey"), _uint(lamports, "lamports", FAUCET_LAMPORTS // 2)
        async with self._landing:
            tx = self.chain.airdrop_transaction(to, amount)
            return await self._land(tx, preflight=True)

    async def _send_transaction(self, params: list[Any]) -> str:
        encoded, config = _args(params, 1, 1)
        config = self._config(config)
        raw = _decode(encoded, config.get("encoding", "base58"), "transaction", PACKET_DATA_SIZE)
        try:
            tx = VersionedTransaction.from_bytes(raw)
        except ValueError as exc:
            raise InvalidInput(f"failed to deserialize VersionedTransaction: {exc}") from None
        if bytes(tx) != raw:
            raise InvalidInput("failed to deserialize VersionedTransaction: trailing bytes")
        if not tx.signatures:
            raise _refusal("SanitizeFailure", [], 0)
        skip = config.get("skipPreflight", False)
        if not isinstance(skip, bool):
            raise InvalidInput("Invalid params: skipPreflight must be true or false")
        async with self._landing:
            return await self._land(tx, preflight=not skip)

    async def _land(self, tx: VersionedTransaction, *, preflight: bool) -> str:
        with trio.CancelScope(shield=True):  # once it ran, it is written down: shutdown waits for that
            record = self.chain.execute(tx, preflight=preflight)
            if record is not None:
                await trio.to_thread.run_sync(self.chain.persist, record)
        return str(tx.signatures[0])

    async def _get_signature_statuses(self, params: list[Any]) -> dict[str, Any]:
        signatures, config = _args(params, 1, 1)
        search = self._config(config).get("searchTransactionHistory", False)
        if not isinstance(signatures, list) or not isinstance(search, bool):
            raise InvalidInput("Invalid params: expected an array of signatures and searchTransactionHistory true "
                               "or false")
        if len(signatures) > MAX_SIGNATURE_STATUSES:
            raise InvalidInput(f"Too many inputs provided; max {MAX_SIGNATURE_STATUSES}")
        value = []
        for signature in signatures:
            status = self.chain.status(str(_parse(Signature, signature, "signature")), search_history=search)
            value.append(None if status is None else {
                "slot": status.slot, "confirmations": None, "err": status.err,
                "status": {"Ok": None} if status.err is None else {"Err": status.err},
                "confirmationStatus": "finalized"})
        return self._context(value)

    async def _get_transaction(self, params: list[Any]) -> dict[str, Any] | None:
        signature, config = _args(params, 1, 1)
        config = self._config({"encoding": config} if isinstance(config, str) else config)
        encoding, max_version = config.get("encoding", "json"), config.get("maxSupportedTransactionVersion")
        if config.get("commitment") == "processed":
            raise InvalidInput("Method does not support commitment below `confirmed`")
        if max_version is not None and _uint(max_version, "maxSupportedTransactionVersion") != 0:
            raise InvalidInput(f"Invalid params: transaction version {max_version} is not supported")
        if encoding not in ("json", "base64", "base58", "binary"):
            raise InvalidInput(f"Invalid params: encoding {encoding!r} is not supported by flair-node localnet: "
                               "use json, base64 or base58")
        record = await trio.to_thread.run_sync(self.chain.read_record, str(_parse(Signature, signature, "signature")))
        if record is None:
            return None
        raw = base64.b64decode(record["transaction"])
        tx = VersionedTransaction.from_bytes(raw)
        version = 0 if isinstance(tx.message, MessageV0) else "legacy"
        if version == 0 and max_version is None:
            raise LocalnetRpcError(-32015, "Transaction version (0) is not supported by the requesting client. "
                                           "Please try the request again with the following configuration "
                                           'parameter: "maxSupportedTransactionVersion": 0')
        meta = record["meta"]
        if max_version is None:
            meta.pop("loadedAddresses", None)
        result = {"slot": record["slot"], "transaction": _encoded_transaction(tx, raw, encoding), "meta": meta,
                  "blockTime": record["blockTime"]}
        if max_version is not None:
            result["version"] = version
        return result


def _encoded_transaction(tx: VersionedTransaction, raw: bytes, encoding: str) -> Any:
    if encoding == "json":
        return _transaction_json(tx)
    if encoding == "base64":
        return [base64.b64encode(raw).decode(), "base64"]
    text = base58.b58encode(raw).decode()
    return text if encoding == "binary" else [text, "base58"]


def _ui_account(account: Account, config: dict[str, Any]) -> dict[str, Any]:
    data = bytes(account.data)
    data_slice = config.get("dataSlice")
    if data_slice is not None:
        if not isinstance(data_slice, dict):
            raise InvalidInput("Invalid params: dataSlice must be an object with offset and length")
        offset = _uint(data_slice.get("offset"), "dataSlice.offset")
        data = data[offset:offset + _uint(data_slice.get("length"), "dataSlice.length")]
    encoding = config.get("encoding", "binary")
    encoded: Any
    if encoding in ("base64", "jsonParsed"):  # jsonParsed falls back to base64, as Agave does for unknown owners
        encoded = [base64.b64encode(data).decode(), "base64"]
    elif encoding in ("base58", "binary"):
        if len(data) > MAX_BASE58_ACCOUNT_BYTES:
            raise InvalidRequest("Encoded binary (base 58) data should be less than 128 bytes, please use Base64 "
                                 "encoding.")
        text = base58.b58encode(data).decode()
        encoded = [text, "base58"] if encoding == "base58" else text
    else:
        raise InvalidInput(f"Invalid params: encoding {encoding!r} is not supported by flair-node localnet: use "
                           "base64, base58 or jsonParsed")
    return {"data": encoded, "executable": account.executable, "lamports": account.lamports,
            "owner": str(account.owner), "rentEpoch": account.rent_epoch, "space": len(account.data)}


def _constant(value: Any) -> Handler:
    async def handler(params: list[Any]) -> Any:
        _args(params, 0)
        return value

    return handler


def _args(params: list[Any], required: int, optional: int = 0) -> list[Any]:
    """``params`` padded with None to ``required + optional`` items, or -32602 for too few or too many."""
    if not required <= len(params) <= required + optional:
        wanted = f"{required}" if not optional else f"{required} to {required + optional}"
        raise InvalidInput(f"Invalid params: expected {wanted} parameters, got {len(params)}")
    return params + [None] * (required + optional - len(params))


def _parse(kind: Any, value: Any, what: str) -> Any:
    if not isinstance(value, str):
        raise InvalidInput(f"Invalid param: {what} must be a base-58 string")
    try:
        return kind.from_string(value)
    except ValueError:
        raise InvalidInput(f"Invalid param: {what} {value[:100]!r} is not valid base-58 of the right length") \
            from None


def _uint(value: Any, what: str, maximum: int = 2**64 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise InvalidInput(f"Invalid params: {what} must be an integer from 0 to {maximum}")
    return value


def _decode(value: Any, encoding: Any, what: str, limit: int | None = None) -> bytes:
    """Base-58 or base-64 text to bytes, refusing anything longer than ``limit`` bytes once decoded."""
    if not isinstance(value, str):
        raise InvalidInput(f"Invalid params: the {what} must be a string")
    if limit is not None and len(value) > (limit * 138 // 100 + 1 if encoding == "base58" else 4 * ((limit + 2) // 3)):
        raise InvalidInput(f"{encoding} encoded {what} too large: {len(value)} characters (max {limit} bytes)")
    try:
        if encoding == "base64":
            raw = base64.b64decode(value, validate=True)
        elif encoding == "base58":
            raw = base58.b58decode(value)
        else:
            raise InvalidInput(f"Invalid params: unsupported encoding {encoding!r}: use base58 or base64")
    except (binascii.Error, ValueError):
        raise InvalidInput(f"invalid {encoding} encoding of the {what}") from None
    if limit is not None and len(raw) > limit:
        raise InvalidInput(f"{encoding} encoded {what} too large: {len(raw)} bytes (max: {limit})")
    return raw


def _error_reply(req_id: Any, error: FlairError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    data = getattr(error, "rpc_data", None)
    if data is not None:
        body["data"] = data
    return {"jsonrpc": "2.0", "error": body, "id": req_id}


def _error_body(error: FlairError) -> bytes:
    return json.dumps(_error_reply(None, error)).encode()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _header(request: h11.Request, name: bytes) -> bytes | None:
    for key, value in request.headers:  # h11 lower-cases header names
        if key == name:
            return bytes(value)
    return None


class _TooLarge(Exception):
    pass


class _Connection:
    """One HTTP/1.1 connection: requests one after another (keep-alive) until the client, an error or a timeout
    ends it. Each request must arrive in full, and its answer be taken, within ``REQUEST_TIMEOUT``."""

    def __init__(self, server: LocalnetServer, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)

    async def serve(self) -> None:
        while True:
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    request = await self._next_event()
                    if not isinstance(request, h11.Request):
                        return
                    body = await self._read_body(request)
            except _TooLarge:
                limit = self.server.max_body
                await self._send(413, _error_body(InvalidRequest(f"Invalid request: body over {limit} bytes")),
                                 "application/json", close=True)
                with trio.move_on_after(2.0):  # read what the client still sends, so it sees the answer
                    while await self.stream.receive_some(RECEIVE_SIZE):
                        pass
                return
            except h11.RemoteProtocolError as exc:
                if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._send(exc.error_status_hint, _error_body(InvalidRequest(f"Invalid request: {exc}")),
                                     "application/json", close=True)
                return
            status, payload, content_type = await self.server.answer(request, body)
            with trio.fail_after(REQUEST_TIMEOUT):
                await self._send(status, payload, content_type)
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return  # the client asked to close, or spoke HTTP/1.0
            self.conn.start_next_cycle()

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.stream.receive_some(RECEIVE_SIZE))

    async def _read_body(self, request: h11.Request) -> bytes:
        length = _header(request, b"content-length")
        if length is not None and int(length) > self.server.max_body:
            raise _TooLarge
        if self.conn.client_is_waiting_for_100_continue:
            await self.stream.send_all(self.conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        body = bytearray()
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.server.max_body:
                    raise _TooLarge
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                raise h11.RemoteProtocolError("connection closed mid-request")

    async def _send(self, status: int, body: bytes, content_type: str, *, close: bool = False) -> None:
        headers = [("content-type", content_type), ("content-length", str(len(body)))]
        if close:
            headers.append(("connection", "close"))
        out = self.conn.send(h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase)) or b""
        if body:
            out += self.conn.send(h11.Data(data=body)) or b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(out)


# -- the command


async def serve_until_signalled(server: LocalnetServer) -> None:
    """Serve until SIGINT or SIGTERM; print ``localnet serving URL`` on stdout once listening."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.run)
            print(f"localnet serving {url}", flush=True)
            async for signum in signals:
                log.info("received %s, stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def run_localnet(*, port: int, state_dir: Path | None) -> int:
    """``flair-node localnet``: serve the chain kept in ``state_dir`` on 127.0.0.1:``port`` until signalled."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 0 <= port <= 65535:
        print(f"flair-node: --port must be from 0 to 65535, got {port}", file=sys.stderr)
        return 2
    failure: OSError | None = None
    with LocalChain(state_dir if state_dir is not None else default_state_dir()) as chain:
        try:
            trio.run(serve_until_signalled, LocalnetServer(chain, port=port))
        except* OSError as group:
            failure = group.exceptions[0]  # type: ignore[assignment]
    if failure is not None:
        print(f"flair-node: cannot serve on 127.0.0.1:{port}: {failure}", file=sys.stderr)
        return 1
    return 0


__all__ = ["LocalChain", "LocalnetRpcError", "LocalnetServer", "TxStatus", "default_state_dir", "run_localnet",
           "serve_until_signalled"]
