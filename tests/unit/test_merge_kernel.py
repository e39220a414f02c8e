"""The fused kernel and the int64 path compute the same integers: same bytes, whichever path runs."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flair_node.tensors import fixedpoint
from flair_node.tensors.fixedpoint import WEIGHT_BITS, normalize_weights, weighted_sum_fixed


def int64_path(base, inputs, weights, scale_bits=24):
    taking = [(x, w) for x, w in zip(inputs, weights, strict=True) if w]
    magnitude = max(1, sum(abs(w) for _, w in taking))
    return fixedpoint._int64_chunk(base, taking, 0, base.numel(), scale_bits, WEIGHT_BITS, magnitude, "t")


def python_reference(base, inputs, weights, scale_bits=24):
    """Plain Python integers, no numpy or torch arithmetic at all."""
    out = []
    scale = 1 << scale_bits
    for i in range(base.numel()):
        fb = round(float(base[i]) * scale)  # Python's round is half to even
        acc = sum(w * (round(float(x[i]) * scale) - fb) for x, w in zip(inputs, weights, strict=True))
        q, r = divmod(acc, 1 << WEIGHT_BITS)
        half = 1 << (WEIGHT_BITS - 1)
        q += 1 if r > half or (r == half and q % 2) else 0
        out.append((fb + q) / scale)
    return torch.tensor(out, dtype=torch.float64).to(base.dtype)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 300), st.lists(st.integers(0, 10_000), min_size=5, max_size=5),
       st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]), st.integers(0, 2**31),
       st.sampled_from([1e-8, 1e-3, 1.0, 1e3]))
def test_kernel_int64_and_python_agree(k, n, counts, dtype, seed, spread):
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(n, generator=g, dtype=torch.float64) * spread).to(dtype)
    inputs = [(base.double() + torch.randn(n, generator=g, dtype=torch.float64) * spread * 0.1).to(dtype)
              for _ in range(k)]
    weights = normalize_weights(counts[:k])
    fast = weighted_sum_fixed(base, inputs, weights)
    slow = int64_path(base, inputs, weights)
    assert torch.equal(fast.view(torch.uint8), slow.view(torch.uint8))
    assert torch.equal(fast, python_reference(base, inputs, weights))


def test_ties_round_half_to_even():
    base = torch.zeros(4, dtype=torch.float64)
    ulp = 2.0**-24
    inputs = [torch.tensor([ulp, 3 * ulp, -ulp, -3 * ulp], dtype=torch.float64), base.clone()]
    half = [1 << (WEIGHT_BITS - 1)] * 2  # each change times 1/2: exact ties at 0.5 and 1.5 ulp
    expected = torch.tensor([0.0, 2 * ulp, 0.0, -2 * ulp], dtype=torch.float64)
    assert torch.equal(weighted_sum_fixed(base, inputs, half), expected)
    assert torch.equal(int64_path(base, inputs, half), expected)


def test_large_values_take_the_int64_path_and_stay_exact():
    base = torch.tensor([3e5, -3e5, 1.0], dtype=torch.float64)
    inputs = [base + 1.0, base - 1.0, base * 2]
    weights = [1 << WEIGHT_BITS] * 3  # task arithmetic: Σ|w| = 3·2^16 makes 3e5 too large for float64 exactness
    out = weighted_sum_fixed(base, inputs, weights)
    assert torch.equal(out, python_reference(base, inputs, weights))


def test_a_float16_merge_beyond_its_range_is_refused_whichever_path_runs():
    import pytest

    from flair_node.core.errors import MergeError

    base = torch.tensor([60000.0, 1.0], dtype=torch.float16)
    inputs = [torch.tensor([65000.0, 1.0], dtype=torch.float16)]
    with pytest.raises(MergeError, match="overflows"):  # 60000 + 2 x 5000 is beyond 65504
        weighted_sum_fixed(base, inputs, [2 << WEIGHT_BITS])


def test_inputs_are_never_modified():
    for dtype in (torch.float32, torch.float64, torch.int64, torch.float16):
        base = torch.arange(6).to(dtype)
        inputs = [base * 2, base + 3]
        before = [t.clone() for t in (base, *inputs)]
        weighted_sum_fixed(base, inputs, [1 << WEIGHT_BITS, 1 << WEIGHT_BITS])
        assert all(torch.equal(a, b) for a, b in zip(before, (base, *inputs), strict=True))


def test_half_types_through_the_kernel_are_the_int64_paths_bytes_over_a_million_values():
    for dtype in (torch.bfloat16, torch.float16):
        for spread in (1e-4, 1.0, 300.0):
            g = torch.Generator().manual_seed(int(spread * 1e4))
            n = (1 << 20) + 12345  # more than one HALF_CHUNK, and a partial one
            base = (torch.randn(n, generator=g, dtype=torch.float64) * spread).to(dtype)
            inputs = [(base.double() + torch.randn(n, generator=g, dtype=torch.float64) * spread).to(dtype)
                      for _ in range(3)]
            weights = normalize_weights([5, 3, 1])
            fast = weighted_sum_fixed(base, inputs, weights)
            assert torch.equal(fast.view(torch.int16), int64_path(base, inputs, weights).view(torch.int16)), \
                (dtype, spread)
