"""Piece deltas (``storage.piece_delta``): bit-exact both ways, as small as the module docstring says, and through
a repository, stored in proportion to what changed and read back the same whatever the history."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flair_node.core.crypto import PieceCipher
from flair_node.core.errors import IntegrityError
from flair_node.core.identity import Identity
from flair_node.storage import merging, piece_delta, pieces, unixfs
from flair_node.storage.repos import RepoSet
from flair_node.tensors.safetensors_io import load_source, save_bytes

OWNER = Identity.generate()
DIGEST = bytes(range(32))


def changed(base: bytes, positions: np.ndarray, flips: np.ndarray) -> bytes:
    """``base`` with the bytes at ``positions`` XORed with ``flips`` (nonzero)."""
    out = np.frombuffer(base, np.uint8).copy()
    out[positions] ^= flips
    return out.tobytes()


def sparse_change(rng: np.random.Generator, base: bytes, count: int, width: int) -> bytes:
    """``base`` with ``count`` runs of ``width`` bytes changed at random places (runs may overlap)."""
    starts = rng.integers(0, max(1, len(base) - width + 1), count)
    positions = np.unique((starts[:, None] + np.arange(width)).ravel() % len(base))
    return changed(base, positions, rng.integers(1, 256, positions.size, dtype=np.uint8))


def delta(piece: bytes, base: bytes, depth: int = 1, **kw: int) -> bytes | None:
    return piece_delta.encode(piece, base, depth=depth, base_digest=DIGEST, base_size=len(base) + 32, **kw)


# -- the codec ---------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 70_000), st.integers(0, 2**32 - 1), st.integers(0, 200), st.sampled_from([1, 2, 3, 4, 8]),
       st.integers(0, 5000))
def test_a_sparse_delta_applied_to_its_base_gives_the_piece_bit_for_bit(length, seed, count, width, padded_to):
    rng = np.random.default_rng(seed)
    base = rng.bytes(length)
    piece = sparse_change(rng, base, count, width)
    data = delta(piece, base, min_plaintext=padded_to)
    if count * width * 64 <= length and length >= 4096:  # sparse enough that it always pays
        assert data is not None
    if data is None:
        return
    assert len(data) >= padded_to and len(data) <= max(padded_to, piece_delta.MAX_SHARE * length)
    parsed = piece_delta.parse(data)
    assert (parsed.depth, parsed.base, parsed.base_size, parsed.length) == (1, DIGEST, length + 32, length)
    assert piece_delta.apply(base, [parsed]) == piece


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 70_000), st.integers(0, 2**32 - 1))
def test_a_piece_that_changed_everywhere_is_not_stored_as_a_delta(length, seed):
    rng = np.random.default_rng(seed)
    base = rng.bytes(length)
    piece = changed(base, np.arange(length), rng.integers(1, 256, length, dtype=np.uint8))
    assert delta(piece, base) is None


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 70_000), st.integers(0, 2**32 - 1), st.integers(2, 5), st.sampled_from([1, 2, 4, 8]))
def test_a_chain_of_deltas_applied_in_any_order_gives_its_last_piece(length, seed, links, width):
    rng = np.random.default_rng(seed)
    chain = [rng.bytes(length)]
    for _ in range(links):
        chain.append(sparse_change(rng, chain[-1], max(1, length // 2000), width))
    encoded = [delta(new, old, depth=i + 1) for i, (old, new) in enumerate(itertools.pairwise(chain))]
    if any(data is None for data in encoded):  # a piece too short for a delta to pay
        assert length < 4096
        return
    deltas = [piece_delta.parse(data) for data in encoded]
    assert [d.depth for d in deltas] == list(range(1, links + 1))
    for order in itertools.permutations(deltas):
        assert piece_delta.apply(chain[0], list(order)) == chain[-1]


def test_an_unchanged_piece_is_an_empty_delta_that_applies_to_itself():
    base = np.random.default_rng(1).bytes(10_000)
    parsed = piece_delta.parse(delta(base, base))
    assert parsed.positions.size == 0 and piece_delta.apply(base, [parsed]) == base


@pytest.mark.parametrize("piece, base, depth", [
    (b"a" * 100, b"b" * 99, 1),
    (b"a" * 100, b"b" * 100, 0),
    (b"a" * 100, b"b" * 100, piece_delta.MAX_DEPTH + 1),
])
def test_encoding_refuses_pieces_of_two_lengths_or_a_depth_outside_the_chain(piece, base, depth):
    with pytest.raises(ValueError, match="one length, at a depth of 1 to MAX_DEPTH"):
        delta(piece, base, depth=depth)


ON_THREADS = """
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from flair_node.storage import piece_delta, pieces


def round_trip(seed):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(65536).astype(np.float32)
    new = base.copy()
    new[rng.choice(base.size, 1300, replace=False)] *= np.float32(1.001)
    try:
        data = piece_delta.encode(new.tobytes(), base.tobytes(), depth=1, base_digest=bytes(32), base_size=1)
        return piece_delta.apply(base.tobytes(), [piece_delta.parse(data)]) == new.tobytes()
    except Exception as exc:
        return repr(exc)


with ThreadPoolExecutor(max(2, pieces.WORKERS)) as pool:
    failures = [r for r in pool.map(round_trip, range(400)) if r is not True]
print(len(failures), failures[:1])
"""


def test_deltas_encoded_on_several_threads_at_once_neither_crash_nor_corrupt():
    """As ``pieces.write`` encodes them; in a process of its own, since a crash would take pytest's down."""
    result = subprocess.run([sys.executable, "-c", ON_THREADS], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stdout} {result.stderr[-2000:]}"
    assert result.stdout.startswith("0 "), result.stdout


@pytest.mark.parametrize("share", [0.005, 0.02, 0.10])
@pytest.mark.parametrize("relative", [1e-3, 1e-2])
def test_a_float32_piece_with_k_percent_changed_costs_at_most_k_plus_one_percent(share, relative):
    """The module docstring's claim, on a whole piece of 131072 values, ``share`` of them nudged by ``relative``."""
    rng = np.random.default_rng(int(share * 1000))
    base = rng.standard_normal(131_072).astype(np.float32)
    new = base.copy()
    which = rng.choice(base.size, int(share * base.size), replace=False)
    new[which] *= np.float32(1) + np.float32(relative) * rng.standard_normal(which.size).astype(np.float32)
    data = delta(new.tobytes(), base.tobytes())
    assert data is not None and piece_delta.apply(base.tobytes(), [piece_delta.parse(data)]) == new.tobytes()
    assert len(data) <= (share + 0.01) * base.nbytes, len(data) / base.nbytes
    if share == 0.02:
        assert len(data) <= 1.15 * share * base.nbytes, len(data) / base.nbytes


# -- through a repository ----------------------------------------------------------------------------------

MODEL = 50 * 256 * 256 * 4


def stored_bytes(repos: RepoSet) -> int:
    return sum(len(repos.blocks.objects.get(k)) for k in repos.blocks.keys())


def model(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"layer{i}.weight": torch.randn(256, 256, generator=g).to(dtype) for i in range(50)}


def nudged(state: dict[str, torch.Tensor], share: float, seed: int) -> dict[str, torch.Tensor]:
    """``state`` with ``share`` of every tensor's values, scattered, changed by a small relative amount."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, tensor in state.items():
        mask = torch.rand(tensor.shape, generator=g) < share
        factor = 1 + 0.01 * torch.randn(tensor.shape, generator=g)
        out[name] = torch.where(mask, (tensor.float() * factor).to(tensor.dtype), tensor)
    return out


def assert_reads_back(repo, commit_id, state, tmp_path) -> None:
    """``commit_id`` read from storage (caches dropped) is ``state`` bit for bit, materialized and checked out."""
    expected = save_bytes(state)
    repo.drop_caches()
    assert save_bytes(repo.materialize(commit_id)) == expected
    repo.drop_caches()
    out = tmp_path / "out.safetensors"
    assert repo.checkout(commit_id, out) == len(expected)
    assert out.read_bytes() == expected
    out.unlink()


def leaf_kinds(repo, commit) -> list[bool]:
    """Whether each leaf of ``commit``'s payload is a delta, opened with the cipher of its key epoch."""
    cipher = repo.keys.pieces(epoch=commit.payload.key_epoch, codec=pieces.CODEC)
    leaves = unixfs.leaves(repo.blocks, commit.payload.cid, max_size=commit.payload.size)
    return [cipher.open_leaf(repo.blocks.get(cid))[0] for cid, _ in leaves]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_commit_changing_two_percent_of_every_tensor_stores_about_two_percent_and_reads_back_exactly(
        tmp_path, dtype):
    repos = RepoSet.in_memory(OWNER)
    state = model(0, dtype)
    repo = repos.create("sparse", state)
    before = stored_bytes(repos)
    new = nudged(state, 0.02, 1)
    commit = repo.commit_weights(OWNER, new, message="2 % of every tensor")
    size = MODEL * dtype.itemsize // 4
    assert stored_bytes(repos) - before <= 0.03 * size, (stored_bytes(repos) - before) / size
    assert all(leaf_kinds(repo, commit))  # every piece is a delta
    assert_reads_back(repo, commit.id, new, tmp_path)


def test_an_unchanged_commit_stores_no_block(tmp_path):
    repos = RepoSet.in_memory(OWNER)
    state = nudged(model(0), 0.02, 1)
    repo = repos.create("same", model(0))
    first = repo.commit_weights(OWNER, state, message="changed")
    before = set(repos.blocks.keys())
    again = repo.commit_weights(OWNER, state, message="unchanged")
    assert set(repos.blocks.keys()) == before and again.payload.cid == first.payload.cid
    assert_reads_back(repo, again.id, state, tmp_path)


def test_a_commit_that_adds_a_tensor_stores_whole_pieces_and_the_next_one_deltas_again(tmp_path):
    repos = RepoSet.in_memory(OWNER)
    state = model(0)
    repo = repos.create("layout", state)
    grown = {**nudged(state, 0.02, 1), "extra.bias": torch.randn(1000)}
    added = repo.commit_weights(OWNER, grown, message="a tensor more")
    assert not any(leaf_kinds(repo, added))  # another header: nothing to be a delta of
    assert_reads_back(repo, added.id, grown, tmp_path)
    again = nudged(grown, 0.02, 2)
    after = repo.commit_weights(OWNER, again, message="sparse again")
    assert sum(leaf_kinds(repo, after)) >= 49
    assert_reads_back(repo, after.id, again, tmp_path)


def test_every_commit_of_a_long_sparse_history_reads_back_exactly(tmp_path):
    repos = RepoSet.in_memory(OWNER)
    state = {f"layer{i}.weight": torch.randn(256, 256) for i in range(6)}
    repo = repos.create("history", state)
    history = []
    for step in range(2 * piece_delta.MAX_DEPTH + 3):  # past the longest chain, twice
        state = nudged(state, 0.01, step)
        history.append((repo.commit_weights(OWNER, state, message=f"step {step}").id, state))
    history.append((repo.commit_weights(OWNER, history[0][1], message="back to step 0").id, history[0][1]))
    cipher = repo.keys.pieces(epoch=0, codec=pieces.CODEC)
    depths = []
    for commit_id, expected in history:
        assert_reads_back(repo, commit_id, expected, tmp_path)
        payload = repo.commit(commit_id).payload
        snapshot = pieces.Snapshot(repo.blocks, cipher, payload.cid, payload.size, "head")
        depths.append(max(snapshot.resolve(i).depth for i in range(snapshot.count)))
    assert max(depths) == piece_delta.MAX_DEPTH and depths.count(1) >= 3  # chains grow to the limit, then restart


def test_a_merge_of_sparse_branches_reads_back_as_the_weights_it_combined(tmp_path):
    """On the merge's fixed-point grid (``tensors.fixedpoint``), so values no branch changed keep their bits."""
    repos = RepoSet.in_memory(OWNER)
    state = {name: torch.round(t.double() * 2**24).div(2**24).float() for name, t in model(0).items()}
    repo = repos.create("merge", state)
    root = repo.head("main")
    for name, seed in [("alice", 1), ("bob", 2)]:
        repo.create_branch(OWNER, name, root)
        side = state
        for step in range(3):
            side = nudged(side, 0.005, 10 * seed + step)
            repo.commit_weights(OWNER, side, message=f"{name} {step}", branch=name, examples=seed)
    repo.commit_weights(OWNER, nudged(state, 0.005, 99), message="main moves too")
    expected = load_source(merging.merge(repo, ["alice", "bob"], "main", strategy="task-arithmetic").state)
    before = stored_bytes(repos)
    merged = repo.merge(OWNER, ["alice", "bob"], "main", strategy="task-arithmetic")
    assert all(leaf_kinds(repo, merged))
    assert stored_bytes(repos) - before <= 0.06 * MODEL  # the branches changed about 3 % of main's values
    assert_reads_back(repo, merged.id, expected, tmp_path)


def test_a_commit_after_a_key_rotation_stores_whole_pieces_under_the_new_key(tmp_path):
    repos = RepoSet.in_memory(OWNER)
    state = model(0)
    repo = repos.create("rotated", state)
    repo.commit_weights(OWNER, nudged(state, 0.02, 1), message="before the rotation")
    repo.rotate_key(OWNER)
    new = nudged(state, 0.02, 2)
    commit = repo.commit_weights(OWNER, new, message="after the rotation")
    assert commit.payload.key_epoch == 1
    assert not any(leaf_kinds(repo, commit))  # opened with the new key: every leaf a whole piece
    old = repo.keys.pieces(epoch=0, codec=pieces.CODEC)
    for cid, _ in unixfs.leaves(repo.blocks, commit.payload.cid, max_size=commit.payload.size):
        with pytest.raises(IntegrityError, match="fails authentication"):
            old.open_leaf(repo.blocks.get(cid))
    assert_reads_back(repo, commit.id, new, tmp_path)
    later = nudged(new, 0.02, 3)
    after = repo.commit_weights(OWNER, later, message="sparse, same epoch")
    assert sum(leaf_kinds(repo, after)) >= 49  # deltas again, against epoch 1's leaves
    assert_reads_back(repo, after.id, later, tmp_path)


def test_a_delta_leaf_is_padded_to_the_smallest_leaf_a_walk_counts_on():
    repos = RepoSet.in_memory(OWNER)
    state = model(0)
    repo = repos.create("padded", state)
    commit = repo.commit_weights(OWNER, {**state, "layer3.weight": state["layer3.weight"] * 2}, message="one tensor")
    cipher: PieceCipher = repo.keys.pieces(epoch=0, codec=pieces.CODEC)
    leaves = unixfs.leaves(repo.blocks, commit.payload.cid, max_size=commit.payload.size)
    sizes = [size for cid, size in leaves if cipher.open_leaf(repo.blocks.get(cid))[0]]
    assert sizes and all(size >= unixfs.MIN_LEAF for size in sizes)
    assert len(leaves) + 2 <= unixfs.max_visits(commit.payload.size)


def test_a_commit_that_changes_every_weight_reads_few_of_its_parents_pieces(tmp_path, monkeypatch):
    """Deltas cost a read of the parent's piece; where piece after piece changed too much for one, only a probe in
    ``_Tries.PROBE`` pays it, and a delta that pays again resumes them."""
    repos = RepoSet.in_memory(OWNER)
    state = model(0)
    repo = repos.create("dense", state)
    sparse = repo.commit_weights(OWNER, nudged(state, 0.02, 1), message="sparse")
    reads = []
    resolve = pieces.Snapshot.resolve
    monkeypatch.setattr(pieces.Snapshot, "resolve", lambda self, i: reads.append(i) or resolve(self, i))
    dense = {name: torch.randn(t.shape) for name, t in state.items()}
    commit = repo.commit_weights(OWNER, dense, message="every weight")
    count = len(leaf_kinds(repo, sparse))
    assert len(reads) <= 2 + pieces._Tries.FUTILE + count // pieces._Tries.PROBE  # the header's, and probes
    assert not any(leaf_kinds(repo, commit))
    assert_reads_back(repo, commit.id, dense, tmp_path)
    reads.clear()
    again = nudged(dense, 0.02, 2)
    after = repo.commit_weights(OWNER, again, message="sparse again")
    assert len(reads) >= count and all(leaf_kinds(repo, after))  # a fresh commit tries every piece again
    assert_reads_back(repo, after.id, again, tmp_path)
