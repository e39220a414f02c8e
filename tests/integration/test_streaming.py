"""A real daemon commits and checks out a model much bigger than what it holds at once: its peak resident set
above idle stays a fraction of the model (``storage.pieces``), it never imports torch to do so, and what comes
back is bit for bit what went in."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from flair_node.testing.cluster import configure
from flair_node.testing.daemon import running_daemon
from flair_node.testing.memory import maps_torch, peak_mb, reset_peak, rss_mb

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL_MB = 128  # 16 tensors of 8 MiB


def write_model(path, seed: int, base=None, changed: int = 16) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = dict(base or {})
    for i in range(changed):
        state[f"layer.{i:02d}.weight"] = torch.randn(2048, 1024, generator=generator)
    save_file(state, str(path))
    return state


def test_a_model_streams_through_a_daemon_in_bounded_memory_and_comes_back_bit_for_bit(tmp_path):
    first = write_model(tmp_path / "first.safetensors", 0)
    write_model(tmp_path / "second.safetensors", 1, base=first, changed=1)
    configure(tmp_path / "home", [], sync_interval=600.0)
    with running_daemon(tmp_path / "home", timeout=60) as node:
        node.client.timeout = 300
        idle = rss_mb(node.pid)
        peaks = {}
        for what, call in [
            ("init", lambda: node.client.call("repo.init", name="big",
                                              model_path=str(tmp_path / "first.safetensors"))),
            ("commit", lambda: node.client.call("repo.commit", repo="big", message="one tensor", branch="main",
                                                weights_path=str(tmp_path / "second.safetensors"))),
            ("checkout", lambda: node.client.call("repo.checkout", repo="big", commit="main~1",
                                                  output_path=str(tmp_path / "out.safetensors"))),
        ]:
            assert reset_peak(node.pid)
            call()
            peaks[what] = peak_mb(node.pid) - idle
        # A copy of the model anywhere in the daemon would show here: it holds a few 512 KiB pieces at a time
        assert all(peak < MODEL_MB / 4 for peak in peaks.values()), peaks
        assert not maps_torch(node.pid)  # bytes in, bytes out: no tensor was ever built
        log = node.client.call("repo.log", repo="big", limit=10)["commits"]
        assert [c["payload"]["codec"] for c in log] == ["snapshot-v1", "snapshot-v1"]
    back = load_file(str(tmp_path / "out.safetensors"))
    assert sorted(back) == sorted(first) and all(torch.equal(back[k], first[k]) for k in first)
