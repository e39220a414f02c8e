"""safetensors input is checked before use; payload codecs are lossless to the bit."""

import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flair_node.core.errors import LayoutMismatch, NotSafetensors
from flair_node.tensors.codec import decode_payload, encode_payload
from flair_node.tensors.diff import tensor_diff
from flair_node.tensors.fixedpoint import normalize_weights
from flair_node.tensors.safetensors_io import check_layout, layout_of, load_bytes, load_file, save_bytes


def bits_equal(a, b):
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and a[k].reshape(-1).view(torch.uint8).tolist() == b[k].reshape(-1).view(torch.uint8).tolist()
        for k in a)


def odd_state(seed):
    g = torch.Generator().manual_seed(seed)
    f32 = torch.randn(3, 5, generator=g)
    f32[0, :4] = torch.tensor([float("nan"), -0.0, 1e-45, float("inf")])  # NaN, negative zero, denormal, inf
    return {
        "f32": f32,
        "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "f64": torch.randn(4, generator=g, dtype=torch.float64),
        "i64": torch.randint(-(2**62), 2**62, (3,), generator=g),
        "u8": torch.randint(0, 255, (6,), generator=g, dtype=torch.uint8),
        "mask": torch.rand(5, generator=g) > 0.5,
        "scalar": torch.tensor(float(seed)),
    }


def test_round_trip_and_layout():
    state = odd_state(0)
    assert bits_equal(load_bytes(save_bytes(state)), state)
    layout = layout_of(state)
    assert [t.name for t in layout] == sorted(state)
    assert {t.name: t.dtype for t in layout}["bf16"] == "BF16"
    check_layout(state, layout)


TRUNCATED = b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}'


@pytest.mark.parametrize("data, message", [
    (b"", "only 0 bytes"),
    (struct.pack("<Q", 10**12) + b"{}", "header length"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    (struct.pack("<Q", 4) + b"\xff\xfe{}", "not JSON"),
    (struct.pack("<Q", len(TRUNCATED)) + TRUNCATED, "its tensors hold 16 bytes"),  # the data is missing
])
def test_malformed_safetensors_are_refused(data, message):
    with pytest.raises(NotSafetensors, match=message):
        load_bytes(data)


def test_pickle_files_are_refused_without_being_loaded(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, path)  # written here only to be refused; never loaded
    with pytest.raises(NotSafetensors, match="model.pt is not a safetensors file"):
        load_file(path)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("f16"), "tensor f16 is missing"),
    (lambda s: s.update(extra=torch.zeros(1)), "tensor extra is not in"),
    (lambda s: s.update(f64=torch.zeros(4)), "tensor f64 has dtype F32, the commit it applies to has F64"),
    (lambda s: s.update(f32=torch.zeros(5, 3)), r"tensor f32 has shape \(5, 3\), the commit .* has \(3, 5\)"),
])
def test_layout_mismatch_names_the_tensor(change, message):
    state = odd_state(0)
    layout = layout_of(state)
    change(state)
    with pytest.raises(LayoutMismatch, match=message):
        check_layout(state, layout)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 2**31), min_size=1, max_size=20))
def test_bitdelta_chains_are_exact(seeds):
    base = odd_state(12345)
    layout = layout_of(base)
    for seed in seeds:
        new = odd_state(seed)
        data = encode_payload("bitdelta-v1", new, base)
        decoded = decode_payload("bitdelta-v1", data, base, layout)
        assert bits_equal(decoded, new)
        base = decoded


def test_damaged_or_foreign_payloads_are_refused():
    base, new = odd_state(1), odd_state(2)
    layout = layout_of(base)
    data = encode_payload("bitdelta-v1", new, base)
    with pytest.raises(NotSafetensors):
        decode_payload("bitdelta-v1", data[: len(data) // 2], base, layout)
    other = {k: v for k, v in base.items() if k != "mask"}
    with pytest.raises(NotSafetensors, match="mask"):
        decode_payload("bitdelta-v1", data, other, layout)
    with pytest.raises(Exception, match="unknown payload codec"):
        decode_payload("zip-v9", data, base, layout)
    full = encode_payload("full-v1", new, None)
    assert bits_equal(decode_payload("full-v1", full, None, layout), new)


@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=12))
def test_normalized_weights_sum_exactly_and_follow_counts(counts):
    weights = normalize_weights(counts)
    assert sum(weights) == 1 << 16 and all(w >= 0 for w in weights)
    total = sum(counts)
    for w, c in zip(weights, counts, strict=True):
        expected = (1 << 16) * c / total if total else (1 << 16) / len(counts)
        assert abs(w - expected) < 1


def test_diff_reports_l2_max_and_changed_elements():
    a = {"w": torch.zeros(4), "m": torch.tensor([True, False])}
    b = {"w": torch.tensor([3.0, 4.0, 0.0, -0.0]), "m": torch.tensor([True, True])}
    by_name = {d["name"]: d for d in tensor_diff(a, b)}
    assert by_name["w"]["l2"] == 5.0 and by_name["w"]["max_abs"] == 4.0
    assert by_name["w"]["changed"] == 3  # -0.0 differs from 0.0 in its bits
    assert by_name["m"]["changed"] == 1


def test_diff_of_empty_tensors_reports_no_change():
    empty = {"w": torch.zeros(0), "grid": torch.zeros(3, 0, dtype=torch.bfloat16),
             "m": torch.zeros(0, dtype=torch.bool)}
    assert tensor_diff(empty, {k: v.clone() for k, v in empty.items()}) == [
        {"name": name, "change": "values", "l2": 0.0, "max_abs": 0.0, "changed": 0} for name in ("grid", "m", "w")]
