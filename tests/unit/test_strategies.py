"""Aggregation strategies: they agree with Flower's functions, give the same bytes whatever the threads or chunk
size, resist one bad input, validate their parameters and inputs, and round-trip through the registry."""

import itertools
import math
import warnings

import numba
import numpy as np
import pytest
import torch

from flair_node.core import encoding
from flair_node.core.errors import InvalidInput, MergeError
from flair_node.protocol import strategies
from flair_node.protocol.strategies import (
    STRATEGIES,
    Bulyan,
    Krum,
    Mean,
    Median,
    Strategy,
    TrimmedMean,
    _base,
    build_strategy,
)
from flair_node.protocol.strategies._kernels import sort_columns, sorting_network
from flair_node.protocol.strategies._order import equal_weights
from flair_node.tensors.fixedpoint import WEIGHT_BITS, combine, normalize_weights

with warnings.catch_warnings():
    # flwr imports typer, which uses click APIs deprecated in click 8.2.
    warnings.filterwarnings("ignore", r"'click\.utils\.get_\w+_stream' is deprecated", DeprecationWarning)
    from flwr.server.strategy import aggregate as flower

SHAPES = {"conv.weight": (4, 3, 3, 3), "conv.bias": (4,), "fc.weight": (10, 37), "fc.bias": (10,)}
ALL = [Mean(), Median(), TrimmedMean(0.2), TrimmedMean(0.0), Krum(1), Krum(1, keep=3), Bulyan(1)]


def make_states(n, seed=0, shapes=SHAPES, noise=1e-2):
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}
    inputs = [{k: v + torch.randn(v.shape, generator=g) * noise for k, v in base.items()} for _ in range(n)]
    examples = [int(x) for x in torch.randint(10, 1000, (n,), generator=g)]
    return base, inputs, examples


def as_flower(inputs, examples):
    """Flower's input: per client, (one NDArray per layer in a fixed order, number of examples)."""
    return [([state[k].numpy() for k in SHAPES], n) for state, n in zip(inputs, examples, strict=True)]


def bits(state):
    return {k: bytes(v.contiguous().view(torch.uint8).numpy()) for k, v in state.items()}


FLOWER = {
    "mean": lambda results, s: flower.aggregate(results),
    "median": lambda results, s: flower.aggregate_median(results),
    "trimmed_mean": lambda results, s: flower.aggregate_trimmed_avg(results, s.fraction),
    "krum": lambda results, s: flower.aggregate_krum(results, s.byzantine, 0 if s.keep == 1 else s.keep),
    "bulyan": lambda results, s: flower.aggregate_bulyan(list(results), s.byzantine, flower.aggregate_krum,
                                                          to_keep=0),
}


@pytest.mark.parametrize("strategy,n", [
    (Mean(), 5), (Median(), 7), (Median(), 10), (TrimmedMean(0.2), 10), (TrimmedMean(0.3), 7),
    (TrimmedMean(0.0), 6), (Krum(1), 7), (Krum(2), 10), (Krum(1, keep=3), 10), (Bulyan(1), 7), (Bulyan(1), 10),
    (Bulyan(2), 11), (Bulyan(0), 4),
])
def test_agrees_with_flower(strategy, n):
    base, inputs, examples = make_states(n, seed=n)
    ours = strategy.aggregate(base, inputs, normalize_weights(examples))
    theirs = FLOWER[strategy.name](as_flower(inputs, examples), strategy)
    exact = isinstance(strategy, Krum) and strategy.keep == 1 or isinstance(strategy, Median) and n % 2
    for k, expected in zip(SHAPES, theirs, strict=True):
        assert ours[k].dtype == torch.float32 and ours[k].shape == SHAPES[k]
        if exact:  # a picked value, bit for bit
            assert np.array_equal(ours[k].numpy(), expected)
        else:  # fixed point (2^-24 steps) and integer weights (2^-16 of the spread) against Flower's float32
            assert np.allclose(ours[k].numpy(), expected, rtol=0, atol=1e-6)


def test_mean_is_combine():
    base, inputs, examples = make_states(4)
    weights = normalize_weights(examples)
    assert bits(Mean().aggregate(base, inputs, weights)) == bits(combine(base, inputs, weights))


def test_trimmed_mean_is_the_fixed_point_mean_of_the_kept_values():
    """Computed again with Python integers only: sort, keep the middle, Σ w·(v − base) / 2^16 half to even."""
    base, inputs, examples = make_states(7, shapes={"w": (50,)})
    out = TrimmedMean(0.3).aggregate(base, inputs, normalize_weights(examples))["w"]
    weights = equal_weights(7 - 2 * 2)
    scale = 1 << 24
    for i in range(50):
        kept = sorted(float(s["w"][i]) for s in inputs)[2:5]
        fb = round(float(base["w"][i]) * scale)
        acc = sum(w * (round(v * scale) - fb) for w, v in zip(weights, kept, strict=True))
        q, r = divmod(acc, 1 << WEIGHT_BITS)
        half = 1 << (WEIGHT_BITS - 1)
        q += 1 if r > half or (r == half and q % 2) else 0
        assert float(out[i]) == float(torch.tensor((fb + q) / scale, dtype=torch.float32))


def test_equal_weights_are_symmetric_and_sum_to_one():
    for m in range(1, 40):
        w = equal_weights(m)
        assert sum(w) == 1 << WEIGHT_BITS and w == w[::-1] and max(w) - min(w) <= 1


@pytest.mark.parametrize("strategy", ALL, ids=lambda s: str(s.describe()))
def test_same_bytes_whatever_threads_and_chunk_size(strategy, monkeypatch):
    # Tensors over 4096 values span several distance blocks; the tiny chunk cuts inside sorting blocks too.
    base, inputs, examples = make_states(10, shapes={"a": (3, 3001), "b": (5000,), "c": (7,)})
    weights = normalize_weights(examples)
    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    try:
        torch.set_num_threads(1)
        numba.set_num_threads(1)
        monkeypatch.setattr(_base, "CHUNK", 1000)
        small = bits(strategy.aggregate(base, inputs, weights))
        torch.set_num_threads(2)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        monkeypatch.setattr(_base, "CHUNK", 1 << 18)
        default = bits(strategy.aggregate(base, inputs, weights))
    finally:
        torch.set_num_threads(torch_threads)
        numba.set_num_threads(numba_threads)
    assert small == default


@pytest.mark.parametrize("attack", ["scaled", "flipped"])
@pytest.mark.parametrize("strategy", [Median(), TrimmedMean(0.2), Krum(1), Krum(1, keep=3), Bulyan(1)],
                         ids=lambda s: str(s.describe()))
def test_one_bad_input_barely_moves_robust_rules(strategy, attack):
    base, inputs, examples = make_states(10, seed=3)
    weights = normalize_weights([100] * 10)
    factor = 100.0 if attack == "scaled" else -100.0
    inputs[4] = {k: base[k] + factor * (v - base[k]) for k, v in inputs[4].items()}
    honest = Mean().aggregate(base, inputs[:4] + inputs[5:], normalize_weights([100] * 9))

    def error(state):
        return math.sqrt(sum(float((state[k] - honest[k]).double().pow(2).sum()) for k in SHAPES))

    mean_error = error(Mean().aggregate(base, inputs, weights))
    assert error(strategy.aggregate(base, inputs, weights)) < mean_error / 4


def test_krum_never_picks_the_outlier():
    base, inputs, examples = make_states(7, seed=5)
    inputs[0] = {k: base[k] + 100 * (v - base[k]) for k, v in inputs[0].items()}
    merged = Krum(1).aggregate(base, inputs, normalize_weights(examples))
    picked = [i for i, s in enumerate(inputs) if all(merged[k] is s[k] for k in SHAPES)]
    assert len(picked) == 1 and picked[0] != 0


def test_parameter_validation():
    for bad in (0.5, -0.1, float("nan"), float("inf"), "0.2", True):
        with pytest.raises(InvalidInput):
            TrimmedMean(bad)
    assert TrimmedMean(0).fraction == 0.0
    for kwargs in ({"byzantine": -1}, {"byzantine": 1, "keep": 0}, {"byzantine": True}, {"byzantine": 1.0}):
        with pytest.raises(InvalidInput):
            Krum(**kwargs)
    for bad in (-1, "1", None):
        with pytest.raises(InvalidInput):
            Bulyan(bad)


def test_too_few_inputs_for_f():
    base, inputs, examples = make_states(6)
    weights = normalize_weights(examples)
    with pytest.raises(InvalidInput, match="at least 2f \\+ 3 = 7 inputs, got 6"):
        Krum(2).aggregate(base, inputs, weights)
    with pytest.raises(InvalidInput, match="keep at most n - f = 5"):
        Krum(1, keep=6).aggregate(base, inputs, weights)
    with pytest.raises(InvalidInput, match="at least 4f \\+ 3 = 7 inputs, got 6"):
        Bulyan(1).aggregate(base, inputs, weights)
    Krum(1, keep=5).aggregate(base, inputs, weights)
    Bulyan(0).aggregate(base, inputs, weights)


@pytest.mark.parametrize("strategy", ALL, ids=lambda s: str(s.describe()))
def test_bad_weights_are_refused(strategy):
    base, inputs, examples = make_states(7)
    weights = normalize_weights(examples)
    for bad in (weights[:-1], [w + 1 for w in weights], [-weights[0], *weights[1:]], [float(w) for w in weights]):
        with pytest.raises(InvalidInput):
            strategy.aggregate(base, inputs, bad)
    with pytest.raises(InvalidInput):
        strategy.aggregate(base, [], [])


@pytest.mark.parametrize("strategy", ALL, ids=lambda s: str(s.describe()))
def test_registry_round_trip(strategy):
    record = strategy.describe()
    encoding.encode(record)  # canonical records hold no floats
    assert record["name"] in STRATEGIES and record["name"] == strategy.name
    rebuilt = build_strategy(record["name"], encoding.decode(encoding.encode(record))["params"])
    assert rebuilt == strategy and rebuilt.describe() == record


def test_registry_refuses_unknown_names_and_params():
    assert set(STRATEGIES) == {"mean", "median", "trimmed_mean", "krum", "bulyan"}
    assert isinstance(strategies.DEFAULT, Mean)
    assert build_strategy("trimmed_mean", {"fraction": 0.3}) == TrimmedMean(0.3)
    assert build_strategy("median") == Median()
    for name, params in [("fedavg", {}), ("krum", {}), ("krum", {"byzantine": 1, "f": 1}), ("krum", {"byzantine": "1"}),
                         ("trimmed_mean", {"fraction": "a lot"}), ("trimmed_mean", {"fraction": "0.7"}),
                         ("trimmed_mean", {"fraction": False}), ("bulyan", {"byzantine": -2}), ("mean", {"x": 1}),
                         ("median", [("byzantine", 1)])]:
        with pytest.raises(InvalidInput):
            build_strategy(name, params)


def test_exports():
    for name in strategies.__all__:
        assert hasattr(strategies, name)
    assert all(issubclass(cls, Strategy) for cls in STRATEGIES.values())


def mixed_states(values_per_input, mask_per_input):
    base = {"w": torch.zeros(3), "steps": torch.tensor([7, 7], dtype=torch.int64),
            "mask": torch.tensor([True, False, True]), "frozen": torch.arange(4, dtype=torch.int32)}
    inputs = []
    for i, (steps, mask) in enumerate(zip(values_per_input, mask_per_input, strict=True)):
        inputs.append({"w": torch.full((3,), 0.01 * (i + 1)), "steps": torch.tensor(steps, dtype=torch.int64),
                       "mask": torch.tensor(mask), "frozen": base["frozen"].clone()})
    return base, inputs


@pytest.mark.parametrize("strategy", ALL, ids=lambda s: str(s.describe()))
def test_integer_and_bool_tensors_keep_their_dtype(strategy):
    steps = [[7, 10], [7, 12], [7, 11], [7, 30], [7, 9], [7, 8], [7, 13]]
    masks = [[True, True, False], [True, True, True], [False, True, True], [True, False, True],
             [True, True, True], [True, False, False], [True, True, True]]
    base, inputs = mixed_states(steps, masks)
    merged = strategy.aggregate(base, inputs, normalize_weights([1] * 7))
    assert merged["frozen"] is base["frozen"]  # no input changed it
    for k in base:
        assert merged[k].dtype == base[k].dtype and merged[k].shape == base[k].shape
    assert merged["steps"][0] == 7
    if isinstance(strategy, Median):
        assert merged["steps"].tolist() == [7, 11] and merged["mask"].tolist() == [True, True, True]


def test_integer_median_of_an_even_count_rounds_the_update_half_to_even():
    base, inputs = mixed_states([[7, 10], [7, 11], [7, 12], [7, 14]], [[True, False, True]] * 4)
    inputs[0]["mask"] = torch.tensor([False, True, True])
    inputs[1]["mask"] = torch.tensor([False, True, True])
    merged = Median().aggregate(base, inputs, normalize_weights([1] * 4))
    # 7 + median(3, 4, 5, 7) = 7 + 4.5 -> 7 + 4; a 2-2 vote keeps the base's value.
    assert merged["steps"].tolist() == [7, 11]
    assert merged["mask"].tolist() == [True, False, True]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("strategy", [Median(), TrimmedMean(0.2), Krum(1), Bulyan(1)], ids=lambda s: s.name)
def test_other_float_dtypes(strategy, dtype):
    base, inputs, examples = make_states(7, seed=11)
    cast = [{k: v.to(dtype) for k, v in s.items()} for s in inputs]
    merged = strategy.aggregate({k: v.to(dtype) for k, v in base.items()}, cast, normalize_weights(examples))
    reference = strategy.aggregate(base, [{k: v.to(dtype).float() for k, v in s.items()} for s in cast],
                                   normalize_weights(examples))
    for k in SHAPES:
        assert merged[k].dtype == dtype
        assert torch.allclose(merged[k].float(), reference[k], rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("strategy", ALL, ids=lambda s: str(s.describe()))
def test_layout_mismatches_raise_merge_error(strategy):
    base, inputs, examples = make_states(7)
    weights = normalize_weights(examples)
    broken = [
        lambda s: s.pop("fc.bias"),
        lambda s: s.__setitem__("fc.bias", torch.zeros(11)),
        lambda s: s.__setitem__("fc.bias", s["fc.bias"].double()),
        lambda s: s.__setitem__("extra", torch.zeros(1)),
    ]
    for breaks in broken:
        states = [dict(s) for s in inputs]
        breaks(states[3])
        with pytest.raises(MergeError) as info:
            strategy.aggregate(base, states, weights)
        assert info.value.data["input"] == "3"


@pytest.mark.parametrize("strategy", ALL, ids=lambda s: str(s.describe()))
def test_non_finite_values_are_refused_naming_the_input(strategy):
    base, inputs, examples = make_states(7)
    inputs[2]["fc.weight"] = inputs[2]["fc.weight"].clone()
    inputs[2]["fc.weight"][3, 4] = float("nan")
    with pytest.raises(MergeError) as info:
        strategy.aggregate(base, inputs, normalize_weights(examples))
    assert info.value.data["tensor"] == "fc.weight"
    if not isinstance(strategy, Mean):
        assert info.value.data["input"] == "2"


def test_unchanged_tensors_keep_the_base_bits():
    base, inputs, examples = make_states(7)
    inputs = [{**s, "fc.bias": base["fc.bias"].clone()} for s in inputs]
    for strategy in ALL:
        merged = strategy.aggregate(base, inputs, normalize_weights(examples))
        assert torch.equal(merged["fc.bias"], base["fc.bias"])


@pytest.mark.parametrize("n", range(1, 15))
def test_sorting_networks_sort_every_zero_one_column(n):
    """The 0-1 principle: a comparator network that sorts every 0/1 input sorts every input."""
    columns = np.array(list(itertools.product((0, 1), repeat=n)), dtype=np.uint8).T.copy()
    out = np.empty_like(columns)
    rows = numba.typed.List()
    for row in columns:
        rows.append(row)
    assert sort_columns(rows, sorting_network(n), out) == 0
    assert np.array_equal(out, np.sort(columns, axis=0))


def test_sorting_networks_on_floats_with_ties_and_signed_zeros():
    rng = np.random.default_rng(1)
    for n in (2, 3, 10, 17, 33):
        columns = rng.choice(np.array([-1.5, -0.0, 0.0, 2.0, 7.25], dtype=np.float32), size=(n, 999))
        out = np.empty_like(columns)
        rows = numba.typed.List()
        for row in columns:
            rows.append(row)
        sort_columns(rows, sorting_network(n), out)
        assert np.array_equal(out, np.sort(columns, axis=0))


def test_krum_distances_are_the_same_bits_whatever_threads_and_chunk_size(monkeypatch):
    from flair_node.protocol.strategies.krum import pairwise_distances

    base, inputs, _ = make_states(6, shapes={"a": (3, 3001), "b": (5000,), "c": (7,)})
    numba_threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        monkeypatch.setattr(_base, "CHUNK", 1000)
        small = pairwise_distances(base, inputs)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        monkeypatch.setattr(_base, "CHUNK", 1 << 18)
        default = pairwise_distances(base, inputs)
    finally:
        numba.set_num_threads(numba_threads)
    assert small.tobytes() == default.tobytes()
    flat = [torch.cat([s[k].reshape(-1).double() for k in ("a", "b", "c")]) for s in inputs]
    expected = np.array([[float((x - y).pow(2).sum()) for y in flat] for x in flat])
    assert np.allclose(default, expected, rtol=1e-12, atol=0) and np.array_equal(default, default.T)


@pytest.mark.parametrize("strategy", ALL, ids=lambda s: str(s.describe()))
def test_non_contiguous_tensors_give_the_same_bytes(strategy):
    base, inputs, examples = make_states(7, shapes={"w": (37, 29)})
    weights = normalize_weights(examples)
    expected = strategy.aggregate({"w": base["w"].T.contiguous()}, [{"w": s["w"].T.contiguous()} for s in inputs],
                                  weights)
    merged = strategy.aggregate({"w": base["w"].T}, [{"w": s["w"].T} for s in inputs], weights)
    assert torch.equal(merged["w"], expected["w"]) and merged["w"].shape == (29, 37)


@pytest.mark.parametrize("strategy", ALL, ids=lambda s: str(s.describe()))
def test_by_ranges_gives_the_bytes_of_aggregate_whatever_the_ranges_read(strategy, monkeypatch):
    from flair_node.tensors.safetensors_io import SourceState, state_source

    monkeypatch.setattr(_base, "CHUNK", 1000)  # the distance pass's and the columns' steps cut across ranges
    base, inputs, examples = make_states(7, shapes={"a": (3, 3001), "b": (5000,), "c": (7,), "s": ()})
    g = torch.Generator().manual_seed(3)
    for state in (base, *inputs):  # the other dtypes a model holds: halves, a counter, a mask, an empty tensor
        state["h"] = state["b"].to(torch.bfloat16)
        state["n"] = torch.randint(0, 1 << 20, (33,), generator=g)
        state["m"] = torch.rand(10, generator=g) > 0.5
        state["e"] = torch.zeros(0, 4)
    weights = normalize_weights(examples)
    whole = strategy.aggregate(base, inputs, weights)
    # read from files by ranges, as a round reads its inputs, and from tensors in memory
    lazy = [SourceState(state_source(x)) if i % 2 else x for i, x in enumerate(inputs)]
    ranges = strategy.by_ranges(SourceState(state_source(base)), lazy, weights)
    for part in (8, 56, 4096, 1 << 20):
        for name in base:
            got = b"".join(bytes(p) for p in ranges(name).parts(part))
            assert got == bits({name: whole[name].reshape(-1)})[name], (name, part)
