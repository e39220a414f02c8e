"""The repository's ownership token on a real SVM: what its minting leaves on chain, that only the holder can
hand it over, what the chain client reads back of a handover, and the memos that go with it."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from solana.rpc.async_api import AsyncClient
from solana.rpc.types import TxOpts
from solders.hash import Hash
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.pubkey import Pubkey
from solders.transaction import Transaction
from solders.transaction_metadata import TransactionMetadata

from flair_node.core.errors import IntegrityError, InvalidInput
from flair_node.core.ids import CommitId, PublicKey, RecordId, RepoId
from flair_node.devchain.server import LocalChain, LocalnetServer
from flair_node.protocol.anchoring import (
    MAX_SEQ,
    MAX_TRANSACTION_BYTES,
    MAX_URI_BYTES,
    MEMO_PROGRAM_ID,
    NFT_SYMBOL,
    TOKEN_2022_PROGRAM_ID,
    MetadataPointer,
    associated_token_address,
    commit_mint,
    handover_memo,
    handover_transaction,
    holds_one,
    membership_memo,
    one_of_one_instructions,
    ownership_memo,
    parse_anchor_memo,
    parse_handover_memo,
    parse_membership_memo,
    parse_mint,
    parse_ownership_memo,
    parse_token_account,
    repo_token_fields,
    repo_token_mint,
    repo_token_mint_size,
    repo_token_name,
    repo_token_transaction,
    transfer_checked,
    verify_repo_token,
)
from flair_node.protocol.anchoring import token2022 as t22
from flair_node.protocol.anchoring.chain import (
    UNKNOWN_STATUS,
    Chain,
    ChainError,
    Landed,
    TokenMove,
    landed,
    token_moves,
)

from .conftest import IMMUTABLE_METADATA, NODE_SECRET, PROOF, REPO, URI, failed

NAME = "mnist-classifier"
CHANGE = RecordId("c4" * 32)
LONGEST_URI = "https://ipfs.io/ipfs/" + PROOF
A = Keypair.from_seed(bytes([1]) * 32).pubkey()
KEY = PublicKey(str(A))


@dataclass
class Minted:
    svm: LiteSVM
    payer: Keypair
    mint: Keypair
    tx: Transaction
    logs: list[str]


def mint_token(svm: LiteSVM, payer: Keypair, repo: str = REPO, name: str = NAME, uri: str = URI) -> Minted:
    mint = repo_token_mint(NODE_SECRET, RepoId(repo))
    tx = repo_token_transaction(payer=payer, mint=mint, repo=RepoId(repo), name=name, uri=uri,
                                rent=svm.minimum_balance_for_rent_exemption, blockhash=svm.latest_blockhash())
    result = svm.send_transaction(tx)
    assert isinstance(result, TransactionMetadata), result
    return Minted(svm, payer, mint, tx, list(result.logs()))


def amount_at(svm: LiteSVM, holder: Pubkey, mint: Pubkey) -> int | None:
    """What ``holder``'s associated account of ``mint`` holds; None if it does not exist."""
    account = svm.get_account(associated_token_address(holder, mint))
    return None if account is None else parse_token_account(bytes(account.data)).amount


def holds(svm: LiteSVM, holder: Pubkey, mint: Pubkey) -> bool:
    account = svm.get_account(associated_token_address(holder, mint))
    if account is None:
        return False
    return holds_one(holder=holder, mint=mint, owner=account.owner, data=bytes(account.data))


@pytest.fixture
def minted(svm: LiteSVM, payer: Keypair) -> Minted:
    return mint_token(svm, payer)


# -- minting ----------------------------------------------------------------------------------------------

def test_the_token_is_one_of_one_naming_the_repository(minted: Minted) -> None:
    svm, mint = minted.svm, minted.mint.pubkey()
    account = svm.get_account(mint)
    assert account is not None and account.owner == TOKEN_2022_PROGRAM_ID
    assert len(account.data) == repo_token_mint_size(REPO, NAME, URI)
    state = parse_mint(bytes(account.data))
    assert (state.supply, state.decimals, state.mint_authority, state.freeze_authority) == (1, 0, None, None)
    assert state.metadata_pointer == MetadataPointer(authority=None, metadata_address=mint)
    metadata = state.metadata
    assert metadata is not None and metadata.update_authority is None  # revoked: the metadata is final
    assert "Program log: TokenMetadataInstruction: UpdateAuthority" in minted.logs
    assert (metadata.name, metadata.symbol, metadata.uri) == (f"Flair repo {REPO[:10]}", NFT_SYMBOL, URI)
    assert metadata.additional == (("repository", REPO), ("name", NAME)) == repo_token_fields(REPO, NAME)
    assert amount_at(svm, minted.payer.pubkey(), mint) == 1 and holds(svm, minted.payer.pubkey(), mint)
    assert verify_repo_token(mint=mint, owner=account.owner, data=bytes(account.data), repo=REPO,
                             name=NAME) == state
    memos = [ix.data for ix in minted.tx.message.instructions
             if minted.tx.message.account_keys[ix.program_id_index] == MEMO_PROGRAM_ID]
    assert memos == [ownership_memo(REPO)] == [f"flair:1:own:{REPO}".encode()]


def test_verification_refuses_another_repository_or_name(minted: Minted) -> None:
    account = minted.svm.get_account(minted.mint.pubkey())
    assert account is not None
    ok: dict[str, Any] = {"mint": minted.mint.pubkey(), "owner": account.owner, "data": bytes(account.data),
                          "repo": REPO, "name": NAME}
    changes: list[tuple[dict[str, Any], str]] = [
        ({"repo": "0" * 64}, "metadata names"), ({"name": "other"}, "do not name the record"),
        ({"owner": t22.SYSTEM_PROGRAM_ID}, "not Token-2022"), ({"mint": A}, "metadata pointer"),
    ]
    for change, message in changes:
        with pytest.raises(IntegrityError, match=message) as caught:
            verify_repo_token(**{**ok, **change})
        assert caught.value.data["repo"] == {**ok, **change}["repo"]


def test_nobody_can_rewrite_the_token_after_a_handover(minted: Minted) -> None:
    svm, creator, mint = minted.svm, minted.payer, minted.mint.pubkey()
    to = Keypair()
    handover = handover_transaction(holder=creator, mint=mint, to=to.pubkey(), repo=REPO,
                                    blockhash=svm.latest_blockhash())
    assert isinstance(svm.send_transaction(handover), TransactionMetadata)
    svm.airdrop(to.pubkey(), 10**9)
    before = svm.get_account(mint)
    assert before is not None
    # The creator (who paid for the metadata) and the holder alike: a field, or the authority to change them.
    for key in (creator, to):
        for ix in (t22.update_token_metadata_field(mint, key.pubkey(), t22.MetadataField.NAME, "Flair repo x"),
                   t22.update_token_metadata_field(mint, key.pubkey(), "name", "stolen"),
                   t22.update_token_metadata_authority(mint, key.pubkey(), key.pubkey())):
            tx = Transaction.new_signed_with_payer([ix], key.pubkey(), [key], svm.latest_blockhash())
            assert IMMUTABLE_METADATA in failed(svm.send_transaction(tx))
    after = svm.get_account(mint)
    assert after is not None and bytes(after.data) == bytes(before.data)
    verify_repo_token(mint=mint, owner=after.owner, data=bytes(after.data), repo=REPO, name=NAME)


def test_verification_refuses_a_token_whose_metadata_can_still_change(svm: LiteSVM, payer: Keypair) -> None:
    mint = repo_token_mint(NODE_SECRET, REPO)
    instructions = one_of_one_instructions(payer=payer.pubkey(), mint=mint.pubkey(), holder=payer.pubkey(),
                                           name=repo_token_name(REPO), symbol=NFT_SYMBOL, uri=URI,
                                           fields=repo_token_fields(REPO, NAME), memo=ownership_memo(REPO),
                                           rent=svm.minimum_balance_for_rent_exemption, keep_update_authority=True)
    tx = Transaction.new_signed_with_payer(instructions, payer.pubkey(), [payer, mint], svm.latest_blockhash())
    assert isinstance(svm.send_transaction(tx), TransactionMetadata)
    account = svm.get_account(mint.pubkey())
    assert account is not None
    state = parse_mint(bytes(account.data))
    assert state.metadata is not None and state.metadata.update_authority == payer.pubkey()
    with pytest.raises(IntegrityError, match=f"rewritten by {payer.pubkey()}: .* never revoked") as caught:
        verify_repo_token(mint=mint.pubkey(), owner=account.owner, data=bytes(account.data), repo=REPO, name=NAME)
    assert caught.value.data["repo"] == REPO
    # It matters: its creator can still rename it, or hand the right to anyone.
    edit = t22.update_token_metadata_field(mint.pubkey(), payer.pubkey(), "name", "stolen")
    edit_tx = Transaction.new_signed_with_payer([edit], payer.pubkey(), [payer], svm.latest_blockhash())
    assert isinstance(svm.send_transaction(edit_tx), TransactionMetadata)


def test_a_second_send_mints_no_second_token(minted: Minted) -> None:
    svm, payer = minted.svm, minted.payer
    assert "AlreadyProcessed" in failed(svm.send_transaction(minted.tx))
    svm.expire_blockhash()
    assert repo_token_mint(NODE_SECRET, REPO) == minted.mint  # a retry after a crash aims at the same mint
    retry = repo_token_transaction(payer=payer, mint=repo_token_mint(NODE_SECRET, REPO), repo=REPO, name=NAME,
                                   uri=URI, rent=svm.minimum_balance_for_rent_exemption,
                                   blockhash=svm.latest_blockhash())
    assert retry.signatures != minted.tx.signatures
    assert "already in use" in failed(svm.send_transaction(retry))
    account = svm.get_account(minted.mint.pubkey())
    assert account is not None and parse_mint(bytes(account.data)).supply == 1
    assert amount_at(svm, payer.pubkey(), minted.mint.pubkey()) == 1


def test_the_mint_key_is_derived_apart_from_commit_mints() -> None:
    expected = hashlib.sha256(b"flair/repo-token/v1\0" + NODE_SECRET + bytes.fromhex(REPO)).digest()
    assert repo_token_mint(NODE_SECRET, REPO) == Keypair.from_seed(expected)
    assert repo_token_mint(NODE_SECRET, REPO) != commit_mint(NODE_SECRET, CommitId(REPO))  # same hex, another tag
    assert repo_token_mint(bytes(32), REPO) != repo_token_mint(NODE_SECRET, REPO)
    for secret, repo in [(bytes(31), REPO), (NODE_SECRET, REPO.upper()), (NODE_SECRET, REPO + "\n"), ("x" * 32, REPO)]:
        with pytest.raises(InvalidInput):
            repo_token_mint(secret, repo)  # type: ignore[arg-type]


def test_the_name_field_is_cut_at_a_character_boundary() -> None:
    assert repo_token_name(REPO) == f"Flair repo {REPO[:10]}"
    for name, kept in [("é" * 40, "é" * 32), ("a" + "é" * 40, "a" + "é" * 31), ("x" * 64, "x" * 64),
                       ("x" * 65, "x" * 64), ("a" * 62 + "€", "a" * 62), ("", "")]:
        field = dict(repo_token_fields(REPO, name))["name"]
        assert field == kept and len(field.encode()) <= 64
    for bad in ("\ud800", b"bytes"):
        with pytest.raises(InvalidInput):
            repo_token_fields(REPO, bad)  # type: ignore[arg-type]


def test_the_longest_token_transaction_fits_one_packet_and_lands(svm: LiteSVM, payer: Keypair) -> None:
    assert len(LONGEST_URI) == MAX_URI_BYTES
    name = "€" * 22  # 66 bytes, cut to 21 characters (63 bytes); 64 x's are the longest field
    sizes = []
    for repo, long_name in [("e" * 64, "x" * 200), ("f" * 64, name)]:
        m = mint_token(svm, payer, repo, long_name, LONGEST_URI)
        sizes.append(len(bytes(m.tx)))
        assert sizes[-1] <= MAX_TRANSACTION_BYTES
        account = svm.get_account(m.mint.pubkey())
        assert account is not None
        verify_repo_token(mint=m.mint.pubkey(), owner=account.owner, data=bytes(account.data), repo=RepoId(repo),
                          name=long_name)
    print(f"\nlargest ownership token transaction: {max(sizes)} bytes")
    with pytest.raises(InvalidInput, match="URI"):
        repo_token_transaction(payer=payer, mint=m.mint, repo=REPO, name=NAME, uri=LONGEST_URI + "x",
                               rent=svm.minimum_balance_for_rent_exemption, blockhash=svm.latest_blockhash())
    with pytest.raises(InvalidInput, match="mint"):
        repo_token_transaction(payer=payer, mint=payer, repo=REPO, name=NAME, uri=URI,
                               rent=svm.minimum_balance_for_rent_exemption, blockhash=svm.latest_blockhash())


# -- handover ---------------------------------------------------------------------------------------------

def test_a_handover_moves_the_one_token(minted: Minted) -> None:
    svm, holder, mint = minted.svm, minted.payer, minted.mint.pubkey()
    to = Keypair().pubkey()  # the new owner neither signs nor needs SOL
    tx = handover_transaction(holder=holder, mint=mint, to=to, repo=REPO, blockhash=svm.latest_blockhash())
    assert list(tx.message.account_keys[:tx.message.header.num_required_signatures]) == [holder.pubkey()]
    result = svm.send_transaction(tx)
    assert isinstance(result, TransactionMetadata), result
    assert (amount_at(svm, to, mint), amount_at(svm, holder.pubkey(), mint)) == (1, 0)
    assert holds(svm, to, mint) and not holds(svm, holder.pubkey(), mint)
    memo = f"flair:1:handover:{REPO}:{to}".encode()
    assert handover_memo(REPO, PublicKey(str(to))) == memo and parse_handover_memo(memo) == (REPO, str(to))
    assert f'Program log: Memo (len {len(memo)}): "{memo.decode()}"' in result.logs()
    assert f"Program log: Signed by {holder.pubkey()}" in result.logs()
    again = handover_transaction(holder=holder, mint=mint, to=Keypair().pubkey(), repo=REPO,
                                 blockhash=svm.latest_blockhash())
    assert "insufficient funds" in failed(svm.send_transaction(again))  # the old holder has nothing left to give
    account = svm.get_account(mint)
    assert account is not None  # the token itself is unchanged: it still checks out
    verify_repo_token(mint=mint, owner=account.owner, data=bytes(account.data), repo=REPO, name=NAME)


def test_the_new_owner_can_hand_it_on(minted: Minted) -> None:
    svm, mint = minted.svm, minted.mint.pubkey()
    second, third = Keypair(), Keypair()
    svm.airdrop(second.pubkey(), 10**9)
    for holder, to in [(minted.payer, second.pubkey()), (second, third.pubkey())]:
        tx = handover_transaction(holder=holder, mint=mint, to=to, repo=REPO, blockhash=svm.latest_blockhash())
        assert isinstance(svm.send_transaction(tx), TransactionMetadata)
    assert [amount_at(svm, k, mint) for k in (minted.payer.pubkey(), second.pubkey(), third.pubkey())] == [0, 0, 1]


def test_only_the_holder_can_hand_over(minted: Minted) -> None:
    svm, holder, mint = minted.svm, minted.payer, minted.mint.pubkey()
    mallory = Keypair()
    svm.airdrop(mallory.pubkey(), 10**9)
    # Mallory's own handover: she holds no token account of this mint.
    theirs = handover_transaction(holder=mallory, mint=mint, to=Keypair().pubkey(), repo=REPO,
                                  blockhash=svm.latest_blockhash())
    assert "TransferChecked" in (why := failed(svm.send_transaction(theirs))) and "InvalidAccountData" in why
    # Mallory moving the holder's token, signing as the authority herself.
    stolen = transfer_checked(associated_token_address(holder.pubkey(), mint), mint,
                              associated_token_address(mallory.pubkey(), mint), mallory.pubkey(), 1, 0)
    create = t22.create_associated_token_account_idempotent(mallory.pubkey(), mallory.pubkey(), mint)
    tx = Transaction.new_signed_with_payer([create, stolen], mallory.pubkey(), [mallory], svm.latest_blockhash())
    assert "owner does not match" in failed(svm.send_transaction(tx))
    assert amount_at(svm, holder.pubkey(), mint) == 1 and holds(svm, holder.pubkey(), mint)
    assert not holds(svm, mallory.pubkey(), mint)
    with pytest.raises(InvalidInput, match="already holds"):
        handover_transaction(holder=holder, mint=mint, to=holder.pubkey(), repo=REPO, blockhash=Hash.default())


def test_transfer_checked_follows_the_published_layout() -> None:
    b, c, d = (Keypair.from_seed(bytes([i]) * 32).pubkey() for i in (2, 3, 4))
    ix = transfer_checked(A, b, c, d, 1, 0)
    assert ix.program_id == TOKEN_2022_PROGRAM_ID and ix.data == bytes([12, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    assert transfer_checked(A, b, c, d, 2**64 - 1, 9).data == bytes([12]) + b"\xff" * 8 + b"\x09"
    assert [(m.pubkey, m.is_signer, m.is_writable) for m in ix.accounts] == [
        (A, False, True), (b, False, False), (c, False, True), (d, True, False)]
    for amount, decimals in [(0, 0), (2**64, 0), (1, 256), (1, -1)]:
        with pytest.raises(InvalidInput):
            transfer_checked(A, b, c, d, amount, decimals)


def test_holds_one_reads_only_a_token_account_of_that_mint_and_holder(minted: Minted) -> None:
    svm, holder, mint = minted.svm, minted.payer.pubkey(), minted.mint.pubkey()
    account = svm.get_account(associated_token_address(holder, mint))
    assert account is not None
    data = bytes(account.data)
    assert holds_one(holder=holder, mint=mint, owner=TOKEN_2022_PROGRAM_ID, data=data)
    assert not holds_one(holder=A, mint=mint, owner=TOKEN_2022_PROGRAM_ID, data=data)
    assert not holds_one(holder=holder, mint=A, owner=TOKEN_2022_PROGRAM_ID, data=data)
    assert not holds_one(holder=holder, mint=mint, owner=t22.SYSTEM_PROGRAM_ID, data=data)
    assert not holds_one(holder=holder, mint=mint, owner=TOKEN_2022_PROGRAM_ID, data=b"")
    two = data[:64] + (2).to_bytes(8, "little") + data[72:]
    assert not holds_one(holder=holder, mint=mint, owner=TOKEN_2022_PROGRAM_ID, data=two)
    with pytest.raises(IntegrityError):
        holds_one(holder=holder, mint=mint, owner=TOKEN_2022_PROGRAM_ID, data=data[:100])


# -- the chain client against flair-node localnet -----------------------------------------------------------

@asynccontextmanager
async def localnet(tmp_path: Path) -> AsyncIterator[Chain]:
    chain_dir = LocalChain(tmp_path / "chain")
    try:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(LocalnetServer(chain_dir).run)
            chain = Chain(url)
            try:
                yield chain
            finally:
                await chain.close()
                nursery.cancel_scope.cancel()
    finally:
        chain_dir.close()


async def test_the_chain_client_reads_a_handover_back(tmp_path: Path, payer: Keypair) -> None:
    async with localnet(tmp_path) as chain:
        me, mint = str(payer.pubkey()), repo_token_mint(NODE_SECRET, REPO)
        await chain.airdrop(me, 10**9)
        size = repo_token_mint_size(REPO, NAME, URI)
        rent = {size: await chain.rent(size)}
        minting = await chain.send(bytes(repo_token_transaction(
            payer=payer, mint=mint, repo=REPO, name=NAME, uri=URI, rent=rent.__getitem__,
            blockhash=await chain.latest_blockhash())))
        created = await chain.transaction(minting)
        assert created is not None and created.error is None and created.memos == (ownership_memo(REPO),)
        assert created.token_moves == (TokenMove(str(mint.pubkey()), me, 0, 1),)  # its account is new: 0 before
        assert await chain.holds(me, str(mint.pubkey()))
        account = await chain.account(str(mint.pubkey()))
        assert account is not None
        verify_repo_token(mint=mint.pubkey(), owner=Pubkey.from_string(account.owner), data=account.data, repo=REPO,
                          name=NAME)

        to = Keypair().pubkey()
        signature = await chain.send(bytes(handover_transaction(holder=payer, mint=mint.pubkey(), to=to, repo=REPO,
                                                                blockhash=await chain.latest_blockhash())))
        status = await chain.status(signature)
        found = await chain.transaction(signature)
        assert status is not None and found is not None
        assert found == Landed(slot=status.slot, error=None, memos=(f"flair:1:handover:{REPO}:{to}".encode(),),
                               token_moves=tuple(sorted([TokenMove(str(mint.pubkey()), me, 1, 0),
                                                         TokenMove(str(mint.pubkey()), str(to), 0, 1)],
                                                        key=lambda m: m.owner)), signers=(me,))
        assert found.slot > created.slot
        assert await chain.memos(signature) == [handover_memo(REPO, PublicKey(str(to)))]
        assert await chain.holds(str(to), str(mint.pubkey())) and not await chain.holds(me, str(mint.pubkey()))
        assert not await chain.holds(str(to), str(Keypair().pubkey()))  # no such account at all
        assert await chain.transaction(str(payer.sign_message(b"never sent"))) is None
        assert await chain.memos(str(payer.sign_message(b"never sent"))) == []

        # A handover by a key without the token, sent past preflight: it lands failed, and moves nothing.
        mallory = Keypair()
        await chain.airdrop(str(mallory.pubkey()), 10**9)
        forged = handover_transaction(holder=mallory, mint=mint.pubkey(), to=to, repo=REPO,
                                      blockhash=await chain.latest_blockhash())
        with pytest.raises(ChainError, match="sendTransaction"):
            await chain.send(bytes(forged))
        client = AsyncClient(chain.url)
        try:
            sent = str((await client.send_raw_transaction(bytes(forged), TxOpts(skip_preflight=True))).value)
        finally:
            await client.close()
        refused = await chain.transaction(sent)
        assert refused is not None and refused.error is not None
        assert all(move.before == move.after for move in refused.token_moves)
        assert await chain.holds(str(to), str(mint.pubkey()))


def _balance(index: int, mint: str, owner: str | None, amount: object) -> SimpleNamespace:
    return SimpleNamespace(account_index=index, mint=mint, owner=owner,
                           ui_token_amount=SimpleNamespace(amount=amount))


def test_token_moves_sum_per_owner_and_refuse_malformed_balances() -> None:
    m, o, p = "M", "O", "P"
    pre = [_balance(1, m, o, "2"), _balance(2, m, o, "3"), _balance(3, "N", o, "7")]
    post = [_balance(1, m, o, "0"), _balance(2, m, o, "4"), _balance(4, m, p, "1")]
    assert token_moves(pre, post, "rpc") == (TokenMove(m, o, 5, 4), TokenMove(m, p, 0, 1), TokenMove("N", o, 7, 0))
    assert token_moves(None, None, "rpc") == ()
    for bad, message in [
        ([_balance(1, m, o, "01")], "not a u64"), ([_balance(1, m, o, "-1")], "not a u64"),
        ([_balance(1, m, o, str(2**64))], "not a u64"), ([_balance(1, m, o, 5)], "not a u64"),
        ([_balance(1, m, o, " 1")], "not a u64"), ([_balance(1, m, None, "1")], "without the owner"),
        ([_balance(1, m, o, "1"), _balance(1, m, p, "1")], "twice"),
        ([_balance(i, m, o, "1") for i in range(257)], "more than a transaction has accounts"),
    ]:
        with pytest.raises(ChainError, match=message):
            token_moves(bad, [], "rpc")


def test_a_transaction_without_status_is_not_taken_for_a_success(minted: Minted) -> None:
    from solders.transaction import VersionedTransaction

    tx = VersionedTransaction.from_legacy(minted.tx)
    value = SimpleNamespace(slot=5, transaction=SimpleNamespace(transaction=tx, meta=None))
    assert landed(value, "rpc") == Landed(5, UNKNOWN_STATUS, (ownership_memo(REPO),), (),
                                          (str(minted.payer.pubkey()), str(minted.mint.pubkey())))
    with pytest.raises(ChainError, match="slot"):
        landed(SimpleNamespace(slot=-1, transaction=value.transaction), "rpc")
    assert landed(value, "rpc", signature=str(tx.signatures[0])).slot == 5
    with pytest.raises(ChainError, match="another transaction"):
        landed(value, "rpc", signature=str(Keypair().sign_message(b"x")))
    with pytest.raises(ChainError, match="encoding"):
        landed(SimpleNamespace(slot=5, transaction=SimpleNamespace(transaction="json", meta=None)), "rpc")


# -- memos ------------------------------------------------------------------------------------------------

def test_the_ownership_memos_have_one_spelling_each() -> None:
    key = KEY
    assert ownership_memo(REPO) == f"flair:1:own:{REPO}".encode() and parse_ownership_memo(ownership_memo(REPO)) == REPO
    assert handover_memo(REPO, key) == f"flair:1:handover:{REPO}:{key}".encode()
    assert membership_memo(REPO, 7, CHANGE) == f"flair:1:member:{REPO}:7:{CHANGE}".encode()
    for seq in (1, 7, 10, MAX_SEQ):
        assert parse_membership_memo(membership_memo(REPO, seq, CHANGE)) == (REPO, seq, CHANGE)
    assert len(membership_memo(REPO, MAX_SEQ, CHANGE)) == 165 and len(handover_memo(REPO, key)) <= 126
    for memo in (ownership_memo(REPO), handover_memo(REPO, key), membership_memo(REPO, 1, RecordId(REPO))):
        with pytest.raises(IntegrityError):  # never read as an anchor
            parse_anchor_memo(memo)
    parsers: list[tuple[Callable[[bytes], object], bytes]] = [
        (parse_ownership_memo, handover_memo(REPO, key)), (parse_handover_memo, membership_memo(REPO, 1, CHANGE)),
        (parse_membership_memo, ownership_memo(REPO))]
    for parse, memo in parsers:
        with pytest.raises(IntegrityError):
            parse(memo)


@pytest.mark.parametrize("call", [
    lambda: ownership_memo(RepoId(REPO.upper())), lambda: ownership_memo(RepoId(REPO[:-1])),
    lambda: ownership_memo(RepoId(REPO + "\n")), lambda: handover_memo(REPO, PublicKey("not-a-key")),
    lambda: handover_memo(REPO, PublicKey(KEY + " ")), lambda: handover_memo(REPO, PublicKey("1" * 44)),
    lambda: handover_memo(RepoId("x"), KEY),
    lambda: membership_memo(REPO, 0, CHANGE), lambda: membership_memo(REPO, -1, CHANGE),
    lambda: membership_memo(REPO, True, CHANGE), lambda: membership_memo(REPO, MAX_SEQ + 1, CHANGE),
    lambda: membership_memo(REPO, "1", CHANGE),  # type: ignore[arg-type]
    lambda: membership_memo(REPO, 1, RecordId(CHANGE.upper())), lambda: membership_memo(REPO, 1, RecordId(CHANGE[:-2])),
])
def test_writing_a_memo_refuses_bad_fields(call: Callable[[], bytes]) -> None:
    with pytest.raises(InvalidInput):
        call()


@pytest.mark.parametrize("memo", [
    f"flair:1:member:{REPO}:07:{CHANGE}", f"flair:1:member:{REPO}:0:{CHANGE}", f"flair:1:member:{REPO}:+7:{CHANGE}",
    f"flair:1:member:{REPO}:7 :{CHANGE}", f"flair:1:member:{REPO}::{CHANGE}", f"flair:1:member:{REPO}:٧:{CHANGE}",
    f"flair:1:member:{REPO}:{MAX_SEQ + 1}:{CHANGE}", f"flair:1:member:{REPO}:7:{CHANGE[:-1]}",
    f"flair:1:member:{REPO}:7:{CHANGE}0", f"flair:1:member:{REPO}:7:{CHANGE.upper()}",
    f"flair:1:member:{REPO.upper()}:7:{CHANGE}", f"flair:1:member:{REPO}:7:{CHANGE}\n",
    f"flair:1:member:{REPO}:7:{CHANGE}:", f"flair:1:member:{REPO}:7:{CHANGE}:x", f"flair:2:member:{REPO}:7:{CHANGE}",
    f"FLAIR:1:member:{REPO}:7:{CHANGE}", f"flair:1:Member:{REPO}:7:{CHANGE}", f"flair:1:member:{REPO}:7",
    "", "flair:1:member", f"flair:1:member:{REPO}:7:{CHANGE}" + "0" * 400,
])
def test_parsing_a_membership_memo_refuses_anything_else(memo: str) -> None:
    with pytest.raises(IntegrityError):
        parse_membership_memo(memo.encode())
    with pytest.raises(IntegrityError):
        parse_membership_memo(b"\xff" + memo.encode())


@pytest.mark.parametrize("memo", [
    f"flair:1:own:{REPO}\n", f"flair:1:own:{REPO.upper()}", f"flair:1:own:{REPO}:", f"flair:1:own:{REPO[:-1]}",
    f"flair:1:own:{REPO}:{A}", f"flair:1:handover:{REPO}:{A}\n", f"flair:1:handover:{REPO}:{A}:",
    f"flair:1:handover:{REPO}:1{A}", f"flair:1:handover:{REPO}:", f"flair:1:handover:{REPO}:{str(A).lower()}",
])
def test_parsing_the_other_ownership_memos_refuses_anything_else(memo: str) -> None:
    with pytest.raises(IntegrityError):
        parse_ownership_memo(memo.encode())
    with pytest.raises(IntegrityError):
        parse_handover_memo(memo.encode())
