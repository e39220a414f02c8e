#!/usr/bin/env python
"""Merge 10 deltas of a 25M-parameter model: Flair's exact fixed-point merge next to the float baselines.

Measured in the same run on the same data:
  exact_merge_s    flair_node.tensors.fixedpoint.weighted_sum_fixed (int64 fixed point, bit-reproducible)
  inplace_bound_s  torch in-place float32 weighted sum of the deltas (memory-bandwidth bound)
  flower_s         flwr.server.strategy.aggregate.aggregate on numpy arrays (Flower's FedAvg mean)
Each is the best of --repeat runs. extra_memory_mb is the peak resident memory the exact merge needs beyond
its inputs and its output buffer. The last line of stdout is one JSON object.

    .venv/bin/python bench/merge.py            # 25M parameters x 10 inputs
    .venv/bin/python bench/merge.py --quick    # a small run for a smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from flair_node.tensors.fixedpoint import DEFAULT_SCALE_BITS, WEIGHT_BITS, normalize_weights, weighted_sum_fixed
from flair_node.testing.memory import own_mb, reset_peak


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=int, default=25_000_000)
    parser.add_argument("--inputs", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1M parameters, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.params, args.repeat = 1_000_000, 1

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"building {args.inputs} inputs of {args.params:,} float32 parameters")
    g = torch.Generator().manual_seed(0)
    base = torch.randn(args.params, generator=g).mul_(0.05)
    inputs = [base + torch.randn(args.params, generator=g).mul_(1e-3) for _ in range(args.inputs)]
    deltas = [x - base for x in inputs]
    examples = [int(n) for n in torch.randint(100, 5000, (args.inputs,), generator=g)]
    weights = normalize_weights(examples, WEIGHT_BITS)
    out = torch.empty_like(base)

    log("exact fixed-point merge (compiling the kernel once first)")
    start = time.perf_counter()
    weighted_sum_fixed(base[:1024], [x[:1024] for x in inputs], weights)
    warmup = time.perf_counter() - start
    exact = best_of(args.repeat, lambda: weighted_sum_fixed(base, inputs, weights, out=out))
    before = own_mb("VmRSS")
    peak_ok = reset_peak()
    weighted_sum_fixed(base, inputs, weights, out=out)
    extra_mb = max(0.0, own_mb("VmHWM") - before) if peak_ok else float("nan")

    log("in-place float32 weighted sum (bandwidth bound)")
    acc = torch.empty_like(base)
    fractions = [w / (1 << WEIGHT_BITS) for w in weights]

    def inplace() -> None:
        acc.zero_()
        for d, f in zip(deltas, fractions, strict=True):
            acc.add_(d, alpha=f)

    inplace_s = best_of(args.repeat, inplace)

    log("Flower aggregate()")
    from flwr.server.strategy.aggregate import aggregate

    results = [([d.numpy()], n) for d, n in zip(deltas, examples, strict=True)]
    flower_s = best_of(args.repeat, lambda: aggregate(results))

    reference = sum(d.double() * f for d, f in zip(deltas, fractions, strict=True))
    err = float((out.double() - base.double() - reference).abs().max())
    report = {
        "params": args.params,
        "inputs": args.inputs,
        "torch_threads": torch.get_num_threads(),
        "scale_bits": DEFAULT_SCALE_BITS,
        "exact_merge_s": round(exact, 4),
        "inplace_bound_s": round(inplace_s, 4),
        "flower_s": round(flower_s, 4),
        "exact_vs_inplace": round(exact / inplace_s, 2),
        "exact_vs_flower": round(exact / flower_s, 2),
        "extra_memory_mb": round(extra_mb, 1),
        "kernel_warmup_s": round(warmup, 2),
        "model_mb": round(args.params * 4 / 2**20, 1),
        "max_abs_err_vs_float64": err,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
