#!/usr/bin/env python
"""Aggregate 10 inputs of a 25M-parameter model with each strategy: Flair's next to Flower's function.

The data: a float32 base of --params parameters in four tensors (40/30/20/10 %), and --inputs states around it
(base + N(0, 1e-3) noise), from a fixed seed; examples per input are random too (the mean and Multi-Krum weigh by
them). For each strategy, Flair's ``flair_node.protocol.strategies`` rule and the matching function of
``flwr.server.strategy.aggregate`` run on the same data:

    mean          Mean()                         aggregate
    median        Median()                       aggregate_median
    trimmed_mean  TrimmedMean(0.2)               aggregate_trimmed_avg(0.2)
    krum          Krum(f)                        aggregate_krum(f, to_keep=0)
    multi_krum    Krum(f, keep=3)                aggregate_krum(f, to_keep=3)
    bulyan        Bulyan(f)                      aggregate_bulyan(f, aggregate_krum, to_keep=0)

Every measurement runs in a fresh subprocess that builds the data, warms up (Flair's numba kernels load or
compile on a tiny model), then reads its resident memory, resets the kernel's peak counter
(/proc/self/clear_refs) and aggregates: ``extra_memory_mb`` is the peak resident memory beyond what the process
held before (after freed heap pages are returned), output included. Times are the best of --repeat runs, for
both. ``max_abs_diff`` compares Flair's result with Flower's (computed in Flower's subprocess, after its timing);
``coords_off`` counts parameters more than 1e-6 apart: values the two decided differently, which for Bulyan are
ties or near-ties at the edge of the nearest-to-median window (Flower ranks distances rounded to float32, Flair
in float64 with ties to the lower end). The last line of stdout is one JSON object keyed by strategy.

    .venv/bin/python bench/aggregate.py            # 10 inputs x 25M parameters: about 5 minutes on 2 cores
    .venv/bin/python bench/aggregate.py --quick    # 1M parameters, 1 repeat: a smoke test
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from flair_node.protocol.strategies import Bulyan, Krum, Mean, Median, Strategy, TrimmedMean
from flair_node.tensors.fixedpoint import normalize_weights
from flair_node.tensors.safetensors_io import StateDict
from flair_node.testing.memory import own_mb, reset_peak

SHARES = (0.4, 0.3, 0.2)  # the fourth tensor takes the rest
KEEP = 3
TRIM = 0.2
#: A parameter further than this from Flower's value was decided differently, not just rounded differently.
OFF = 1e-6


def build_data(params: int, count: int) -> tuple[StateDict, list[StateDict], list[int]]:
    g = torch.Generator().manual_seed(0)
    sizes = [int(params * s) for s in SHARES]
    sizes.append(params - sum(sizes))
    base = {f"layer{i}.weight": torch.randn(n, generator=g).mul_(0.05) for i, n in enumerate(sizes)}
    inputs = []
    for _ in range(count):
        inputs.append({k: v + torch.randn(v.numel(), generator=g).mul_(1e-3) for k, v in base.items()})
    examples = [int(n) for n in torch.randint(100, 5000, (count,), generator=g)]
    return base, inputs, examples


def flair_rules(byzantine: int) -> dict[str, Strategy]:
    return {"mean": Mean(), "median": Median(), "trimmed_mean": TrimmedMean(TRIM), "krum": Krum(byzantine),
            "multi_krum": Krum(byzantine, keep=KEEP), "bulyan": Bulyan(byzantine)}


def flower_rule(strategy: str, byzantine: int) -> Callable[[list[tuple[list[np.ndarray], int]]], list[np.ndarray]]:
    from flwr.server.strategy import aggregate as fl

    rules: dict[str, Callable[[list[tuple[list[np.ndarray], int]]], list[np.ndarray]]] = {
        "mean": fl.aggregate,
        "median": fl.aggregate_median,
        "trimmed_mean": lambda results: fl.aggregate_trimmed_avg(results, TRIM),
        "krum": lambda results: fl.aggregate_krum(results, byzantine, 0),
        "multi_krum": lambda results: fl.aggregate_krum(results, byzantine, KEEP),
        # aggregate_bulyan pops from the list it is given: hand it a copy.
        "bulyan": lambda results: fl.aggregate_bulyan(list(results), byzantine, fl.aggregate_krum, to_keep=0),
    }
    return rules[strategy]


def release_free_memory() -> None:
    """Give freed heap pages back to the kernel, so the baseline counts only live data (glibc only)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure(run: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """(best seconds, peak extra MB of the first run, the first run's result)."""
    release_free_memory()
    before = own_mb("VmRSS")
    peak_ok = reset_peak()
    start = time.perf_counter()
    result = run()
    times = [time.perf_counter() - start]
    extra = max(0.0, own_mb("VmHWM") - before) if peak_ok else float("nan")
    for _ in range(repeat - 1):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times), extra, result


def worker(impl: str, strategy: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this (fresh) process."""
    base, inputs, examples = build_data(args.params, args.inputs)
    weights = normalize_weights(examples)
    rule = flair_rules(args.byzantine)[strategy]
    start = time.perf_counter()
    tiny = {k: v[:4096] for k, v in base.items()}
    rule.aggregate(tiny, [{k: v[:4096] for k, v in s.items()} for s in inputs], weights)
    warmup = time.perf_counter() - start
    if impl == "flair":
        seconds, extra, _ = measure(lambda: rule.aggregate(base, inputs, weights), args.repeat)
        return {"seconds": seconds, "extra_memory_mb": extra, "warmup_s": warmup}
    results = [([s[k].numpy() for k in base], n) for s, n in zip(inputs, examples, strict=True)]
    seconds, extra, theirs = measure(lambda: flower_rule(strategy, args.byzantine)(results), args.repeat)
    ours = rule.aggregate(base, inputs, weights)
    diffs = [np.abs(ours[k].numpy().astype(np.float64) - t) for k, t in zip(base, theirs, strict=True)]
    return {"seconds": seconds, "extra_memory_mb": extra, "max_abs_diff": max(float(d.max()) for d in diffs),
            "coords_off": sum(int((d > OFF).sum()) for d in diffs)}


def spawn(impl: str, strategy: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", impl, strategy, "--params", str(args.params), "--inputs",
               str(args.inputs), "--repeat", str(args.repeat), "--byzantine", str(args.byzantine)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{impl} {strategy} failed:\n{proc.stderr}")
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=int, default=25_000_000)
    parser.add_argument("--inputs", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--byzantine", type=int, default=1, help="f for Krum and Bulyan (Bulyan needs n >= 4f + 3)")
    parser.add_argument("--only", nargs="*", choices=list(flair_rules(0)), help="run these strategies only")
    parser.add_argument("--quick", action="store_true", help="1M parameters, 1 repeat")
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "STRATEGY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.params, args.repeat = 1_000_000, 1
    if args.worker:
        print(json.dumps(worker(*args.worker, args)))
        return 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    report: dict[str, Any] = {}
    for strategy in args.only or list(flair_rules(0)):
        log(f"{strategy}: Flair")
        ours = spawn("flair", strategy, args)
        log(f"{strategy}: Flower")
        theirs = spawn("flower", strategy, args)
        report[strategy] = {
            "flair_s": round(ours["seconds"], 4),
            "flower_s": round(theirs["seconds"], 4),
            "speedup": round(theirs["seconds"] / ours["seconds"], 1),
            "extra_memory_mb": round(ours["extra_memory_mb"], 1),
            "flower_extra_memory_mb": round(theirs["extra_memory_mb"], 1),
            "max_abs_diff": theirs["max_abs_diff"],
            "coords_off": theirs["coords_off"],
            "warmup_s": round(ours["warmup_s"], 2),
            "describe": flair_rules(args.byzantine)[strategy].describe(),
        }
        log(f"  {json.dumps(report[strategy])}")
    log(f"{args.inputs} inputs x {args.params:,} float32 parameters (output {args.params * 4 / 2**20:.0f} MB), "
        f"best of {args.repeat}, f = {args.byzantine}, {torch.get_num_threads()} torch threads")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
