#!/usr/bin/env python
"""Train the demo task (digits, three contributors, averaging merges) with each delta codec.

For every codec the same rounds run through the real repository code (in-memory stores, encryption included):
each contributor branches from main, trains on its own slice, commits its delta in that codec (lossy codecs with
error feedback), and main merges the three. Reports the mean bytes of a contributor commit's payload (encrypted,
as stored and sent) and the final test accuracy, next to the exact float32 codec measured in the same run.
The last line of stdout is one JSON object keyed by codec.

    .venv/bin/python bench/codecs.py                 # 10 rounds, 64-256-10 MLP
    .venv/bin/python bench/codecs.py --quick         # 2 rounds, a smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from flair_node.core.identity import Identity
from flair_node.storage.repos import RepoSet
from flair_node.tensors.lossy import ErrorFeedback
from flair_node.testing.models import accuracy, load_digits_split, make_mlp, partition, train_local

CODECS = {"float32": "bitdelta-v1", "float16": "float16-v1", "int8": "int8-v1", "topk": "topk-v1"}
CONTRIBUTORS = ("alice", "bob", "carol")


def run(codec: str, args: argparse.Namespace, data: tuple[torch.Tensor, ...]) -> dict[str, float]:
    x_train, y_train, x_test, y_test = data
    slices = partition(x_train, y_train, len(CONTRIBUTORS), seed=0)
    me = Identity.generate()
    repos = RepoSet.in_memory(me)
    model = make_mlp(0, args.hidden)
    repo = repos.create(f"bench-{codec}", {k: v.clone() for k, v in model.state_dict().items()})
    feedback = {name: ErrorFeedback() for name in CONTRIBUTORS}
    sizes = []
    for round_no in range(args.rounds):
        branches = []
        for i, name in enumerate(CONTRIBUTORS):
            branch = f"r{round_no}/{name}"
            repo.create_branch(me, branch, repo.head("main"))
            model.load_state_dict(repo.materialize(repo.head(branch)))
            x, y = slices[i]
            train_local(model, x, y, args.epochs, args.lr, 32, seed=round_no * 10 + i)
            trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
            lossy = codec != "bitdelta-v1"
            sent = feedback[name].apply(trained) if lossy else trained
            commit = repo.commit_weights(me, sent, message=f"{name} round {round_no}", branch=branch,
                                         examples=len(y), codec=codec, topk_ratio=args.topk_ratio)
            if lossy:
                feedback[name].update(sent, repo.materialize(commit.id))
            sizes.append(commit.payload.size)
            branches.append(branch)
        repo.merge(me, branches, "main")
    model.load_state_dict(repo.materialize(repo.head("main")))
    return {"bytes_per_commit": sum(sizes) / len(sizes), "accuracy": accuracy(model, x_test, y_test)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--topk-ratio", type=float, default=0.02)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 2
    torch.set_num_threads(1)
    data = load_digits_split(seed=0)
    report: dict[str, Any] = {}
    for label, codec in CODECS.items():
        start = time.perf_counter()
        report[label] = run(codec, args, data)
        print(f"{label:8} {report[label]['bytes_per_commit']:>10,.0f} B/commit  accuracy "
              f"{report[label]['accuracy']:.2%}  ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    exact = report["float32"]
    for row in report.values():
        row["smaller_than_float32"] = round(exact["bytes_per_commit"] / row["bytes_per_commit"], 2)
        row["accuracy_loss_points"] = round(100 * (exact["accuracy"] - row["accuracy"]), 2)
        row["accuracy"] = round(row["accuracy"], 4)
    report["params"] = {"parameters": sum(p.numel() for p in make_mlp(0, args.hidden).parameters()),
                        "rounds": args.rounds, "topk_ratio": args.topk_ratio}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
