"""``flair-node demo``: a daemon, three contributors training on their own data, and two averaging merges.

What it shows, with a real daemon process and the Python SDK: a repository whose commit 0 is an untrained
digits classifier; each round, alice, bob and carol branch from main, pull its weights, train on their own
disjoint slice of the data (which never leaves their process), and commit; main then merges the three
branches by federated averaging. The held-out test accuracy is printed before, per contributor, and after
each merge, then the history as a graph.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..cli.verbs.history import log_text
from ..sdk import Repo
from ..testing.daemon import running_daemon
from ..testing.models import accuracy, load_digits_split, make_mlp, partition, train_local

REPO_NAME = "digits-mlp"
CONTRIBUTORS = ("alice", "bob", "carol")
ROUNDS = 2
EPOCHS = 5
LEARNING_RATE = 0.01
BATCH_SIZE = 32
SEED = 0


@dataclass(frozen=True)
class DemoRound:
    merge_id: str
    test_acc: float


def run_demo(keep: Path | None = None, rounds: int | None = None) -> int:
    """Run the demo in a temporary home, or in ``keep`` (kept afterwards); returns the exit status."""
    rounds = ROUNDS if rounds is None else rounds
    if rounds < 1:
        print("flair-node: --rounds must be at least 1", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with _home(keep) as home:
        print("Flair demo: three contributors train a digits classifier on their own data; main averages them.")
        print(f"home:    {home}" + ("" if keep else "  (temporary; pass --keep DIR to keep it)"))
        x_train, y_train, x_test, y_test = load_digits_split(seed=SEED)
        slices = dict(zip(CONTRIBUTORS, partition(x_train, y_train, len(CONTRIBUTORS), seed=SEED), strict=True))
        print(f"data:    {len(y_train)} training examples split between "
              + ", ".join(f"{name} ({len(y)})" for name, (_, y) in slices.items())
              + f"; {len(y_test)} held out for testing")

        with running_daemon(home) as daemon:
            print(f"daemon:  pid {daemon.pid}, API at {daemon.url}")
            if any(r["name"] == REPO_NAME for r in daemon.client.call("repo.list")):
                print(f"flair-node: {home} already has a repository named {REPO_NAME} from an earlier demo; "
                      "pass a new --keep folder", file=sys.stderr)
                return 1
            repo = Repo.init(home, REPO_NAME, make_mlp(SEED))
            initial = _test_accuracy(repo, "main", x_test, y_test)
            print(f"\nrepository {REPO_NAME} ({repo.id[:10]}): commit 0 is an untrained 64-32-10 MLP, "
                  f"test accuracy {_pct(initial)}")

            results = [_round(repo, n, slices, x_test, y_test) for n in range(1, rounds + 1)]

            print(f"\n$ flair log {REPO_NAME} --graph")
            print(log_text(repo.log(), graph=True))

        print("\n                 test accuracy")
        print(f"  initial model  {_pct(initial):>8}")
        for n, result in enumerate(results, start=1):
            print(f"  after round {n}  {_pct(result.test_acc):>8}")
        print(f"\ndone in {time.perf_counter() - started:.1f} s; the daemon has stopped"
              + (f", its home is kept in {home}" if keep else ""))
    return _exit_status(initial, results[-1].test_acc)


def _round(repo: Repo, n: int, slices: dict[str, tuple[torch.Tensor, torch.Tensor]], x_test: torch.Tensor,
           y_test: torch.Tensor) -> DemoRound:
    print(f"\nround {n}: each contributor branches from main, trains {EPOCHS} epochs on their own data, commits")
    branches = []
    for i, (name, (x, y)) in enumerate(slices.items()):
        branch = f"r{n}/{name}"
        repo.branch(branch, at="main")
        model = make_mlp(SEED)
        model.load_state_dict(repo.pull("main"))
        batches = EPOCHS * math.ceil(len(y) / BATCH_SIZE)
        with tqdm(total=batches, desc=f"  {name:<6} training", unit="batch", file=sys.stderr, leave=False,
                  dynamic_ncols=True) as bar:
            train_local(model, x, y, EPOCHS, LEARNING_RATE, BATCH_SIZE, bar, seed=SEED + 100 * n + i)
        local_acc = accuracy(model, x, y)
        commit = repo.commit(model, message=f"{name}: {EPOCHS} epochs on {len(y)} local examples",
                             examples=len(y), metrics={"local_acc": round(local_acc, 4)}, branch=branch)
        branches.append(branch)
        print(_row(f"  {name:<6} {commit[:10]} on {branch:<9} local data {_pct(local_acc):>7}",
                   accuracy(model, x_test, y_test)))
    merge_id = repo.merge(branches, into="main", strategy="mean",
                          message=f"round {n}: mean of {', '.join(CONTRIBUTORS)}")
    test_acc = _test_accuracy(repo, "main", x_test, y_test)
    print(_row(f"  merged {merge_id[:10]} into main, weighted by examples", test_acc))
    return DemoRound(merge_id, test_acc)


def _test_accuracy(repo: Repo, rev: str, x_test: torch.Tensor, y_test: torch.Tensor) -> float:
    model = make_mlp(SEED)
    model.load_state_dict(repo.pull(rev))
    return accuracy(model, x_test, y_test)


def _row(left: str, test_acc: float) -> str:
    return f"{left:<56}test {_pct(test_acc):>7}"


def _exit_status(initial: float, final: float) -> int:
    """0 if training improved on the initial model's test accuracy, else 1 with a message."""
    if final > initial:
        return 0
    print(f"flair-node: the merged model ({_pct(final)}) is no better than the initial one ({_pct(initial)})",
          file=sys.stderr)
    return 1


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.1f} %"


@contextlib.contextmanager
def _home(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        yield keep.resolve()  # `flair-node init-home` creates it if needed
        return
    with tempfile.TemporaryDirectory(prefix="flair-demo-") as tmp:
        yield Path(tmp) / "home"
