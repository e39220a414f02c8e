"""Proving in a separate process with a memory cap, so a proof never blocks or bloats the daemon.

``prove_chunks`` writes the job into a private folder (weights and circuit in ``job.json``, the deltas as
safetensors: never pickle), starts ``python -m flair_node.protocol.proofs.worker FOLDER``, and reads back one
proof file per chunk. The parent watches the child's resident memory every ``WATCH_S`` and ends it (by its PID,
through its ``Popen``) once it passes the cap or outlives ``timeout_s``, so a shape too big for the machine fails
with a clear error instead of swapping. (An ``RLIMIT_DATA`` cap in the child was tried first: EZKL's threads then
hung when an allocation failed, instead of exiting.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
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
_TAIL = 2000  # characters of the child's stderr quoted in an error


def prove_chunks(circuit: Circuit, weights: Sequence[int], deltas: Sequence[torch.Tensor], indices: Sequence[int],
                 *, memory_mb: int = DEFAULT_MEMORY_MB, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[int, bytes]:
    """``weighted_sum.prove`` in a child process capped at ``memory_mb``; ``ProofError`` saying why if it fails."""
    if memory_mb < 64 or timeout_s <= 0:
        raise InvalidInput("a proving worker needs at least 64 MB and a positive timeout")
    if len(weights) != len(deltas) or not deltas:
        raise InvalidInput("one weight per delta, and at least one delta")
    with tempfile.TemporaryDirectory(prefix=".job-", dir=circuit.folder.parent) as tmp:
        job = Path(tmp)
        atomic_write(job / "deltas.safetensors", save_bytes({f"d{i}": d for i, d in enumerate(deltas)}), mode=0o600)
        atomic_write(job / "job.json", json.dumps({
            "folder": str(circuit.folder), "srs": str(circuit.srs), "inputs": circuit.shape.inputs,
            "size": circuit.shape.size, "logrows": circuit.logrows, "vk_sha256": circuit.vk_sha256,
            "srs_sha256": circuit.srs_sha256, "weights": [int(w) for w in weights],
            "indices": [int(j) for j in indices]}).encode(), mode=0o600)
        with open(job / "stderr", "wb") as err:
            process = subprocess.Popen([sys.executable, "-m", "flair_node.protocol.proofs.worker", str(job)],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        try:
            _watch(process, memory_mb, timeout_s, circuit)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
        if process.returncode != 0:
            tail = (job / "stderr").read_text(errors="replace")[-_TAIL:].strip()
            raise ProofError(f"the proving worker failed with status {process.returncode}: {tail}")
        return {j: (job / f"proof-{j}.json").read_bytes() for j in indices}


def _watch(process: subprocess.Popen[bytes], memory_mb: int, timeout_s: float, circuit: Circuit) -> None:
    """Until ``process`` exits: ``ProofError`` once it outgrows ``memory_mb`` resident or ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
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


def _main(folder: Path) -> int:
    job = json.loads((folder / "job.json").read_text())
    circuit = Circuit(Shape(job["inputs"], job["size"]), Path(job["folder"]), job["logrows"], Path(job["srs"]),
                      job["vk_sha256"], job["srs_sha256"])
    loaded = load_bytes((folder / "deltas.safetensors").read_bytes())
    deltas = [loaded[f"d{i}"] for i in range(len(job["weights"]))]
    for j, proof in weighted_sum.prove(circuit, job["weights"], deltas, job["indices"]).items():
        atomic_write(folder / f"proof-{j}.json", proof, mode=0o600)
    return 0


if __name__ == "__main__":
    sys.exit(_main(Path(sys.argv[1])))
