"""A merge read a part at a time (``fixedpoint.combine_parts`` over ``safetensors_io.Ranges``, written through
``streamed_source``) gives ``combine_tensor``'s bytes, whatever the part size, and reads no range its inputs store
alike."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flair_node.core.errors import IntegrityError, InvalidInput, MergeError
from flair_node.core.objects import TensorSpec
from flair_node.tensors.fixedpoint import WEIGHT_BITS, combine_parts, combine_tensor
from flair_node.tensors.safetensors_io import Ranges, load_source, ranges_of, streamed_source

WHOLE = 1 << WEIGHT_BITS
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.int32, torch.int8,
          torch.bool]


def tensor(dtype: torch.dtype, n: int, generator: torch.Generator) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.rand(n, generator=generator) < 0.5
    if dtype.is_floating_point:
        return torch.randn(n, generator=generator, dtype=torch.float64).to(dtype)
    return torch.randint(-100, 100, (n,), generator=generator, dtype=dtype)


def joined(parts) -> bytes:
    return b"".join(bytes(part) for part in parts)


def bytes_of(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(DTYPES), st.integers(0, 200), st.lists(st.booleans(), min_size=1, max_size=4),
       st.lists(st.sampled_from([0, 1, 7_000, WHOLE]), min_size=4, max_size=4), st.sampled_from([8, 24, 64, 4096]),
       st.integers(0, 2**31))
def test_a_merge_by_parts_is_the_merge_of_whole_tensors_bit_for_bit(dtype, n, changes, weights, part, seed):
    generator = torch.Generator().manual_seed(seed)
    base = tensor(dtype, n, generator)
    inputs = [tensor(dtype, n, generator) if changed else base.clone() for changed in changes]
    weights = weights[:len(inputs)]
    parts = combine_parts("t", ranges_of({"t": base}, "t"), [ranges_of({"t": x}, "t") for x in inputs], weights,
                          part=part)
    try:
        expected = bytes_of(combine_tensor("t", base, inputs, weights))
    except MergeError:  # a sum beyond the dtype: refused either way
        with pytest.raises(MergeError, match="overflows"):
            joined(parts)
        return
    assert joined(parts) == expected


def test_a_value_out_of_range_is_refused_by_parts_as_it_is_whole() -> None:
    base = torch.zeros(64, dtype=torch.float16)
    inputs = [base.clone(), base.clone()]
    inputs[0][50], inputs[1][50] = 60000.0, 60000.0  # their sum, by task arithmetic, is beyond float16
    with pytest.raises(MergeError, match="overflows"):
        combine_tensor("t", base, inputs, [WHOLE, WHOLE])
    with pytest.raises(MergeError, match="overflows"):
        joined(combine_parts("t", ranges_of({"t": base}, "t"), [ranges_of({"t": x}, "t") for x in inputs],
                             [WHOLE, WHOLE], part=16))


def test_a_part_that_is_not_whole_values_is_refused() -> None:
    state = {"t": torch.zeros(4)}
    with pytest.raises(InvalidInput):
        joined(combine_parts("t", ranges_of(state, "t"), [ranges_of(state, "t")], [WHOLE], part=12))


def counted(t: torch.Tensor, reads: list[int], same: object | None) -> Ranges:
    """``t`` read by ranges, each read counted, every range identified by ``same`` (None: unknown)."""
    plain = ranges_of({"t": t}, "t")

    def readinto(offset: int, buffer: memoryview) -> None:
        reads.append(offset)
        plain.readinto(offset, buffer)

    return Ranges(plain.spec, plain.nbytes, readinto, lambda start, stop: None if same is None else (same, start))


def test_ranges_stored_alike_are_not_read_to_find_a_tensor_unchanged() -> None:
    base = torch.arange(64, dtype=torch.float32)
    base_reads: list[int] = []
    side_reads: list[int] = []
    parts = combine_parts("t", counted(base, base_reads, "leaves"), [counted(base.clone(), side_reads, "leaves")],
                          [WHOLE // 2], part=64)
    assert joined(parts) == bytes_of(base)
    assert side_reads == [] and base_reads == [0, 64, 128, 192]  # the base's bytes, read once, as the result

    unknown: list[int] = []
    assert joined(combine_parts("t", counted(base, [], None), [counted(base.clone(), unknown, None)],
                                [WHOLE // 2], part=64)) == bytes_of(base)
    assert unknown == [0, 64, 128, 192]  # not known alike: compared byte for byte


def test_a_changed_input_is_found_at_its_first_differing_part() -> None:
    base = torch.zeros(64, dtype=torch.float32)
    side = base.clone()
    side[0] = 1.0
    reads: list[int] = []
    joined(combine_parts("t", counted(base, [], None), [counted(side, reads, None)], [WHOLE], part=64))
    assert reads == [0, 0, 64, 128, 192]  # compared at its first part, then the whole change taken


def test_a_streamed_source_joins_and_splits_parts_of_any_size() -> None:
    layout = [TensorSpec("a", "F32", (10,)), TensorSpec("b", "I64", (3,)), TensorSpec("c", "F32", (0,))]
    values = {"a": torch.arange(10, dtype=torch.float32), "b": torch.tensor([7, 8, 9])}

    def parts(name: str):
        data = bytes_of(values[name])
        return [data[at:at + 7] for at in range(0, len(data), 7)]  # parts of 7 bytes: across values

    loaded = load_source(streamed_source(layout, parts))
    assert torch.equal(loaded["a"], values["a"]) and torch.equal(loaded["b"], values["b"])
    assert loaded["c"].numel() == 0
    source = streamed_source(layout, parts)
    entry = next(e for e in source.header.entries if e.name == "a")
    assert bytes(source.read(entry, 8, 8)) == bytes_of(values["a"])[8:16]
    assert bytes(source.read(entry, 0, 4)) == bytes_of(values["a"])[:4]  # out of order: its parts start again


@pytest.mark.parametrize("size", [36, 44])
def test_a_streamed_tensor_of_another_size_than_its_spec_is_refused(size: int) -> None:
    layout = [TensorSpec("a", "F32", (10,))]
    with pytest.raises(IntegrityError, match="tensor a was computed as"):
        load_source(streamed_source(layout, lambda name: [bytes(size)]))


def test_a_merge_reads_no_piece_of_a_tensor_its_inputs_left_as_they_were(monkeypatch) -> None:
    from flair_node.core.identity import Identity
    from flair_node.storage import pieces
    from flair_node.storage.repos import RepoSet
    from flair_node.tensors.fixedpoint import combine

    owner = Identity.generate()
    g = torch.Generator().manual_seed(0)
    first = {f"t{i}": torch.randn(1 << 18, generator=g) for i in range(6)}  # 1 MiB each: 2 pieces
    main, side = dict(first), dict(first)
    main["t0"], side["t1"] = torch.randn(1 << 18, generator=g), torch.randn(1 << 18, generator=g)
    opened: list[int] = []
    resolve = pieces.Snapshot.resolve
    monkeypatch.setattr(pieces.Snapshot, "resolve", lambda self, index: (opened.append(index), resolve(self, index))[1])

    def merged(alike: bool) -> tuple[dict[str, torch.Tensor], int]:
        if not alike:
            monkeypatch.setattr(pieces.Snapshot, "span", lambda self, start, stop: object())
        repo = RepoSet.in_memory(owner).create("m", first)
        repo.create_branch(owner, "side", repo.head("main"))
        repo.commit_weights(owner, main, message="main")
        repo.commit_weights(owner, side, message="side", branch="side")
        repo.drop_caches()  # the weights just committed, read from their pieces
        opened.clear()
        cid = repo.merge(owner, ["side"], "main").id
        reads = len(opened)
        return repo.materialize(cid), reads

    alike, read_alike = merged(True)
    compared, read_compared = merged(False)
    expected = combine(first, [main, side], [WHOLE // 2, WHOLE // 2])
    assert all(torch.equal(alike[k], expected[k]) and torch.equal(compared[k], expected[k]) for k in expected)
    # Four tensors of two pieces no side changed: read once as the result, where comparing reads them thrice more
    assert read_compared - read_alike >= 4 * 2 * 2, (read_alike, read_compared)


def test_leaves_alike_under_two_keys_are_compared_byte_for_byte(monkeypatch) -> None:
    """A leaf crafted to open under two key epochs, to different pieces, could pass for an unchanged range: here
    every range of every payload claims the same leaves, and a merge across a key rotation still compares bytes."""
    from flair_node.core.identity import Identity
    from flair_node.storage import pieces
    from flair_node.storage.repos import RepoSet
    from flair_node.tensors.fixedpoint import combine

    owner = Identity.generate()
    g = torch.Generator().manual_seed(2)
    first = {f"t{i}": torch.randn(1 << 16, generator=g) for i in range(3)}
    main = {name: torch.randn(1 << 16, generator=g) for name in first}
    side = dict(first, t0=torch.randn(1 << 16, generator=g))
    repo = RepoSet.in_memory(owner).create("rotated", first)
    repo.create_branch(owner, "side", repo.head("main"))
    repo.rotate_key(owner)
    repo.commit_weights(owner, main, message="main, under the new key")
    repo.commit_weights(owner, side, message="side, under the new key", branch="side")
    repo.drop_caches()
    monkeypatch.setattr(pieces.Snapshot, "span", lambda self, start, stop: ((b"the same leaf",), 0, stop - start))
    merged = repo.materialize(repo.merge(owner, ["side"], "main").id)
    expected = combine(first, [main, side], [WHOLE // 2, WHOLE // 2])
    assert all(torch.equal(merged[k], expected[k]) for k in expected)
