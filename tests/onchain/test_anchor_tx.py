"""The anchor transaction on a real SVM: what it leaves on chain, what it costs, and what it refuses."""

from __future__ import annotations

import dataclasses

import pytest
from solders.keypair import Keypair
from solders.message import Message
from solders.signature import Signature
from solders.transaction import Transaction
from solders.transaction_metadata import TransactionMetadata

from flair_node.core.errors import IntegrityError, InvalidInput
from flair_node.core.ids import BranchName, CommitId
from flair_node.protocol.anchoring import (
    MAX_ROUND,
    MAX_TRANSACTION_BYTES,
    MAX_URI_BYTES,
    MEMO_PROGRAM_ID,
    NFT_SYMBOL,
    TOKEN_2022_PROGRAM_ID,
    AnchorRecord,
    MetadataPointer,
    anchor_memo,
    associated_token_address,
    commit_mint,
    commit_nft_fields,
    commit_nft_instructions,
    commit_nft_mint_size,
    commit_nft_name,
    commit_nft_transaction,
    parse_anchor_memo,
    parse_mint,
    parse_token_account,
    verify_commit_nft,
)
from flair_node.protocol.anchoring import token2022 as t22

from .conftest import NODE_SECRET, PROOF, URI, Anchored, anchor, failed

ATA_SIZE = 170  # a Token-2022 token account with the ImmutableOwner extension the ATA program adds


def mint_state(a: Anchored) -> t22.MintAccount:
    account = a.svm.get_account(a.mint.pubkey())
    assert account is not None
    return parse_mint(bytes(account.data))


def metadata_of(a: Anchored) -> t22.TokenMetadata:
    metadata = mint_state(a).metadata
    assert metadata is not None
    return metadata


def test_anchor_lands_and_what_it_costs(anchored: Anchored) -> None:
    svm = anchored.svm
    fee = 5000 * 2  # payer and mint sign
    mint_rent = svm.minimum_balance_for_rent_exemption(commit_nft_mint_size(anchored.record, anchored.uri))
    ata_rent = svm.minimum_balance_for_rent_exemption(ATA_SIZE)
    assert anchored.paid == fee + mint_rent + ata_rent
    print(f"\nanchor transaction: {len(bytes(anchored.tx))} bytes, {anchored.result.compute_units_consumed()} CU, "
          f"{anchored.paid} lamports = fee {fee} + mint rent {mint_rent} + token account rent {ata_rent}")


def test_memo_is_the_anchor_record(anchored: Anchored) -> None:
    memo = anchor_memo(anchored.record)
    message = anchored.tx.message
    memos = [ix.data for ix in message.instructions if message.account_keys[ix.program_id_index] == MEMO_PROGRAM_ID]
    assert memos == [memo]
    assert parse_anchor_memo(memos[0]) == anchored.record
    logs = anchored.result.logs()
    assert f'Program log: Memo (len {len(memo)}): "{memo.decode()}"' in logs
    assert f"Program log: Signed by {anchored.payer.pubkey()}" in logs


def test_mint_is_one_token_with_metadata_on_itself(anchored: Anchored) -> None:
    account = anchored.svm.get_account(anchored.mint.pubkey())
    assert account is not None and account.owner == TOKEN_2022_PROGRAM_ID
    assert len(account.data) == commit_nft_mint_size(anchored.record, anchored.uri)
    assert account.lamports == anchored.svm.minimum_balance_for_rent_exemption(len(account.data))
    mint = parse_mint(bytes(account.data))
    assert (mint.supply, mint.decimals, mint.mint_authority, mint.freeze_authority) == (1, 0, None, None)
    assert mint.extensions == (t22.ExtensionType.METADATA_POINTER, t22.ExtensionType.TOKEN_METADATA)
    assert mint.metadata_pointer == MetadataPointer(authority=None, metadata_address=anchored.mint.pubkey())
    metadata = mint.metadata
    assert metadata is not None
    assert metadata.mint == anchored.mint.pubkey() and metadata.update_authority == anchored.payer.pubkey()
    assert (metadata.name, metadata.symbol, metadata.uri) == (f"Flair r12 {anchored.record.commit[:10]}",
                                                              NFT_SYMBOL, URI)
    assert metadata.additional == (("repository", anchored.record.repo), ("commit", anchored.record.commit))
    assert metadata.field("commit") == anchored.record.commit and metadata.field("round") is None
    assert verify_commit_nft(mint=anchored.mint.pubkey(), owner=account.owner, data=bytes(account.data),
                             record=anchored.record, aggregator=anchored.payer.pubkey()) == mint


def test_the_token_sits_in_the_payers_associated_account(anchored: Anchored) -> None:
    address = associated_token_address(anchored.payer.pubkey(), anchored.mint.pubkey())
    account = anchored.svm.get_account(address)
    assert account is not None and account.owner == TOKEN_2022_PROGRAM_ID and len(account.data) == ATA_SIZE
    token = parse_token_account(bytes(account.data))
    assert (token.mint, token.owner, token.amount, token.frozen) == (anchored.mint.pubkey(),
                                                                     anchored.payer.pubkey(), 1, False)


def test_a_retry_of_the_same_commit_fails_and_mints_nothing(anchored: Anchored) -> None:
    svm, payer = anchored.svm, anchored.payer
    assert commit_mint(NODE_SECRET, anchored.record.commit) == anchored.mint  # the retry derives the same mint
    again = svm.send_transaction(anchored.tx)  # the very same transaction: the runtime drops it
    assert "AlreadyProcessed" in failed(again)
    svm.expire_blockhash()
    before = svm.get_balance(payer.pubkey())
    retry = commit_nft_transaction(payer=payer, mint=commit_mint(NODE_SECRET, anchored.record.commit),
                                   record=anchored.record, uri=anchored.uri,
                                   rent=svm.minimum_balance_for_rent_exemption, blockhash=svm.latest_blockhash())
    assert retry.signatures != anchored.tx.signatures
    assert "already in use" in failed(svm.send_transaction(retry))
    assert svm.get_balance(payer.pubkey()) == before - 10_000  # only the fee of the failed attempt
    assert mint_state(anchored).supply == 1
    ata = svm.get_account(associated_token_address(payer.pubkey(), anchored.mint.pubkey()))
    assert ata is not None and parse_token_account(bytes(ata.data)).amount == 1


def test_the_supply_can_never_grow(anchored: Anchored) -> None:
    svm, payer = anchored.svm, anchored.payer
    ata = associated_token_address(payer.pubkey(), anchored.mint.pubkey())
    for authority in (payer, Keypair()):
        svm.airdrop(authority.pubkey(), 10**9)
        ix = t22.mint_to(anchored.mint.pubkey(), ata, authority.pubkey(), 1)
        tx = Transaction.new_signed_with_payer([ix], authority.pubkey(), [authority], svm.latest_blockhash())
        assert "the total supply of this token is fixed" in failed(svm.send_transaction(tx))
    assert mint_state(anchored).supply == 1


def test_only_the_update_authority_may_edit_the_metadata_and_edits_show(anchored: Anchored) -> None:
    svm, payer, mint = anchored.svm, anchored.payer, anchored.mint.pubkey()
    mallory = Keypair()
    svm.airdrop(mallory.pubkey(), 10**9)
    forged = t22.update_token_metadata_field(mint, mallory.pubkey(), "commit", "0" * 64)
    tx = Transaction.new_signed_with_payer([forged], mallory.pubkey(), [mallory], svm.latest_blockhash())
    assert "custom program error" in failed(svm.send_transaction(tx))
    assert metadata_of(anchored).field("commit") == anchored.record.commit
    # The aggregator keeps the update authority; rewriting its own anchor is visible to every verifier.
    edit = t22.update_token_metadata_field(mint, payer.pubkey(), "commit", "0" * 64)
    tx = Transaction.new_signed_with_payer([edit], payer.pubkey(), [payer], svm.latest_blockhash())
    assert isinstance(svm.send_transaction(tx), TransactionMetadata)
    account = svm.get_account(mint)
    assert account is not None
    with pytest.raises(IntegrityError, match="do not name the record"):
        verify_commit_nft(mint=mint, owner=account.owner, data=bytes(account.data), record=anchored.record,
                          aggregator=payer.pubkey())


@pytest.mark.parametrize("forgery", ["payer signed by another key", "mint signature missing", "unsigned"])
def test_a_transaction_without_the_right_signatures_is_refused(svm, payer, record, forgery) -> None:
    mint = commit_mint(NODE_SECRET, record.commit)
    mallory = Keypair()
    svm.airdrop(mallory.pubkey(), 10**9)
    instructions = commit_nft_instructions(payer=payer.pubkey(), mint=mint.pubkey(), record=record, uri=URI,
                                           rent=svm.minimum_balance_for_rent_exemption)
    message = Message.new_with_blockhash(instructions, payer.pubkey(), svm.latest_blockhash())
    assert list(message.account_keys[:2]) == [payer.pubkey(), mint.pubkey()]  # the two signers
    signatures = {
        "payer signed by another key": [mallory.sign_message(bytes(message)), mint.sign_message(bytes(message))],
        "mint signature missing": [payer.sign_message(bytes(message)), Signature.default()],
        "unsigned": [Signature.default(), Signature.default()],
    }[forgery]
    before = svm.get_balance(payer.pubkey())
    assert "SignatureFailure" in failed(svm.send_transaction(Transaction.populate(message, signatures)))
    assert svm.get_account(mint.pubkey()) is None and svm.get_balance(payer.pubkey()) == before


def test_the_payer_cannot_be_the_mint(svm, payer, record) -> None:
    with pytest.raises(InvalidInput, match="mint"):
        commit_nft_transaction(payer=payer, mint=payer, record=record, uri=URI,
                               rent=svm.minimum_balance_for_rent_exemption, blockhash=svm.latest_blockhash())


def test_someone_elses_key_cannot_take_the_mint(anchored: Anchored) -> None:
    """Another payer building the same record's NFT needs the node's secret: with its own secret it gets
    another mint, and the verifier tells the two apart by the aggregator."""
    svm = anchored.svm
    mallory = Keypair()
    svm.airdrop(mallory.pubkey(), 10**10)
    theirs = commit_nft_transaction(payer=mallory, mint=commit_mint(bytes(32), anchored.record.commit),
                                    record=anchored.record, uri=URI, rent=svm.minimum_balance_for_rent_exemption,
                                    blockhash=svm.latest_blockhash())
    assert isinstance(svm.send_transaction(theirs), TransactionMetadata)
    mint = commit_mint(bytes(32), anchored.record.commit).pubkey()
    assert mint != anchored.mint.pubkey()
    account = svm.get_account(mint)
    assert account is not None
    with pytest.raises(IntegrityError, match="updated by"):
        verify_commit_nft(mint=mint, owner=account.owner, data=bytes(account.data), record=anchored.record,
                          aggregator=anchored.payer.pubkey())


def test_the_largest_record_fits_one_packet_and_lands(svm, payer) -> None:
    record = AnchorRecord(repo=CommitId("e" * 64), branch=BranchName("b" + "-x" * 49 + "z"), round=MAX_ROUND,
                          commit=CommitId("f" * 64), proof=PROOF)
    uri = "https://ipfs.io/ipfs/" + PROOF
    assert len(uri) == MAX_URI_BYTES
    a = anchor(svm, payer, record, uri)
    assert len(bytes(a.tx)) <= MAX_TRANSACTION_BYTES
    print(f"\nlargest anchor transaction: {len(bytes(a.tx))} bytes, {a.result.compute_units_consumed()} CU")
    account = svm.get_account(a.mint.pubkey())
    assert account is not None
    verify_commit_nft(mint=a.mint.pubkey(), owner=account.owner, data=bytes(account.data), record=record,
                      aggregator=payer.pubkey())
    with pytest.raises(InvalidInput, match="URI"):
        commit_nft_transaction(payer=payer, mint=a.mint, record=record, uri=uri + "x",
                               rent=svm.minimum_balance_for_rent_exemption, blockhash=svm.latest_blockhash())


def test_an_anchor_without_a_proof(svm, payer, record) -> None:
    plain = dataclasses.replace(record, proof=None, round=1)
    a = anchor(svm, payer, plain)
    assert anchor_memo(plain).endswith(plain.commit.encode())
    assert metadata_of(a).name == commit_nft_name(plain) == "Flair r1 91c2ababab"
    assert metadata_of(a).additional == commit_nft_fields(plain)


def test_parsing_round_trips_the_real_mint(anchored: Anchored) -> None:
    account = anchored.svm.get_account(anchored.mint.pubkey())
    assert account is not None
    data = bytes(account.data)
    metadata = metadata_of(anchored)
    assert metadata.update_authority is not None
    # Rebuild the account bytes from what was parsed: they are exactly what Token-2022 wrote.
    pointer = bytes(32) + bytes(anchored.mint.pubkey())
    value = (bytes(metadata.update_authority) + bytes(metadata.mint)
             + b"".join(t22._borsh_string(s) for s in (metadata.name, metadata.symbol, metadata.uri))
             + len(metadata.additional).to_bytes(4, "little")
             + b"".join(t22._borsh_string(k) + t22._borsh_string(v) for k, v in metadata.additional))
    tlv = (b"\x12\x00" + len(pointer).to_bytes(2, "little") + pointer
           + b"\x13\x00" + len(value).to_bytes(2, "little") + value)
    assert data[t22.ACCOUNT_BASE_SIZE + 1:] == tlv
    assert data[36:46] == (1).to_bytes(8, "little") + b"\x00\x01"  # supply 1, 0 decimals, initialized
    assert data[t22.MINT_BASE_SIZE:t22.ACCOUNT_BASE_SIZE + 1] == bytes(83) + b"\x01"
