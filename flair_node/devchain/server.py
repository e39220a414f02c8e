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

A transaction's record is written atomically (temp file, fsync, rename) before anyone sees its effects: methods
run one at a time, under one lock, and ``sendTransaction`` runs the transaction, persists its record and only
then publishes its slot and signature (``LocalChain.land``), so a transaction and its effects are on disk
together or not at all, and a crash loses only a transaction nobody saw. A record that cannot be written (a full
disk) fails that ``sendTransaction`` with error -32017 and leaves the chain as its ledger says. On start the
ledger is replayed in slot order into a fresh LiteSVM with ``set_account``: balances, mints and token accounts,
and the answers of ``getTransaction`` and ``getSignatureStatuses`` for old signatures, survive a restart; the
slot keeps counting.

Programs of your own are given with ``--program PROGRAM_ID=PATH`` (repeatable; PATH an SBF ``.so`` of at most 10
MiB). They are not transactions, so they are not in the ledger: they are loaded after the replay on every start,
and must be given again each time (the accounts they created are in the ledger and come back on their own).
``getAccountInfo`` answers for them as a validator does for a program deployed with the upgradeable loader: an
executable account owned by ``BPFLoaderUpgradeab1e11111111111111111111111`` pointing at its program-data account,
which holds the ELF and has no upgrade authority.

The server answers ``POST /`` with ``Content-Type: application/json`` only (415 otherwise, so a web page
cannot send it transactions with a form), bodies of at most 1 MiB nesting at most 32 deep, and keeps at most a
quarter of its file descriptors in connections (``api.http``).

Known differences from a real validator: priority fees are not charged (LiteSVM charges 5000 lamports per
signature only, and ``getFeeForMessage`` says the same); durable-nonce transactions are refused (only recent
blockhashes are accepted); ``jsonParsed`` answers carry base64 data for accounts and are refused for
transactions; ``base64+zstd`` is not offered; programs deployed by transactions are not kept across restarts
(give them with ``--program``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import signal
import stat
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import base58
import h11
import trio
from solders.account import Account
from solders.hash import Hash
from solders.message import MessageV0, from_bytes_versioned
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction

from ..api.errors import InternalError, InvalidRequest, MethodNotFound, ParseError
from ..api.http import HttpServer, Reply, load_json
from ..core.errors import FlairError, InvalidInput
from .local_chain import (
    FAUCET_LAMPORTS,
    MAX_PROCESSING_AGE,
    MAX_PROGRAM_BYTES,
    PACKET_DATA_SIZE,
    LocalChain,
    LocalnetRpcError,
    ProgramRefused,
    TxStatus,
    default_state_dir,
    refusal,
    transaction_fee,
    transaction_json,
)

log = logging.getLogger(__name__)

SOLANA_CORE_VERSION = "2.2.0"  # the Agave runtime crates solders 0.26's LiteSVM is built from
FEATURE_SET = 0
MAX_SIGNATURE_STATUSES = 256
MAX_BASE58_ACCOUNT_BYTES = 128
MAX_BODY = 1 << 20
MAX_BATCH = 1000
Handler = Callable[[list[Any]], Awaitable[Any]]


class LocalnetServer:
    """Serves ``chain`` as Solana JSON-RPC 2.0 (single and batch requests, ``POST /``) until cancelled."""

    def __init__(self, chain: LocalChain, *, host: str = "127.0.0.1", port: int = 0, max_body: int = MAX_BODY,
                 max_connections: int | None = None) -> None:
        if host not in ("127.0.0.1", "::1"):
            raise InvalidInput(f"localnet host {host} is not a loopback address: it serves only 127.0.0.1 or ::1",
                               host=host)
        self.chain = chain
        self._http = HttpServer(self.answer, lambda message: _error_body(InvalidRequest(f"Invalid request: {message}")),
                                name="localnet JSON-RPC", host=host, port=port, max_body=max_body, admit=self.admit,
                                max_connections=max_connections)
        self._chain_lock = trio.Lock()  # one method at a time: a transaction's effects show once it is persisted
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
        await self._http.run(task_status=task_status)

    @property
    def url(self) -> str | None:
        """``http://127.0.0.1:PORT`` once ``run`` is listening."""
        return self._http.url

    def status(self) -> dict[str, int]:
        """Connections open and their cap, connections closed or refused by the cap."""
        return self._http.status()

    def admit(self, request: h11.Request) -> Reply | None:
        """The HTTP error refusing a request by its head, or None to read and answer it."""
        if request.method == b"GET" and request.target == b"/health":
            return None
        if request.target != b"/":
            return 404, _error_body(InvalidRequest("Invalid request: POST JSON-RPC 2.0 requests to /")), []
        if request.method != b"POST":
            return 405, _error_body(InvalidRequest("Invalid request: use POST")), [("allow", "POST")]
        return None

    async def answer(self, request: h11.Request, body: bytes) -> Reply:
        """HTTP status, body and headers answering one complete request that ``admit`` let through."""
        if request.method == b"GET":
            return 200, b"ok", [("content-type", "text/plain")]
        return 200, await self.dispatch(body) or b"", []

    async def dispatch(self, body: bytes) -> bytes | None:
        """The encoded JSON-RPC answer to a request body; None when it held only notifications."""
        try:
            message = load_json(body)
        except ParseError as exc:
            log.debug("refused a request body: %s", exc)
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
            async with self._chain_lock:
                result = await handler(params)
        except FlairError as exc:
            log.debug("%s failed: %s", name, exc)
            return None if notification else _error_reply(req_id, exc)
        except Exception:  # a bug in one method fails that request only: the chain and the server go on
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
        fee = transaction_fee(message) if self.chain.is_recent(str(message.recent_blockhash)) else None
        return self._context(fee)

    async def _request_airdrop(self, params: list[Any]) -> str:
        key, lamports, config = _args(params, 2, 1)
        self._config(config)
        to, amount = _parse(Pubkey, key, "pubkey"), _uint(lamports, "lamports", FAUCET_LAMPORTS // 2)
        return await self._land(self.chain.airdrop_transaction(to, amount), preflight=True)

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
            raise refusal("SanitizeFailure", [], 0)
        skip = config.get("skipPreflight", False)
        if not isinstance(skip, bool):
            raise InvalidInput("Invalid params: skipPreflight must be true or false")
        return await self._land(tx, preflight=not skip)

    async def _land(self, tx: VersionedTransaction, *, preflight: bool) -> str:
        """Land ``tx`` (run, persist, publish: ``LocalChain.land``) in a thread; the caller holds the chain lock."""
        await trio.to_thread.run_sync(lambda: self.chain.land(tx, preflight=preflight))  # runs to its end
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
        return transaction_json(tx)
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


def read_program_arguments(arguments: Sequence[str]) -> dict[Pubkey, tuple[Path, bytes]]:
    """The ``--program PROGRAM_ID=PATH`` arguments: each id and its file's path and bytes, read. ``InvalidInput``
    for an id that is not a base-58 public key, a file that cannot be read or is over 10 MiB, or an id given twice.
    """
    programs: dict[Pubkey, tuple[Path, bytes]] = {}
    for argument in arguments:
        text, equals, path_text = argument.partition("=")
        if not equals or not text or not path_text:
            raise InvalidInput(f"--program {argument}: expected PROGRAM_ID=PATH, such as "
                               f"--program {Pubkey.new_unique()}=target/program.so")
        try:
            program_id = Pubkey.from_string(text)
        except ValueError as exc:
            raise InvalidInput(f"--program {argument}: {text!r} is not a program id ({exc}): give a base-58 "
                               "public key of 32 bytes", program=text) from None
        path = Path(path_text).expanduser()
        if program_id in programs:
            raise InvalidInput(f"--program {argument}: program {program_id} is already given (with "
                               f"{programs[program_id][0]}): give each program id once", program=text)
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                raise InvalidInput(f"--program {argument}: {path} is not a file: give the program's .so",
                                   path=str(path))
            if info.st_size > MAX_PROGRAM_BYTES:
                raise InvalidInput(f"--program {argument}: {path} is {info.st_size} bytes, over the 10 MiB an "
                                   "account holds: is it the program's .so?", path=str(path))
            with path.open("rb") as f:
                elf = f.read(MAX_PROGRAM_BYTES + 1)
        except OSError as exc:
            raise InvalidInput(f"--program {argument}: cannot read {path}: {exc.strerror}", path=str(path)) from None
        if len(elf) > MAX_PROGRAM_BYTES:
            raise InvalidInput(f"--program {argument}: {path} grew over 10 MiB while being read", path=str(path))
        programs[program_id] = (path, elf)
    return programs


def run_localnet(*, port: int, state_dir: Path | None, programs: Sequence[str] = ()) -> int:
    """``flair-node localnet``: serve the chain kept in ``state_dir`` on 127.0.0.1:``port`` until signalled, with
    ``programs`` (``PROGRAM_ID=PATH`` arguments) loaded."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 0 <= port <= 65535:
        print(f"flair-node: --port must be from 0 to 65535, got {port}", file=sys.stderr)
        return 2
    try:
        given = read_program_arguments(programs)
    except InvalidInput as exc:
        print(f"flair-node: {exc}", file=sys.stderr)
        return 2
    try:
        chain = LocalChain(state_dir if state_dir is not None else default_state_dir(),
                           {program_id: elf for program_id, (_, elf) in given.items()})
    except ProgramRefused as exc:
        path = given[exc.program][0]
        print(f"flair-node: --program {exc.program}={path}: cannot serve {path}: {exc.reason}", file=sys.stderr)
        return 2
    failure: OSError | None = None
    with chain:
        try:
            trio.run(serve_until_signalled, LocalnetServer(chain, port=port))
        except* OSError as group:
            failure = group.exceptions[0]  # type: ignore[assignment]
    if failure is not None:
        print(f"flair-node: cannot serve on 127.0.0.1:{port}: {failure}", file=sys.stderr)
        return 1
    return 0


__all__ = ["LocalChain", "LocalnetRpcError", "LocalnetServer", "ProgramRefused", "TxStatus", "default_state_dir",
           "read_program_arguments", "run_localnet", "serve_until_signalled"]
