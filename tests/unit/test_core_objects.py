import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flair_node.core import encoding
from flair_node.core.cid import RAW, cid_for
from flair_node.core.errors import FlairError, IntegrityError, InvalidInput, RefConflict, error_for_code
from flair_node.core.identity import Identity, wallet
from flair_node.core.ids import CommitId, RepoId
from flair_node.core.objects import AnchorClaim, Commit, Payload, RepositoryRecord, TensorSpec, metric_text

ALICE = Identity.generate()
CID = cid_for(RAW, b"delta")


def make_commit(**changes):
    fields = dict(repo="ab" * 32, parents=("cd" * 32,), author=ALICE.public_key, timestamp_ms=1700000000000,
                  kind="commit", message="one epoch", payload=Payload(CID, "bitdelta-v1", 1234),
                  meta={"examples": 10}, metrics=dict([metric_text("acc", 0.93)]))
    fields.update(changes)
    return Commit(**fields).signed(ALICE)


def test_commit_round_trip_and_verify():
    commit = make_commit()
    again = Commit.decode(commit.encode())
    assert again == commit
    again.verify(commit.id)


@pytest.mark.parametrize("change", [
    {"message": "two epochs"}, {"parents": ()}, {"timestamp_ms": 1}, {"meta": {"examples": 11}},
    {"metrics": {"acc": "0.94"}}, {"payload": Payload(CID, "bitdelta-v1", 1235)}, {"kind": "merge"},
])
def test_every_field_is_covered_by_the_id(change):
    assert make_commit(**change).id != make_commit().id


def test_tampering_is_detected():
    commit = make_commit()
    forged = dataclasses.replace(commit, message="something else")
    with pytest.raises(IntegrityError, match="signature"):
        forged.verify()
    with pytest.raises(IntegrityError, match="hashes to"):
        commit.verify("00" * 32)
    other = Identity.generate()
    with pytest.raises(InvalidInput):
        dataclasses.replace(commit, signature=b"").signed(other)


def test_unknown_fields_and_bad_types_are_refused():
    from flair_node.core import encoding

    commit = make_commit()
    body = commit.body()
    body["extra"] = 1
    with pytest.raises(IntegrityError, match="unknown fields"):
        Commit.decode(encoding.encode({"body": body, "sig": commit.signature}))
    body = commit.body()
    body["parents"] = ["not-hex"]
    with pytest.raises(IntegrityError, match="hex id"):
        Commit.decode(encoding.encode({"body": body, "sig": commit.signature}))


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
                       st.floats(allow_nan=False, allow_infinity=False), max_size=5))
def test_metrics_round_trip_exactly(metrics):
    stored = dict(metric_text(k, v) for k, v in metrics.items())
    commit = make_commit(metrics=stored)
    assert {k: float(v) for k, v in Commit.decode(commit.encode()).metrics.items()} == metrics


def test_bad_metrics_are_refused():
    with pytest.raises(InvalidInput, match="finite"):
        metric_text("loss", float("nan"))
    with pytest.raises(InvalidInput, match="metric name"):
        metric_text("bad name!", 1.0)


def test_repository_record():
    record = RepositoryRecord("digits", ALICE.public_key, 1, "00" * 16,
                              (TensorSpec("fc.weight", "F32", (10, 64)),)).signed(ALICE)
    again = RepositoryRecord.decode(record.encode())
    again.verify(record.id)
    assert again.layout[0].numel == 640


def test_identity_keypair_round_trip():
    restored = Identity.from_keypair_bytes(ALICE.keypair_bytes())
    assert restored.public_key == ALICE.public_key
    assert repr(restored) == "Identity()"  # the secret never shows up in logs
    broken = bytearray(ALICE.keypair_bytes())
    broken[40] ^= 1
    with pytest.raises(InvalidInput, match="does not belong"):
        Identity.from_keypair_bytes(bytes(broken))


def test_a_derived_key_is_the_same_for_its_label_and_no_other_and_is_not_the_member_key():
    member = Identity.generate()
    one, again = member.derived("wallet/repo-a"), Identity.from_keypair_bytes(member.keypair_bytes()).derived(
        "wallet/repo-a")
    assert one.public_key == again.public_key  # the same secret and label: the same key, on any node
    keys = {member.public_key, one.public_key, member.derived("wallet/repo-b").public_key,
            Identity.generate().derived("wallet/repo-a").public_key}
    assert len(keys) == 4  # another label, or another member's secret, gives another key
    assert wallet(member, "repo-a").public_key == one.public_key


def test_an_anchor_record_names_the_wallet_that_paid_and_only_an_address():
    member = Identity.generate()
    paid = wallet(member, "ab" * 32).public_key
    claim = AnchorClaim(repo=RepoId("ab" * 32), commit=CommitId("cd" * 32), genesis="1" * 44,
                        transaction="2" * 88, mint="3" * 44, author=member.public_key, timestamp_ms=1,
                        wallet=paid).signed(member)
    back = AnchorClaim.decode(claim.encode())
    assert back == claim and back.payer == paid != member.public_key
    assert dataclasses.replace(claim, wallet="").payer == member.public_key  # naming none: the author paid
    body = claim.body() | {"wallet": "0OIl not base58"}
    with pytest.raises(IntegrityError, match="wallet must be base58"):
        AnchorClaim.decode(encoding.encode({"body": body, "sig": claim.signature}))


def test_error_codes_map_back_to_classes():
    assert error_for_code(RefConflict.code) is RefConflict
    assert error_for_code(12345) is FlairError


def test_names_and_ids_with_a_trailing_newline_are_refused():
    """``$`` also matches before a final newline: every pattern must match the whole text."""
    from flair_node.core.ids import is_full_id
    from flair_node.core.refs import check_branch_name

    assert is_full_id("ab" * 32) and not is_full_id("ab" * 32 + "\n")
    for bad in (lambda: check_branch_name("main\n"), lambda: metric_text("loss\n", 1.0)):
        with pytest.raises(InvalidInput):
            bad()
