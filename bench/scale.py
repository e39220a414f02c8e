#!/usr/bin/env python
"""Models of real size through a real daemon: what each operation costs in time, memory and storage.

One ``flair-node run`` process (and a second one for the clone), driven through its JSON-RPC API as the CLI does,
on a float32 model of ``--parameters`` values in ``--tensors`` equal tensors (default 125M: 500 MB, 148 tensors,
the size of GPT-2 small) and, unless ``--skip-large``, a bfloat16 model of ``--large-parameters`` values (default
1B: 2 GB). For each model, in order:

- ``init``: ``repo.init`` from the file;
- a commit replacing 2 % of the tensors (``small_change_stored_share``: the bytes it added to the node's blocks
  and objects, as a share of the model);
- a commit changing 2 % of the values, scattered over every tensor, each by about 1 % of itself
  (``scattered_change_stored_share``, likewise; ``scattered_changed_share`` is the share of values that changed,
  ``scattered_commit_mb_s`` its rate, ``scattered_checkout_mb_s`` its checkout's, warm);
- a commit replacing every tensor (``commit_mb_s``: model bytes per second);
- ``checkout`` of that commit, warm (``checkout_mb_s``), then again after the daemon restarted
  (``checkout_cold_mb_s``: nothing cached in the daemon; the OS page cache stays warm; each writes a new file,
  since replacing one costs the old file's deletion too);
- a merge (mean) of two branches each holding a full commit (``merge_mb_s``: bytes of the two inputs per second);
- a clone of the repository by a second daemon over libp2p (``clone_mb_s``: model bytes of the commits it
  fetched, per second).

Around each, the daemon's peak resident set is reset and read back (``/proc/<pid>/clear_refs``, ``VmHWM``):
``peak_rss_above_idle_mb`` is the largest peak over what the daemon held idle, once started and before its first
operation (``idle_rss_mb``: each daemon runs as a node that merges does, loading torch and the merge kernel as it
starts, ``tensors.preload``, about 300 MB of it, and is measured once it has); ``rest_rss_above_idle_mb`` is
what the restarted daemon still holds above its idle after its checkout, branch, commit and merge. In the same
run, this machine's own ceilings on one core: SHA-256 of a 256 MiB buffer (``sha256_mb_s``), its sealing in pieces
as weights are sealed (``encrypt_mb_s``: ``crypto.PieceCipher``, HMAC-SHA256 and AES-256-GCM), its
XChaCha20-Poly1305 encryption whole (``xchacha20_mb_s``: how other payloads are sealed), and a plain copy of the
model file (``copy_mb_s``); each
``*_vs_copy`` ratio is an operation's rate over the copy's. MB is 10^6 bytes. The last line is one JSON object:
the first model's figures at the top level, the large one's under ``large``.

    .venv/bin/python bench/scale.py                      # both models: the 2 GB one needs about 17 GB today
    .venv/bin/python bench/scale.py --skip-large         # the 125M model only: about 3 min, 4 GB of disk
    .venv/bin/python bench/scale.py --quick              # 2M values, 20 tensors: a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from flair_node.core.crypto import PieceCipher, encrypt
from flair_node.storage.pieces import PIECE
from flair_node.testing.cluster import address, configure, wait_until
from flair_node.testing.cluster import public_key as key
from flair_node.testing.daemon import DaemonProcess, running_daemon
from flair_node.testing.memory import peak_mb, reset_peak, rss_mb

CEILING_BYTES = 256 * 2**20
SMALL_CHANGE = 0.02
TIMEOUT = 1800.0  # s for one API call on a large model


def scattered(path: Path, base: Path, share: float, seed: int) -> float:
    """Write ``base`` to ``path`` with ``share`` of its values, at random places, scaled by 1 + N(0, 0.01); the
    share of values that changed (a value may round back to itself)."""
    from safetensors.torch import load_file

    generator = torch.Generator().manual_seed(seed)
    state, changed, total = load_file(str(base)), 0, 0
    for name, tensor in state.items():
        picked = torch.rand(tensor.shape, generator=generator) < share
        scale = 1 + 0.01 * torch.randn(tensor.shape, generator=generator)
        new = torch.where(picked, (tensor.float() * scale).to(tensor.dtype), tensor)
        changed += int((new.view(torch.int16 if new.element_size() == 2 else torch.int32)
                        != tensor.view(torch.int16 if new.element_size() == 2 else torch.int32)).sum())
        total += tensor.numel()
        state[name] = new
    save_file(state, str(path))
    return changed / total


def model(path: Path, parameters: int, tensors: int, dtype: torch.dtype, seed: int,
          base: Path | None = None, share: float = 1.0) -> int:
    """Write a model of ``tensors`` equal tensors to ``path``: all new, or ``base`` with ``share`` of its tensors
    replaced. Its size in bytes."""
    from safetensors.torch import load_file

    old = load_file(str(base)) if base is not None else {}
    size = parameters // tensors
    replaced = max(1, round(share * tensors))
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for i in range(tensors):
        name = f"layer.{i:03d}.weight"
        if name in old and i >= replaced:
            state[name] = old[name]
        else:
            state[name] = torch.randn(size, generator=generator).to(dtype)
    save_file(state, str(path))
    return sum(t.numel() * t.element_size() for t in state.values())


def stored_bytes(home: Path) -> int:
    """Bytes of the node's blocks and objects on disk."""
    return sum(f.stat().st_size for folder in ("blocks", "objects") for f in (home / folder).rglob("*")
               if f.is_file())


class Meter:
    """Times daemons' operations and records their peak resident set above their idle one: what each held once
    started, before its first operation."""

    def __init__(self) -> None:
        self.idle: dict[int, float] = {}
        self.peak_above_idle = 0.0

    def run(self, daemon: DaemonProcess, what: str, call: Callable[[], Any]) -> tuple[float, Any]:
        idle = self.idle.setdefault(daemon.pid, rss_mb(daemon.pid))
        reset_peak(daemon.pid)
        began = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - began
        above = peak_mb(daemon.pid) - idle
        self.peak_above_idle = max(self.peak_above_idle, above)
        print(f"  {what}: {seconds:.1f} s, peak {above:.0f} MiB above idle ({idle:.0f} MiB)", file=sys.stderr)
        return seconds, result

    def at_rest(self, daemon: DaemonProcess) -> float:
        """What ``daemon`` holds now above its idle resident set, in MiB."""
        return rss_mb(daemon.pid) - self.idle[daemon.pid]


@contextlib.contextmanager
def daemon(home: Path, boot: tuple[str, ...] = ()) -> Iterator[DaemonProcess]:
    """A daemon as a node that merges runs (``tensors.preload``: torch and the merge kernel loaded as it starts),
    once it has loaded them."""
    configure(home, list(boot), sync_interval=600.0, preload=True)  # no catch-up pass amid a measurement
    with running_daemon(home, timeout=120) as node:
        node.client.timeout = TIMEOUT
        wait_until(lambda: node.client.call("node.status")["tensors"]["preload"] != "loading",
                   "torch and the merge kernel preloaded", 120)
        yield node


def measure(folder: Path, parameters: int, tensors: int, dtype: torch.dtype) -> dict[str, Any]:
    meter = Meter()
    folder.mkdir(parents=True)
    base, small, spread, full, other = (folder / f"{n}.safetensors"
                                        for n in ("base", "small", "spread", "full", "other"))
    size = model(base, parameters, tensors, dtype, 0)
    model(small, parameters, tensors, dtype, 1, base=base, share=SMALL_CHANGE)
    changed_share = scattered(spread, small, SMALL_CHANGE, 4)
    model(full, parameters, tensors, dtype, 2)
    model(other, parameters, tensors, dtype, 3)
    mb = size / 1e6
    print(f"{parameters:,} {dtype} values in {tensors} tensors: {mb:.0f} MB", file=sys.stderr)
    out: dict[str, Any] = {"parameters": parameters, "tensors": tensors, "dtype": str(dtype).removeprefix("torch."),
                           "model_mb": round(mb, 1)}
    home = folder / "a"
    with daemon(home) as a:
        s, made = meter.run(a, "init", lambda: a.client.call("repo.init", name="big", model_path=str(base)))
        repo = made["repo"]
        out["init_mb_s"] = round(mb / s, 1)
        before = stored_bytes(home)
        meter.run(a, "commit of 2 % of the tensors", lambda: a.client.call(
            "repo.commit", repo=repo, weights_path=str(small), message="small", branch="main"))
        out["small_change_stored_share"] = round((stored_bytes(home) - before) / size, 4)
        before = stored_bytes(home)
        s, _ = meter.run(a, "commit of 2 % of the values", lambda: a.client.call(
            "repo.commit", repo=repo, weights_path=str(spread), message="scattered", branch="main"))
        out["scattered_change_stored_share"] = round((stored_bytes(home) - before) / size, 4)
        out["scattered_changed_share"] = round(changed_share, 4)
        out["scattered_commit_mb_s"] = round(mb / s, 1)
        s, committed = meter.run(a, "full commit", lambda: a.client.call(
            "repo.commit", repo=repo, weights_path=str(full), message="full", branch="main"))
        out["commit_mb_s"] = round(mb / s, 1)
        head = committed["id"]
        s, _ = meter.run(a, "checkout (warm)", lambda: a.client.call(
            "repo.checkout", repo=repo, commit=head, output_path=str(folder / "out.safetensors"), overwrite=True))
        out["checkout_mb_s"] = round(mb / s, 1)
        s, _ = meter.run(a, "checkout of the scattered change (warm)", lambda: a.client.call(
            "repo.checkout", repo=repo, commit=f"{head}~1", output_path=str(folder / "out.safetensors"),
            overwrite=True))
        out["scattered_checkout_mb_s"] = round(mb / s, 1)
    with daemon(home) as a:
        s, _ = meter.run(a, "checkout (cold, after a restart)", lambda: a.client.call(
            "repo.checkout", repo=repo, commit=head, output_path=str(folder / "out-cold.safetensors")))
        out["checkout_cold_mb_s"] = round(mb / s, 1)
        a.client.call("repo.branch", repo=repo, name="other", at=f"{head}~1")
        a.client.call("repo.commit", repo=repo, weights_path=str(other), message="other", branch="other")
        s, _ = meter.run(a, "merge of two branches", lambda: a.client.call(
            "repo.merge", repo=repo, sources=["other"], into="main", strategy="mean"))
        out["merge_mb_s"] = round(2 * mb / s, 1)
        out["rest_rss_above_idle_mb"] = round(meter.at_rest(a), 1)
        with daemon(folder / "b", (address(a),)) as b:
            a.client.call("repo.invite", repo=repo, member=key(b), role="reader")
            commits = len(a.client.call("repo.log", repo=repo, limit=1000)["commits"])
            s, _ = meter.run(b, f"clone of {commits} commits over libp2p", lambda: b.client.call(
                "repo.pull", repo=repo, peer=address(a)))
            fetched = stored_bytes(folder / "b")
            out["clone_mb_s"] = round(fetched / 1e6 / s, 1)
    out["peak_rss_above_idle_mb"] = round(meter.peak_above_idle, 1)
    out["idle_rss_mb"] = round(max(meter.idle.values()), 1)
    for f in (base, small, spread, full, other, folder / "out.safetensors", folder / "out-cold.safetensors"):
        f.unlink(missing_ok=True)
    return out


def ceilings(folder: Path, model_file_mb: int) -> dict[str, float]:
    """This machine's SHA-256, encryption and plain copy rates, in MB/s."""
    data = os.urandom(CEILING_BYTES)
    began = time.perf_counter()
    hashlib.sha256(data).digest()
    sha = CEILING_BYTES / (time.perf_counter() - began)
    began = time.perf_counter()
    encrypt(bytes(32), data, b"bench")
    xchacha = CEILING_BYTES / (time.perf_counter() - began)
    cipher, view = PieceCipher(bytes(32), b"bench"), memoryview(data)
    began = time.perf_counter()
    for at in range(0, CEILING_BYTES, PIECE):
        cipher.seal(view[at:at + PIECE])
    sealed = CEILING_BYTES / (time.perf_counter() - began)
    source, copy = folder / "copy-source", folder / "copy-target"
    with open(source, "wb") as f:
        for _ in range(max(1, model_file_mb * 10**6 // CEILING_BYTES)):
            f.write(data)
    began = time.perf_counter()
    shutil.copyfile(source, copy)
    with open(copy, "rb+") as f:
        os.fsync(f.fileno())  # as a commit's blocks are
    copied = source.stat().st_size / (time.perf_counter() - began)
    source.unlink()
    copy.unlink()
    return {"sha256_mb_s": round(sha / 1e6, 1), "encrypt_mb_s": round(sealed / 1e6, 1),
            "xchacha20_mb_s": round(xchacha / 1e6, 1), "copy_mb_s": round(copied / 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parameters", type=int, default=125_000_000, help="values of the float32 model")
    parser.add_argument("--tensors", type=int, default=148, help="tensors of each model")
    parser.add_argument("--large-parameters", type=int, default=1_000_000_000, help="values of the bfloat16 model")
    parser.add_argument("--skip-large", action="store_true", help="leave the bfloat16 model out (small disks)")
    parser.add_argument("--quick", action="store_true", help="2M values in 20 tensors, no large model")
    args = parser.parse_args()
    if args.quick:
        args.parameters, args.tensors, args.skip_large = 2_000_000, 20, True
    if args.parameters < args.tensors or args.tensors < 1:
        parser.error("a model needs at least one tensor and one value per tensor")
    with tempfile.TemporaryDirectory(prefix="flair-scale-") as tmp:
        folder = Path(tmp)
        report: dict[str, Any] = ceilings(folder, max(1, args.parameters * 4 // 10**6))
        report.update(measure(folder / "float32", args.parameters, args.tensors, torch.float32))
        if not args.skip_large:
            report["large"] = measure(folder / "bfloat16", args.large_parameters, args.tensors, torch.bfloat16)
            report["peak_rss_above_idle_mb"] = max(report["peak_rss_above_idle_mb"],
                                                   report["large"]["peak_rss_above_idle_mb"])
    for name in ("commit", "checkout", "merge", "clone"):
        report[f"{name}_vs_copy"] = round(report[f"{name}_mb_s"] / report["copy_mb_s"], 3)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
