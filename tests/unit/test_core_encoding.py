import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flair_node.core import encoding
from flair_node.core.errors import IntegrityError, InvalidInput

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(values)
def test_round_trip(value):
    data = encoding.encode(value)
    assert encoding.decode(data) == value
    assert encoding.encode(encoding.decode(data)) == data


@given(st.dictionaries(st.text(max_size=6), st.integers(-(2**63), 2**64 - 1), min_size=2, max_size=6))
def test_key_order_does_not_matter(mapping):
    reordered = dict(reversed(list(mapping.items())))
    assert encoding.encode(mapping) == encoding.encode(reordered)


def test_non_canonical_bytes_are_refused():
    unsorted = msgpack.packb({"b": 1, "a": 2})
    with pytest.raises(IntegrityError, match="canonical"):
        encoding.decode(unsorted)
    wide_int = b"\xcd\x00\x01"  # 1 encoded as uint16 instead of a fixint
    with pytest.raises(IntegrityError, match="canonical"):
        encoding.decode(wide_int)


def test_floats_and_foreign_types_are_refused():
    with pytest.raises(InvalidInput, match="float"):
        encoding.encode({"lr": 0.1})
    with pytest.raises(IntegrityError):
        encoding.decode(msgpack.packb(0.5))
    with pytest.raises(InvalidInput):
        encoding.encode({1: "int key"})


def test_garbage_and_oversize_are_refused():
    with pytest.raises(IntegrityError):
        encoding.decode(b"\xc1")
    with pytest.raises(IntegrityError, match="limit"):
        encoding.decode(b"\x00" * (encoding.MAX_RECORD_BYTES + 1))
