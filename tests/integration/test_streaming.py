"""A real daemon commits and checks out a model much bigger than what it holds at once: its peak resident set
above idle stays a fraction of the model (``storage.pieces``), it never imports torch to do so, and what comes
back is bit for bit what went in."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from safetensors.torch import load_file, save_file

from flair_node.testing.cluster import configure, wait_until
from flair_node.testing.daemon import DaemonProcess, running_daemon
from flair_node.testing.memory import maps_torch, peak_mb, reset_peak, rss_mb

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TENSORS = 32  # of 4 MiB
MODEL_MB = 128


def write_model(path, seed: int, base=None, changed: int = TENSORS) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = dict(base or {})
    for i in range(changed):
        state[f"layer.{i:02d}.weight"] = torch.randn(1024, 1024, generator=generator)
    save_file(state, str(path))
    return state


@contextlib.contextmanager
def daemon(tmp_path, *, preload: bool = False) -> Iterator[DaemonProcess]:
    """One daemon with no peers, its client waiting long enough for a 128 MB model; with ``preload``, once it has
    loaded torch and the merge kernel."""
    configure(tmp_path / "home", [], sync_interval=600.0, preload=preload)
    with running_daemon(tmp_path / "home", timeout=60) as node:
        node.client.timeout = 300
        if preload:
            wait_until(lambda: node.client.call("node.status")["tensors"]["preload"] == "loaded",
                       "torch and the merge kernel preloaded", 60)
            assert maps_torch(node.pid) and node.client.call("node.status")["tensors"]["seconds"] > 0
        yield node


def test_a_model_streams_through_a_daemon_in_bounded_memory_and_comes_back_bit_for_bit(tmp_path):
    first = write_model(tmp_path / "first.safetensors", 0)
    write_model(tmp_path / "second.safetensors", 1, base=first, changed=1)
    with daemon(tmp_path) as node:
        idle = rss_mb(node.pid)
        peaks = {}
        for what, call in [
            ("init", lambda: node.client.call("repo.init", name="big",
                                              model_path=str(tmp_path / "first.safetensors"))),
            ("commit", lambda: node.client.call("repo.commit", repo="big", message="one tensor", branch="main",
                                                weights_path=str(tmp_path / "second.safetensors"))),
            ("checkout", lambda: node.client.call("repo.checkout", repo="big", commit="main~1",
                                                  output_path=str(tmp_path / "out.safetensors"))),
            ("sharded checkout", lambda: node.client.call("repo.checkout", repo="big", commit="main",
                                                          output_path=str(tmp_path / "sharded"),
                                                          shard_size=32 << 20)),
            ("sharded commit", lambda: node.client.call("repo.commit", repo="big", message="the same, sharded",
                                                        branch="main", weights_path=str(tmp_path / "sharded"))),
        ]:
            assert reset_peak(node.pid)
            call()
            peaks[what] = peak_mb(node.pid) - idle
        # A copy of the model anywhere in the daemon would show here: it holds a few 512 KiB pieces at a time
        assert all(peak < MODEL_MB / 4 for peak in peaks.values()), peaks
        assert not maps_torch(node.pid)  # bytes in, bytes out: no tensor was ever built (nor torch preloaded)
        log = node.client.call("repo.log", repo="big", limit=10)["commits"]
        assert [c["payload"]["codec"] for c in log] == ["snapshot-v1"] * 3
        assert log[0]["payload"]["cid"] == log[1]["payload"]["cid"]  # four shards of it are the same weights
    assert len(list((tmp_path / "sharded").glob("model-0000?-of-00004.safetensors"))) == 4
    back = load_file(str(tmp_path / "out.safetensors"))
    assert sorted(back) == sorted(first) and all(torch.equal(back[k], first[k]) for k in first)


def test_merges_reverts_and_diffs_hold_pieces_not_the_model(tmp_path):
    base = write_model(tmp_path / "base.safetensors", 0)
    write_model(tmp_path / "main.safetensors", 1, base=base, changed=TENSORS // 2)
    write_model(tmp_path / "side.safetensors", 2, base=base)
    # torch and the merge kernel loaded as the node started: what follows is measured from there
    with daemon(tmp_path, preload=True) as node:
        call = node.client.call
        call("repo.init", name="big", model_path=str(tmp_path / "base.safetensors"))
        call("repo.branch", repo="big", name="side", at="main")
        call("repo.commit", repo="big", weights_path=str(tmp_path / "main.safetensors"), message="m", branch="main")
        call("repo.commit", repo="big", weights_path=str(tmp_path / "side.safetensors"), message="s", branch="side")
        idle = rss_mb(node.pid)
        peaks = {}
        for what, run in [
            ("merge", lambda: call("repo.merge", repo="big", sources=["side"], into="main", strategy="mean")),
            ("diff", lambda: call("repo.diff", repo="big", a="main~1", b="main")),
            ("revert", lambda: call("repo.revert", repo="big", commit="main", branch="main")),
        ]:
            assert reset_peak(node.pid)
            run()
            peaks[what] = peak_mb(node.pid) - idle
        # a merge and a revert hold a few pieces (512 KiB) of every input and the result, a diff a range (1 MiB)
        # of each side: never a tensor (4 MiB each), let alone the model
        print(f"peaks above idle (MiB): {peaks}")
        assert all(peak < MODEL_MB / 4 for peak in peaks.values()), peaks
        call("repo.checkout", repo="big", commit="main", output_path=str(tmp_path / "out.safetensors"))
    # the merge, reverted, is main's commit before it, bit for bit
    back, before = load_file(str(tmp_path / "out.safetensors")), load_file(str(tmp_path / "main.safetensors"))
    assert sorted(back) == sorted(before) and all(torch.equal(back[k], before[k]) for k in before)


POLICIES = {"plain": {}, "norm-bound": {"norm_bound": "40"},
            "dp": {"dp_clip": "1", "dp_noise": "1", "dp_delta": "1e-5", "dp_epsilon": "10000"}}


@pytest.mark.parametrize("policy", list(POLICIES.values()), ids=list(POLICIES))
def test_a_round_streams_its_contribution_in_and_its_merge_out_a_tensor_at_a_time(tmp_path, policy):
    base = write_model(tmp_path / "base.safetensors", 0)
    trained = write_model(tmp_path / "trained.safetensors", 1, base=base, changed=TENSORS // 2)
    tiny = tmp_path / "tiny.safetensors"
    save_file({"w": torch.zeros(4)}, str(tiny))
    with daemon(tmp_path) as node:
        call = node.client.call

        def round_of(repo: str, weights) -> dict:
            start = call("repo.branch", repo=repo)["branches"]["main"]
            call("repo.contribute", repo=repo, weights_path=str(weights), examples=10)
            wait_until(lambda: call("repo.branch", repo=repo)["branches"]["main"] != start,
                       f"the round of {repo} merged", 120, every=0.2)
            return call("repo.show", repo=repo, commit="main")

        for name, model in (("tiny", tiny), ("big", tmp_path / "base.safetensors")):
            call("repo.init", name=name, model_path=str(model))
            call("repo.policy", repo=name, buffer=1, deadline_s=1, **policy)
        save_file({"w": torch.ones(4)}, str(tiny))
        round_of("tiny", tiny)  # torch and the merge kernels loaded: what follows is measured from there
        idle = rss_mb(node.pid)
        assert reset_peak(node.pid)
        merged = round_of("big", tmp_path / "trained.safetensors")
        peak = peak_mb(node.pid) - idle
        print(f"a round of the {MODEL_MB} MB model peaked {peak:.0f} MiB above idle")
        # the contribution streamed in (clipped and noised as it went, with a policy), and the round read and
        # wrote a few 4 MiB tensors at a time
        assert merged["kind"] == "round" and peak < MODEL_MB / 2, peak
        call("repo.checkout", repo="big", commit="main", output_path=str(tmp_path / "out.safetensors"))
    back = load_file(str(tmp_path / "out.safetensors"))
    assert sorted(back) == sorted(trained)
    if not policy:  # one fresh contribution: the mean is it, bit for bit
        assert all(torch.equal(back[k], trained[k]) for k in trained)
        return
    update = torch.cat([back[k].double().reshape(-1) - base[k].double().reshape(-1) for k in sorted(base)])
    wanted = torch.cat([trained[k].double().reshape(-1) - base[k].double().reshape(-1) for k in sorted(base)])
    if "norm_bound" in policy:  # clipped to the bound, its direction kept (to float32's rounding)
        assert float(update.norm()) == pytest.approx(40, rel=1e-4)
        assert torch.allclose(update, wanted * (40 / float(wanted.norm())), atol=1e-6)
    else:  # clipped to 1, then Gaussian noise of z * clip = 1 on every value: the noise is what shows
        assert float(update.std()) == pytest.approx(1.0, abs=0.01) and abs(float(update.mean())) < 0.01


def test_a_round_merges_a_range_at_a_time_not_a_tensor_at_a_time(tmp_path):
    # one 64 MiB tensor, as a large embedding is: a round that held whole tensors would hold it, twice
    generator = torch.Generator().manual_seed(0)
    base = {"embed": torch.randn(16 << 20, generator=generator), "bias": torch.zeros(8)}
    save_file(base, str(tmp_path / "base.safetensors"))
    trained = {"embed": base["embed"] + 0.01, "bias": base["bias"] + 1}
    save_file(trained, str(tmp_path / "trained.safetensors"))
    with daemon(tmp_path, preload=True) as node:
        call = node.client.call
        call("repo.init", name="big", model_path=str(tmp_path / "base.safetensors"))
        # it waits for two contributions or 10 s: the round begins after the contribution has streamed in
        call("repo.policy", repo="big", buffer=2, deadline_s=10, strategy="median")
        start = call("repo.branch", repo="big")["branches"]["main"]
        call("repo.contribute", repo="big", weights_path=str(tmp_path / "trained.safetensors"), examples=10)
        idle = rss_mb(node.pid)
        assert reset_peak(node.pid)
        wait_until(lambda: call("repo.branch", repo="big")["branches"]["main"] != start, "the round merged", 60,
                   every=0.2)
        peak = peak_mb(node.pid) - idle
        print(f"a round of a 64 MiB tensor peaked {peak:.0f} MiB above idle")
        assert peak < 32, peak
        call("repo.checkout", repo="big", commit="main", output_path=str(tmp_path / "out.safetensors"))
    back = load_file(str(tmp_path / "out.safetensors"))
    assert all(torch.equal(back[k], trained[k]) for k in trained)  # the median of one input is that input
