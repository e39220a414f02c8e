"""The anchor memo: one spelling per record, and nothing else parses."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flair_node.core.cid import DAG_PB, RAW, cid_for
from flair_node.core.errors import IntegrityError, InvalidInput
from flair_node.protocol.anchoring import MAX_ROUND, AnchorRecord, anchor_memo, parse_anchor_memo
from flair_node.protocol.anchoring.memo import MAX_MEMO_BYTES

REPO, COMMIT = "7f3a" + "0" * 60, "91c2" + "e" * 60
PROOF = cid_for(DAG_PB, b"proof")
GOOD = AnchorRecord(repo=REPO, branch="main", round=12, commit=COMMIT, proof=PROOF)


def test_the_memo_spells_the_record() -> None:
    assert anchor_memo(GOOD) == f"flair:2:{REPO}:main:12:{COMMIT}:{PROOF}".encode()
    assert anchor_memo(dataclasses.replace(GOOD, proof=None)) == f"flair:2:{REPO}:main:12:{COMMIT}".encode()
    assert parse_anchor_memo(anchor_memo(GOOD)) == GOOD


def test_the_longest_record_is_well_inside_memo_limits() -> None:
    longest = AnchorRecord(repo=REPO, branch="a" * 100, round=MAX_ROUND, commit=COMMIT, proof=cid_for(RAW, b""))
    assert len(anchor_memo(longest)) == 309 < MAX_MEMO_BYTES < 566


@pytest.mark.parametrize("change", [
    {"repo": REPO.upper()}, {"repo": REPO[:-1]}, {"repo": REPO + "\n"}, {"commit": COMMIT + "0"},
    {"commit": "g" * 64}, {"branch": "a:b"}, {"branch": "feature/../x"}, {"branch": "main\n"}, {"branch": ""},
    {"round": 0}, {"round": -1}, {"round": MAX_ROUND + 1}, {"round": True}, {"round": 1.0}, {"round": "3"},
    {"proof": "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"}, {"proof": PROOF.upper()}, {"proof": ""},
    {"proof": "bafy-not-a-cid"},
])
def test_a_record_refuses_bad_fields(change: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        dataclasses.replace(GOOD, **change)  # type: ignore[arg-type]


@pytest.mark.parametrize("memo", [
    b"", b"flair", b"flair:1", f"flair:1:{REPO}:main:12:{COMMIT}".encode(),  # version 1 named branches
    f"flare:1:{REPO}:main:12:{COMMIT}".encode(), f"FLAIR:1:{REPO}:main:12:{COMMIT}".encode(),
    f"flair:2:{REPO}:main:012:{COMMIT}".encode(), f"flair:2:{REPO}:main:+12:{COMMIT}".encode(),
    f"flair:2:{REPO}:main:12 :{COMMIT}".encode(), f"flair:2:{REPO}:main:0:{COMMIT}".encode(),
    f"flair:2:{REPO}:main:12:{COMMIT}\n".encode(), f"flair:2:{REPO}:main\n:12:{COMMIT}".encode(),
    f"flair:2:{REPO}:main:12:{COMMIT}:".encode(), f"flair:2:{REPO}:main:12:{COMMIT}:{PROOF}:x".encode(),
    f"flair:2:{REPO.upper()}:main:12:{COMMIT}".encode(), f"flair:2:{REPO}::12:{COMMIT}".encode(),
    f"flair:2:{REPO}:ma..in:12:{COMMIT}".encode(), f"flair:2:{REPO}:main:12:{COMMIT}:{PROOF.upper()}".encode(),
    f"flair:2:{REPO}:main:١٢:{COMMIT}".encode(), f"flair:2:{REPO}:mäin:12:{COMMIT}".encode(),
    b"\xff" * 10, b"flair:1:" + b"a" * 1000,
])
def test_parsing_refuses_anything_else(memo: bytes) -> None:
    with pytest.raises(IntegrityError):
        parse_anchor_memo(memo)


records = st.builds(
    AnchorRecord,
    repo=st.text("0123456789abcdef", min_size=64, max_size=64),
    branch=st.from_regex(r"[a-z0-9][a-z0-9_-]{0,40}(/[a-z0-9][a-z0-9_-]{0,20})?", fullmatch=True),
    round=st.integers(1, MAX_ROUND),
    commit=st.text("0123456789abcdef", min_size=64, max_size=64),
    proof=st.none() | st.binary(max_size=8).map(lambda b: cid_for(RAW, b)),
)


@given(records)
def test_every_record_round_trips(record: AnchorRecord) -> None:
    assert parse_anchor_memo(anchor_memo(record)) == record


@given(records, st.integers(0, 400), st.binary(min_size=1, max_size=3))
def test_a_changed_memo_parses_only_as_what_it_spells(record: AnchorRecord, at: int, splice: bytes) -> None:
    memo = anchor_memo(record)
    at %= len(memo)
    changed = memo[:at] + splice + memo[at + 1:]
    try:
        parsed = parse_anchor_memo(changed)
    except IntegrityError:
        return
    assert anchor_memo(parsed) == changed
