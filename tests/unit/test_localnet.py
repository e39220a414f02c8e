"""``flair-node localnet``: a LiteSVM chain behind Solana JSON-RPC, driven by solana-py's AsyncClient (the client
Flair uses against devnet) and by raw JSON-RPC for the error cases.

solana-py is asyncio-based, so each test is a plain function that runs its client with ``asyncio.run``; the server
runs in a thread with its own trio loop (or, for the restart and ``--program`` tests, as a real
``flair-node localnet`` process).
"""

import asyncio
import base64
import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
from solana.rpc.async_api import AsyncClient
from solana.rpc.core import RPCException
from solana.rpc.types import TxOpts
from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.message import Message, MessageV0
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import CreateAccountParams, TransferParams, create_account, transfer
from solders.transaction import Transaction, VersionedTransaction
from solders.transaction_status import TransactionConfirmationStatus
from spl.token.constants import TOKEN_PROGRAM_ID
from spl.token.instructions import (
    InitializeMintParams,
    MintToParams,
    create_associated_token_account,
    get_associated_token_address,
    initialize_mint,
    mint_to,
)

from flair_node.core.errors import FlairError
from flair_node.devchain.server import LocalChain, LocalnetServer, ProgramRefused
from flair_node.protocol.anchoring import registry
from flair_node.protocol.anchoring.chain import Chain
from flair_node.testing.localnet import running_localnet
from flair_node.testing.program import registry_program

MEMO_PROGRAM = Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr")
UPGRADEABLE_LOADER = "BPFLoaderUpgradeab1e11111111111111111111111"
REGISTRY_ID = Keypair.from_seed(bytes([42]) * 32).pubkey()  # where the tests serve flair_registry
SOL = 10**9


@dataclass
class Localnet:
    url: str
    chain: LocalChain | None = None

    def run(self, scenario):
        """Run ``await scenario(client)`` with an AsyncClient on this localnet, in a fresh asyncio loop."""
        async def main():
            async with AsyncClient(self.url, timeout=10) as client:
                return await scenario(client)

        return asyncio.run(main())

    def rpc(self, method, *params):
        """The whole JSON-RPC answer to one raw request."""
        payload = {"jsonrpc": "2.0", "id": 7, "method": method, "params": list(params)}
        return httpx.post(self.url, json=payload, timeout=10).json()


@pytest.fixture
def localnet(tmp_path) -> Iterator[Localnet]:
    """A LocalnetServer in a thread of this process, on a port of its own choosing; stopped after the test."""
    chain = LocalChain(tmp_path / "chain")
    server = LocalnetServer(chain)
    started: queue.Queue = queue.Queue()

    async def serve():
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.run)
            started.put((trio.lowlevel.current_trio_token(), nursery.cancel_scope, url))

    thread = threading.Thread(target=trio.run, args=(serve,), name="localnet", daemon=True)
    thread.start()
    token, scope, url = started.get(timeout=10)
    try:
        yield Localnet(url, chain)
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(timeout=10)
        chain.close()
    assert not thread.is_alive()


def transfer_tx(payer: Keypair, to: Pubkey, lamports: int, blockhash: Hash) -> Transaction:
    ix = transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=to, lamports=lamports))
    return Transaction([payer], Message([ix], payer.pubkey()), blockhash)


def mint_tokens(payer: Keypair, mint: Keypair, amount: int, decimals: int, rent: int, blockhash: Hash) -> Transaction:
    """Create an SPL Token mint, the payer's associated token account for it, and mint ``amount`` into it."""
    ata = get_associated_token_address(payer.pubkey(), mint.pubkey())
    ixs = [create_account(CreateAccountParams(from_pubkey=payer.pubkey(), to_pubkey=mint.pubkey(), lamports=rent,
                                              space=82, owner=TOKEN_PROGRAM_ID)),
           initialize_mint(InitializeMintParams(decimals=decimals, mint=mint.pubkey(), mint_authority=payer.pubkey(),
                                                program_id=TOKEN_PROGRAM_ID)),
           create_associated_token_account(payer.pubkey(), payer.pubkey(), mint.pubkey()),
           mint_to(MintToParams(program_id=TOKEN_PROGRAM_ID, mint=mint.pubkey(), dest=ata,
                                mint_authority=payer.pubkey(), amount=amount))]
    return Transaction([payer, mint], Message(ixs, payer.pubkey()), blockhash)


async def funded(client: AsyncClient, lamports: int = 2 * SOL) -> Keypair:
    owner = Keypair()
    await client.request_airdrop(owner.pubkey(), lamports)
    return owner


def test_airdrop_then_balance(localnet):
    async def scenario(client):
        who = Keypair().pubkey()
        airdrop = (await client.request_airdrop(who, 3 * SOL)).value
        balance = await client.get_balance(who)
        statuses = await client.get_signature_statuses([airdrop])
        landed = (await client.get_transaction(airdrop)).value
        return balance, statuses, landed, who

    balance, statuses, landed, who = localnet.run(scenario)
    assert balance.value == 3 * SOL
    assert balance.context.slot == 1
    (status,) = statuses.value
    assert status.confirmation_status == TransactionConfirmationStatus.Finalized
    assert status.err is None and status.slot == 1
    meta = landed.transaction.meta
    assert landed.slot == 1 and meta.err is None and meta.fee == 5000
    keys = [str(k) for k in landed.transaction.transaction.message.account_keys]
    assert meta.post_balances[keys.index(str(who))] == 3 * SOL


def test_transfer_is_confirmed_and_fetched(localnet):
    async def scenario(client):
        payer, to = await funded(client), Keypair().pubkey()
        latest = (await client.get_latest_blockhash()).value
        tx = transfer_tx(payer, to, SOL // 2, latest.blockhash)
        sent = (await client.send_raw_transaction(bytes(tx))).value
        confirmed = await client.confirm_transaction(sent, "finalized",
                                                     last_valid_block_height=latest.last_valid_block_height)
        as_json = (await client.get_transaction(sent)).value
        as_base64 = (await client.get_transaction(sent, "base64", max_supported_transaction_version=0)).value
        balances = [(await client.get_balance(k)).value for k in (payer.pubkey(), to)]
        return tx, sent, confirmed, as_json, as_base64, balances, latest

    tx, sent, confirmed, as_json, as_base64, balances, latest = localnet.run(scenario)
    assert sent == tx.signatures[0]
    assert latest.last_valid_block_height == 1 + 150
    (status,) = confirmed.value
    assert status.slot == 2 and status.err is None
    assert status.confirmation_status == TransactionConfirmationStatus.Finalized
    meta = as_json.transaction.meta
    assert as_json.slot == 2 and as_json.block_time > 1_600_000_000
    assert meta.err is None and meta.fee == 5000
    assert meta.pre_balances == [2 * SOL, 0, 1]
    assert meta.post_balances == [2 * SOL - SOL // 2 - 5000, SOL // 2, 1]
    assert meta.log_messages == ["Program 11111111111111111111111111111111 invoke [1]",
                                 "Program 11111111111111111111111111111111 success"]
    assert as_json.transaction.transaction.message.account_keys == tx.message.account_keys
    assert as_json.transaction.version is None  # as Agave: no version without maxSupportedTransactionVersion
    assert bytes(as_base64.transaction.transaction) == bytes(tx)
    assert str(as_base64.transaction.version) == "Legacy.Legacy"
    assert balances == [2 * SOL - SOL // 2 - 5000, SOL // 2]


def test_memo_shows_in_the_logs(localnet):
    async def scenario(client):
        payer = await funded(client)
        blockhash = (await client.get_latest_blockhash()).value.blockhash
        memo = Instruction(MEMO_PROGRAM, b"flair commit 7f3a91c2", [AccountMeta(payer.pubkey(), True, True)])
        sent = (await client.send_transaction(Transaction([payer], Message([memo], payer.pubkey()), blockhash))).value
        return (await client.get_transaction(sent)).value

    landed = localnet.run(scenario)
    assert landed.transaction.meta.err is None
    assert 'Program log: Memo (len 21): "flair commit 7f3a91c2"' in landed.transaction.meta.log_messages


def test_a_failing_transaction_is_refused_by_preflight_and_not_recorded(localnet):
    async def scenario(client):
        payer, to = await funded(client, SOL), Keypair().pubkey()
        tx = transfer_tx(payer, to, 5 * SOL, (await client.get_latest_blockhash()).value.blockhash)
        with pytest.raises(RPCException) as refused:
            await client.send_raw_transaction(bytes(tx))
        statuses = await client.get_signature_statuses([tx.signatures[0]], search_transaction_history=True)
        return tx, refused.value, statuses, (await client.get_balance(payer.pubkey())).value, await client.get_slot()

    tx, refused, statuses, balance, slot = localnet.run(scenario)
    assert "Transaction simulation failed: Error processing Instruction 0: custom program error: 0x1" in str(refused)
    assert statuses.value == [None]
    assert balance == SOL  # no fee: nothing landed
    assert slot.value == 1  # only the airdrop
    raw = localnet.rpc("sendTransaction", base64.b64encode(bytes(tx)).decode(), {"encoding": "base64"})
    assert raw["error"]["code"] == -32002
    assert raw["error"]["data"]["err"] == {"InstructionError": [0, {"Custom": 1}]}
    assert any("insufficient lamports" in line for line in raw["error"]["data"]["logs"])


def test_with_skip_preflight_a_failing_transaction_lands_with_its_error(localnet):
    async def scenario(client):
        payer, to = await funded(client, SOL), Keypair().pubkey()
        tx = transfer_tx(payer, to, 5 * SOL, (await client.get_latest_blockhash()).value.blockhash)
        sent = (await client.send_raw_transaction(bytes(tx), TxOpts(skip_preflight=True))).value
        statuses = await client.get_signature_statuses([sent])
        landed = (await client.get_transaction(sent)).value
        return statuses, landed, (await client.get_balance(payer.pubkey())).value, (await client.get_balance(to)).value

    statuses, landed, payer_balance, to_balance = localnet.run(scenario)
    (status,) = statuses.value
    assert status.err is not None and status.slot == 2
    assert landed.transaction.meta.err == status.err
    assert payer_balance == SOL - 5000 and to_balance == 0  # the fee is charged, nothing else moves


def test_blockhashes_stay_valid_for_a_while_and_duplicates_are_refused(localnet):
    async def scenario(client):
        payer, to = await funded(client), Keypair().pubkey()
        blockhash = (await client.get_latest_blockhash()).value.blockhash
        first = transfer_tx(payer, to, SOL // 4, blockhash)
        second = transfer_tx(payer, to, SOL // 5, blockhash)  # the same blockhash, a slot later
        await client.send_raw_transaction(bytes(first))
        await client.send_raw_transaction(bytes(second))
        with pytest.raises(RPCException, match="already been processed"):
            await client.send_raw_transaction(bytes(first))
        # skipPreflight: a validator drops the duplicate silently and answers with its signature
        again = (await client.send_raw_transaction(bytes(first), TxOpts(skip_preflight=True))).value
        with pytest.raises(RPCException, match="Blockhash not found"):
            await client.send_raw_transaction(bytes(transfer_tx(payer, to, 1, Hash.new_unique())))
        return again == first.signatures[0], blockhash, (await client.get_balance(to)).value, await client.get_slot()

    same_signature, blockhash, balance, slot = localnet.run(scenario)
    assert same_signature
    assert localnet.rpc("isBlockhashValid", str(blockhash))["result"]["value"] is True
    assert localnet.rpc("isBlockhashValid", str(Hash.new_unique()))["result"]["value"] is False
    assert balance == SOL // 4 + SOL // 5
    assert slot.value == 3


def test_versioned_transactions_need_max_supported_version(localnet):
    async def scenario(client):
        payer = await funded(client)
        blockhash = (await client.get_latest_blockhash()).value.blockhash
        ix = transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=Keypair().pubkey(), lamports=SOL))
        tx = VersionedTransaction(MessageV0.try_compile(payer.pubkey(), [ix], [], blockhash), [payer])
        sent = (await client.send_transaction(tx)).value
        return (await client.get_transaction(sent, max_supported_transaction_version=0)).value, sent

    landed, sent = localnet.run(scenario)
    assert landed.transaction.version == 0 and landed.transaction.meta.err is None
    refused = localnet.rpc("getTransaction", str(sent), {"encoding": "json"})
    assert refused["error"]["code"] == -32015


def test_token_mint_and_token_balances(localnet):
    async def scenario(client):
        payer, mint = await funded(client), Keypair()
        blockhash = (await client.get_latest_blockhash()).value.blockhash
        rent = (await client.get_minimum_balance_for_rent_exemption(82)).value
        ata = get_associated_token_address(payer.pubkey(), mint.pubkey())
        sent = (await client.send_transaction(mint_tokens(payer, mint, 150, 2, rent, blockhash))).value
        return (await client.get_transaction(sent)).value, await client.get_account_info(ata), ata, mint.pubkey()

    landed, ata_info, ata, mint = localnet.run(scenario)
    meta = landed.transaction.meta
    assert meta.err is None and meta.pre_token_balances == []
    (balance,) = meta.post_token_balances
    assert balance.mint == mint and balance.ui_token_amount.amount == "150"
    assert balance.ui_token_amount.ui_amount_string == "1.5" and balance.ui_token_amount.decimals == 2
    assert any(group.instructions for group in meta.inner_instructions)  # the ATA program's CPIs
    assert ata_info.value.owner == TOKEN_PROGRAM_ID and len(ata_info.value.data) == 165
    assert bytes(ata_info.value.data)[:32] == bytes(mint)


def test_account_info(localnet):
    async def scenario(client):
        missing = await client.get_account_info(Keypair().pubkey())
        owner = await funded(client, SOL)
        return missing, await client.get_account_info(owner.pubkey()), owner.pubkey()

    missing, found, owner = localnet.run(scenario)
    assert missing.value is None and missing.context.slot == 0
    assert found.value.lamports == SOL and str(found.value.owner) == "11111111111111111111111111111111"
    parsed = localnet.rpc("getAccountInfo", str(owner), {"encoding": "jsonParsed"})["result"]
    assert parsed["value"]["data"] == ["", "base64"] and parsed["value"]["space"] == 0
    assert parsed["context"]["slot"] == 1
    program = localnet.rpc("getAccountInfo", str(MEMO_PROGRAM), {"encoding": "base58"})
    assert program["error"]["code"] == -32600  # over 128 bytes: base58 is refused, as Agave does
    sliced = localnet.rpc("getAccountInfo", str(MEMO_PROGRAM), {"encoding": "base64",
                                                                "dataSlice": {"offset": 0, "length": 4}})
    assert base64.b64decode(sliced["result"]["value"]["data"][0]) == b"\x7fELF"


def test_the_other_methods(localnet):
    async def scenario(client):
        blockhash = (await client.get_latest_blockhash()).value.blockhash
        message = transfer_tx(Keypair(), Keypair().pubkey(), 1, blockhash).message
        return (await client.get_version(), await client.get_genesis_hash(), await client.get_slot(),
                await client.get_block_height(), await client.get_fee_for_message(message),
                await client.get_minimum_balance_for_rent_exemption(0), await client.is_connected())

    version, genesis, slot, height, fee, rent, connected = localnet.run(scenario)
    assert version.value.solana_core and genesis.value == Hash.from_string(str(genesis.value))
    assert slot.value == height.value == 0
    assert fee.value == 5000 and rent.value == 890880 and connected
    assert localnet.rpc("getHealth") == {"jsonrpc": "2.0", "result": "ok", "id": 7}
    assert localnet.rpc("getSlot", {"minContextSlot": 5})["error"]["code"] == -32016


def test_json_rpc_errors(localnet):
    def post(body, **kwargs):
        return httpx.post(localnet.url, content=body, headers={"content-type": "application/json"}, timeout=10,
                          **kwargs)

    def code(answer):
        return answer["error"]["code"]

    assert code(post(b"{not json").json()) == -32700
    assert code(post(b'{"jsonrpc": "2.0", "id": 1, "method": "getSlot", "params": [NaN]}').json()) == -32700
    assert code(post(b"[]").json()) == -32600
    assert code(post(b'{"id": 1, "method": "getSlot"}').json()) == -32600
    assert code(post(b'"getSlot"').json()) == -32600
    assert code(localnet.rpc("eraseTheChain")) == -32601
    assert code(localnet.rpc("getBalance", "not-a-pubkey")) == -32602
    assert code(localnet.rpc("getBalance")) == -32602
    assert code(localnet.rpc("getBalance", str(Keypair().pubkey()), "finalized")) == -32602
    assert code(localnet.rpc("requestAirdrop", str(Keypair().pubkey()), -1)) == -32602
    assert code(localnet.rpc("getSignatureStatuses", ["x"] * 300)) == -32602
    assert code(localnet.rpc("getTransaction", str(Signature.default()), {"encoding": "jsonParsed"})) == -32602
    assert code(localnet.rpc("sendTransaction", "3yZe7d")) == -32602  # base58, but not a transaction
    assert code(localnet.rpc("sendTransaction", "AAAA", {"encoding": "base64"})) == -32602
    assert code(localnet.rpc("sendTransaction", "A" * 5000, {"encoding": "base64"})) == -32602
    assert localnet.rpc("getTransaction", str(Signature.default()))["result"] is None
    forged = bytearray(bytes(transfer_tx(Keypair(), Keypair().pubkey(), 1, Hash.from_string(
        localnet.rpc("getLatestBlockhash")["result"]["value"]["blockhash"]))))
    forged[10] ^= 1  # inside the signature
    assert code(localnet.rpc("sendTransaction", base64.b64encode(forged).decode(), {"encoding": "base64"})) == -32003
    named = post(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "getBalance", "params": {"pubkey": "x"}}))
    assert code(named.json()) == -32602

    batch = post(json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "getSlot"},
                             {"jsonrpc": "2.0", "method": "getSlot"},  # a notification: no answer
                             {"jsonrpc": "2.0", "id": 3, "method": "nope"}]))
    assert [(a["id"], "result" in a) for a in batch.json()] == [(1, True), (3, False)]
    assert post(json.dumps({"jsonrpc": "2.0", "method": "getSlot"})).content == b""

    assert post(b"x" * (2 << 20)).status_code == 413
    assert httpx.post(localnet.url, content=b"{}", headers={"content-type": "text/plain"}).status_code == 415
    assert httpx.get(localnet.url).status_code == 405
    assert httpx.get(localnet.url + "/health").text == "ok"
    assert localnet.rpc("getSlot")["result"] == 0  # and the server is still up


def test_one_folder_serves_one_localnet(tmp_path):
    with LocalChain(tmp_path / "chain"):
        with pytest.raises(FlairError, match="already serving"):
            LocalChain(tmp_path / "chain")


@pytest.mark.integration
def test_state_survives_a_restart(tmp_path):
    folder = tmp_path / "localnet"
    with running_localnet(folder) as url:
        async def before(client):
            payer, to, mint = await funded(client), Keypair().pubkey(), Keypair()
            blockhash = (await client.get_latest_blockhash()).value.blockhash
            transfer = transfer_tx(payer, to, SOL // 2, blockhash)
            await client.send_raw_transaction(bytes(transfer))
            rent = (await client.get_minimum_balance_for_rent_exemption(82)).value
            await client.send_transaction(mint_tokens(payer, mint, 42, 0, rent, blockhash))
            keys = [payer.pubkey(), to, mint.pubkey(), get_associated_token_address(payer.pubkey(), mint.pubkey())]
            accounts = [(await client.get_account_info(k)).value for k in keys]
            return payer, transfer, keys, accounts, (await client.get_latest_blockhash()).value.blockhash

        payer, transfer, keys, accounts, blockhash = Localnet(url).run(before)

    with running_localnet(folder) as url:  # the same folder: a restart
        async def after(client):
            landed = (await client.get_transaction(transfer.signatures[0], "base64")).value
            statuses = await client.get_signature_statuses([transfer.signatures[0]], search_transaction_history=True)
            accounts_now = [(await client.get_account_info(k)).value for k in keys]
            with pytest.raises(RPCException, match="already been processed"):
                await client.send_raw_transaction(bytes(transfer))
            more = transfer_tx(payer, keys[1], 1000, blockhash)  # a blockhash handed out before the restart
            await client.send_raw_transaction(bytes(more))
            return landed, statuses, accounts_now, (await client.get_signature_statuses([more.signatures[0]])).value

        landed, statuses, accounts_now, (more_status,) = Localnet(url).run(after)

    assert landed.slot == 2 and landed.transaction.meta.err is None
    assert bytes(landed.transaction.transaction) == bytes(transfer)
    assert statuses.value[0].slot == 2
    assert accounts_now == accounts  # balances, the mint and the token account, byte for byte
    assert accounts[3].owner == TOKEN_PROGRAM_ID and int.from_bytes(bytes(accounts[3].data)[64:72], "little") == 42
    assert more_status.slot == 4  # the slot keeps counting after the restart


@pytest.fixture(scope="module")
def registry_so() -> Path:
    """flair_registry built by anchor_program/build.py, rebuilt only when a source is newer than the .so."""
    return registry_program()


def on_chain(url, scenario):
    """Run ``await scenario(chain)`` with Flair's Chain client on the localnet at ``url``, in a fresh trio loop."""
    async def main():
        chain = Chain(url)
        try:
            return await scenario(chain)
        finally:
            await chain.close()

    return trio.run(main)


async def land(chain: Chain, payer: Keypair, ix: Instruction):
    tx = Transaction([payer], Message([ix], payer.pubkey()), await chain.latest_blockhash())
    return await chain.status(await chain.send(bytes(tx)))


@pytest.mark.integration
def test_a_program_given_with_program_is_served_across_restarts(tmp_path, registry_so):
    folder, elf = tmp_path / "localnet", registry_so.read_bytes()
    programs = {str(REGISTRY_ID): registry_so}
    repo_id, owner = bytes(range(32)), Keypair()
    repository = str(registry.repository_address(REGISTRY_ID, repo_id, owner.pubkey())[0])
    programdata = str(Pubkey.find_program_address([bytes(REGISTRY_ID)], Pubkey.from_string(UPGRADEABLE_LOADER))[0])

    async def create(chain):
        await chain.airdrop(str(owner.pubkey()), SOL)
        created = await land(chain, owner, registry.create_repository(
            REGISTRY_ID, owner=owner.pubkey(), repo_id=repo_id, policy_hash=b"\x01" * 32))
        return (created, await chain.account(repository), await chain.account(str(REGISTRY_ID)),
                await chain.account(programdata))

    with running_localnet(folder, programs=programs) as url:
        created, account, program, data = on_chain(url, create)

    assert created.error is None and created.confirmation == "finalized"
    assert account.owner == str(REGISTRY_ID) and len(account.data) == registry.REPOSITORY_SIZE
    state = registry.decode_repository(account.data)
    assert state.owner == str(owner.pubkey()) and state.policy_hash == b"\x01" * 32
    # as a validator answers for a program deployed with the upgradeable loader, without upgrade authority
    assert program.executable and program.owner == UPGRADEABLE_LOADER
    assert program.data == (2).to_bytes(4, "little") + bytes(Pubkey.from_string(programdata))
    assert not data.executable and data.owner == UPGRADEABLE_LOADER
    assert data.data[:4] == (3).to_bytes(4, "little") and data.data[12] == 0 and data.data[45:] == elf

    async def update(chain):
        before = await chain.account(repository)
        updated = await land(chain, owner, registry.set_policy(REGISTRY_ID, owner=owner.pubkey(), repo_id=repo_id,
                                                               policy_hash=b"\x02" * 32))
        return before, updated, await chain.account(repository), await chain.account(str(REGISTRY_ID))

    with running_localnet(folder, programs=programs) as url:  # the same folder and --program: a restart
        before, updated, after, program_again = on_chain(url, update)

    assert before == account  # the repository account came back from the ledger
    assert updated.error is None and updated.slot == created.slot + 1
    assert registry.decode_repository(after.data).policy_hash == b"\x02" * 32
    assert program_again == program


def test_local_chain_refuses_programs_it_cannot_serve(tmp_path):
    system_program = Pubkey.from_string("11111111111111111111111111111111")
    with pytest.raises(ProgramRefused, match="builtin program") as refused:
        LocalChain(tmp_path / "a", {system_program: b"\x7fELF"})
    assert refused.value.program == system_program
    with pytest.raises(ProgramRefused, match="LiteSVM cannot load it as an SBF program"):
        LocalChain(tmp_path / "b", {REGISTRY_ID: b"not an ELF"})
    with LocalChain(tmp_path / "b"):  # the refusal let go of the folder's lock
        pass


@pytest.mark.integration
def test_bad_program_arguments_exit_with_status_2(tmp_path):
    not_elf = tmp_path / "not-elf.so"
    not_elf.write_bytes(b"not an ELF")
    huge = tmp_path / "huge.so"
    with huge.open("wb") as f:
        f.truncate(10 * 1024 * 1024 + 1)  # sparse
    missing = tmp_path / "missing.so"
    cases = {
        "bad id": (["--program", f"not-a-key={not_elf}"], "'not-a-key' is not a program id"),
        "missing file": (["--program", f"{REGISTRY_ID}={missing}"],
                         f"cannot read {missing}: No such file or directory"),
        "directory": (["--program", f"{REGISTRY_ID}={tmp_path}"], f"{tmp_path} is not a file"),
        "too large": (["--program", f"{REGISTRY_ID}={huge}"], "over the 10 MiB"),
        "twice": (["--program", f"{REGISTRY_ID}={not_elf}", "--program", f"{REGISTRY_ID}={huge}"],
                  f"program {REGISTRY_ID} is already given (with {not_elf})"),
        "no path": (["--program", str(REGISTRY_ID)], "expected PROGRAM_ID=PATH"),
        "not an ELF": (["--program", f"{REGISTRY_ID}={not_elf}"],
                       f"--program {REGISTRY_ID}={not_elf}: cannot serve {not_elf}: LiteSVM cannot load it"),
    }
    procs = {name: subprocess.Popen([sys.executable, "-m", "flair_node", "localnet", "--port", "0",
                                     "--dir", str(tmp_path / name.replace(" ", "-")), *arguments],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
             for name, (arguments, _) in cases.items()}
    try:
        results = {name: (*proc.communicate(timeout=30), proc.returncode) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for name, (_, message) in cases.items():
        out, err, status = results[name]
        assert (name, status, out) == (name, 2, ""), err
        assert message in err, (name, err)
