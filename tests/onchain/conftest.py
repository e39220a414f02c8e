"""A real Solana VM (LiteSVM, with SPL Memo, Token-2022 and the associated token account program loaded) and
one anchored commit on it, for the contract tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.transaction import Transaction
from solders.transaction_metadata import FailedTransactionMetadata, TransactionMetadata

from flair_node.core.cid import RAW, cid_for
from flair_node.core.ids import BranchName, CommitId, RepoId
from flair_node.protocol.anchoring import AnchorRecord, commit_mint, commit_nft_transaction
from flair_node.testing.program import registry_program

NODE_SECRET = bytes(range(32))
REPO = RepoId("7f3a" + "0" * 58 + "01")
COMMIT = CommitId("91c2" + "ab" * 30)
PROOF = cid_for(RAW, b"proof record")
URI = "ipfs://" + cid_for(RAW, b"metadata json")

#: Token-2022's token-metadata error ``ImmutableMetadata`` (the interface's errors start at 901952957; it is the
#: fifth): the metadata has no update authority.
IMMUTABLE_METADATA = f"custom program error: {901_952_957 + 4:#x}"


@dataclass
class Anchored:
    svm: LiteSVM
    payer: Keypair
    mint: Keypair
    record: AnchorRecord
    uri: str
    tx: Transaction
    result: TransactionMetadata
    paid: int  # lamports the payer spent: fee and rent


def anchor(svm: LiteSVM, payer: Keypair, record: AnchorRecord, uri: str = URI) -> Anchored:
    mint = commit_mint(NODE_SECRET, record.commit)
    tx = commit_nft_transaction(payer=payer, mint=mint, record=record, uri=uri,
                                rent=svm.minimum_balance_for_rent_exemption, blockhash=svm.latest_blockhash())
    before = svm.get_balance(payer.pubkey())
    result = svm.send_transaction(tx)
    assert isinstance(result, TransactionMetadata), result
    return Anchored(svm, payer, mint, record, uri, tx, result, before - svm.get_balance(payer.pubkey()))


def failed(result: TransactionMetadata | FailedTransactionMetadata) -> str:
    """The error and logs of a transaction the chain refused; the test fails if it landed."""
    assert isinstance(result, FailedTransactionMetadata), "the transaction should have been refused"
    return str(result.err()) + "\n" + "\n".join(result.meta().logs())


@pytest.fixture
def svm() -> LiteSVM:
    return LiteSVM()


@pytest.fixture
def payer(svm: LiteSVM) -> Keypair:
    key = Keypair.from_seed(bytes([7]) * 32)
    svm.airdrop(key.pubkey(), 10**10)
    return key


@pytest.fixture
def record() -> AnchorRecord:
    return AnchorRecord(repo=REPO, branch=BranchName("main"), round=12, commit=COMMIT, proof=PROOF)


@pytest.fixture
def anchored(svm: LiteSVM, payer: Keypair, record: AnchorRecord) -> Anchored:
    return anchor(svm, payer, record)


@pytest.fixture(scope="session")
def registry_so() -> Path:
    """flair_registry built from anchor_program/src (rebuilt only when a source is newer than the .so).

    anchor_program is not a package, so its build.py is loaded by path. Without clang-19 this fails rather than
    skips: CI installs it (scripts/bootstrap).
    """
    return registry_program()
