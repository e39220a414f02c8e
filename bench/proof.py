#!/usr/bin/env python
"""What it costs to prove a merge with EZKL: per chunk shape, for a 10k-parameter update, and projected to 1M.

Flair's circuit (``flair_node.protocol.proofs``) proves, for one chunk of N values and K contributions, that the
N merged sums are ``Σ_i w_i · d_i``, with every input and output Poseidon-hashed (the proof's public values are
commitments; nothing is revealed). Next to it, in the same run, the same weighted-sum circuit built here with
other visibilities:

    hashed        Flair's circuit, built by ezkl_backend.build (its logrows: Shape.logrows)
    hashed_tight  the same circuit at the smallest logrows its rows fit in, a check on Shape.logrows (smallest
                  shape only; not --quick)
    public        the naive baseline: inputs and outputs are the proof's public values (nothing hidden, no hashing)
    polycommit    inputs and outputs KZG-committed instead of hashed (EZKL's "polycommit" visibility)

Every circuit but Flair's gets the smallest logrows that its rows (from settings.json) fit in. Each step runs in
a fresh subprocess (``--worker``), which reports its time and its peak resident memory (``VmHWM``, the whole
process: interpreter and libraries included): setup (ONNX export, settings, compile, keys: what
``ezkl_backend.build`` does; the development SRS is made beforehand and not counted), prove (witness and proof)
and verify: ``ezkl.verify``, then the binding of the proof to what was published for that chunk (Flair's
``weighted_sum.check`` against the Poseidon commitments; the values themselves for the naive circuit, which are
its public values; for polycommit, the KZG commitments ``ezkl.kzg_commit`` gives with the circuit's keys, which
the proof carries first, in input order). ``values_per_s`` is N / prove_s: merged parameters proven per second;
``commit_s`` what a contributor spends committing to one chunk (Poseidon, or KZG for polycommit). The per-shape
figures use random weights and deltas within ±2^20 (the cost does not depend on the values; EZKL reads inputs
as float32, so values beyond ±2^24 would be rounded).

**The 10k-parameter update.** A 64-133-10 MLP (``make_mlp(0, hidden=133)``: 9,985 parameters), K copies each
trained one epoch on its own slice of the digits; the deltas are ``weighted_sum.fixed_delta(trained, base)``,
the weights ``normalize_weights`` of the slice sizes. It is proven chunk by chunk with the hashed shape whose
projected total (chunks x prove_s) is lowest, with the project's own ``weighted_sum.prove``, and every proof is
checked with ``weighted_sum.check`` against the published Poseidon commitments (computed beforehand: what the
contributors and the aggregator publish). Proving stops once ``--cap-s`` seconds have passed (by default the
goal's 120 s: past it the goal is missed anyway); the rest is then extrapolated from the chunks proven
(``*_measured`` says which figures are which). The naive and polycommit circuits of the same chunk shape
prove the same update the same way. Setup is once per shape (the keys serve
every round), so ``prove_s`` does not include it. Before it (not --quick), 4 chunks of the smallest shape are
proven once in one process and once split over 2 concurrent processes; the update uses 2 workers only if that
was at least 10 % faster (``peak_memory_mb`` then adds both workers' peaks).

**1M parameters** are projected from the 10k update's seconds per chunk: proving every chunk, or sampling
(``weighted_sum.sample``) enough chunks that an aggregator falsifying 1 % of them is caught with probability
0.99 (``weighted_sum.detection_probability``).

Last line of stdout: one JSON object with ``params``, ``prove_s``, ``verify_s``, ``peak_memory_mb``,
``naive_prove_s`` (the 10k update), the ``goals`` (whole 10k update proven in <= 120 s, verified in <= 1 s), the
per-shape ``shapes``, ``parallel`` and ``projection_1m``.

    .venv/bin/python bench/proof.py            # K = 4, N = 64, 256, 1024: about 11 minutes on 2 cores
    .venv/bin/python bench/proof.py --quick    # K = 2, N = 64, 3 s of proving per variant: a smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from flair_node.protocol.proofs import ezkl_backend
from flair_node.protocol.proofs.ezkl_backend import Shape
from flair_node.tensors.fixedpoint import normalize_weights
from flair_node.testing.memory import own_mb, reset_peak

HIDDEN = 133  # 64 x 133 + 133 + 133 x 10 + 10 = 9,985 parameters
VARIANTS = ("hashed", "hashed_tight", "public", "polycommit")
VISIBILITY = {"hashed_tight": "hashed", "public": "public", "polycommit": "polycommit"}
RESERVED_ROWS = 32  # rows halo2 keeps for blinding, on top of the circuit's own
DELTA_BITS = 20  # random per-shape deltas within ±2^20 (±0.06 in 24-bit fixed point)
GOAL_PROVE_S, GOAL_VERIFY_S = 120.0, 1.0
PROJECTED_PARAMS, FALSIFIED, DETECTION = 1_000_000, 0.01, 0.99
PARALLEL_CHUNKS, PARALLEL_GAIN = 4, 1.1
START_DELAY_S = 5.0  # concurrent workers load (torch, keys) before this, then prove together
MEMORY_LIMIT_MB = 12_000  # two concurrent workers must stay below this together


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- circuits (Flair's through ezkl_backend; the others built here the same way, with other visibilities) ----------


def gen_settings(folder: Path, visibility: str, logrows: int) -> int:
    """settings.json for ``folder/circuit.onnx`` (scales 0, no range checks, as Flair's); its number of rows."""
    import ezkl

    args = ezkl_backend.run_args(logrows, visibility)
    ok("settings", ezkl.gen_settings(str(folder / "circuit.onnx"), str(folder / "settings.json"), py_run_args=args))
    return int(json.loads((folder / "settings.json").read_text())["num_rows"])


def tight_logrows(visibility: str, shape: Shape) -> tuple[int, int]:
    """(rows, the smallest logrows they fit in) of the weighted-sum circuit with this visibility."""
    with tempfile.TemporaryDirectory(prefix="flair-proof-probe-") as tmp:
        ezkl_backend.export_onnx(Path(tmp) / "circuit.onnx", shape)
        rows = gen_settings(Path(tmp), visibility, ezkl_backend.MIN_LOGROWS)
    return rows, max(6, math.ceil(math.log2(rows + RESERVED_ROWS)))


def ok(what: str, result: object) -> None:
    if result is False:
        raise SystemExit(f"EZKL {what} returned False")


def circuit_folder(work: Path, variant: str, shape: Shape) -> Path:
    return work / f"{variant}-{shape.inputs}x{shape.size}"


def srs_path(work: Path, logrows: int) -> Path:
    return ezkl_backend.development_srs(work / "srs", logrows)


def hashed_circuit(work: Path, shape: Shape) -> ezkl_backend.Circuit:
    """Flair's circuit for ``shape`` (built once, then read from the cache)."""
    return ezkl_backend.build(work / "hashed", shape, srs_path(work, shape.logrows))


def build_plain(folder: Path, visibility: str, shape: Shape, logrows: int, srs: Path) -> None:
    import ezkl

    folder.mkdir(parents=True, exist_ok=True)
    ezkl_backend.export_onnx(folder / "circuit.onnx", shape)
    gen_settings(folder, visibility, logrows)
    ok("compile", ezkl.compile_circuit(str(folder / "circuit.onnx"), str(folder / "circuit.ezkl"),
                                       str(folder / "settings.json")))
    ok("setup", ezkl.setup(str(folder / "circuit.ezkl"), str(folder / "vk.key"), str(folder / "pk.key"), str(srs)))


def prove_plain(folder: Path, visibility: str, srs: Path, weights: list[int], chunk_values: list[list[int]],
                out: Path) -> None:
    import ezkl

    data = {"input_data": [[float(w) for w in weights], *([float(v) for v in c] for c in chunk_values)]}
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=folder) as tmp:
        (Path(tmp) / "input.json").write_text(json.dumps(data))
        extra = {"vk_path": str(folder / "vk.key"), "srs_path": str(srs)} if visibility == "polycommit" else {}
        ezkl.gen_witness(str(Path(tmp) / "input.json"), str(folder / "circuit.ezkl"), str(Path(tmp) / "witness.json"),
                         **extra)
        ok("prove", ezkl.prove(str(Path(tmp) / "witness.json"), str(folder / "circuit.ezkl"), str(folder / "pk.key"),
                               str(out), str(srs)))


def verify_plain(folder: Path, visibility: str, srs: Path, proof: Path, expected: list[str]) -> None:
    """Verify, then bind the proof to what was published: its public values are the values themselves (naive)
    or their Poseidon hashes (hashed); a polycommit proof has no public values but opens with the KZG commitments
    of its inputs and output, 64 bytes each (x and y, big-endian), in order."""
    import ezkl

    ok("verify", ezkl.verify(str(proof), str(folder / "settings.json"), str(folder / "vk.key"), str(srs)))
    parsed = json.loads(proof.read_bytes())
    if visibility == "polycommit":
        raw = bytes(parsed["proof"])
        proven = [raw[64 * i:64 * (i + 1)].hex() for i in range(len(expected))]
    else:
        proven = parsed["instances"][0]
    if proven != expected:
        raise SystemExit(f"the {visibility} proof {proof.name} is about other values than were published")


def kzg_commitment(folder: Path, srs: Path, values: list[int]) -> str:
    """What a contributor publishes for ``values`` under the polycommit circuit in ``folder``: the KZG commitment
    ``ezkl.kzg_commit`` computes with the circuit's keys, as the proof carries it."""
    import ezkl

    (point,) = ezkl.kzg_commit([ezkl_backend.felt(v) for v in values], str(folder / "vk.key"),
                               str(folder / "settings.json"), str(srs))
    return (bytes.fromhex(point.x)[::-1] + bytes.fromhex(point.y)[::-1]).hex()


def publish(path: Path, variant: str, folder: Path, srs: Path, size: int) -> Path:
    """The data at ``path`` with what the ``variant`` circuit's verifier compares its proofs with, per chunk: the
    weights, each contribution's chunk, the sums: their values for the naive circuit, their KZG commitments for
    polycommit, their Poseidon commitments for hashed_tight. Written next to it."""
    data = json.loads(path.read_text())
    weights, deltas = data["weights"], data["deltas"]
    sums = [sum(w * v for w, v in zip(weights, values, strict=True)) for values in zip(*deltas, strict=True)]
    expected = []
    for j in range(math.ceil(len(deltas[0]) / size)):
        parts = [weights, *(chunk_of(d, size, j) for d in deltas), chunk_of(sums, size, j)]
        if variant == "public":
            expected.append([ezkl_backend.felt(v) for part in parts for v in part])
        elif variant == "polycommit":
            expected.append([kzg_commitment(folder, srs, part) for part in parts])
        else:
            expected.append([ezkl_backend.poseidon(part) for part in parts])
    data["expected"] = expected
    out = path.with_name(f"{path.stem}-{variant}.json")
    out.write_text(json.dumps(data))
    return out


# -- worker steps: each in a fresh process ------------------------------------------------------------------------


def chunk_of(delta: list[int], size: int, j: int) -> list[int]:
    part = delta[j * size:(j + 1) * size]
    return part + [0] * (size - len(part))


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Run one step in this (fresh) process: its seconds and this process's peak resident memory."""
    work, variant, step = Path(job["work"]), job["variant"], job["step"]
    shape = Shape(job["inputs"], job["size"])
    folder = circuit_folder(work, variant, shape)
    srs = srs_path(work, job["logrows"])
    data = json.loads(Path(job["data"]).read_text()) if "data" in job else {}
    import torch  # before the measurement, whatever the step: the baseline holds it

    if variant == "hashed" and step != "setup":
        from flair_node.protocol.proofs import weighted_sum

        circuit = hashed_circuit(work, shape)
        deltas = [torch.tensor(d, dtype=torch.int64) for d in data["deltas"]]
    if "start_at" in job:  # concurrent workers start proving together, once all have loaded
        time.sleep(max(0.0, job["start_at"] - time.time()))
    before = own_mb("VmRSS")
    peak_ok = reset_peak()
    report: dict[str, Any] = {}
    start = time.perf_counter()
    if step == "setup":
        if variant == "hashed":
            hashed_circuit(work, shape)
        else:
            build_plain(folder, VISIBILITY[variant], shape, job["logrows"], srs)
        report["seconds"] = time.perf_counter() - start
    elif step == "prove":  # the chunks in job["chunks"], in order, until job["cap_s"] have passed
        times, sizes = [], []
        for j in job["chunks"]:
            if times and time.perf_counter() - start >= job["cap_s"]:
                break
            t = time.perf_counter()
            out = Path(job["proofs"]) / f"{j}.json"
            if variant == "hashed":
                out.write_bytes(weighted_sum.prove(circuit, data["weights"], deltas, [j])[j])
            else:
                prove_plain(folder, VISIBILITY[variant], srs, data["weights"],
                            [chunk_of(d, shape.size, j) for d in data["deltas"]], out)
            times.append(time.perf_counter() - t)
            sizes.append(out.stat().st_size)
        report.update(seconds=time.perf_counter() - start, times=times, proof_bytes=max(sizes))
    elif step == "verify":  # every proof in job["proofs"]; Flair's checked against the published commitments
        times = []
        for j in job["chunks"]:
            proof = Path(job["proofs"]) / f"{j}.json"
            t = time.perf_counter()
            if variant == "hashed":
                weighted_sum.check(circuit, proof.read_bytes(), weights=data["weights"],
                                   contributions=[c[j] for c in data["published"]], sums=data["published_sums"][j])
            else:
                verify_plain(folder, VISIBILITY[variant], srs, proof, data["expected"][j])
            times.append(time.perf_counter() - t)
        report["times"] = times
    else:
        raise SystemExit(f"unknown step {step}")
    report["peak_memory_mb"] = own_mb("VmHWM") if peak_ok else float("nan")
    report["before_mb"] = before
    return report


def spawn(job: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(job)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def collect(proc: subprocess.Popen[str], job: dict[str, Any]) -> dict[str, Any]:
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{job['step']} of {job['variant']} {job['inputs']}x{job['size']} failed:\n{err}")
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return report


def run(job: dict[str, Any]) -> dict[str, Any]:
    return collect(spawn(job), job)


def run_concurrently(jobs: list[dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
    """(wall seconds, reports) of ``jobs`` run at the same time, each in its own process."""
    start = time.perf_counter()
    with ThreadPoolExecutor(len(jobs)) as pool:
        reports = list(pool.map(run, jobs))
    return time.perf_counter() - start, reports


# -- data -----------------------------------------------------------------------------------------------------------


def random_data(path: Path, inputs: int, values: int, size: int, seed: int) -> Path:
    """Random weights and deltas of ``values`` values each (the cost does not depend on them), published."""
    rng = random.Random(seed)
    bound = 1 << DELTA_BITS
    weights = normalize_weights([rng.randint(100, 5000) for _ in range(inputs)])
    deltas = [[rng.randint(-bound, bound) for _ in range(values)] for _ in range(inputs)]
    return write_data(path, weights, deltas, size)


def model_deltas(inputs: int) -> tuple[list[int], list[list[int]]]:
    """Weights and fixed-point deltas of K contributions to the 9,985-parameter MLP, each trained one epoch
    from ``make_mlp(0)`` on its own non-IID slice of the digits."""
    from flair_node.protocol.proofs import weighted_sum
    from flair_node.testing.models import load_digits_split, make_mlp, partition, train_local

    x, y, _, _ = load_digits_split(seed=0)
    base = {k: v.detach().clone() for k, v in make_mlp(0, hidden=HIDDEN).state_dict().items()}
    deltas, examples = [], []
    for i, (xs, ys) in enumerate(partition(x, y, inputs, seed=0, skew=0.5)):
        model = make_mlp(0, hidden=HIDDEN)
        train_local(model, xs, ys, epochs=1, lr=0.01, batch_size=32, seed=i)
        deltas.append(weighted_sum.fixed_delta(model.state_dict(), base).tolist())
        examples.append(len(ys))
    return normalize_weights(examples), deltas


def write_data(path: Path, weights: list[int], deltas: list[list[int]], size: int) -> Path:
    """The merge's inputs and what is published for it, per chunk of ``size``: the Poseidon commitment of each
    contribution's chunk (``weighted_sum.commitments``) and of the merged sums' chunk."""
    total = math.ceil(len(deltas[0]) / size)
    sums = [sum(w * v for w, v in zip(weights, values, strict=True)) for values in zip(*deltas, strict=True)]
    path.write_text(json.dumps({
        "weights": weights, "deltas": deltas,
        "published": [[ezkl_backend.poseidon(chunk_of(d, size, j)) for j in range(total)] for d in deltas],
        "published_sums": [ezkl_backend.poseidon(chunk_of(sums, size, j)) for j in range(total)]}))
    return path


# -- measurements ---------------------------------------------------------------------------------------------------


def measure_shape(work: Path, variant: str, shape: Shape, seed: int) -> dict[str, Any]:
    """Setup, prove and verify of one chunk, each in a fresh process."""
    if variant == "hashed":
        logrows = shape.logrows
        rows = None  # read from the built circuit's settings below
    else:
        rows, logrows = tight_logrows(VISIBILITY[variant], shape)
    start = time.perf_counter()
    srs_path(work, logrows)
    srs_s = time.perf_counter() - start
    folder = circuit_folder(work, variant, shape)
    proofs = work / "proofs" / f"{variant}-{shape.inputs}x{shape.size}"
    proofs.mkdir(parents=True, exist_ok=True)
    data = random_data(work / f"random-{shape.inputs}x{shape.size}.json", shape.inputs, shape.size, shape.size,
                       seed)
    job = {"work": str(work), "variant": variant, "inputs": shape.inputs, "size": shape.size, "logrows": logrows}
    setup = run({**job, "step": "setup"})
    settings = hashed_circuit(work, shape).settings if variant == "hashed" else folder / "settings.json"
    rows = int(json.loads(settings.read_text())["num_rows"])
    commit_s = commit_cost(variant, folder, srs_path(work, logrows), data)
    if variant != "hashed":
        data = publish(data, variant, folder, srs_path(work, logrows), shape.size)
    chunk_job = {**job, "data": str(data), "chunks": [0], "cap_s": 0, "proofs": str(proofs)}
    prove = run({**chunk_job, "step": "prove"})
    verify = run({**chunk_job, "step": "verify"})
    prove_s, verify_s = prove["times"][0], verify["times"][0]
    return {"variant": variant, "inputs": shape.inputs, "size": shape.size, "logrows": logrows, "rows": rows,
            "rows_per_value": round(rows / (shape.inputs + (shape.inputs + 1) * shape.size), 2),
            "row_use": round(rows / 2**logrows, 3), "srs_s": round(srs_s, 2),
            "setup_s": round(setup["seconds"], 3), "prove_s": round(prove_s, 3), "verify_s": round(verify_s, 4),
            "values_per_s": round(shape.size / prove_s, 1), "proof_bytes": prove["proof_bytes"],
            "commit_s": None if commit_s is None else round(commit_s, 4),
            "process_baseline_mb": round(prove["before_mb"]),
            "peak_memory_mb": {"setup": round(setup["peak_memory_mb"]), "prove": round(prove["peak_memory_mb"]),
                               "verify": round(verify["peak_memory_mb"])}}


def commit_cost(variant: str, folder: Path, srs: Path, data: Path) -> float | None:
    """Seconds a contributor spends committing to one chunk (best of 3): Poseidon for Flair's circuit, KZG for
    polycommit, nothing for the naive circuit (it publishes the values)."""
    if variant == "public":
        return None
    chunk = json.loads(data.read_text())["deltas"][0]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        if variant == "polycommit":
            kzg_commitment(folder, srs, chunk)
        else:
            ezkl_backend.poseidon(chunk)
        times.append(time.perf_counter() - start)
    return min(times)


def measure_parallel(work: Path, shape: Shape) -> dict[str, Any]:
    """PARALLEL_CHUNKS chunks of ``shape`` proven in one process, then split over two concurrent ones."""
    data = random_data(work / "parallel.json", shape.inputs, shape.size * PARALLEL_CHUNKS, shape.size, seed=7)
    proofs = work / "proofs" / "parallel"
    proofs.mkdir(parents=True, exist_ok=True)
    job = {"work": str(work), "variant": "hashed", "inputs": shape.inputs, "size": shape.size,
           "logrows": shape.logrows, "data": str(data), "cap_s": 1e9, "proofs": str(proofs), "step": "prove"}
    chunks = list(range(PARALLEL_CHUNKS))
    _, (one,) = run_concurrently([{**job, "chunks": chunks}])
    start_at = time.time() + START_DELAY_S
    _, two = run_concurrently([{**job, "chunks": chunks[0::2], "start_at": start_at},
                               {**job, "chunks": chunks[1::2], "start_at": start_at}])
    one_s, two_s = one["seconds"], max(r["seconds"] for r in two)
    return {"size": shape.size, "chunks": PARALLEL_CHUNKS, "one_worker_s": round(one_s, 2),
            "two_workers_s": round(two_s, 2), "speedup": round(one_s / two_s, 2),
            "one_worker_peak_mb": round(one["peak_memory_mb"]),
            "two_workers_peak_mb": round(sum(r["peak_memory_mb"] for r in two))}


def prove_update(work: Path, variant: str, shape: Shape, logrows: int, data: Path, total: int, workers: int,
                 cap_s: float) -> dict[str, Any]:
    """Prove the update's chunks (until ``cap_s``), then verify every proof made; measured and extrapolated."""
    proofs = work / "proofs" / f"update-{variant}"
    proofs.mkdir(parents=True, exist_ok=True)
    if variant != "hashed":
        data = publish(data, variant, circuit_folder(work, variant, shape), srs_path(work, logrows), shape.size)
    job = {"work": str(work), "variant": variant, "inputs": shape.inputs, "size": shape.size, "logrows": logrows,
           "data": str(data), "cap_s": cap_s, "proofs": str(proofs)}
    chunks = list(range(total))
    if workers > 1:
        job["start_at"] = time.time() + START_DELAY_S
    _, reports = run_concurrently([{**job, "step": "prove", "chunks": chunks[w::workers]} for w in range(workers)])
    wall = max(r["seconds"] for r in reports)  # the workers' proving loops, which start together
    proven = sorted(j for w, r in enumerate(reports) for j in chunks[w::workers][:len(r["times"])])
    verify = run({**job, "step": "verify", "chunks": proven})
    measured = len(proven) == total
    prove_s = wall if measured else wall * total / len(proven)
    verify_s = sum(verify["times"]) * total / len(proven)
    return {"chunks_proven": len(proven), "prove_s": round(prove_s, 2), "prove_s_measured": measured,
            "prove_s_per_chunk": round(wall / len(proven) * workers, 3),
            "prove_s_chunk_range": [round(f(t for r in reports for t in r["times"]), 3) for f in (min, max)],
            "verify_s": round(verify_s, 3),
            "verify_s_measured": measured, "verify_s_per_chunk": round(sum(verify["times"]) / len(proven), 4),
            "peak_memory_mb": round(max(sum(r["peak_memory_mb"] for r in reports), verify["peak_memory_mb"])),
            "workers": workers}


def chunks_to_sample(total: int, falsified: int, probability: float) -> int:
    """The fewest chunks to sample for ``probability`` of catching one of ``falsified`` out of ``total``."""
    from flair_node.protocol.proofs import weighted_sum

    low, high = 0, total
    while low < high:
        mid = (low + high) // 2
        if weighted_sum.detection_probability(total, falsified, mid) >= probability:
            high = mid
        else:
            low = mid + 1
    return low


def projection(update: dict[str, Any], naive: dict[str, Any], poly: dict[str, Any], size: int) -> dict[str, Any]:
    """A 1M-parameter update with the same chunk shape, from the 10k update's seconds per chunk."""
    total = math.ceil(PROJECTED_PARAMS / size)
    falsified = math.ceil(total * FALSIFIED)
    sampled = chunks_to_sample(total, falsified, DETECTION)
    per_chunk = update["prove_s"] / update["chunks"]  # wall time per chunk, with the update's workers
    return {"params": PROJECTED_PARAMS, "size": size, "chunks": total,
            "prove_all_s": round(total * per_chunk), "verify_all_s": round(total * update["verify_s_per_chunk"], 1),
            "naive_prove_all_s": round(total * naive["prove_s"] / update["chunks"]),
            "polycommit_prove_all_s": round(total * poly["prove_s"] / update["chunks"]),
            "falsified_chunks": falsified, "detection": DETECTION, "sampled_chunks": sampled,
            "sample_prove_s": round(sampled * per_chunk),
            "sample_verify_s": round(sampled * update["verify_s_per_chunk"], 1),
            "extrapolated": True}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=4, help="K: contributions merged")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024], help="chunk sizes N to measure")
    parser.add_argument("--cap-s", type=float, default=GOAL_PROVE_S,
                        help="stop proving the 10k update after this many seconds and extrapolate the rest")
    parser.add_argument("--work", type=Path, help="keep circuits, SRS and proofs here (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="K = 2, N = 64, 3 s of proving per variant")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.quick:
        args.inputs, args.sizes, args.cap_s = 2, [64], 3.0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flair-proof-") as tmp:
        work = args.work or Path(tmp)
        report = measure(work, args)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    log(f"done in {report['wall_s']} s")
    print(json.dumps(report))
    return 0


def measure(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    sizes = sorted(args.sizes)
    shapes: list[dict[str, Any]] = []
    for size in sizes:
        shape = Shape(args.inputs, size)
        for variant in VARIANTS:
            if variant == "hashed_tight" and (args.quick or size != sizes[0]):
                continue
            log(f"{variant} {shape.inputs} x {size}: setup, prove, verify")
            shapes.append(measure_shape(work, variant, shape, seed=size))
            log(f"  {json.dumps(shapes[-1])}")

    hashed = {s["size"]: s for s in shapes if s["variant"] == "hashed"}
    parallel, workers = None, 1
    if not args.quick:
        log(f"parallel: {PARALLEL_CHUNKS} chunks of {sizes[0]} in one process, then in two")
        parallel = measure_parallel(work, Shape(args.inputs, sizes[0]))
        log(f"  {json.dumps(parallel)}")

    log(f"10k update: training {args.inputs} contributions to a {HIDDEN}-hidden MLP")
    weights, deltas = model_deltas(args.inputs)
    params = len(deltas[0])
    size = min(sizes, key=lambda n: math.ceil(params / n) * hashed[n]["prove_s"])
    data = write_data(work / "update.json", weights, deltas, size)
    if parallel and parallel["speedup"] >= PARALLEL_GAIN:
        if 2 * hashed[size]["peak_memory_mb"]["prove"] < MEMORY_LIMIT_MB:
            workers = 2
    shape, total = Shape(args.inputs, size), math.ceil(params / size)
    updates = {}
    for variant in ("hashed", "public", "polycommit"):
        logrows = next(s["logrows"] for s in shapes if s["variant"] == variant and s["size"] == size)
        log(f"10k update, {variant}: {total} chunks of {size}, {workers} worker(s), cap {args.cap_s:.0f} s")
        updates[variant] = prove_update(work, variant, shape, logrows, data, total, workers, args.cap_s)
        updates[variant]["chunks"] = total
        log(f"  {json.dumps(updates[variant])}")
    ours, naive, poly = updates["hashed"], updates["public"], updates["polycommit"]
    prove_s = ours["prove_s"]
    return {
        "params": params, "inputs": args.inputs, "chunk_size": size, "chunks": total,
        "chunks_proven": ours["chunks_proven"], "setup_s": hashed[size]["setup_s"],
        "prove_s": prove_s, "prove_s_measured": ours["prove_s_measured"],
        "verify_s": ours["verify_s"], "verify_s_measured": ours["verify_s_measured"],
        "peak_memory_mb": max(ours["peak_memory_mb"], *hashed[size]["peak_memory_mb"].values()),
        "values_per_s": round(params / prove_s, 1), "workers": workers,
        "naive_prove_s": naive["prove_s"], "naive_prove_s_measured": naive["prove_s_measured"],
        "naive_verify_s": naive["verify_s"], "naive_peak_memory_mb": naive["peak_memory_mb"],
        "polycommit_prove_s": poly["prove_s"], "polycommit_prove_s_measured": poly["prove_s_measured"],
        "polycommit_verify_s": poly["verify_s"], "polycommit_peak_memory_mb": poly["peak_memory_mb"],
        "goals": {"prove_10k_s": {"goal": GOAL_PROVE_S, "value": prove_s, "met": prove_s <= GOAL_PROVE_S,
                                  "measured": ours["prove_s_measured"]},
                  "verify_10k_s": {"goal": GOAL_VERIFY_S, "value": ours["verify_s"],
                                   "met": ours["verify_s"] <= GOAL_VERIFY_S, "measured": ours["verify_s_measured"]}},
        "update": updates, "shapes": shapes, "parallel": parallel,
        "projection_1m": projection(ours, naive, poly, size),
    }


if __name__ == "__main__":
    sys.exit(main())
