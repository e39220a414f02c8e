"""Contribution NFTs on a real SVM: minted into the contributor's account without the contributor signing, one
token forever, checked against the merge and the contribution they name; and the shared one-of-one builder
under the commit NFT."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import pytest
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.transaction import Transaction
from solders.transaction_metadata import TransactionMetadata

from flair_node.core.errors import IntegrityError, InvalidInput
from flair_node.core.ids import BranchName, CommitId, RepoId
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
    commit_nft_name,
    contribution_mint,
    contribution_nft_fields,
    contribution_nft_mint_size,
    contribution_nft_name,
    contribution_nft_transaction,
    holds_one,
    one_of_one_instructions,
    parse_mint,
    parse_token_account,
    verify_contribution_nft,
)
from flair_node.protocol.anchoring import token2022 as t22

from .conftest import IMMUTABLE_METADATA, NODE_SECRET, PROOF, URI, failed

CONTRIBUTION = CommitId("5e" * 32)
LONGEST_URI = "https://ipfs.io/ipfs/" + PROOF


@dataclass
class Minted:
    svm: LiteSVM
    payer: Keypair
    contributor: Keypair
    mint: Keypair
    record: AnchorRecord
    tx: Transaction
    logs: list[str]


def mint_nft(svm: LiteSVM, payer: Keypair, record: AnchorRecord, contribution: CommitId = CONTRIBUTION,
             uri: str = URI) -> Minted:
    contributor = Keypair()  # holds no SOL and never signs
    mint = contribution_mint(NODE_SECRET, record.commit, contribution)
    tx = contribution_nft_transaction(payer=payer, mint=mint, record=record, contributor=contributor.pubkey(),
                                      contribution=contribution, uri=uri,
                                      rent=svm.minimum_balance_for_rent_exemption, blockhash=svm.latest_blockhash())
    result = svm.send_transaction(tx)
    assert isinstance(result, TransactionMetadata), result
    return Minted(svm, payer, contributor, mint, record, tx, list(result.logs()))


@pytest.fixture
def minted(svm: LiteSVM, payer: Keypair, record: AnchorRecord) -> Minted:
    return mint_nft(svm, payer, record)


def test_the_nft_lands_in_the_contributors_account(minted: Minted) -> None:
    svm, mint, contributor = minted.svm, minted.mint.pubkey(), minted.contributor.pubkey()
    message = minted.tx.message
    signers = list(message.account_keys[:message.header.num_required_signatures])
    assert signers == [minted.payer.pubkey(), mint] and contributor in message.account_keys
    assert svm.get_account(contributor) is None  # no SOL, no account: it only receives
    holding = svm.get_account(associated_token_address(contributor, mint))
    assert holding is not None
    token = parse_token_account(bytes(holding.data))
    assert (token.mint, token.owner, token.amount, token.frozen) == (mint, contributor, 1, False)
    assert holds_one(holder=contributor, mint=mint, owner=holding.owner, data=bytes(holding.data))
    assert svm.get_account(associated_token_address(minted.payer.pubkey(), mint)) is None
    assert not any(message.account_keys[ix.program_id_index] == MEMO_PROGRAM_ID for ix in message.instructions)


def test_the_nft_is_one_of_one_naming_the_merge_and_the_contribution(minted: Minted) -> None:
    svm, mint, record = minted.svm, minted.mint.pubkey(), minted.record
    account = svm.get_account(mint)
    assert account is not None and account.owner == TOKEN_2022_PROGRAM_ID
    assert len(account.data) == contribution_nft_mint_size(record, CONTRIBUTION, URI)
    assert account.lamports == svm.minimum_balance_for_rent_exemption(len(account.data))
    state = parse_mint(bytes(account.data))
    assert (state.supply, state.decimals, state.mint_authority, state.freeze_authority) == (1, 0, None, None)
    assert state.metadata_pointer == MetadataPointer(authority=None, metadata_address=mint)
    metadata = state.metadata
    assert metadata is not None and metadata.update_authority is None  # revoked: the metadata is final
    assert "Program log: TokenMetadataInstruction: UpdateAuthority" in minted.logs
    assert (metadata.name, metadata.symbol, metadata.uri) == (f"Flair r12 {record.commit[:10]} contribution",
                                                              NFT_SYMBOL, URI)
    assert metadata.additional == (("repository", record.repo), ("commit", record.commit),
                                   ("contribution", CONTRIBUTION)) == contribution_nft_fields(record, CONTRIBUTION)
    assert verify_contribution_nft(mint=mint, owner=account.owner, data=bytes(account.data), record=record,
                                   contribution=CONTRIBUTION) == state
    # The mint authority is gone: not even the aggregator can mint a second one.
    payer = minted.payer
    again = t22.mint_to(mint, associated_token_address(minted.contributor.pubkey(), mint), payer.pubkey(), 1)
    tx = Transaction.new_signed_with_payer([again], payer.pubkey(), [payer], svm.latest_blockhash())
    assert "the total supply of this token is fixed" in failed(svm.send_transaction(tx))


def test_verification_refuses_another_contribution_or_merge(minted: Minted) -> None:
    account = minted.svm.get_account(minted.mint.pubkey())
    assert account is not None
    ok: dict[str, Any] = {"mint": minted.mint.pubkey(), "owner": account.owner, "data": bytes(account.data),
                          "record": minted.record, "contribution": CONTRIBUTION}
    other_commit = dataclasses.replace(minted.record, commit=CommitId("0" * 64))
    changes: list[tuple[dict[str, Any], str]] = [
        ({"contribution": CommitId("6f" * 32)}, "do not name the record"), ({"record": other_commit}, "metadata names"),
        ({"record": dataclasses.replace(minted.record, round=13)}, "metadata names"),
        ({"owner": t22.SYSTEM_PROGRAM_ID}, "not Token-2022"),
    ]
    for change, message in changes:
        with pytest.raises(IntegrityError, match=message) as caught:
            verify_contribution_nft(**{**ok, **change})
        assert caught.value.data["mint"] == str(minted.mint.pubkey())
    with pytest.raises(InvalidInput, match="contribution id"):
        verify_contribution_nft(**{**ok, "contribution": "5E" * 32})


def test_nobody_can_rewrite_the_contributors_nft(minted: Minted) -> None:
    svm, aggregator, mint = minted.svm, minted.payer, minted.mint.pubkey()
    contributor = minted.contributor
    svm.airdrop(contributor.pubkey(), 10**9)
    before = svm.get_account(mint)
    assert before is not None
    # The aggregator (who paid for the metadata) and the contributor alike: a field, or the authority over them.
    for key in (aggregator, contributor):
        for ix in (t22.update_token_metadata_field(mint, key.pubkey(), "contribution", "6f" * 32),
                   t22.update_token_metadata_field(mint, key.pubkey(), t22.MetadataField.URI, "ipfs://other"),
                   t22.update_token_metadata_authority(mint, key.pubkey(), key.pubkey())):
            tx = Transaction.new_signed_with_payer([ix], key.pubkey(), [key], svm.latest_blockhash())
            assert IMMUTABLE_METADATA in failed(svm.send_transaction(tx))
    after = svm.get_account(mint)
    assert after is not None and bytes(after.data) == bytes(before.data)
    verify_contribution_nft(mint=mint, owner=after.owner, data=bytes(after.data), record=minted.record,
                            contribution=CONTRIBUTION)


def test_verification_refuses_an_nft_whose_metadata_can_still_change(svm: LiteSVM, payer: Keypair,
                                                                      record: AnchorRecord) -> None:
    mint, contributor = contribution_mint(NODE_SECRET, record.commit, CONTRIBUTION), Keypair().pubkey()
    instructions = one_of_one_instructions(payer=payer.pubkey(), mint=mint.pubkey(), holder=contributor,
                                           name=contribution_nft_name(record), symbol=NFT_SYMBOL, uri=URI,
                                           fields=contribution_nft_fields(record, CONTRIBUTION), memo=None,
                                           rent=svm.minimum_balance_for_rent_exemption, keep_update_authority=True)
    tx = Transaction.new_signed_with_payer(instructions, payer.pubkey(), [payer, mint], svm.latest_blockhash())
    assert isinstance(svm.send_transaction(tx), TransactionMetadata)
    account = svm.get_account(mint.pubkey())
    assert account is not None
    state = parse_mint(bytes(account.data))
    assert state.metadata is not None and state.metadata.update_authority == payer.pubkey()
    with pytest.raises(IntegrityError, match=f"rewritten by {payer.pubkey()}: .* never revoked") as caught:
        verify_contribution_nft(mint=mint.pubkey(), owner=account.owner, data=bytes(account.data), record=record,
                                contribution=CONTRIBUTION)
    assert caught.value.data["contribution"] == CONTRIBUTION
    # It matters: the aggregator could still rewrite what the contributor holds.
    edit = t22.update_token_metadata_field(mint.pubkey(), payer.pubkey(), "contribution", "6f" * 32)
    edit_tx = Transaction.new_signed_with_payer([edit], payer.pubkey(), [payer], svm.latest_blockhash())
    assert isinstance(svm.send_transaction(edit_tx), TransactionMetadata)


def test_a_retry_mints_no_second_nft(minted: Minted) -> None:
    svm = minted.svm
    svm.expire_blockhash()
    retry = contribution_nft_transaction(
        payer=minted.payer, mint=contribution_mint(NODE_SECRET, minted.record.commit, CONTRIBUTION),
        record=minted.record, contributor=minted.contributor.pubkey(), contribution=CONTRIBUTION, uri=URI,
        rent=svm.minimum_balance_for_rent_exemption, blockhash=svm.latest_blockhash())
    assert "already in use" in failed(svm.send_transaction(retry))
    account = svm.get_account(minted.mint.pubkey())
    assert account is not None and parse_mint(bytes(account.data)).supply == 1


def test_each_contribution_of_a_merge_gets_its_own_mint(svm: LiteSVM, payer: Keypair, record: AnchorRecord) -> None:
    expected = hashlib.sha256(b"flair/contribution-nft/v1\0" + NODE_SECRET + bytes.fromhex(record.commit)
                              + bytes.fromhex(CONTRIBUTION)).digest()
    assert contribution_mint(NODE_SECRET, record.commit, CONTRIBUTION) == Keypair.from_seed(expected)
    mints = {contribution_mint(NODE_SECRET, record.commit, CONTRIBUTION).pubkey(),
             contribution_mint(NODE_SECRET, record.commit, CommitId("6f" * 32)).pubkey(),
             contribution_mint(NODE_SECRET, CONTRIBUTION, record.commit).pubkey(),
             contribution_mint(bytes(32), record.commit, CONTRIBUTION).pubkey(),
             commit_mint(NODE_SECRET, record.commit).pubkey()}
    assert len(mints) == 5
    for secret, merge, contribution in [(bytes(31), record.commit, CONTRIBUTION), (NODE_SECRET, "x", CONTRIBUTION),
                                        (NODE_SECRET, record.commit, CONTRIBUTION + "\n")]:
        with pytest.raises(InvalidInput):
            contribution_mint(secret, merge, contribution)  # type: ignore[arg-type]
    # Two contributors of one merge, each holding their own.
    first, second = mint_nft(svm, payer, record), mint_nft(svm, payer, record, CommitId("6f" * 32))
    for m in (first, second):
        holding = svm.get_account(associated_token_address(m.contributor.pubkey(), m.mint.pubkey()))
        assert holding is not None and parse_token_account(bytes(holding.data)).amount == 1


def test_the_aggregator_may_be_a_contributor_but_not_the_mint(svm: LiteSVM, payer: Keypair,
                                                              record: AnchorRecord) -> None:
    mint = contribution_mint(NODE_SECRET, record.commit, CONTRIBUTION)
    tx = contribution_nft_transaction(payer=payer, mint=mint, record=record, contributor=payer.pubkey(),
                                      contribution=CONTRIBUTION, uri=URI,
                                      rent=svm.minimum_balance_for_rent_exemption, blockhash=svm.latest_blockhash())
    assert isinstance(svm.send_transaction(tx), TransactionMetadata)
    holding = svm.get_account(associated_token_address(payer.pubkey(), mint.pubkey()))
    assert holding is not None and parse_token_account(bytes(holding.data)).amount == 1
    for who in ({"payer": mint}, {"contributor": mint.pubkey()}):
        args = {"payer": payer, "mint": mint, "record": record, "contributor": Keypair().pubkey(),
                "contribution": CONTRIBUTION, "uri": URI, "rent": svm.minimum_balance_for_rent_exemption,
                "blockhash": svm.latest_blockhash(), **who}
        with pytest.raises(InvalidInput, match="mint"):
            contribution_nft_transaction(**args)  # type: ignore[arg-type]


def test_the_longest_contribution_transaction_fits_one_packet_and_lands(svm: LiteSVM, payer: Keypair) -> None:
    record = AnchorRecord(repo=RepoId("e" * 64), branch=BranchName("b" + "-x" * 49 + "z"), round=MAX_ROUND,
                          commit=CommitId("f" * 64), proof=PROOF)
    assert len(LONGEST_URI) == MAX_URI_BYTES
    m = mint_nft(svm, payer, record, CommitId("d" * 64), LONGEST_URI)
    assert contribution_nft_name(record) == "Flair r9999999999 ffffffffff contribution"
    assert len(bytes(m.tx)) <= MAX_TRANSACTION_BYTES
    print(f"\nlargest contribution NFT transaction: {len(bytes(m.tx))} bytes")
    account = svm.get_account(m.mint.pubkey())
    assert account is not None
    verify_contribution_nft(mint=m.mint.pubkey(), owner=account.owner, data=bytes(account.data), record=record,
                            contribution=CommitId("d" * 64))
    with pytest.raises(InvalidInput, match="URI"):
        contribution_nft_transaction(payer=payer, mint=m.mint, record=record, contributor=m.contributor.pubkey(),
                                     contribution=CommitId("d" * 64), uri=LONGEST_URI + "x",
                                     rent=svm.minimum_balance_for_rent_exemption, blockhash=svm.latest_blockhash())


def test_the_commit_nft_is_the_shared_one_of_one_held_by_its_payer(payer: Keypair, record: AnchorRecord) -> None:
    mint = commit_mint(NODE_SECRET, record.commit).pubkey()

    def rent(size: int) -> int:
        return 1000 * size + 7

    shared = one_of_one_instructions(payer=payer.pubkey(), mint=mint, holder=payer.pubkey(),
                                     name=commit_nft_name(record), symbol=NFT_SYMBOL, uri=URI,
                                     fields=commit_nft_fields(record), memo=anchor_memo(record), rent=rent)
    assert commit_nft_instructions(payer=payer.pubkey(), mint=mint, record=record, uri=URI, rent=rent) == shared
    assert shared[-1].program_id == MEMO_PROGRAM_ID and shared[-1].data == anchor_memo(record)
    without = one_of_one_instructions(payer=payer.pubkey(), mint=mint, holder=payer.pubkey(),
                                      name=commit_nft_name(record), symbol=NFT_SYMBOL, uri=URI,
                                      fields=commit_nft_fields(record), memo=None, rent=rent)
    assert without == shared[:-1]
    # The commit NFT keeps its update authority; revoking it is one more instruction, right after the fields.
    fields = len(commit_nft_fields(record))
    revoking = one_of_one_instructions(payer=payer.pubkey(), mint=mint, holder=payer.pubkey(),
                                       name=commit_nft_name(record), symbol=NFT_SYMBOL, uri=URI,
                                       fields=commit_nft_fields(record), memo=anchor_memo(record), rent=rent,
                                       keep_update_authority=False)
    assert revoking == [*shared[:4 + fields], t22.update_token_metadata_authority(mint, payer.pubkey(), None),
                        *shared[4 + fields:]]
