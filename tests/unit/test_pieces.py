"""Weights in pieces (``storage.pieces``, codec ``snapshot-v1``): bit-exact both ways, stored in proportion to the
change, independent of history, and read from files as untrusted as anything else."""

from __future__ import annotations

import io
import os
import struct

import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flair_node.core.cid import RAW
from flair_node.core.crypto import PieceCipher
from flair_node.core.errors import IntegrityError, NotSafetensors
from flair_node.core.identity import Identity
from flair_node.storage import piece_delta, pieces, unixfs
from flair_node.storage.repos import RepoSet
from flair_node.tensors.safetensors_file import FileSource, canonical, read_header
from flair_node.tensors.safetensors_io import load_file, save_bytes, state_source

OWNER = Identity.generate()


def odd_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every dtype a model may hold, with the values and shapes that trip codecs: NaN payloads, -0.0, empty and
    0-d tensors, and tensors spanning several pieces."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(300, 1000, generator=g)
    weights[0, :4] = torch.tensor([float("nan"), -0.0, float("inf"), 1e-45])
    return {
        "embed.weight": weights, "ln.bias": torch.randn(7, generator=g), "empty": torch.zeros(0, 3),
        "scale": torch.tensor(3.5, dtype=torch.bfloat16), "mask": torch.rand(1000, generator=g) > 0.5,
        "half": torch.randn(700, 700, generator=g).half(), "steps": torch.arange(5, dtype=torch.int64),
        "bytes": torch.randint(0, 255, (33,), dtype=torch.uint8, generator=g),
    }


def write_file(path: os.PathLike[str], state: dict[str, torch.Tensor], **kw: object) -> None:
    with open(path, "wb") as f:
        f.write(safetensors.torch.save(state, **kw))  # type: ignore[arg-type]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bit for bit, NaN payloads included."""
    return sorted(a) == sorted(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and a[k].reshape(-1).view(torch.uint8).equal(b[k].reshape(-1).view(torch.uint8)) for k in a)


def stored_bytes(repos: RepoSet) -> int:
    return sum(len(repos.blocks.objects.get(k)) for k in repos.blocks.keys())


# -- cutting -----------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3 * pieces.PIECE), min_size=0, max_size=6), st.integers(8, 4000))
def test_pieces_hold_the_file_and_every_leaf_but_the_last_is_a_full_chunk(sizes, header):
    segments = [[b"h" * header], *([bytes([i % 256]) * n] for i, n in enumerate(sizes))]
    as_parts = [[s[0][at:at + pieces.PIECE] for at in range(0, len(s[0]), pieces.PIECE)] for s in segments]
    cut = [bytes(p) for p in pieces.cut(as_parts)]
    assert b"".join(cut) == b"".join(s[0] for s in segments)
    assert all(unixfs.CHUNK <= len(p) <= unixfs.CHUNK + pieces.PIECE for p in cut[:-1])
    assert len(cut[-1]) <= unixfs.CHUNK + pieces.PIECE
    assert len(cut) <= unixfs.max_blocks(sum(map(len, cut)))  # never more leaves than Bounds allows


def test_an_unchanged_tensor_is_cut_into_the_same_pieces_whatever_changed_before_it():
    before = odd_state(0)
    after = {**before, "bytes": before["bytes"] + 1, "ln.bias": before["ln.bias"] * 2}
    cut = [{bytes(p) for p in pieces.cut(state_source(s).segments(pieces.PIECE))} for s in (before, after)]
    big = before["embed.weight"].numel() * 4
    assert len(cut[0] & cut[1]) >= big // pieces.PIECE  # all of embed.weight but the piece it shares


# -- sealing -----------------------------------------------------------------------------------------------


def test_sealing_is_deterministic_per_key_and_context_and_refuses_any_change():
    piece = os.urandom(1000)
    cipher = PieceCipher(bytes(32), b"repo/a")
    sealed = cipher.seal(piece)
    assert sealed == cipher.seal(piece) and len(sealed) == len(piece) + PieceCipher.OVERHEAD
    assert cipher.open(sealed) == piece
    assert PieceCipher(bytes(32), b"repo/b").seal(piece) != sealed
    assert PieceCipher(b"\1" * 32, b"repo/a").seal(piece) != sealed
    assert cipher.seal(piece[:-1] + b"\0")[4:16] != sealed[4:16]  # another piece, another nonce
    for other in (PieceCipher(bytes(32), b"repo/b"), PieceCipher(b"\1" * 32, b"repo/a")):
        with pytest.raises(IntegrityError, match="authentication"):
            other.open(sealed)
    for bad in (sealed[:-1], sealed[:10], b"FLE1" + sealed[4:], sealed[:20] + bytes([sealed[20] ^ 1]) + sealed[21:]):
        with pytest.raises(IntegrityError):
            cipher.open(bad)


# -- through a repository ----------------------------------------------------------------------------------


def test_a_file_commits_and_checks_out_bit_for_bit_whatever_its_order_and_metadata(tmp_path):
    repos = RepoSet.in_memory(OWNER)
    state = odd_state(0)
    write_file(tmp_path / "m.safetensors", state, metadata={"format": "pt"})
    with FileSource(tmp_path / "m.safetensors") as source:
        repo = repos.create("odd", source)
    head = repo.head("main")
    assert repo.commit(head).payload.codec == pieces.CODEC
    repo.drop_caches()
    assert same(repo.materialize(head), state)
    out = tmp_path / "out.safetensors"
    assert repo.checkout(head, out) == out.stat().st_size and oct(out.stat().st_mode & 0o777) == "0o600"
    assert same(load_file(out), state)
    # Flair's own canonical file of the same tensors, whatever order or metadata the input had
    assert out.read_bytes()[:len(canonical(repo.record.layout).raw)] == canonical(repo.record.layout).raw


def test_a_commit_stores_what_changed_and_any_commit_reads_in_bounded_work_whatever_its_history(tmp_path):
    repos = RepoSet.in_memory(OWNER)
    state = {f"layer{i}.weight": torch.randn(256, 256) for i in range(50)}  # 50 tensors of 256 KiB
    repo = repos.create("many", state)
    before = stored_bytes(repos)
    changed = {**state, "layer7.weight": state["layer7.weight"] + 1}  # 2 % of the tensors
    repo.commit_weights(OWNER, changed, message="one tensor")
    added = stored_bytes(repos) - before
    model = 50 * 256 * 256 * 4
    assert added <= 0.02 * model + 0.01 * model, added
    reads = []
    for step in range(3 * piece_delta.MAX_DEPTH):  # a history far longer than a chain of deltas may be
        changed = {**changed, "layer3.weight": changed["layer3.weight"] * 0.5}  # the exponents: a delta each time
        head = repo.commit_weights(OWNER, changed, message=f"step {step}")
        repo.drop_caches()
        counting = CountingGets(repos.blocks)
        snapshot = pieces.Snapshot(counting, repo.keys.pieces(epoch=0, codec=pieces.CODEC), head.payload.cid,
                                   head.payload.size, "head")
        assert b"".join(snapshot.pieces()) == save_bytes(changed)
        reads.append(counting.leaves)
    # A piece is a whole one and at most MAX_DEPTH deltas over it: its chain grows to that, then starts again
    assert max(reads) == len(snapshot._leaves) + piece_delta.MAX_DEPTH
    assert reads[piece_delta.MAX_DEPTH] == len(snapshot._leaves) + 1


class CountingGets(unixfs.BlockStore):
    def __init__(self, blocks: unixfs.BlockStore) -> None:
        super().__init__(blocks.objects)
        self.leaves = 0

    def get(self, cid):
        self.leaves += cid.codec == RAW
        return super().get(cid)


def test_a_checkout_of_a_damaged_payload_fails_and_leaves_no_file(tmp_path):
    repos = RepoSet.in_memory(OWNER)
    state = odd_state(1)
    repo = repos.create("damaged", state)
    head = repo.commit(repo.head("main"))
    leaves = [cid for cid, _ in unixfs.walk(repos.blocks, head.payload.cid, max_size=head.payload.size)
              if cid.codec == RAW]
    repos.blocks.delete_key(leaves[-1].key)
    repo.drop_caches()
    out = tmp_path / "out.safetensors"
    with pytest.raises(Exception, match="not stored"):
        repo.checkout(head.id, out)
    assert not out.exists() and not list(tmp_path.iterdir())


# -- hostile files and payloads ----------------------------------------------------------------------------


def raw_file(header: dict[str, object], data: bytes) -> bytes:
    import json

    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("header, data, message", [
    ({"a": F32, "b": {**F32, "data_offsets": [4, 12]}}, bytes(12), "back to back"),  # overlapping
    ({"a": F32, "b": {**F32, "data_offsets": [12, 20]}}, bytes(20), "back to back"),  # a gap
    ({"a": F32}, bytes(16), "the file has 16"),  # bytes after the last tensor
    ({"a": {**F32, "shape": [3]}}, bytes(8), "would hold 12"),
    ({"a": {**F32, "shape": [2**40, 2**40]}}, bytes(8), "would hold"),
    ({"a": {**F32, "shape": [-1]}}, bytes(8), "non-negative"),
    ({"a": {**F32, "shape": [1] * 17}}, bytes(4), "at most 16"),
    ({"a": {**F32, "dtype": "F8_E4M3"}}, bytes(8), "unsupported dtype"),
    ({"a": {**F32, "data_offsets": [8, 0]}}, bytes(8), "begin <= end"),
    ({"a": {**F32, "extra": 1}}, bytes(8), "dtype, shape and data_offsets"),
    ({"": F32}, bytes(8), "1 to 1024"),
    ({"__metadata__": {"a": 1}, "b": F32}, bytes(8), "object of strings"),
])
def test_a_hostile_file_is_refused_before_anything_is_read(tmp_path, header, data, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(raw_file(header, data))
    with pytest.raises(NotSafetensors, match=message):
        FileSource(path)


def test_a_file_that_shrinks_while_it_is_committed_fails_the_commit(tmp_path):
    repos = RepoSet.in_memory(OWNER)
    state = {"w": torch.randn(600_000)}
    repo = repos.create("shrinks", state)
    path = tmp_path / "m.safetensors"
    path.write_bytes(save_bytes({"w": torch.randn(600_000)}))
    head = repo.head("main")
    with FileSource(path) as source:
        os.truncate(path, 1000)
        with pytest.raises(IntegrityError, match="changed while it was read"):
            repo.commit_weights(OWNER, source, message="m")
    assert repo.head("main") == head


def sealed_payload(repo, plain: bytes, *, codec: str = pieces.CODEC) -> tuple[str, int]:
    """``plain`` sealed in pieces with ``repo``'s key, as a member could: its root and size."""
    cipher = PieceCipher(repo.keys.key(0), repo.keys.context(codec))
    parts = [[plain[at:at + pieces.PIECE] for at in range(0, len(plain), pieces.PIECE)]]
    return pieces.write(repo.blocks, cipher, pieces.cut(parts))


@pytest.mark.parametrize("tamper, message", [
    (lambda raw, data: raw + data[:-4], "piece 0 holds 400068 bytes where its header makes 400072"),
    (lambda raw, data: raw + data + b"\0" * 8, "piece 0 holds 400080 bytes where its header makes 400072"),
    (lambda raw, data: struct.pack("<Q", 10**9) + raw[8:] + data, "header length"),
])
def test_a_members_malformed_snapshot_is_refused_by_every_reader(tmp_path, tamper, message):
    from flair_node.core.objects import Commit, Payload
    from flair_node.storage.clock import now_ms

    repos = RepoSet.in_memory(OWNER)
    state = {"w": torch.randn(100_000)}
    repo = repos.create("hostile", state)
    source = state_source(state)
    data = b"".join(bytes(p) for segment in list(source.segments(pieces.PIECE))[1:] for p in segment)
    root, size = sealed_payload(repo, tamper(source.header.raw, data))
    commit = Commit(repo=repo.id, parents=(repo.head("main"),), author=OWNER.public_key, timestamp_ms=now_ms(),
                    kind="commit", message="hostile", payload=Payload(root, pieces.CODEC, size), meta={},
                    metrics={}).signed(OWNER)
    repo.store_commit(commit)
    with pytest.raises((IntegrityError, NotSafetensors), match=message):
        repo.materialize(commit.id)
    with pytest.raises((IntegrityError, NotSafetensors), match=message):
        repo.checkout(commit.id, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_a_snapshot_sealed_as_another_codec_or_holding_no_tensor_is_refused(tmp_path):
    from flair_node.core.objects import Commit, Payload
    from flair_node.storage.clock import now_ms

    repos = RepoSet.in_memory(OWNER)
    repo = repos.create("layout", {"w": torch.randn(10)})
    for plain, codec, message in [(save_bytes({"w": torch.randn(10)}), "bitdelta-v1", "authentication"),
                                  (save_bytes({}), pieces.CODEC, "holds no tensors")]:
        root, size = sealed_payload(repo, plain, codec=codec)
        commit = Commit(repo=repo.id, parents=(repo.head("main"),), author=OWNER.public_key, timestamp_ms=now_ms(),
                        kind="commit", message="hostile", payload=Payload(root, pieces.CODEC, size), meta={},
                        metrics={}).signed(OWNER)
        repo.store_commit(commit)
        with pytest.raises(IntegrityError, match=message):
            repo.materialize(commit.id)


def test_a_header_is_read_only_as_far_as_its_declared_length():
    reads: list[int] = []
    data = raw_file({"a": F32}, bytes(8))

    def read(n: int) -> bytes:
        reads.append(n)
        start = sum(reads[:-1])
        return data[start:start + n]

    header = read_header(read, len(data), "x")
    assert reads == [8, len(data) - 16] and header.size == len(data)


# -- sharded checkpoints -----------------------------------------------------------------------------------


def write_shards(folder, state: dict[str, torch.Tensor], shards: int = 3) -> None:
    """``state`` as a Hugging Face sharded checkpoint in ``folder``, its tensors dealt round-robin."""
    import json

    folder.mkdir(exist_ok=True)
    names = sorted(state)
    files = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map = {name: files[i % shards] for i, name in enumerate(names)}
    for file in files:
        write_file(folder / file, {n: state[n] for n in names if weight_map[n] == file}, metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_a_sharded_checkpoint_commits_as_the_same_weights_and_checks_out_as_shards(tmp_path):
    import json

    from flair_node.tensors.safetensors_file import open_source

    state = odd_state(2)
    write_shards(tmp_path / "sharded", state)
    write_file(tmp_path / "single.safetensors", state)
    repos = RepoSet.in_memory(OWNER)
    with open_source(tmp_path / "sharded") as source:
        repo = repos.create("sharded", source)
    with open_source(tmp_path / "single.safetensors") as source:
        again = repo.commit_weights(OWNER, source, message="the same, in one file")
    head = repo.commit(repo.resolve("main~1"))
    assert again.payload.cid == head.payload.cid  # one canonical file, whatever the input's form
    folder = tmp_path / "out"
    written = repo.checkout(again.id, folder, shard_bytes=1 << 20)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in folder.iterdir() if p.suffix == ".safetensors")
    assert shards == sorted(set(index["weight_map"].values())) and len(shards) >= 2
    assert written == sum(p.stat().st_size for p in folder.iterdir())
    back = {}
    for shard in shards:
        back.update(load_file(folder / shard))
    assert same(back, state) and index["metadata"]["total_size"] == sum(t.nbytes for t in state.values())
    with open_source(folder) as source:  # and what it wrote reads back as the same commit
        assert repo.commit_weights(OWNER, source, message="round trip").payload.cid == head.payload.cid


@pytest.mark.parametrize("tamper, message", [
    (lambda ix: {**ix, "weight_map": {k: "../x.safetensors" for k in ix["weight_map"]}},
     "a file name in its folder"),
    (lambda ix: {**ix, "weight_map": {k: "/etc/passwd" for k in ix["weight_map"]}},
     "a file name in its folder"),
    (lambda ix: {**ix, "weight_map": {**ix["weight_map"], "ghost": "model-00001-of-00003.safetensors"}},
     "lacks tensor ghost"),
    (lambda ix: {**ix, "weight_map": {k: v for k, v in ix["weight_map"].items() if k != "mask"}},
     "holds tensor mask"),
    (lambda ix: {**ix, "weight_map": {**ix["weight_map"], "ghost": "model-00009-of-00009.safetensors"}},
     "which is not in"),
    (lambda ix: {"metadata": {}}, "no weight_map"),
    (lambda ix: [[[[[[ix]]]]]], "not a sharded checkpoint's index"),
])
def test_a_hostile_sharded_index_is_refused(tmp_path, tamper, message):
    import json

    from flair_node.tensors.safetensors_file import open_source

    write_shards(tmp_path / "sharded", odd_state(3))
    index_path = tmp_path / "sharded" / "model.safetensors.index.json"
    index_path.write_text(json.dumps(tamper(json.loads(index_path.read_text()))))
    with pytest.raises(NotSafetensors, match=message):
        open_source(tmp_path / "sharded")


def test_asking_whether_a_lazy_state_holds_a_tensor_or_its_spec_reads_nothing() -> None:
    from flair_node.tensors.safetensors_io import LazyState, spec_of

    data = save_bytes({"a": torch.ones(4, 3), "b": torch.zeros(2, dtype=torch.int64)})
    header = read_header(io.BytesIO(data).read, len(data), "test")
    reads = []

    def readinto(offset: int, buffer: memoryview) -> None:
        reads.append(offset)
        buffer[:] = data[offset:offset + len(buffer)]

    state = LazyState(header, readinto)
    assert "a" in state and "c" not in state and spec_of(state, "b").shape == (2,) and spec_of(state, "c") is None
    assert reads == []  # Mapping's own __contains__ reads the tensor: a merge read every input twice
    assert torch.equal(state["a"], torch.ones(4, 3)) and len(reads) == 1


def test_a_computed_source_computes_each_tensor_once_in_order_on_one_thread_and_raises_what_it_raises() -> None:
    import threading

    from flair_node.core.objects import TensorSpec
    from flair_node.tensors.safetensors_io import computed_source, load_source

    layout = [TensorSpec(f"t{i}", "F32", (3,)) for i in range(5)]
    calls: list[tuple[str, int]] = []

    def compute(name: str) -> torch.Tensor:
        calls.append((name, threading.get_ident()))
        return torch.full((3,), float(name[1:]))

    loaded = load_source(computed_source(layout, compute))
    assert [name for name, _ in calls] == [f"t{i}" for i in range(5)]  # the file's order, each once
    assert len({thread for _, thread in calls}) == 1 and calls[0][1] != threading.get_ident()
    assert all(torch.equal(loaded[f"t{i}"], torch.full((3,), float(i))) for i in range(5))

    def failing(name: str) -> torch.Tensor:
        if name == "t2":
            raise IntegrityError("t2 does not decode")
        return torch.zeros(3)

    with pytest.raises(IntegrityError, match="t2 does not decode"):
        load_source(computed_source(layout, failing))
