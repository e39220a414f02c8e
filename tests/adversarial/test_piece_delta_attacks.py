"""Members who hand-craft piece deltas (``storage.piece_delta``, ``storage.pieces``): each test seals a payload
with the repository's own key, as any member can, and plants a signed commit of it. Every reader must refuse it with
``IntegrityError`` (``NotFound`` for a base that is not stored) before it allocates or writes anything, leave no
file behind, and still read the honest head."""

from __future__ import annotations

import hashlib
import resource
import struct
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import zstandard

from flair_node.core.cid import RAW, ParsedCid, parse_cid
from flair_node.core.crypto import PieceCipher
from flair_node.core.errors import IntegrityError, NotFound, NotSafetensors
from flair_node.core.identity import Identity
from flair_node.core.ids import CommitId
from flair_node.core.objects import Commit, Payload
from flair_node.storage import piece_delta, pieces, unixfs
from flair_node.storage.clock import now_ms
from flair_node.storage.repo import Repository
from flair_node.storage.repos import RepoSet
from flair_node.tensors.safetensors_io import save_bytes

OWNER, MALLORY = Identity.generate(), Identity.generate()
STATE = {"w": torch.randn(200_000, generator=torch.Generator().manual_seed(0))}  # two pieces
PADDED = unixfs.MIN_LEAF - PieceCipher.OVERHEAD  # an honest delta's plaintext, padded
GAPS, VALUES = np.array([0, 9, 99], "<u4"), np.array([1, 0x80000000, 0xFFFF], "<u4")  # words 0, 10 and 110


@dataclass
class Scene:
    """A repository whose head is ``STATE`` in two pieces, and what a member knows of it."""

    repos: RepoSet
    repo: Repository
    cipher: PieceCipher
    head: CommitId
    leaves: list[tuple[ParsedCid, int]]
    plain: list[bytes]


@pytest.fixture
def scene() -> Scene:
    repos = RepoSet.in_memory(OWNER)
    repo = repos.create("target", STATE)
    repo.invite(OWNER, MALLORY.public_key, "contributor")
    head = repo.commit(repo.head("main"))
    cipher = repo.keys.pieces(epoch=0, codec=pieces.CODEC)
    leaves = unixfs.leaves(repos.blocks, head.payload.cid, max_size=head.payload.size)
    plain = [cipher.open(repos.blocks.get(cid)) for cid, _ in leaves]
    assert len(leaves) == 2 and b"".join(plain) == save_bytes(STATE)
    return Scene(repos, repo, cipher, head.id, leaves, plain)


def frame(data: bytes, **kw: bool) -> bytes:
    return zstandard.ZstdCompressor(level=1, **kw).compress(data)


def crafted(s: Scene, *, depth: int = 1, word: int = 4, base: bytes | None = None, base_size: int | None = None,
            length: int | None = None, count: int | None = None, gaps_frame: bytes | None = None,
            values_frame: bytes | None = None, padding: bytes | None = None, frames_bytes: int = 0) -> bytes:
    """A delta's plaintext, well formed against piece 1 (words 0, 10 and 110 flipped) but for what is given."""
    gaps_frame = frame(GAPS.tobytes()) if gaps_frame is None else gaps_frame
    values_frame = frame(VALUES.tobytes()) if values_frame is None else values_frame
    base = s.leaves[1][0].digest if base is None else base
    base_size = s.leaves[1][1] if base_size is None else base_size
    length = len(s.plain[1]) if length is None else length
    count = len(GAPS) if count is None else count
    body = piece_delta.HEADER.pack(depth, word, base, base_size, length, count, len(gaps_frame) + frames_bytes,
                                   len(values_frame)) + gaps_frame + values_frame
    return body + (bytes(max(0, PADDED - len(body))) if padding is None else padding)


def seal(s: Scene, plain: bytes, *, delta: bool = True) -> tuple[str, int]:
    return pieces._seal(s.repos.blocks, s.cipher.seal(plain, delta=delta))[:2]


def put(s: Scene, sealed: bytes) -> tuple[str, int]:
    return pieces._seal(s.repos.blocks, sealed)[:2]


def plant(s: Scene, second: tuple[str, int], first: tuple[str, int] | None = None) -> Commit:
    """A member's signed commit whose payload is piece 0's honest leaf (or ``first``) and ``second``."""
    leaves = [first or (s.leaves[0][0].text, s.leaves[0][1]), second]
    root = unixfs.link_leaves(s.repos.blocks, leaves)
    commit = Commit(repo=s.repo.id, parents=(s.head,), author=MALLORY.public_key, timestamp_ms=now_ms(),
                    kind="commit", message="crafted", payload=Payload(root, pieces.CODEC, sum(n for _, n in leaves)),
                    meta={}, metrics={}).signed(MALLORY)
    s.repo.store_commit(commit)
    return commit


def assert_refused(s: Scene, commit: Commit, tmp_path, error: type[Exception], message: str) -> None:
    """Every reader refuses ``commit`` with ``error`` matching ``message``, writes nothing, and the honest head
    still reads back."""
    for read in (s.repo.materialize, lambda cid: s.repo.checkout(cid, tmp_path / "out.safetensors")):
        s.repo.drop_caches()
        with pytest.raises(error, match=message):
            read(commit.id)
        assert list(tmp_path.iterdir()) == []
    s.repo.drop_caches()
    assert save_bytes(s.repo.materialize(s.head)) == save_bytes(STATE)
    assert s.repo.checkout(s.head, tmp_path / "head.safetensors") and \
        (tmp_path / "head.safetensors").read_bytes() == save_bytes(STATE)


def test_a_well_formed_delta_of_a_member_reads_back_as_the_piece_it_makes(scene, tmp_path):
    """The harness the attacks below start from: the same delta, untampered, is read like an honest one."""
    delta = piece_delta.parse(crafted(scene))
    expected = scene.plain[0] + piece_delta.apply(scene.plain[1], [delta])
    commit = plant(scene, seal(scene, crafted(scene)))
    scene.repo.drop_caches()
    assert save_bytes(scene.repo.materialize(commit.id)) == expected != save_bytes(STATE)
    assert scene.repo.checkout(commit.id, tmp_path / "out.safetensors") == len(expected)
    assert (tmp_path / "out.safetensors").read_bytes() == expected


# -- what a delta names ------------------------------------------------------------------------------------


def test_a_delta_whose_base_is_not_stored_is_refused_as_not_found(scene, tmp_path):
    missing = hashlib.sha256(b"a leaf nobody stored").digest()
    commit = plant(scene, seal(scene, crafted(scene, base=missing)))
    assert_refused(scene, commit, tmp_path, NotFound,
                   f"piece 1 needs block {ParsedCid(RAW, missing).text}, which is not stored here")


def test_a_delta_whose_base_is_another_repositorys_leaf_fails_authentication(scene, tmp_path):
    other = scene.repos.create("other", {"w": torch.randn(200_000)})
    head = other.commit(other.head("main"))
    (cid, size) = unixfs.leaves(scene.repos.blocks, head.payload.cid, max_size=head.payload.size)[1]
    assert size == scene.leaves[1][1]  # the same length: only its key tells it apart
    commit = plant(scene, seal(scene, crafted(scene, base=cid.digest, base_size=size)))
    assert_refused(scene, commit, tmp_path, IntegrityError, "fails authentication: it was altered, or sealed with "
                   "another repository's key")


def test_a_delta_whose_base_is_a_dag_node_is_refused(scene, tmp_path):
    commit = plant(scene, seal(scene, crafted(scene)))
    node, block = next(unixfs.walk(scene.repos.blocks, commit.payload.cid, max_size=commit.payload.size))
    assert node.codec != RAW
    hostile = plant(scene, seal(scene, crafted(scene, base=node.digest, base_size=len(block))))
    assert_refused(scene, hostile, tmp_path, IntegrityError, "truncated or not in Flair's format")


def test_a_delta_that_misstates_its_bases_size_is_refused(scene, tmp_path):
    commit = plant(scene, seal(scene, crafted(scene, base_size=scene.leaves[1][1] + 1)))
    assert_refused(scene, commit, tmp_path, IntegrityError,
                   f"holds {scene.leaves[1][1]} bytes at {scene.leaves[1][0].text} where its parent says "
                   f"{scene.leaves[1][1] + 1}")


# -- chains ------------------------------------------------------------------------------------------------


def test_a_delta_deeper_than_the_longest_chain_is_refused(scene, tmp_path):
    commit = plant(scene, seal(scene, crafted(scene, depth=piece_delta.MAX_DEPTH + 1)))
    assert_refused(scene, commit, tmp_path, IntegrityError, r"has depth 9 \(1 to 8\)")


def test_a_delta_of_depth_two_over_a_whole_piece_is_refused(scene, tmp_path):
    commit = plant(scene, seal(scene, crafted(scene, depth=2)))
    assert_refused(scene, commit, tmp_path, IntegrityError,
                   "piece 1 has a chain of deltas that does not end at a whole piece of its length")


def test_a_delta_of_depth_one_over_another_delta_is_refused(scene, tmp_path):
    first = seal(scene, crafted(scene))
    commit = plant(scene, seal(scene, crafted(scene, base=parse_cid(first[0]).digest, base_size=first[1],
                                              values_frame=frame(np.array([2, 3, 4], "<u4").tobytes()))))
    assert_refused(scene, commit, tmp_path, IntegrityError, "piece 1 has a chain of deltas that does not hold together")


def test_a_delta_longer_than_its_base_is_refused(scene, tmp_path):
    commit = plant(scene, seal(scene, crafted(scene, length=len(scene.plain[1]) + 8)))
    assert_refused(scene, commit, tmp_path, IntegrityError,
                   "piece 1 has a chain of deltas that does not end at a whole piece of its length")


def test_a_delta_over_a_whole_piece_of_another_length_than_the_header_makes_is_refused(scene, tmp_path):
    short = len(scene.plain[1]) - 8
    base = seal(scene, scene.plain[1][:short], delta=False)
    commit = plant(scene, seal(scene, crafted(scene, base=parse_cid(base[0]).digest, base_size=base[1], length=short)))
    assert_refused(scene, commit, tmp_path, IntegrityError,
                   f"piece 1 holds {short} bytes where its header makes {short + 8}")


# -- what a delta holds ------------------------------------------------------------------------------------


def test_a_frame_declaring_a_terabyte_is_refused_at_once_without_allocating_it(scene, tmp_path):
    # A frame header alone: magic, descriptor (8-byte content size), window descriptor, content size 2**40
    huge = struct.pack("<IBBQ", 0xFD2FB528, 0b11000000, 0x50, 1 << 40)
    assert zstandard.frame_content_size(huge) == 1 << 40
    commit = plant(scene, seal(scene, crafted(scene, gaps_frame=huge)))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    try:
        started = time.monotonic()
        with pytest.raises(IntegrityError, match="frame declares 1099511627776 bytes where 12 are expected"):
            scene.repo.materialize(commit.id)
        assert time.monotonic() - started < 1.0
        assert tracemalloc.get_traced_memory()[1] < 64 << 20
    finally:
        tracemalloc.stop()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 256 << 10
    assert_refused(scene, commit, tmp_path, IntegrityError, "frame declares 1099511627776 bytes")


@pytest.mark.parametrize("gaps_frame, values_frame, message", [
    (frame(GAPS.tobytes(), write_content_size=False), None, "frame does not declare its size"),
    (b"not a Zstandard frame", None, "frame is not Zstandard data"),
    (None, frame(VALUES.tobytes()[:8]), "frame declares 8 bytes where 12 are expected"),
    (None, frame(VALUES.tobytes() * 2), "frame declares 24 bytes where 12 are expected"),
])
def test_a_frame_that_does_not_declare_exactly_what_it_must_hold_is_refused(scene, tmp_path, gaps_frame,
                                                                           values_frame, message):
    commit = plant(scene, seal(scene, crafted(scene, gaps_frame=gaps_frame, values_frame=values_frame)))
    assert_refused(scene, commit, tmp_path, IntegrityError, message)


def test_a_frame_holding_more_than_it_declares_is_refused(scene, tmp_path):
    honest = frame(VALUES.tobytes() * 2)  # 24 bytes, its content size in one byte after the descriptor
    lying = honest[:5] + bytes([12]) + honest[6:]
    assert zstandard.frame_content_size(lying) == 12
    commit = plant(scene, seal(scene, crafted(scene, values_frame=lying)))
    assert_refused(scene, commit, tmp_path, IntegrityError, "frame is not Zstandard data")


def test_a_delta_changing_a_word_past_the_pieces_end_is_refused(scene, tmp_path):
    words = -(-len(scene.plain[1]) // 4)
    gaps = np.array([0, 9, words - 11], "<u4")  # the last at word `words`, one past the end
    commit = plant(scene, seal(scene, crafted(scene, gaps_frame=frame(gaps.tobytes()))))
    assert_refused(scene, commit, tmp_path, IntegrityError, f"changes word {words} of a piece of {words} words")


def test_a_delta_changing_more_words_than_the_piece_holds_is_refused(scene, tmp_path):
    words = -(-len(scene.plain[1]) // 4)
    commit = plant(scene, seal(scene, crafted(scene, count=words + 1)))
    assert_refused(scene, commit, tmp_path, IntegrityError,
                   f"changes {words + 1} words of a piece of {len(scene.plain[1])} bytes")


@pytest.mark.parametrize("tamper, message", [
    (dict(padding=b"\0" * 100 + b"\1"), "its padding is not zeros"),
    (dict(frames_bytes=10_000), "frames do not fit it"),
    (dict(word=3), r"or word 3 \(one of \(1, 2, 4, 8\)\)"),
])
def test_a_delta_whose_layout_does_not_add_up_is_refused(scene, tmp_path, tamper, message):
    commit = plant(scene, seal(scene, crafted(scene, **tamper)))
    assert_refused(scene, commit, tmp_path, IntegrityError, message)


def test_a_delta_shorter_than_its_header_is_refused(scene, tmp_path):
    commit = plant(scene, seal(scene, crafted(scene)[:piece_delta.HEADER.size - 1]))
    assert_refused(scene, commit, tmp_path, IntegrityError,
                   f"a piece delta of {piece_delta.HEADER.size - 1} bytes is shorter than its header")


# -- what a leaf claims to be ------------------------------------------------------------------------------


def test_a_whole_piece_relabelled_as_a_delta_fails_authentication(scene, tmp_path):
    sealed = scene.repos.blocks.get(scene.leaves[1][0])
    assert sealed[:4] == PieceCipher.MAGIC
    commit = plant(scene, put(scene, PieceCipher.DELTA_MAGIC + sealed[4:]))
    assert_refused(scene, commit, tmp_path, IntegrityError, "fails authentication")


def test_a_delta_relabelled_as_a_whole_piece_fails_authentication(scene, tmp_path):
    sealed = scene.cipher.seal(crafted(scene), delta=True)
    assert sealed[:4] == PieceCipher.DELTA_MAGIC
    commit = plant(scene, put(scene, PieceCipher.MAGIC + sealed[4:]))
    assert_refused(scene, commit, tmp_path, IntegrityError, "fails authentication")


def test_a_whole_piece_opened_as_such_refuses_a_delta():
    cipher = PieceCipher(bytes(32), b"flair/test")
    with pytest.raises(IntegrityError, match="is a delta where a whole piece was expected"):
        cipher.open(cipher.seal(b"x" * 100, delta=True))
    assert cipher.open_leaf(cipher.seal(b"x" * 100)) == (False, b"x" * 100)
    assert cipher.open_leaf(cipher.seal(b"x" * 100, delta=True)) == (True, b"x" * 100)


# -- how many leaves ---------------------------------------------------------------------------------------


def test_a_dag_of_many_tiny_delta_leaves_is_refused_where_leaves_padded_as_honest_ones_pass(scene, tmp_path):
    def leaves(padding: bytes | None) -> list[tuple[str, int]]:
        return [seal(scene, crafted(scene, padding=padding,
                                    values_frame=frame(np.array([i + 1, 1, 1], "<u4").tobytes())))
                for i in range(300)]

    tiny = leaves(b"")
    assert all(size < 200 for _, size in tiny)
    declared = sum(size for _, size in tiny)
    root = unixfs.link_leaves(scene.repos.blocks, tiny)
    limit = unixfs.max_visits(declared)
    assert limit < len(tiny)
    started = time.monotonic()
    with pytest.raises(IntegrityError, match=f"has more than {limit} blocks for the bytes it declares"):
        unixfs.leaves(scene.repos.blocks, root, max_size=declared)
    assert time.monotonic() - started < 1.0
    commit = Commit(repo=scene.repo.id, parents=(scene.head,), author=MALLORY.public_key, timestamp_ms=now_ms(),
                    kind="commit", message="crafted", payload=Payload(root, pieces.CODEC, declared), meta={},
                    metrics={}).signed(MALLORY)
    scene.repo.store_commit(commit)
    assert_refused(scene, commit, tmp_path, IntegrityError, f"has more than {limit} blocks")

    padded = leaves(None)
    assert all(size == unixfs.MIN_LEAF for _, size in padded)
    size = sum(n for _, n in padded)
    assert len(unixfs.leaves(scene.repos.blocks, unixfs.link_leaves(scene.repos.blocks, padded), max_size=size)) \
        == len(padded)


def test_a_header_longer_than_the_bytes_a_payload_declares_is_refused_before_it_is_read(scene, tmp_path):
    """Deltas let 4 KiB stand for a piece of 1 MiB: a payload of 1.4 MB must not make a reader assemble (and
    scan) a header of 100 MB. An honest header lies in whole pieces but for the part it shares with a tensor."""
    size = unixfs.MAX_BLOCK - PieceCipher.OVERHEAD
    piece = struct.pack("<Q", 100_000_000) + b"{" + b" " * (size - 9)
    whole = seal(scene, piece, delta=False)
    leaves = [whole]
    for i in range(95):  # each a nearly empty delta of the same whole piece: 4 KiB standing for 1 MiB
        leaves.append(seal(scene, piece_delta.encode(piece[:-1] + bytes([i + 1]), piece, depth=1,
                                                     base_digest=parse_cid(whole[0]).digest, base_size=whole[1],
                                                     min_plaintext=PADDED)))
    declared = sum(n for _, n in leaves)
    assert declared < 1_500_000
    commit = Commit(repo=scene.repo.id, parents=(scene.head,), author=MALLORY.public_key, timestamp_ms=now_ms(),
                    kind="commit", message="crafted",
                    payload=Payload(unixfs.link_leaves(scene.repos.blocks, leaves), pieces.CODEC, declared),
                    meta={}, metrics={}).signed(MALLORY)
    scene.repo.store_commit(commit)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(NotSafetensors, match="header length 100000000 does not fit"):
        scene.repo.materialize(commit.id)
    assert time.monotonic() - started < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 64 << 10  # KiB


# -- what a planted payload does to the next commit --------------------------------------------------------


def break_piece_1(s: Scene) -> None:
    s.repo.reset_branch(OWNER, "main", plant(s, seal(s, crafted(s, depth=2))).id)


def break_piece_0(s: Scene) -> None:
    first = seal(s, crafted(s, depth=2, base=s.leaves[0][0].digest, base_size=s.leaves[0][1], length=len(s.plain[0])))
    s.repo.reset_branch(OWNER, "main", plant(s, (s.leaves[1][0].text, s.leaves[1][1]), first=first).id)


def lose_a_block(s: Scene) -> None:
    s.repos.blocks.delete_key(s.leaves[1][0].key)


@pytest.mark.parametrize("damage", [break_piece_1, break_piece_0, lose_a_block])
def test_an_honest_commit_on_top_of_a_head_that_does_not_read_is_stored_and_reads_back(scene, tmp_path, damage):
    """A payload in pieces stands alone: a head nobody can read (a writer's malformed payload, a lost block) is
    no base for deltas, and must not stop the next commit, as it did not before deltas."""
    damage(scene)
    new = {"w": STATE["w"] + 1}
    commit = scene.repo.commit_weights(OWNER, new, message="fresh weights over a broken head")
    scene.repo.drop_caches()
    assert save_bytes(scene.repo.materialize(commit.id)) == save_bytes(new)
