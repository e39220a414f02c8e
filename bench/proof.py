#!/usr/bin/env python
"""What it costs to prove a merge with EZKL: per chunk shape, for a 10k-parameter update, and projected to 1M.

Flair's circuit (``flair_node.protocol.proofs``) proves, for one chunk of N values and K contributions, that the
N merged sums are ``Σ_i w_i · d_i``; the proof carries a commitment to the weights, to each contribution's chunk
and to the sums, and reveals none of the values. The bench measures it with both of Flair's commitment schemes,
next to a naive baseline, all in the same run. Variants are named by EZKL's visibility of inputs and outputs:

    polycommit  Flair's ``kzg`` scheme, the default: ``ezkl_backend.build(cache, Shape(K, N, "kzg"), srs)`` with
                an SRS made for exactly its logrows (``Shape(1, N).logrows``: a kzg circuit is sized for up to
                ``KZG_INPUTS`` inputs whatever K is). The proof opens with the KZG commitments of its columns.
    hashed      Flair's ``poseidon`` scheme: ``Shape(K, N, "poseidon")``, every value Poseidon-hashed (the proof's
                public values are the hashes), about 41 rows per value.
    public      the naive baseline, built here: the values themselves are the proof's public values (nothing
                hidden), at the smallest logrows its rows (from settings.json) fit in.

Each step runs in a fresh subprocess (``--worker``), which reports its time and its peak resident memory
(``VmHWM``, the whole process: interpreter and libraries included): setup (ONNX export, settings, compile, keys:
what ``ezkl_backend.build`` does; the development SRS is made beforehand and timed apart as ``srs_s``), prove
(``weighted_sum.prove``: witness and proof) and verify. Verifying is the binding a node makes: for Flair's
variants ``weighted_sum.check`` (``ezkl.verify``, then the proof's commitments compared with the weights'
commitment and with what was published for that chunk: the commitments ``weighted_sum.commitments`` computes,
with ``via`` a K = 1 kzg circuit of the chunk size, as contributors commit, or Poseidon hashes); for the naive
circuit ``ezkl.verify`` and its public values compared with the values. ``values_per_s`` is N / prove_s: merged
parameters proven per second; ``commit_s`` what a contributor spends committing to one chunk
(``weighted_sum.commitments`` of one chunk, best of 3; none for the naive circuit, which publishes the values);
``rows`` and ``row_use`` how many of the circuit's 2^logrows rows it uses. The per-shape figures use random
weights and deltas within ±2^20 (the cost does not depend on the values).

**The 10k-parameter update.** A 64-133-10 MLP (``make_mlp(0, hidden=133)``: 9,985 parameters), K copies each
trained one epoch on its own slice of the digits; the deltas are ``weighted_sum.fixed_delta(trained, base)``,
the weights ``normalize_weights`` of the slice sizes. Its chunk size is the measured N whose projected total
(chunks x the kzg prove_s of one chunk) is lowest. Every variant proves every chunk of it, in order, and every
proof made is checked as above against the commitments published beforehand (what the contributors and the
aggregator publish: ``update.*.commit_s`` is one contributor committing its whole delta). Proving stops once
``--cap-s`` seconds have passed (by default the goal's 120 s: past it the goal is missed anyway); the rest is
then extrapolated from the chunks proven (``*_measured`` says which figures are which). Setup is once per
shape (the keys serve every round), so ``prove_s`` does not include it. Before it (not --quick), 4 chunks of
the chosen kzg shape are proven once in one process and once split over 2 concurrent processes; the update
uses 2 workers only if that was at least 10 % faster (``peak_memory_mb`` then adds both workers' peaks).

**1M parameters** are projected from the 10k update's seconds per chunk, in chunks of the same size: proving
every chunk, or the chunks Flair proves of a merge that big (``merges.chunks_to_prove``: all of up to
``merges.PROVE_ALL`` chunks, else a sample of ``merges.sample_size(total)``, which catches an aggregator
falsifying 1 % of the chunks with probability 0.99). ``flair_chunks`` is how many Flair would prove of the
10k update itself.

Last line of stdout: one JSON object with ``params``, ``prove_s``, ``verify_s``, ``peak_memory_mb`` (the 10k
update with Flair's kzg circuit), ``naive_prove_s``, ``poseidon_prove_s``, ``poseidon_verify_s`` (the same
update with the other variants), the ``goals`` (whole 10k update proven in <= 120 s, verified in <= 1 s, with
kzg), the per-shape ``shapes``, ``update`` (every variant's figures), ``parallel`` and ``projection_1m``.

    .venv/bin/python bench/proof.py            # K = 4, N = 64, 256, 1024: about 10 minutes on 2 cores
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
from flair_node.protocol.proofs.ezkl_backend import Circuit, Shape
from flair_node.tensors.fixedpoint import normalize_weights
from flair_node.testing.memory import own_mb, reset_peak

HIDDEN = 133  # 64 x 133 + 133 + 133 x 10 + 10 = 9,985 parameters
VARIANTS = ("polycommit", "hashed", "public")
SCHEME = {"polycommit": "kzg", "hashed": "poseidon"}  # Flair's variants: their commitment scheme
PREFIX = {"polycommit": "", "hashed": "poseidon_", "public": "naive_"}  # of their figures in the last line
RESERVED_ROWS = 32  # rows halo2 keeps for blinding, on top of the circuit's own
DELTA_BITS = 20  # random per-shape deltas within ±2^20 (±0.06 in 24-bit fixed point)
GOAL_PROVE_S, GOAL_VERIFY_S = 120.0, 1.0
PROJECTED_PARAMS = 1_000_000
PARALLEL_CHUNKS, PARALLEL_GAIN = 4, 1.1
START_DELAY_S = 5.0  # concurrent workers load (torch, keys) before this, then prove together
MEMORY_LIMIT_MB = 12_000  # two concurrent workers must stay below this together


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- circuits: Flair's through ezkl_backend, the naive one built here the same way with public visibility --------


def srs_path(work: Path, logrows: int) -> Path:
    return ezkl_backend.development_srs(work / "srs", logrows)


def flair_circuit(work: Path, variant: str, inputs: int, size: int) -> Circuit:
    """Flair's circuit of this variant for K = ``inputs`` and chunks of ``size`` (built once, then read from the
    cache), with a development SRS for exactly its logrows."""
    shape = Shape(inputs, size, SCHEME[variant])
    return ezkl_backend.build(work / "circuits", shape, srs_path(work, shape.logrows))


def committer(work: Path, variant: str, size: int) -> Circuit | None:
    """What contributions commit with (as ``circuits.Circuits.committer``): a K = 1 kzg circuit of the chunk
    size, or None for Poseidon hashes."""
    return flair_circuit(work, variant, 1, size) if SCHEME.get(variant) == "kzg" else None


def ok(what: str, result: object) -> None:
    if result is False:
        raise SystemExit(f"EZKL {what} returned False")


def gen_settings(folder: Path, logrows: int) -> int:
    """settings.json of the naive circuit ``folder/circuit.onnx`` (scales 0, no range checks, as Flair's); its
    number of rows."""
    import ezkl

    args = ezkl_backend.run_args(logrows, "public")
    ok("settings", ezkl.gen_settings(str(folder / "circuit.onnx"), str(folder / "settings.json"), py_run_args=args))
    return int(json.loads((folder / "settings.json").read_text())["num_rows"])


def tight_logrows(shape: Shape) -> int:
    """The smallest logrows the naive circuit's rows fit in."""
    with tempfile.TemporaryDirectory(prefix="flair-proof-probe-") as tmp:
        ezkl_backend.export_onnx(Path(tmp) / "circuit.onnx", shape)
        rows = gen_settings(Path(tmp), ezkl_backend.MIN_LOGROWS)
    return max(6, math.ceil(math.log2(rows + RESERVED_ROWS)))


def plain_folder(work: Path, shape: Shape) -> Path:
    return work / f"public-{shape.inputs}x{shape.size}"


def build_plain(folder: Path, shape: Shape, logrows: int, srs: Path) -> None:
    import ezkl

    folder.mkdir(parents=True, exist_ok=True)
    ezkl_backend.export_onnx(folder / "circuit.onnx", shape)
    gen_settings(folder, logrows)
    ok("compile", ezkl.compile_circuit(str(folder / "circuit.onnx"), str(folder / "circuit.ezkl"),
                                       str(folder / "settings.json")))
    ok("setup", ezkl.setup(str(folder / "circuit.ezkl"), str(folder / "vk.key"), str(folder / "pk.key"), str(srs)))


def prove_plain(folder: Path, srs: Path, weights: list[int], chunk_values: list[list[int]], out: Path) -> None:
    import ezkl

    data = {"input_data": [[float(w) for w in weights], *([float(v) for v in c] for c in chunk_values)]}
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=folder) as tmp:
        (Path(tmp) / "input.json").write_text(json.dumps(data))
        ezkl.gen_witness(str(Path(tmp) / "input.json"), str(folder / "circuit.ezkl"), str(Path(tmp) / "witness.json"))
        ok("prove", ezkl.prove(str(Path(tmp) / "witness.json"), str(folder / "circuit.ezkl"), str(folder / "pk.key"),
                               str(out), str(srs)))


def verify_plain(folder: Path, srs: Path, proof: Path, expected: list[str]) -> None:
    """Verify a naive proof, then bind it to what was published: its public values are the values themselves."""
    import ezkl

    ok("verify", ezkl.verify(str(proof), str(folder / "settings.json"), str(folder / "vk.key"), str(srs)))
    if json.loads(proof.read_bytes())["instances"][0] != expected:
        raise SystemExit(f"the naive proof {proof.name} is about other values than were published")


# -- data -----------------------------------------------------------------------------------------------------------


def chunk_of(values: list[int], size: int, j: int) -> list[int]:
    part = values[j * size:(j + 1) * size]
    return part + [0] * (size - len(part))


def random_data(path: Path, inputs: int, values: int, seed: int) -> Path:
    """Random weights and deltas of ``values`` values each (the cost does not depend on them)."""
    rng = random.Random(seed)
    bound = 1 << DELTA_BITS
    weights = normalize_weights([rng.randint(100, 5000) for _ in range(inputs)])
    deltas = [[rng.randint(-bound, bound) for _ in range(values)] for _ in range(inputs)]
    return write_data(path, weights, deltas)


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


def write_data(path: Path, weights: list[int], deltas: list[list[int]]) -> Path:
    path.write_text(json.dumps({"weights": weights, "deltas": deltas}))
    return path


def publish(work: Path, variant: str, path: Path, size: int) -> tuple[Path, float | None]:
    """The data at ``path`` with what the ``variant`` circuit's verifier compares its proofs with, per chunk of
    ``size``, written next to it: for Flair's variants the commitments each contribution publishes of its delta
    and the one the aggregator publishes of the merged sums (``weighted_sum.commitments``); for the naive
    circuit the values (weights, each contribution's chunk, the sums) as its public values. Also the seconds one
    contributor spent committing to its whole delta (None for the naive circuit)."""
    import torch

    from flair_node.protocol.proofs import weighted_sum

    data = json.loads(path.read_text())
    weights, deltas = data["weights"], data["deltas"]
    tensors = [torch.tensor(d, dtype=torch.int64) for d in deltas]
    sums = weighted_sum.weighted_sums(weights, tensors)
    seconds = None
    if variant == "public":
        values = sums.tolist()
        data["expected"] = [[ezkl_backend.felt(v) for part in (weights, *(chunk_of(d, size, j) for d in deltas),
                                                               chunk_of(values, size, j)) for v in part]
                            for j in range(math.ceil(len(deltas[0]) / size))]
    else:
        via = committer(work, variant, size)
        start = time.perf_counter()
        data["published"] = [weighted_sum.commitments(tensors[0], size, via=via)]
        seconds = time.perf_counter() - start
        data["published"] += [weighted_sum.commitments(d, size, via=via) for d in tensors[1:]]
        data["published_sums"] = weighted_sum.commitments(sums, size, via=via)
    out = path.with_name(f"{path.stem}-{variant}-{size}.json")
    out.write_text(json.dumps(data))
    return out, seconds


# -- worker steps: each in a fresh process ------------------------------------------------------------------------


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Run one step in this (fresh) process: its seconds and this process's peak resident memory."""
    work, variant, step = Path(job["work"]), job["variant"], job["step"]
    shape = Shape(job["inputs"], job["size"])  # the naive circuit's (only its inputs and size matter)
    folder = plain_folder(work, shape)
    srs = srs_path(work, job["logrows"])
    data = json.loads(Path(job["data"]).read_text()) if "data" in job else {}
    import torch  # before the measurement, whatever the step: the baseline holds it

    from flair_node.protocol.proofs import weighted_sum

    flair = variant in SCHEME
    if flair and step != "setup":
        circuit = flair_circuit(work, variant, shape.inputs, shape.size)
        deltas = [torch.tensor(d, dtype=torch.int64) for d in data["deltas"]]
    if "start_at" in job:  # concurrent workers start proving together, once all have loaded
        time.sleep(max(0.0, job["start_at"] - time.time()))
    before = own_mb("VmRSS")
    peak_ok = reset_peak()
    report: dict[str, Any] = {}
    start = time.perf_counter()
    if step == "setup":
        if flair:
            flair_circuit(work, variant, shape.inputs, shape.size)
        else:
            build_plain(folder, shape, job["logrows"], srs)
        report["seconds"] = time.perf_counter() - start
    elif step == "prove":  # the chunks in job["chunks"], in order, until job["cap_s"] have passed
        times, sizes = [], []
        for j in job["chunks"]:
            if times and time.perf_counter() - start >= job["cap_s"]:
                break
            t = time.perf_counter()
            out = Path(job["proofs"]) / f"{j}.json"
            if flair:
                out.write_bytes(weighted_sum.prove(circuit, data["weights"], deltas, [j])[j])
            else:
                prove_plain(folder, srs, data["weights"], [chunk_of(d, shape.size, j) for d in data["deltas"]], out)
            times.append(time.perf_counter() - t)
            sizes.append(out.stat().st_size)
        report.update(seconds=time.perf_counter() - start, times=times, proof_bytes=max(sizes))
    elif step == "verify":  # every proof in job["chunks"], bound to what was published for its chunk
        times = []
        for j in job["chunks"]:
            proof = Path(job["proofs"]) / f"{j}.json"
            t = time.perf_counter()
            if flair:
                weighted_sum.check(circuit, proof.read_bytes(), weights=data["weights"],
                                   contributions=[c[j] for c in data["published"]], sums=data["published_sums"][j])
            else:
                verify_plain(folder, srs, proof, data["expected"][j])
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


# -- measurements ---------------------------------------------------------------------------------------------------


def logrows_of(variant: str, inputs: int, size: int) -> int:
    if variant in SCHEME:
        return Shape(inputs, size, SCHEME[variant]).logrows
    return tight_logrows(Shape(inputs, size))


def commit_cost(work: Path, variant: str, data: Path, size: int) -> float | None:
    """Seconds a contributor spends committing to one chunk (best of 3), with ``weighted_sum.commitments``;
    None for the naive circuit (it publishes the values)."""
    import torch

    from flair_node.protocol.proofs import weighted_sum

    if variant == "public":
        return None
    via = committer(work, variant, size)
    chunk = torch.tensor(json.loads(data.read_text())["deltas"][0][:size], dtype=torch.int64)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        weighted_sum.commitments(chunk, size, via=via)
        times.append(time.perf_counter() - start)
    return min(times)


def measure_shape(work: Path, variant: str, inputs: int, size: int, seed: int) -> dict[str, Any]:
    """Setup, prove and verify of one chunk, each in a fresh process."""
    logrows = logrows_of(variant, inputs, size)
    start = time.perf_counter()
    srs_path(work, logrows)
    srs_s = time.perf_counter() - start
    proofs = work / "proofs" / f"{variant}-{inputs}x{size}"
    proofs.mkdir(parents=True, exist_ok=True)
    data = random_data(work / f"random-{inputs}x{size}.json", inputs, size, seed)
    job = {"work": str(work), "variant": variant, "inputs": inputs, "size": size, "logrows": logrows}
    setup = run({**job, "step": "setup"})
    flair = variant in SCHEME
    settings = (flair_circuit(work, variant, inputs, size).settings if flair
                else plain_folder(work, Shape(inputs, size)) / "settings.json")
    rows = int(json.loads(settings.read_text())["num_rows"])
    start = time.perf_counter()
    committer(work, variant, size)  # the K = 1 kzg circuit contributors commit with: built once per node
    committer_s = time.perf_counter() - start
    commit_s = commit_cost(work, variant, data, size)
    published, _ = publish(work, variant, data, size)
    chunk_job = {**job, "data": str(published), "chunks": [0], "cap_s": 0, "proofs": str(proofs)}
    prove = run({**chunk_job, "step": "prove"})
    verify = run({**chunk_job, "step": "verify"})
    prove_s, verify_s = prove["times"][0], verify["times"][0]
    return {"variant": variant, "scheme": SCHEME.get(variant), "inputs": inputs, "size": size, "logrows": logrows,
            "rows": rows, "rows_per_value": round(rows / (inputs + (inputs + 1) * size), 2),
            "row_use": round(rows / 2**logrows, 3), "srs_s": round(srs_s, 2),
            "setup_s": round(setup["seconds"], 3), "prove_s": round(prove_s, 3), "verify_s": round(verify_s, 4),
            "values_per_s": round(size / prove_s, 1), "proof_bytes": prove["proof_bytes"],
            "commit_s": None if commit_s is None else round(commit_s, 4),
            "committer_setup_s": round(committer_s, 2) if SCHEME.get(variant) == "kzg" else None,
            "process_baseline_mb": round(prove["before_mb"]),
            "peak_memory_mb": {"setup": round(setup["peak_memory_mb"]), "prove": round(prove["peak_memory_mb"]),
                               "verify": round(verify["peak_memory_mb"])}}


def measure_parallel(work: Path, inputs: int, size: int) -> dict[str, Any]:
    """PARALLEL_CHUNKS chunks of Flair's kzg circuit proven in one process, then split over two concurrent ones."""
    data = random_data(work / "parallel.json", inputs, size * PARALLEL_CHUNKS, seed=7)
    proofs = work / "proofs" / "parallel"
    proofs.mkdir(parents=True, exist_ok=True)
    job = {"work": str(work), "variant": "polycommit", "inputs": inputs, "size": size,
           "logrows": logrows_of("polycommit", inputs, size), "data": str(data), "cap_s": 1e9,
           "proofs": str(proofs), "step": "prove"}
    chunks = list(range(PARALLEL_CHUNKS))
    _, (one,) = run_concurrently([{**job, "chunks": chunks}])
    start_at = time.time() + START_DELAY_S
    _, two = run_concurrently([{**job, "chunks": chunks[0::2], "start_at": start_at},
                               {**job, "chunks": chunks[1::2], "start_at": start_at}])
    one_s, two_s = one["seconds"], max(r["seconds"] for r in two)
    return {"variant": "polycommit", "size": size, "chunks": PARALLEL_CHUNKS, "one_worker_s": round(one_s, 2),
            "two_workers_s": round(two_s, 2), "speedup": round(one_s / two_s, 2),
            "one_worker_peak_mb": round(one["peak_memory_mb"]),
            "two_workers_peak_mb": round(sum(r["peak_memory_mb"] for r in two))}


def prove_update(work: Path, variant: str, inputs: int, size: int, data: Path, total: int, workers: int,
                 cap_s: float) -> dict[str, Any]:
    """Publish, prove the update's chunks (until ``cap_s``), then verify every proof made; measured and
    extrapolated."""
    proofs = work / "proofs" / f"update-{variant}"
    proofs.mkdir(parents=True, exist_ok=True)
    published, commit_s = publish(work, variant, data, size)
    job = {"work": str(work), "variant": variant, "inputs": inputs, "size": size,
           "logrows": logrows_of(variant, inputs, size), "data": str(published), "cap_s": cap_s,
           "proofs": str(proofs)}
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
    return {"chunks": total, "chunks_proven": len(proven), "prove_s": round(prove_s, 2), "prove_s_measured": measured,
            "prove_s_per_chunk": round(wall / len(proven) * workers, 3),
            "prove_s_chunk_range": [round(f(t for r in reports for t in r["times"]), 3) for f in (min, max)],
            "verify_s": round(verify_s, 3), "verify_s_measured": measured,
            "verify_s_per_chunk": round(sum(verify["times"]) / len(proven), 4),
            "commit_s": None if commit_s is None else round(commit_s, 3),
            "peak_memory_mb": round(max(sum(r["peak_memory_mb"] for r in reports), verify["peak_memory_mb"])),
            "workers": workers}


def flair_chunks(total: int) -> int:
    """How many of a merge's ``total`` chunks Flair proves (``merges.chunks_to_prove``: all, or its sample)."""
    from flair_node.core.ids import CommitId
    from flair_node.protocol.proofs import merges

    return len(merges.chunks_to_prove(CommitId("bench"), total))


def projection(updates: dict[str, dict[str, Any]], size: int) -> dict[str, Any]:
    """A 1M-parameter update in chunks of ``size``, from the 10k update's seconds per chunk (wall time, with the
    update's workers): every chunk proven, or the chunks Flair proves."""
    from flair_node.protocol.proofs import merges, weighted_sum

    total = math.ceil(PROJECTED_PARAMS / size)
    proven = flair_chunks(total)
    falsified = max(1, math.ceil(merges.FALSIFIED * total))
    report: dict[str, Any] = {
        "params": PROJECTED_PARAMS, "size": size, "chunks": total, "sampled_chunks": proven,
        "sampled": proven < total, "falsified_chunks": falsified,
        "detection": round(weighted_sum.detection_probability(total, falsified, proven), 4)}
    for variant, update in updates.items():
        prove_per_chunk = update["prove_s"] / update["chunks"]
        prefix = PREFIX[variant]
        report[f"{prefix}prove_all_s"] = round(total * prove_per_chunk)
        report[f"{prefix}verify_all_s"] = round(total * update["verify_s_per_chunk"], 1)
        report[f"{prefix}sample_prove_s"] = round(proven * prove_per_chunk)
        report[f"{prefix}sample_verify_s"] = round(proven * update["verify_s_per_chunk"], 1)
    report["extrapolated"] = True
    return report


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
    sizes, inputs = sorted(args.sizes), args.inputs
    shapes: list[dict[str, Any]] = []
    for size in sizes:
        for variant in VARIANTS:
            log(f"{variant} {inputs} x {size}: setup, prove, verify")
            shapes.append(measure_shape(work, variant, inputs, size, seed=size))
            log(f"  {json.dumps(shapes[-1])}")
    by = {(s["variant"], s["size"]): s for s in shapes}

    log(f"10k update: training {inputs} contributions to a {HIDDEN}-hidden MLP")
    weights, deltas = model_deltas(inputs)
    params = len(deltas[0])
    size = min(sizes, key=lambda n: math.ceil(params / n) * by["polycommit", n]["prove_s"])
    total = math.ceil(params / size)
    data = write_data(work / "update.json", weights, deltas)
    parallel, workers = None, 1
    if not args.quick:
        log(f"parallel: {PARALLEL_CHUNKS} chunks of {size} (kzg) in one process, then in two")
        parallel = measure_parallel(work, inputs, size)
        log(f"  {json.dumps(parallel)}")
        fits = 2 * by["polycommit", size]["peak_memory_mb"]["prove"] < MEMORY_LIMIT_MB
        if parallel["speedup"] >= PARALLEL_GAIN and fits:
            workers = 2
    updates = {}
    for variant in VARIANTS:
        log(f"10k update, {variant}: {total} chunks of {size}, {workers} worker(s), cap {args.cap_s:.0f} s")
        updates[variant] = prove_update(work, variant, inputs, size, data, total, workers, args.cap_s)
        log(f"  {json.dumps(updates[variant])}")

    ours = updates["polycommit"]
    report: dict[str, Any] = {"params": params, "inputs": inputs, "chunk_size": size, "chunks": total,
                              "flair_chunks": flair_chunks(total), "logrows": by["polycommit", size]["logrows"],
                              "setup_s": by["polycommit", size]["setup_s"], "workers": workers}
    for variant, update in updates.items():
        prefix = PREFIX[variant]
        report.update({f"{prefix}prove_s": update["prove_s"], f"{prefix}prove_s_measured": update["prove_s_measured"],
                       f"{prefix}verify_s": update["verify_s"],
                       f"{prefix}verify_s_measured": update["verify_s_measured"],
                       f"{prefix}peak_memory_mb": max(update["peak_memory_mb"],
                                                      *by[variant, size]["peak_memory_mb"].values())})
    report["chunks_proven"] = ours["chunks_proven"]
    report["values_per_s"] = round(params / ours["prove_s"], 1)
    report["commit_s"] = ours["commit_s"]
    report["goals"] = {
        "prove_10k_s": {"goal": GOAL_PROVE_S, "value": ours["prove_s"], "met": ours["prove_s"] <= GOAL_PROVE_S,
                        "measured": ours["prove_s_measured"]},
        "verify_10k_s": {"goal": GOAL_VERIFY_S, "value": ours["verify_s"], "met": ours["verify_s"] <= GOAL_VERIFY_S,
                         "measured": ours["verify_s_measured"]}}
    report.update(update=updates, shapes=shapes, parallel=parallel, projection_1m=projection(updates, size))
    return report


if __name__ == "__main__":
    sys.exit(main())
