"""Every decoder of untrusted bytes bounds nesting and size: hostile records, safetensors headers, proof bundles
and announcements are refused with Flair's error for that input, never a ``RecursionError`` or ``ValueError``,
however deep, and nothing recurses past a small fixed depth to find out."""

import json
import struct

import base58
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flair_node.core import crypto, encoding
from flair_node.core.cid import RAW, cid_for, parse_cid
from flair_node.core.errors import IntegrityError, InvalidInput, NotSafetensors
from flair_node.core.identity import Identity
from flair_node.core.membership import MembershipChange
from flair_node.core.objects import Commit, Payload
from flair_node.network import bitswap_wire
from flair_node.protocol import announce
from flair_node.protocol.proofs import merges
from flair_node.tensors import safetensors_io
from flair_node.testing.commit_graph import tiny_state
from flair_node.testing.fuzz import unframe
from flair_node.testing.hostile import deep_msgpack

REPO = "ab" * 32
MERGE = "cd" * 32
SIGNER = Identity.generate()


def deep_map(depth: int) -> bytes:
    """msgpack of ``depth`` maps {"a": ...} nested around a nil, written by hand (no encoder nests that deep)."""
    return b"\x81\xa1a" * depth + b"\xc0"


def signed_record(body: bytes) -> bytes:
    """A record's outer map {body, sig} around ``body`` (already msgpack), canonical at the top."""
    return b"\x82\xa4body" + body + b"\xa3sig\xc4\x40" + b"\x00" * 64


@pytest.mark.parametrize("depth", [33, 100, 600, 1000, 1023, 1024, 5000, 200_000])
@pytest.mark.parametrize("shape", [deep_msgpack, deep_map])
def test_a_record_nested_past_the_bound_is_an_integrity_error(depth, shape):
    data = shape(depth)
    if len(data) > encoding.MAX_RECORD_BYTES:
        data = data[:encoding.MAX_RECORD_BYTES]
    with pytest.raises(IntegrityError):
        encoding.decode(data)


def test_the_bound_itself_round_trips_and_one_more_level_does_not():
    value: object = None
    for _ in range(encoding.MAX_DEPTH):
        value = [value]
    assert encoding.decode(encoding.encode(value)) == value
    assert encoding.decode(deep_msgpack(encoding.MAX_DEPTH)) == value
    with pytest.raises(InvalidInput, match="nested more than"):
        encoding.encode([value])
    with pytest.raises(IntegrityError, match="nested more than"):
        encoding.decode(deep_msgpack(encoding.MAX_DEPTH + 1))


def test_encode_refuses_a_value_too_deep_for_recursion_without_recursing_into_it():
    value: object = None
    for _ in range(100_000):  # deeper than Python's recursion limit: encode stops at the bound
        value = {"a": value}
    with pytest.raises(InvalidInput, match="nested more than"):
        encoding.encode(value)


@pytest.mark.parametrize("decode", [MembershipChange.decode, Commit.decode])
def test_signed_records_nested_600_deep_are_refused(decode):
    with pytest.raises(IntegrityError):
        decode(signed_record(deep_msgpack(600)))
    with pytest.raises(IntegrityError):
        decode(deep_msgpack(600))


containers = st.lists(st.sampled_from([b"\x91", b"\x81\xa1k", b"\x92\xc0"]), max_size=120)


@settings(max_examples=300, deadline=None)
@given(containers)
def test_any_nesting_decodes_within_the_bound_or_is_refused(prefix):
    data = b"".join(prefix) + b"\xc0"
    try:
        value = encoding.decode(data)
    except IntegrityError:
        return
    depth, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        depth = max(depth, level)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else []
        stack.extend((child, level + 1) for child in children)
    assert depth <= encoding.MAX_DEPTH


json_values = st.recursive(
    st.none() | st.integers() | st.text(alphabet='[]{}"\\ab\n', max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\k', max_size=4),
                                                                     children, max_size=3),
    max_leaves=30,
)


def nesting(value: object) -> int:
    if isinstance(value, list | dict):
        children = value.values() if isinstance(value, dict) else value
        return 1 + max((nesting(c) for c in children), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(0, 8))
def test_json_depth_is_measured_exactly_with_brackets_inside_strings(value, limit):
    data = json.dumps(value).encode()
    assert encoding.json_depth_within(data, limit) == (nesting(value) <= limit)
    if nesting(value) <= limit:
        assert encoding.loads_json(data, max_depth=limit, what="x") == value
    else:
        with pytest.raises(IntegrityError, match="nested"):
            encoding.loads_json(data, max_depth=limit, what="x")


@pytest.mark.parametrize("text", [b"[" * 100_000 + b"]" * 100_000, b"[" * 100_000, b'{"a":' * 100_000,
                                  b"]" * 10 + b"[" * 10, b'["\\"]' + b"[" * 50_000])
def test_deep_or_unbalanced_json_is_refused_without_parsing(text):
    with pytest.raises(IntegrityError):
        encoding.loads_json(text, max_depth=encoding.MAX_DEPTH, what="x")


def safetensors_with_header(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


@pytest.mark.parametrize("header", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
                                    b"{" * 100_000, b'{"w": {"dtype": "F32", "shape": [[1]], "data_offsets": [0, 4]}}',
                                    b'{"w": NaN}'])
def test_a_hostile_safetensors_header_is_not_safetensors(header):
    with pytest.raises(NotSafetensors):
        safetensors_io.load_bytes(safetensors_with_header(header) + b"\x00" * 8)
    with pytest.raises(NotSafetensors):
        safetensors_io.check_header(safetensors_with_header(header), "payload")


def test_a_real_safetensors_file_with_metadata_and_odd_names_still_loads():
    import safetensors.torch

    state = {f"[[[{{{name}": tensor for name, tensor in tiny_state(0).items()}
    data = safetensors.torch.save(state, metadata={"note": "]]]}}}", "format": "pt"})
    loaded = safetensors_io.load_bytes(data)
    assert sorted(loaded) == sorted(state)


def bundle(proofs: object) -> bytes:
    return json.dumps({"v": merges.BUNDLE_VERSION, "repo": REPO, "commit": MERGE, "proofs": proofs}).encode()


def test_a_proof_bundle_nested_100k_deep_is_an_integrity_error():
    deep = b"[" * 100_000 + b"]" * 100_000
    data = bundle({"0": None}).replace(b"null", deep)
    with pytest.raises(IntegrityError, match="nested"):
        merges.decode_bundle(data, REPO, MERGE, [0])
    with pytest.raises(IntegrityError, match="nested"):
        merges.decode_bundle(b"[" * 200_000, REPO, MERGE, [0])


def test_a_well_formed_proof_bundle_decodes_and_a_wrong_one_does_not():
    proof = {"instances": [["01"]], "proof": [1, 2], "pretty_public_inputs": {"outputs": [[["0x1"]]]}}
    assert merges.decode_bundle(bundle({"0": proof, "1": proof}), REPO, MERGE, [0, 1])["proofs"]["1"] == proof
    with pytest.raises(IntegrityError, match="one proof per chunk"):
        merges.decode_bundle(bundle({"0": proof}), REPO, MERGE, [0, 1])
    with pytest.raises(IntegrityError, match="not JSON"):
        merges.decode_bundle(b'{"v": 1,', REPO, MERGE, [0])


@pytest.mark.parametrize("item", [[], ["commit"], ["commit", b"x", b"y"], "commit", [b"x", "commit"]])
def test_announcement_items_of_the_wrong_shape_are_integrity_errors(item):
    data = encoding.encode({"v": announce.VERSION, "repo": REPO, "items": [item]})
    with pytest.raises(IntegrityError):
        announce.decode(data, REPO)


def test_an_announcement_nested_deep_is_an_integrity_error():
    data = msgpack.packb({"v": 1, "repo": REPO, "items": [["membership", deep_msgpack(600)]]}, use_bin_type=True)
    with pytest.raises(IntegrityError):
        announce.decode(data, REPO)
    inner = b"\x83\xa5items\x91" + deep_msgpack(900) + b"\xa4repo\xd9\x40" + REPO.encode() + b"\xa1v\x01"
    with pytest.raises(IntegrityError):
        announce.decode(inner, REPO)


# What the fuzz campaign (bench/fuzz.py) found after the depth bounds were in.


@pytest.mark.parametrize("text", [b"1e999999", b"[-1e400]", b'{"id": 1E309}'])
def test_json_numbers_beyond_a_float_are_refused(text):
    with pytest.raises(IntegrityError, match="beyond a float"):
        encoding.loads_json(text, max_depth=encoding.MAX_DEPTH, what="x")


def test_a_record_whose_version_is_true_is_not_version_one():
    commit = Commit(repo=REPO, parents=(MERGE,), author=SIGNER.public_key, timestamp_ms=1, kind="commit",
                    message="", payload=Payload(cid_for(RAW, b"x"), "bitdelta-v1", 1), meta={},
                    metrics={}).signed(SIGNER)
    assert Commit.decode(commit.encode()) == commit
    outer = msgpack.unpackb(commit.encode(), raw=False)
    outer["body"]["v"] = True  # True == 1 in Python: the same id and signature, other bytes
    with pytest.raises(IntegrityError, match="version"):
        Commit.decode(encoding.encode(outer))
    with pytest.raises(IntegrityError):
        announce.decode(encoding.encode({"v": True, "repo": REPO, "items": [["commit", commit.encode()]]}), REPO)


def test_a_key_that_is_not_a_curve_point_is_invalid_input():
    not_a_point = base58.b58encode(bytes(32)).decode()
    with pytest.raises(InvalidInput, match="not an Ed25519 public key"):
        crypto.seal_key(bytes(32), not_a_point)


def test_a_bitswap_message_of_too_many_entries_is_refused_at_the_bound():
    cid = parse_cid(cid_for(RAW, b"x"))
    framed = bitswap_wire.frame(bitswap_wire.Message(wants=(bitswap_wire.Want(cid),) * bitswap_wire.MAX_ENTRIES))
    message = unframe(framed)
    assert len(bitswap_wire.decode(message).wants) == bitswap_wire.MAX_ENTRIES
    over = unframe(bitswap_wire.frame(bitswap_wire.Message(wants=(bitswap_wire.Want(cid),) *
                                                            (bitswap_wire.MAX_ENTRIES + 1))))
    with pytest.raises(IntegrityError, match="more than"):
        bitswap_wire.decode(over)
    presences = unframe(bitswap_wire.frame(bitswap_wire.Message(have=(cid,) * (bitswap_wire.MAX_ENTRIES + 1))))
    with pytest.raises(IntegrityError, match="more than"):
        bitswap_wire.decode(presences)
