"""Proving in a separate process with a memory cap, so a proof never blocks or bloats the daemon.

``prove_chunks`` writes the job into a private folder (weights and circuit in ``job.json``, the deltas as
safetensors: never pickle), starts ``python -m flair_node.protocol.proofs.worker FOLDER``, and reads back one
proof file per chunk. The parent watches the child's resident memory every ``WATCH_S`` and ends it (by its PID,
through its ``Popen``) once it passes the cap or outlives ``timeout_s``, so a shape too big for the machine fails
with a clear error instead of swapping. The child runs at nice 10: proving may take minutes, and the daemons and
training on the same machine should not wait for it. (An ``RLIMIT_DATA`` cap in the child was tried first:
EZKL's threads then hung when an allocation failed, instead of exiting.)

The job folder holds the deltas in plaintext, so it lives as short as it can: the child deletes the deltas file
as soon as it has read it, exits on its own once the process that started it is gone (it checks every
``PARENT_CHECK_S``), and the parent removes the folder when the job ends. A folder left by a daemon killed with
-9 is removed on the daemon's next start (``ezkl_backend.remove_scratch``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ...core.errors import InvalidInput
from ...storage.atomic import atomic_write
from ...tensors.safetensors_io import load_bytes, save_bytes
from . import weighted_sum
from .ezkl_backend import Circuit, ProofError, Shape

DEFAULT_MEMORY_MB = 8192
DEFAULT_TIMEOUT_S = 3600.0
WATCH_S = 0.05
PARENT_CHECK_S = 0.5
NICE = 10
_TAIL = 2000  # characters of the child's stderr quoted in an error


def prove_chunks(circuit: Circuit, weights: Sequence[int], deltas: Sequence[torch.Tensor], indices: Sequence[int],
                 *, memory_mb: int = DEFAULT_MEMORY_MB, timeout_s: float = DEFAULT_TIMEOUT_S,
                 stop: threading.Event | None = None) -> dict[int, bytes]:
    """``weighted_sum.prove`` in a child process capped at ``memory_mb``; ``ProofError`` saying why if it fails.
    Setting ``stop`` ends the child at once (a daemon shutting down)."""
    if memory_mb < 64 or timeout_s <= 0:
        raise InvalidInput("a proving worker needs at least 64 MB and a positive timeout")
    if len(weights) != len(deltas) or not deltas:
        raise InvalidInput("one weight per delta, and at least one delta")
    with tempfile.TemporaryDirectory(prefix=".job-", dir=circuit.folder.parent) as tmp:
        job = Path(tmp)
        atomic_write(job / "deltas.safetensors", save_bytes({f"d{i}": d for i, d in enumerate(deltas)}), mode=0o600)
        atomic_write(job / "job.json", json.dumps({
            "folder": str(circuit.folder), "srs": str(circuit.srs), "inputs": circuit.shape.inputs,
            "size": circuit.shape.size, "scheme": circuit.shape.scheme, "logrows": circuit.logrows,
            "vk_sha256": circuit.vk_sha256,
            "srs_sha256": circuit.srs_sha256, "weights": [int(w) for w in weights],
            "indices": [int(j) for j in indices]}).encode(), mode=0o600)
        with os.fdopen(os.open(job / "stderr", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as err:
            process = subprocess.Popen([sys.executable, "-m", "flair_node.protocol.proofs.worker", str(job),
                                        str(os.getpid())],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        try:
            _watch(process, memory_mb, timeout_s, circuit, stop or threading.Event())
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
        if process.returncode != 0:
            tail = (job / "stderr").read_text(errors="replace")[-_TAIL:].strip()
            raise ProofError(f"the proving worker failed with status {process.returncode}: {tail}")
        return {j: (job / f"proof-{j}.json").read_bytes() for j in indices}


def _watch(process: subprocess.Popen[bytes], memory_mb: int, timeout_s: float, circuit: Circuit,
           stop: threading.Event) -> None:
    """Until ``process`` exits: ``ProofError`` once it outgrows ``memory_mb`` resident or ``timeout_s``, or
    ``stop`` is set."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        if stop.is_set():
            raise ProofError("proving was stopped")
        if _resident_mb(process.pid) > memory_mb:
            raise ProofError(f"the proving worker ran out of its {memory_mb} MB memory cap ({circuit.shape.inputs} "
                             f"x {circuit.shape.size}): raise the cap or use smaller chunks")
        if time.monotonic() > deadline:
            raise ProofError(f"the proving worker did not finish within {timeout_s:g} s")
        time.sleep(WATCH_S)


def _resident_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass  # exited meanwhile, or no /proc here: nothing to measure
    return 0.0


def exit_with_parent(parent: int, every: float = PARENT_CHECK_S) -> None:
    """End this process (``os._exit``) as soon as process ``parent`` is no longer its parent: a daemon killed with
    -9 does not leave a worker proving, and holding plaintext, for nobody. Checks from a daemon thread."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(3)

    if os.getppid() != parent:
        os._exit(3)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _main(folder: Path, parent: int | None = None) -> int:
    if parent is not None:
        exit_with_parent(parent)
    os.nice(NICE)  # proving may take long: the daemons and training on this machine come first
    job = json.loads((folder / "job.json").read_text())
    circuit = Circuit(Shape(job["inputs"], job["size"], job["scheme"]), Path(job["folder"]), job["logrows"],
                      Path(job["srs"]), job["vk_sha256"], job["srs_sha256"])
    plaintext = folder / "deltas.safetensors"
    loaded = load_bytes(plaintext.read_bytes())
    plaintext.unlink()  # in memory now: nothing of it stays on disk if this process is killed
    deltas = [loaded[f"d{i}"] for i in range(len(job["weights"]))]
    for j, proof in weighted_sum.prove(circuit, job["weights"], deltas, job["indices"]).items():
        atomic_write(folder / f"proof-{j}.json", proof, mode=0o600)
    return 0


if __name__ == "__main__":
    sys.exit(_main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None))
