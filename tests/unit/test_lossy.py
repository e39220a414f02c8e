"""Lossy delta codecs: deterministic, as small as promised, exact where nothing changed; error feedback."""

import pytest
import torch

from flair_node.core.errors import NotSafetensors
from flair_node.core.identity import Identity
from flair_node.storage.repos import RepoSet
from flair_node.tensors.codec import decode_payload, encode_payload
from flair_node.tensors.lossy import LOSSY_CODECS, ErrorFeedback
from flair_node.tensors.safetensors_io import layout_of, save_bytes

ME = Identity.generate()


def states(n=100_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = {"w": torch.randn(n, generator=g) * 0.05, "steps": torch.tensor([7]),
            "h": torch.randn(64, generator=g).half()}
    base["w"][:10] = -0.0
    new = {"w": base["w"] + torch.randn(n, generator=g) * 1e-3, "steps": torch.tensor([8]),
           "h": base["h"] + torch.randn(64, generator=g).half() * 0.01}
    new["w"][:10] = -0.0  # unchanged elements
    return base, new


@pytest.mark.parametrize("codec, max_bytes_ratio, max_err", [
    ("float16-v1", 0.51, 3e-6), ("int8-v1", 0.26, 3e-5), ("topk-v1", 0.02, None)])
def test_codecs_are_small_deterministic_and_close(codec, max_bytes_ratio, max_err):
    base, new = states()
    layout = layout_of(base)
    data = encode_payload(codec, new, base)
    assert data == encode_payload(codec, new, base)
    assert len(data) <= max_bytes_ratio * len(save_bytes(new))
    out = decode_payload(codec, data, base, layout)
    again = decode_payload(codec, data, base, layout)
    assert all(torch.equal(out[k].view(torch.uint8) if out[k].is_floating_point() else out[k],
                           again[k].view(torch.uint8) if again[k].is_floating_point() else again[k]) for k in out)
    assert torch.equal(out["steps"], new["steps"])  # integer tensors travel exactly
    assert torch.equal(out["w"][:10].view(torch.int32), base["w"][:10].view(torch.int32))  # -0.0 kept bit for bit
    if max_err is not None:
        assert float((out["w"] - new["w"]).abs().max()) <= max_err
    else:
        changed = (out["w"] != base["w"]).sum()
        assert changed == 1000  # 1% of the elements, the largest changes


def test_malformed_lossy_payloads_are_refused():
    base, new = states(1000)
    layout = layout_of(base)
    import zlib

    import safetensors.torch

    bad = {"w::idx": torch.tensor([5, 3], dtype=torch.int32), "w::val": torch.zeros(2, dtype=torch.float16),
           "h::idx": torch.tensor([0], dtype=torch.int32), "h::val": torch.zeros(1, dtype=torch.float16),
           "steps::full": torch.tensor([1])}
    with pytest.raises(NotSafetensors, match="out of order or range"):
        decode_payload("topk-v1", zlib.compress(safetensors.torch.save(bad)), base, layout)
    bad["w::idx"] = torch.tensor([3, 5000], dtype=torch.int32)
    with pytest.raises(NotSafetensors, match="out of order or range"):
        decode_payload("topk-v1", zlib.compress(safetensors.torch.save(bad)), base, layout)
    del bad["w::val"]
    with pytest.raises(NotSafetensors, match="w::val"):
        decode_payload("topk-v1", zlib.compress(safetensors.torch.save(bad)), base, layout)


def run_topk(use_feedback: bool, steps: int = 30) -> tuple[float, float]:
    """Contributor steps from the head each time; returns (|committed - (base + Σ updates)|, |Σ updates|)."""
    repos = RepoSet.in_memory(ME)
    base, _ = states(20_000)
    repo = repos.create("ef", base)
    feedback = ErrorFeedback() if use_feedback else None
    g = torch.Generator().manual_seed(1)
    total = torch.zeros(20_000)
    head = base
    for step in range(steps):
        update = torch.randn(20_000, generator=g) * 1e-3
        total += update
        trained = {**head, "w": head["w"] + update}
        sent = feedback.apply(trained) if feedback else trained
        commit = repo.commit_weights(ME, sent, message=f"step {step}", codec="topk-v1", topk_ratio=0.05)
        head = repo.materialize(commit.id)
        if feedback:
            feedback.update(sent, head)
            # What was sent is exactly what was committed plus what is still owed.
            assert torch.allclose(head["w"] + feedback.residual["w"], sent["w"], atol=1e-6)
    return float((head["w"] - base["w"] - total).norm()), float(total.norm())


def test_error_feedback_delivers_what_topk_dropped():
    with_feedback, size = run_topk(True)
    without_feedback, _ = run_topk(False)
    assert without_feedback > 0.8 * size  # top-k alone drops most of many small updates
    assert with_feedback < 0.5 * without_feedback


def test_every_codec_commits_and_checks_out_exactly_what_it_holds():
    repos = RepoSet.in_memory(ME)
    base, new = states(5000)
    repo = repos.create("codecs", base)
    for codec in LOSSY_CODECS:
        commit = repo.commit_weights(ME, new, message=codec, codec=codec)
        assert commit.payload.codec == codec
        held = repo.materialize(commit.id)
        repo._states.clear()
        assert torch.equal(repo.materialize(commit.id)["w"].view(torch.int32), held["w"].view(torch.int32))
    checked, problems = repo.fsck()
    assert problems == [] and checked == 1 + len(LOSSY_CODECS)


def test_a_compressed_bomb_is_refused():
    import zlib

    base, _ = states(1000)
    bomb = zlib.compress(b"\0" * 50_000_000, 9)
    with pytest.raises(NotSafetensors, match="inflates past its bound"):
        decode_payload("int8-v1", bomb, base, layout_of(base))
    with pytest.raises(NotSafetensors, match="not zlib"):
        decode_payload("int8-v1", b"garbage", base, layout_of(base))
