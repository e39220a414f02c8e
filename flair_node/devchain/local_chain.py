"""The chain behind ``flair-node localnet``: LiteSVM, its ledger on disk, the faucet, recent blockhashes.

``LocalChain`` runs transactions in LiteSVM (a real SVM, in process) and turns each landed one into a ledger
record (the raw transaction, its meta in a validator's JSON shape, and the post-state of every account it could
write), which it writes durably and replays on start. ``devchain.server`` serves it over JSON-RPC; see there for
what differs from a real validator.

``land`` persists before it publishes: it runs the transaction in LiteSVM, writes the ledger record (temp file,
fsync, rename), and only then counts the slot and the signature; the caller reads and writes the chain under
one lock, so nobody sees a transaction's effects before its record is on disk, and a crash at any point loses
only a transaction nobody was told about. If the record cannot be written (a full disk: ``ResourceExhausted``),
the chain is rebuilt from its ledger as on a restart, so memory and disk never disagree, and the transaction
did not land.

Programs given to ``LocalChain`` (``flair-node localnet --program``) are not transactions, so they are not in the
ledger: they are loaded after each replay, on every start, as a validator serves a program deployed with the
upgradeable loader (a 36-byte program account pointing at its program-data account, which holds the ELF; no
upgrade authority).
"""


from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import base58
from solders.account import Account
from solders.address_lookup_table_account import AddressLookupTable
from solders.hash import Hash
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message, MessageV0
from solders.pubkey import Pubkey
from solders.rpc.responses import RpcSimulateTransactionResult
from solders.signature import Signature
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction, VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata, TransactionMetadata

from ..core.errors import FlairError, InvalidInput
from ..core.identity import Identity
from ..storage.atomic import atomic_write, hold_lock, make_dirs, remove_stale_temp_files
from ..storage.keyfile import read_keypair, write_keypair

log = logging.getLogger(__name__)

LAMPORTS_PER_SIGNATURE = 5000
MAX_PROCESSING_AGE = 150  # slots a blockhash stays valid
STATUS_CACHE_SLOTS = 300  # slots getSignatureStatuses looks back without searchTransactionHistory
PACKET_DATA_SIZE = 1232  # largest transaction on the wire
FAUCET_LAMPORTS = 500_000_000 * 10**9
TOKEN_PROGRAMS = {"TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA", "TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb"}
PRECOMPILES = {"Ed25519SigVerify111111111111111111111111111", "KeccakSecp256k1Verify11111111111111111111111",
               "Secp256r1SigVerify1111111111111111111111111"}
SYSTEM_PROGRAM = Pubkey.from_string("11111111111111111111111111111111")
SYSVAR_OWNER = Pubkey.from_string("Sysvar1111111111111111111111111111111111111")
NATIVE_LOADER = Pubkey.from_string("NativeLoader1111111111111111111111111111111")
UPGRADEABLE_LOADER = Pubkey.from_string("BPFLoaderUpgradeab1e11111111111111111111111")
MAX_PROGRAM_BYTES = 10 * 1024 * 1024  # an account holds at most 10 MiB (MAX_PERMITTED_DATA_LENGTH)
#: UpgradeableLoaderState as bincode lays it out: Program {programdata_address}, and the 45-byte head of
#: ProgramData {slot, upgrade_authority_address: Option<Pubkey>} that the ELF follows (None is padded to 45 too).
PROGRAM_ACCOUNT = struct.Struct("<I32s")
PROGRAMDATA_HEAD = struct.Struct("<IQB32s")
RECORD_VERSION = 1


class ProgramRefused(InvalidInput):
    """A program ``LocalChain`` cannot serve: LiteSVM refuses its ELF, or its id is taken; ``program`` is its id."""

    def __init__(self, program: Pubkey, reason: str) -> None:
        super().__init__(f"cannot serve program {program}: {reason}", program=str(program))
        self.program = program
        self.reason = reason


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
    """The chain: a LiteSVM, the ledger of landed transactions in ``path``, a faucet and the recent blockhashes.

    ``programs`` maps program ids to SBF ELF images, served from the start (``ProgramRefused`` if one cannot be).
    """

    def __init__(self, path: Path, programs: Mapping[Pubkey, bytes] | None = None) -> None:
        self.path = path
        make_dirs(path)
        self._lock_file = hold_lock(path / "localnet.lock", f"another flair-node localnet is already serving "
                                                            f"{path}: stop it, or pass another --dir")
        self._programs = dict(programs or {})
        try:
            self._open(self._programs)
        except BaseException:
            self._lock_file.close()
            raise

    def _open(self, programs: Mapping[Pubkey, bytes]) -> None:
        remove_stale_temp_files(self.path)
        self.ledger = self.path / "ledger"
        make_dirs(self.ledger)
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
        for program_id, elf in programs.items():
            self._add_program(program_id, elf)
        if self.svm.get_account(self.faucet.pubkey()) is None:
            self.svm.set_account(self.faucet.pubkey(), Account(FAUCET_LAMPORTS, b"", SYSTEM_PROGRAM))
        self._recent: dict[str, int] = {str(self.svm.latest_blockhash()): 0}  # blockhash -> slot, oldest first
        for slot in range(1, self.slot + 1):  # LiteSVM's blockhashes follow from the genesis one, one per slot
            self._next_blockhash(slot)
        self._unix_time = int(time.time())
        self._set_clock(self.slot)
        log.info("localnet state in %s: slot %d, %d transactions, %d programs given", self.path, self.slot,
                 len(self.statuses), len(programs))

    def _add_program(self, program_id: Pubkey, elf: bytes) -> None:
        """Serve ``elf`` at ``program_id`` as the upgradeable loader leaves a deployed program (not ``add_program``,
        which puts the ELF itself in an account of the old BPFLoader2, unlike a validator, and panics on a bad ELF).
        """
        existing = self.svm.get_account(program_id)
        if program_id == self.faucet.pubkey() or (existing is not None and existing.owner in (NATIVE_LOADER,
                                                                                              SYSVAR_OWNER)):
            raise ProgramRefused(program_id, "the id is a builtin program, a sysvar or the faucet: pick another")
        if len(elf) > MAX_PROGRAM_BYTES - PROGRAMDATA_HEAD.size:
            raise ProgramRefused(program_id, f"the program is {len(elf)} bytes, more than an account holds")
        programdata, _ = Pubkey.find_program_address([bytes(program_id)], UPGRADEABLE_LOADER)
        data = PROGRAMDATA_HEAD.pack(3, 0, 0, bytes(32)) + elf  # 3: ProgramData, deployed at slot 0, no authority
        program = PROGRAM_ACCOUNT.pack(2, bytes(programdata))  # 2: Program
        rent = self.svm.minimum_balance_for_rent_exemption
        try:
            self.svm.set_account(programdata, Account(rent(len(data)), data, UPGRADEABLE_LOADER))
            # setting the executable account is what makes LiteSVM load (verify and compile) the ELF
            self.svm.set_account(program_id, Account(rent(len(program)), program, UPGRADEABLE_LOADER, True))
        except Exception as exc:  # solders' LiteSVMError, which it does not export
            raise ProgramRefused(program_id, f"LiteSVM cannot load it as an SBF program ({exc})") from None
        log.info("serving program %s (%d bytes)", program_id, len(elf))

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

    def land(self, tx: VersionedTransaction, *, preflight: bool) -> bool:
        """Run ``tx``, write its ledger record durably, then count its slot and signature; False when ``tx``
        already landed and ``preflight`` is off (a validator drops the duplicate).

        Raises ``LocalnetRpcError`` for a transaction refused by preflight or unable to land, and the error of
        the write (``ResourceExhausted`` for a full disk) when its record could not be written: the chain is then
        back at its ledger's state, as if ``tx`` had never been sent. Blocking: call it off the event loop, with
        no other call on this chain running.
        """
        record = self._execute(tx, preflight=preflight)
        if record is None:
            return False
        try:
            self.persist(record)
        except BaseException:
            log.warning("could not write the ledger record of %s: reloading the chain from %s", record["signature"],
                        self.ledger)
            self._open(self._programs)
            raise
        slot = int(record["slot"])
        self.slot = slot
        self._next_blockhash(slot)
        self.statuses[str(record["signature"])] = TxStatus(slot, record["meta"]["err"])
        return True

    def _execute(self, tx: VersionedTransaction, *, preflight: bool) -> dict[str, Any] | None:
        """Run ``tx`` in LiteSVM and return its ledger record, without counting it yet (``land`` does, once the
        record is on disk). None when ``tx`` already landed and ``preflight`` is off. Raises ``LocalnetRpcError``
        for a transaction refused by preflight or unable to land."""
        signature = str(tx.signatures[0])
        if signature in self.statuses:
            if not preflight:
                return None
            raise refusal("AlreadyProcessed", [], 0)
        if not self.is_recent(str(tx.message.recent_blockhash)):
            raise refusal("BlockhashNotFound", [], 0)
        slot = self.slot + 1
        self._set_clock(slot)
        keys = self._keys(tx.message)
        if preflight:
            simulated = self.svm.simulate_transaction(tx)
            if isinstance(simulated, FailedTransactionMetadata):
                raise refusal(_error_json(simulated.err()), simulated.meta().logs(),
                               simulated.meta().compute_units_consumed())
        pre = [self.svm.get_account(key) for key in keys.all]
        result = self.svm.send_transaction(tx)
        if isinstance(result, FailedTransactionMetadata):
            if self.svm.get_transaction(tx.signatures[0]) is None:  # it never landed: nothing changed
                raise refusal(_error_json(result.err()), result.meta().logs(), result.meta().compute_units_consumed())
            err, meta = _error_json(result.err()), result.meta()
        else:
            err, meta = None, result
        post = [self.svm.get_account(key) for key in keys.all]
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


def refusal(err: Any, logs: list[str], units: int) -> LocalnetRpcError:
    """The error sendTransaction answers for a transaction that did not land, as Agave's preflight does."""
    if err == "SignatureFailure":
        return LocalnetRpcError(-32003, "Transaction signature verification failure")
    if err == "SanitizeFailure":
        return LocalnetRpcError(-32602, "invalid transaction: Transaction failed to sanitize accounts offsets "
                                        "correctly")
    result = {"err": err, "logs": logs, "accounts": None, "unitsConsumed": units, "returnData": None,
              "innerInstructions": None, "replacementBlockhash": None}
    return LocalnetRpcError(-32002, f"Transaction simulation failed: {_error_text(err)}", result)


def transaction_fee(message: Message | MessageV0) -> int:
    """The fee LiteSVM charges: 5000 lamports a signature, counting those checked by precompile instructions."""
    signatures = message.header.num_required_signatures
    for ix in message.instructions:
        if str(message.account_keys[ix.program_id_index]) in PRECOMPILES and ix.data:
            signatures += ix.data[0]
    return signatures * LAMPORTS_PER_SIGNATURE


def _ui_instruction(ix: Any, stack_height: int | None) -> dict[str, Any]:
    return {"programIdIndex": ix.program_id_index, "accounts": list(ix.accounts),
            "data": base58.b58encode(bytes(ix.data)).decode(), "stackHeight": stack_height}


def transaction_json(tx: VersionedTransaction) -> dict[str, Any]:
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
        "err": err, "status": {"Ok": None} if err is None else {"Err": err}, "fee": transaction_fee(tx.message),
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


def default_state_dir() -> Path:
    home = os.environ.get("FLAIR_HOME")
    return Path(home) / "localnet" if home else Path.home() / ".flair-localnet"


# -- JSON-RPC over HTTP

