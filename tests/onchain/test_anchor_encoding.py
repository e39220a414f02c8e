"""Instruction bytes as the specifications lay them out, account parsers that refuse malformed data, the
derived mint key, and the metadata JSON."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
from solders.keypair import Keypair
from solders.pubkey import Pubkey

import flair_node.protocol.anchoring as anchoring
from flair_node.core.errors import IntegrityError, InvalidInput
from flair_node.core.identity import Identity
from flair_node.protocol.anchoring import (
    TOKEN_2022_PROGRAM_ID,
    commit_mint,
    commit_nft_metadata,
    metadata_json,
    parse_mint,
    parse_token_account,
    verify_commit_nft,
)
from flair_node.protocol.anchoring import token2022 as t22

from .conftest import COMMIT, NODE_SECRET, Anchored

A, B = Keypair.from_seed(bytes([1]) * 32).pubkey(), Keypair.from_seed(bytes([2]) * 32).pubkey()


def test_token_2022_instructions_follow_the_published_layouts() -> None:
    assert t22.initialize_mint2(A, 0, B).data == bytes([20, 0]) + bytes(B) + b"\x00"
    assert t22.initialize_mint2(A, 6, B, A).data == bytes([20, 6]) + bytes(B) + b"\x01" + bytes(A)
    assert t22.mint_to(A, B, A, 1).data == bytes([7, 1, 0, 0, 0, 0, 0, 0, 0])
    assert t22.set_authority(A, B, t22.AuthorityType.MINT_TOKENS, None).data == bytes([6, 0, 0])
    assert t22.initialize_metadata_pointer(A, None, A).data == bytes([39, 0]) + bytes(32) + bytes(A)
    assert t22.initialize_metadata_pointer(A, B, A).data == bytes([39, 0]) + bytes(B) + bytes(A)
    assert [(m.pubkey, m.is_signer, m.is_writable) for m in t22.mint_to(A, B, A, 1).accounts] == [
        (A, False, True), (B, False, True), (A, True, False)]
    with pytest.raises(InvalidInput):
        t22.mint_to(A, B, A, 0)


def test_token_metadata_instructions_follow_the_interface() -> None:
    # The discriminators as the interface publishes them: sha256("spl_token_metadata_interface:<name>")[:8].
    assert list(t22.METADATA_INITIALIZE) == [210, 225, 30, 162, 88, 184, 77, 141]
    assert list(t22.METADATA_UPDATE_FIELD) == [221, 233, 49, 45, 181, 202, 220, 200]
    init = t22.initialize_token_metadata(A, B, B, "n", "SYM", "ipfs://x")
    assert init.data == t22.METADATA_INITIALIZE + b"\x01\x00\x00\x00n\x03\x00\x00\x00SYM\x08\x00\x00\x00ipfs://x"
    assert [(m.pubkey, m.is_signer, m.is_writable) for m in init.accounts] == [
        (A, False, True), (B, False, False), (A, False, False), (B, True, False)]
    key = t22.update_token_metadata_field(A, B, "round", "12")
    assert key.data == t22.METADATA_UPDATE_FIELD + b"\x03\x05\x00\x00\x00round\x02\x00\x00\x0012"
    uri = t22.update_token_metadata_field(A, B, t22.MetadataField.URI, "u")
    assert uri.data == t22.METADATA_UPDATE_FIELD + b"\x02\x01\x00\x00\x00u"
    with pytest.raises(InvalidInput):
        t22.update_token_metadata_field(A, B, t22.MetadataField.KEY, "u")
    assert list(t22.METADATA_UPDATE_AUTHORITY) == [215, 228, 166, 228, 84, 100, 86, 123]
    revoke = t22.update_token_metadata_authority(A, B, None)
    assert revoke.data == t22.METADATA_UPDATE_AUTHORITY + bytes(32)  # OptionalNonZeroPubkey: zeros are none
    assert t22.update_token_metadata_authority(A, B, A).data == t22.METADATA_UPDATE_AUTHORITY + bytes(A)
    assert revoke.program_id == TOKEN_2022_PROGRAM_ID
    assert [(m.pubkey, m.is_signer, m.is_writable) for m in revoke.accounts] == [(A, False, True), (B, True, False)]


def test_associated_token_account() -> None:
    ix = t22.create_associated_token_account_idempotent(A, B, A)
    assert ix.data == b"\x01" and ix.program_id == t22.ASSOCIATED_TOKEN_PROGRAM_ID
    expected = Pubkey.find_program_address([bytes(B), bytes(TOKEN_2022_PROGRAM_ID), bytes(A)],
                                           t22.ASSOCIATED_TOKEN_PROGRAM_ID)[0]
    assert ix.accounts[1].pubkey == t22.associated_token_address(B, A) == expected


def test_the_mint_key_is_derived_from_the_node_secret_and_the_commit() -> None:
    mint = commit_mint(NODE_SECRET, COMMIT)
    expected = hashlib.sha256(b"flair/commit-nft/v1\0" + NODE_SECRET + bytes.fromhex(COMMIT)).digest()
    assert mint == Keypair.from_seed(expected) == commit_mint(NODE_SECRET, COMMIT)
    assert commit_mint(NODE_SECRET, "0" * 64) != mint != commit_mint(bytes(32), COMMIT)
    for secret, commit in [(bytes(31), COMMIT), (NODE_SECRET, COMMIT[:-1]), (NODE_SECRET, COMMIT + "\n")]:
        with pytest.raises(InvalidInput):
            commit_mint(secret, commit)


# -- parsers against the real account, altered ---------------------------------------------------------

def real_mint(anchored: Anchored) -> bytes:
    account = anchored.svm.get_account(anchored.mint.pubkey())
    assert account is not None
    return bytes(account.data)


def alterations(data: bytes) -> dict[str, bytes]:
    """The real mint's bytes, each broken in one way."""
    pointer = t22.ACCOUNT_BASE_SIZE + 1  # the MetadataPointer TLV header
    meta = pointer + 4 + t22.METADATA_POINTER_SIZE  # the TokenMetadata TLV header
    meta_len = struct.unpack_from("<H", data, meta + 2)[0]
    name = meta + 4 + 64  # the name's length prefix
    metadata = parse_mint(data).metadata
    assert metadata is not None
    count = name + sum(4 + len(text) for text in (metadata.name, metadata.symbol, metadata.uri))
    assert struct.unpack_from("<I", data, count)[0] == len(metadata.additional)
    return {
        "truncated": data[:-1],
        "too short for a mint": data[:50],
        "between mint and account size": data[:120],
        "padding not zero": data[:100] + b"\x01" + data[101:],
        "account type is a token account": data[:165] + b"\x02" + data[166:],
        "not initialized": data[:45] + b"\x00" + data[46:],
        "bad authority tag": b"\x02" + data[1:],
        "extension runs past the end": data[:meta + 2] + struct.pack("<H", 0xFFFF) + data[meta + 4:],
        "metadata with trailing bytes": data[:meta + 2] + struct.pack("<H", meta_len + 1) + data[meta + 4:] + b"\0",
        "metadata cut short": data[:meta + 2] + struct.pack("<H", meta_len - 1) + data[meta + 4:-1],
        "duplicate extension": data[:meta] + b"\x12\x00" + data[meta + 2:],
        "pointer of the wrong size": data[:pointer + 2] + struct.pack("<H", 63) + data[pointer + 4:meta - 1]
        + data[meta:],
        "trailing byte": data + b"\x01",
        "trailing header fragment": data + b"\x13\x00",
        "data after an empty entry": data + bytes(4) + b"\x01",
        "name not utf-8": data[:name + 4] + b"\xff" + data[name + 5:],
        "name longer than the entry": data[:name] + struct.pack("<I", 10_000) + data[name + 4:],
        "absurd field count": data[:count] + struct.pack("<I", 0xFFFFFFFF) + data[count + 4:],
        "field count one too many": data[:count] + struct.pack("<I", len(metadata.additional) + 1) + data[count + 4:],
        "too large": data + bytes(t22.MAX_ACCOUNT_BYTES),
    }


MINT_ERRORS = {
    "truncated": "runs past the end", "too short for a mint": "not a mint's size",
    "between mint and account size": "not a mint's size", "padding not zero": "non-zero padding",
    "account type is a token account": "account type 2", "not initialized": "not initialized",
    "bad authority tag": "malformed optional key", "extension runs past the end": "runs past the end",
    "metadata with trailing bytes": "trailing bytes", "metadata cut short": "ends early",
    "duplicate extension": "twice", "pointer of the wrong size": "pointer is 63 bytes",
    "trailing byte": "inside an extension header", "trailing header fragment": "inside an extension header",
    "data after an empty entry": "after its last extension", "name not utf-8": "not UTF-8",
    "name longer than the entry": "ends early", "absurd field count": "more than its bytes can hold",
    "field count one too many": "more than its bytes can hold|ends early", "too large": "larger than Solana allows",
}


def test_malformed_mint_data_is_refused(anchored: Anchored) -> None:
    data = real_mint(anchored)
    parse_mint(data)
    parse_mint(data + bytes(8))  # zeros after the last extension are allowed: an uninitialized entry
    for what, bad in alterations(data).items():
        with pytest.raises(IntegrityError, match=MINT_ERRORS[what]):
            parse_mint(bad)


def test_malformed_token_accounts_are_refused(anchored: Anchored) -> None:
    address = t22.associated_token_address(anchored.payer.pubkey(), anchored.mint.pubkey())
    account = anchored.svm.get_account(address)
    assert account is not None
    data = bytes(account.data)
    assert parse_token_account(data).amount == 1
    for bad in (data[:100], data[:108] + b"\x00" + data[109:], data[:165] + b"\x01" + data[166:], data + b"\x07"):
        with pytest.raises(IntegrityError):
            parse_token_account(bad)
    with pytest.raises(IntegrityError, match="not a mint's size"):
        parse_mint(data[:165])


def test_verification_refuses_what_is_not_the_records_nft(anchored: Anchored) -> None:
    data, mint, payer = real_mint(anchored), anchored.mint.pubkey(), anchored.payer.pubkey()
    ok = {"mint": mint, "owner": TOKEN_2022_PROGRAM_ID, "data": data, "record": anchored.record, "aggregator": payer}
    verify_commit_nft(**ok)  # type: ignore[arg-type]
    other = anchored.record.__class__(repo=anchored.record.repo, branch=anchored.record.branch,
                                      round=anchored.record.round + 1, commit=anchored.record.commit)
    for change, message in [
        ({"owner": t22.SYSTEM_PROGRAM_ID}, "not Token-2022"),
        ({"mint": A}, "metadata pointer"),
        ({"aggregator": A}, "updated by"),
        ({"record": other}, "metadata names"),
        ({"data": data[:36] + (2).to_bytes(8, "little") + data[44:]}, "not exactly 1 token"),
        ({"data": data[:0] + b"\x01\x00\x00\x00" + bytes(A) + data[36:]}, "never revoked"),
        ({"data": data[:3]}, "not a mint's size"),
        ({"data": data + b"\x0c\x00\x20\x00" + bytes(A)}, "extensions \\[18, 19, 12\\]"),  # a permanent delegate
    ]:
        with pytest.raises(IntegrityError, match=message):
            verify_commit_nft(**{**ok, **change})  # type: ignore[arg-type]


# -- metadata JSON ----------------------------------------------------------------------------------------

def test_metadata_json_names_the_commit_and_nothing_heavier(anchored: Anchored) -> None:
    record = anchored.record
    document = commit_nft_metadata(record, contributors=3)
    traits = {a["trait_type"]: a["value"] for a in document["attributes"]}
    assert traits == {"repository": record.repo, "branch tag": record.branch, "round": 12, "commit": record.commit,
                      "contributors": 3, "proof": record.proof}
    assert document["name"].startswith("Flair r12 ") and document["symbol"] == "FLAIR" and "image" not in document
    assert document["properties"] == {"category": "model"}  # public: no key, no name, no metric
    encoded = metadata_json(document)
    assert json.loads(encoded) == document and encoded == metadata_json(json.loads(encoded)) and len(encoded) < 2000


@pytest.mark.parametrize("contributors", [-1, 257, True, 2.0, "3", [Identity.generate().public_key]])
def test_metadata_json_takes_a_count_of_contributors(anchored: Anchored, contributors: object) -> None:
    with pytest.raises(InvalidInput):
        commit_nft_metadata(anchored.record, contributors=contributors)  # type: ignore[arg-type]


def test_exports() -> None:
    """The package re-exports the public functions and types of ``memo`` and ``commit_nft``, and the readers."""
    from flair_node.protocol.anchoring import commit_nft, memo

    for module in (memo, commit_nft):
        for name, value in vars(module).items():
            if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__:
                assert getattr(anchoring, name) is value, name
    for name in ("parse_mint", "parse_token_account", "MintAccount", "TokenMetadata", "associated_token_address"):
        assert getattr(anchoring, name) is getattr(t22, name)
