"""Bitswap messages: what Flair sends decodes to what it meant, and bytes from a peer are parsed without trust."""

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flair_node.core.cid import DAG_PB, RAW, cid_for, parse_cid
from flair_node.core.errors import IntegrityError
from flair_node.core.protobuf import bytes_field, int_field, read_varint
from flair_node.network import bitswap_wire as wire

blocks = st.lists(st.tuples(st.sampled_from([RAW, DAG_PB]), st.binary(max_size=2000)), max_size=5)
flags = st.booleans()


def body(message: wire.Message, **kwargs) -> bytes:
    framed = wire.frame(message, **kwargs)
    length, start = read_varint(framed, 0)
    assert len(framed) == start + length
    return framed[start:]


@given(blocks, st.lists(st.tuples(st.binary(min_size=1, max_size=50), flags, flags, flags), max_size=5), flags)
def test_a_message_survives_the_wire(raw_blocks, raw_wants, full):
    wants = tuple(wire.Want(parse_cid(cid_for(RAW, seed)), cancel, have_only, dont_have)
                  for seed, cancel, have_only, dont_have in raw_wants)
    sent = tuple((parse_cid(cid_for(codec, data)), data) for codec, data in raw_blocks)
    have = tuple(parse_cid(cid_for(DAG_PB, bytes([i]))) for i in range(2))
    message = wire.Message(wants, full, sent, have, have[:1])
    assert wire.decode(body(message)) == message
    assert wire.decode(body(message, presences=False)) == wire.Message(wants, full, sent)  # for Bitswap 1.1


def test_a_blocks_cid_is_computed_from_its_bytes_never_taken_from_the_sender():
    honest = parse_cid(cid_for(RAW, b"honest"))
    forged = body(wire.Message(blocks=((honest, b"forged"),)))  # the honest CID's prefix, other bytes
    (cid, data), = wire.decode(forged).blocks
    assert data == b"forged" and cid != honest and cid.digest == hashlib.sha256(b"forged").digest()


def test_bitswap_1_0_blocks_are_cidv0_dag_pb():
    (cid, data), = wire.decode(bytes_field(2, b"node")).blocks
    assert (cid.version, cid.codec, data) == (0, DAG_PB, b"node")
    assert cid.binary == bytes([0x12, 32]) + hashlib.sha256(b"node").digest()


def test_a_cidv0_want_is_answered_with_a_cidv0_prefix():
    v0 = parse_cid("QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n")
    assert v0.version == 0 and v0.prefix == bytes([0, DAG_PB, 0x12, 32])
    (want,) = wire.decode(body(wire.Message(wants=(wire.Want(v0),)))).wants
    assert want.cid == v0


@pytest.mark.parametrize("data, match", [
    (b"\x0a\x05abc", "runs past"),                                       # truncated field
    (b"\x0b", "wire type"),                                              # wire type 3 (groups)
    (int_field(1, 7), "wrong wire type"),                                # wantlist as a varint
    (bytes_field(3, bytes_field(1, bytes([1, 0x71, 0x12, 32])) + bytes_field(2, b"x")), "prefix"),  # dag-cbor
    (bytes_field(3, bytes_field(1, bytes([1, RAW, 0x13, 64])) + bytes_field(2, b"x")), "prefix"),   # sha2-512
    (bytes_field(1, bytes_field(1, bytes_field(1, b"not a cid"))), "CID"),
    (bytes_field(4, bytes_field(1, b"\x01\x55") + int_field(2, 1)), "CID"),
    (b"\xff" * 11, "varint"),
])
def test_malformed_messages_are_refused(data, match):
    with pytest.raises(IntegrityError, match=match):
        wire.decode(data)


def test_an_oversized_message_is_refused_before_it_is_parsed():
    with pytest.raises(IntegrityError, match="limit"):
        wire.decode(bytes(wire.MAX_MESSAGE + 1))
