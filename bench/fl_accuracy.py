#!/usr/bin/env python
"""Federated accuracy and time to accuracy: Flair's rounds on real daemons next to centralized training and Flower.

The task: scikit-learn's digits, split into ``--nodes`` non-IID slices (``partition(..., skew=0.5)``: each class
leans to one slice, as in tests/integration/test_round_training.py), the 64-32-10 MLP of
``flair_node.testing.models``, Adam at lr 0.01, batches of 32, ``--epochs`` local epochs per step, every model
starting from ``make_mlp(0)``. Client
``i`` training its ``n``-th step uses seed ``100 n + i``. Five runs on the same split:

- **centralized**: one model trained on all of x_train in ``--rounds`` chunks of ``--epochs`` epochs (seed
  ``100 n``), a fresh optimizer per chunk as each client has: the same budget of epochs as a client's.
- **Flower FedAvg**: ``flwr.server.strategy.FedAvg().aggregate_fit`` (Flower's own strategy code, driven by this
  script in-process; ``flwr run``'s simulation engine needs Ray, which is not installed) over ``--rounds`` rounds
  in which every client trains from the global model; the same slices, epochs, seeds and rounds as Flair's sync
  run.
- **Flair sync**: ``--nodes`` real flair-node daemons on 127.0.0.1 (``running_cluster``), one repository with
  policy ``buffer = nodes`` and a long deadline; every round each client (a thread of this process, talking to its
  own node's API) reads its node's head of main, pulls that commit, trains, contributes with ``base`` = that
  commit, and waits until its node follows the next merge. The daemons' round service merges (strategy
  ``mean``: examples-weighted, as FedAvg); the aggregator role rotates. Its last merge's test accuracy is
  ``flair_accuracy``.
- **Flair async** (FedBuff-style): a second repository on the same daemons, policy ``buffer = --buffer``, alpha
  0.5, ``--max-staleness``, a short deadline; each client loops read head → pull → train → contribute without
  waiting for merges. A contribution that is τ merges behind the head weighs examples × (1 + τ)^-0.5 (beyond
  ``--max-staleness`` it is left out). It stops once the target is reached and ``--after-target`` more merges
  came, or after ``--async-limit-s``.

**Pacing.** Training this model takes a few tens of milliseconds, so device speed is emulated: each client step
(read head, pull, train) is padded with sleep until ``--step-s`` seconds have passed since it began, then the
contribution is sent; the last node is the straggler, ``--straggler`` (5) times slower. This is what a 5x slower
device does to the schedule, on one machine whose real CPU time the daemons share.

**Time to target.** A monitor in the main thread polls the first node's head of main every 0.1 s and evaluates
every new merge on x_test (walking back along first parents, so no merge is skipped); a merge's time is when the
first node had it, in seconds since the run's clients started. The target is ``--target-fraction`` (0.95) of the
centralized accuracy, the same for both modes; time to target is the first merge at or above it (null if none).

Last line of stdout: one JSON object with ``flair_accuracy``, ``centralized_accuracy``, ``flower_fedavg_accuracy``,
``async_time_to_target_s``, ``sync_time_to_target_s``, the ratios, the goals, the curves and the settings.

    .venv/bin/python bench/fl_accuracy.py            # 5 nodes, 10 rounds: 3 to 6 minutes on 2 cores
    .venv/bin/python bench/fl_accuracy.py --quick    # 3 nodes, 2 rounds, short steps: a smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flair_node.api.client import ApiClient
from flair_node.sdk import Repo
from flair_node.tensors.safetensors_io import StateDict
from flair_node.testing.cluster import Cluster, ClusterNode, running_cluster
from flair_node.testing.models import accuracy, load_digits_split, make_mlp, partition, train_local

LR, BATCH, SKEW, DATA_SEED = 0.01, 32, 0.5, 0
API_TIMEOUT = 60.0  # s for any one API call from a client thread: a stuck daemon fails the bench, never hangs it
POLL_S = 0.1
JOIN_S = 30.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def step_seed(step: int, client: int) -> int:
    return 100 * step + client  # as tests/integration/test_round_training.py


@dataclass(frozen=True)
class Task:
    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    slices: list[tuple[torch.Tensor, torch.Tensor]]


def initial_state() -> StateDict:
    return {k: v.detach().clone() for k, v in make_mlp(seed=0).state_dict().items()}


def trained_from(state: StateDict, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> StateDict:
    model = make_mlp(seed=0)
    model.load_state_dict(state)
    train_local(model, x, y, epochs=epochs, lr=LR, batch_size=BATCH, seed=seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def evaluate(state: StateDict, task: Task) -> float:
    model = make_mlp(seed=0)
    model.load_state_dict(state)
    return accuracy(model, task.x_test, task.y_test)


# -- baselines, in this process ------------------------------------------------------------------------------


def centralized(task: Task, rounds: int, epochs: int) -> list[float]:
    """Test accuracy after each chunk of ``epochs`` epochs on all of x_train."""
    state, curve = initial_state(), []
    for n in range(rounds):
        state = trained_from(state, task.x, task.y, epochs, step_seed(n, 0))
        curve.append(evaluate(state, task))
    return curve


def flower_fedavg(task: Task, rounds: int, epochs: int) -> list[float]:
    """Test accuracy after each round of Flower's FedAvg over the same clients as Flair's sync run."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg

    # No metrics to aggregate: an empty aggregation keeps FedAvg from warning about it; weights are untouched.
    strategy = FedAvg(fit_metrics_aggregation_fn=lambda metrics: {})
    state, curve = initial_state(), []
    names = list(state)
    for n in range(rounds):
        results = []
        for i, (xs, ys) in enumerate(task.slices):
            local = trained_from(state, xs, ys, epochs, step_seed(n, i))
            fit = FitRes(status=Status(code=Code.OK, message=""), num_examples=len(ys), metrics={},
                         parameters=ndarrays_to_parameters([local[k].numpy() for k in names]))
            results.append((None, fit))  # FedAvg reads only the FitRes, never the client proxy
        parameters, _ = strategy.aggregate_fit(n + 1, results, [])
        if parameters is None:
            raise SystemExit(f"bench/fl_accuracy.py: Flower's FedAvg aggregated nothing in round {n + 1}")
        arrays = parameters_to_ndarrays(parameters)
        state = {k: torch.from_numpy(np.array(a, copy=True)) for k, a in zip(names, arrays, strict=True)}
        curve.append(evaluate(state, task))
    return curve


# -- Flair on real daemons -----------------------------------------------------------------------------------


@dataclass
class Clients:
    """The client threads of one run: a stop flag, the first error, and every contribution sent."""

    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)
    sent: dict[str, tuple[str, float]] = field(default_factory=dict)  # contribution id -> (node, seconds)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, name: str, body: Callable[[], None]) -> None:
        def run() -> None:
            try:
                body()
            except Exception:  # reported by the monitor, which fails the bench with it
                with self.lock:
                    self.errors.append(f"client {name}: {traceback.format_exc()}")
                self.stop.set()

        thread = threading.Thread(target=run, name=f"client-{name}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def check(self) -> None:
        with self.lock:
            if self.errors:
                raise SystemExit(f"bench/fl_accuracy.py: a client thread failed:\n{self.errors[0]}")

    def finish(self) -> None:
        self.stop.set()
        deadline = time.monotonic() + JOIN_S
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self.threads if t.is_alive()]
        if stuck:
            raise SystemExit(f"bench/fl_accuracy.py: {', '.join(stuck)} still running {JOIN_S:g} s after the stop")
        self.check()


@dataclass(frozen=True)
class Client:
    """One member's training loop, talking to its own node's API."""

    index: int
    node: ClusterNode
    repo: Repo
    data: tuple[torch.Tensor, torch.Tensor]
    epochs: int
    step_s: float

    @classmethod
    def on(cls, node: ClusterNode, repo_id: str, index: int, data: tuple[torch.Tensor, torch.Tensor], epochs: int,
           step_s: float) -> Client:
        home = node.daemon.home
        return cls(index, node, Repo(ApiClient.from_home(home, timeout=API_TIMEOUT), home, repo_id), data, epochs,
                   step_s)

    def head(self) -> str:
        return self.repo.branches()["main"]

    def step(self, n: int, clients: Clients, t0: float) -> str | None:
        """Read the head, pull it, train, pad to ``step_s``, contribute; the head trained from, None if stopped."""
        began = time.monotonic()
        head = self.head()
        xs, ys = self.data
        trained = trained_from(self.repo.pull(head), xs, ys, self.epochs, step_seed(n, self.index))
        if clients.stop.wait(max(0.0, began + self.step_s - time.monotonic())):
            return None
        commit = self.repo.contribute(trained, examples=len(ys), base=head)
        with clients.lock:
            clients.sent[commit] = (self.node.name, time.monotonic() - t0)
        return head

    def sync_loop(self, rounds: int, clients: Clients, t0: float, round_timeout: float) -> None:
        for n in range(rounds):
            head = self.step(n, clients, t0)
            if head is None:
                return
            deadline = time.monotonic() + round_timeout
            while self.head() == head:  # wait for the merge of this round
                if clients.stop.wait(POLL_S):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.node.name}: round {n + 1} not merged within {round_timeout:g} s of "
                                       "its contribution")

    def async_loop(self, clients: Clients, t0: float) -> None:
        n = 0
        while not clients.stop.is_set():
            self.step(n, clients, t0)
            n += 1


def monitor(net: Cluster, repo_id: str, task: Task, clients: Clients, t0: float, label: str, limit_s: float,
            done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """Evaluate each merge of main as the first node gets it, until ``done(points)`` or ``limit_s`` (then stop)."""
    owner = net.owner
    handle = Repo(ApiClient.from_home(owner.daemon.home, timeout=API_TIMEOUT), owner.daemon.home, repo_id)
    last = handle.branches()["main"]
    seen, points = {last}, []
    names = {node.key: node.name for node in net.nodes}
    while not done(points):
        clients.check()
        if time.monotonic() - t0 > limit_s:
            log(f"{label}: stopped at the time limit of {limit_s:g} s")
            break
        head = handle.branches()["main"]
        if head == last:
            time.sleep(POLL_S)
            continue
        at = time.monotonic() - t0
        new, cursor = [], head
        while cursor not in seen:  # back along first parents to the last merge evaluated
            commit = handle.client.call("repo.show", repo=repo_id, commit=cursor)
            new.append(commit)
            cursor = commit["parents"][0]
        for commit in reversed(new):
            seen.add(commit["id"])
            with clients.lock:
                merged = [[clients.sent.get(c, ("?", 0.0))[0], staleness]
                          for c, _examples, staleness, _weight in commit["meta"]["contributions"]]
            point = {"t_s": round(at, 2), "accuracy": evaluate(handle.pull(commit["id"]), task),
                     "round": commit["meta"]["round"], "by": names.get(commit["author"], "?"), "merged": merged}
            points.append(point)
            log(f"{label} round {point['round']}: acc {100 * point['accuracy']:.1f} % at {at:.1f} s, merged by "
                f"{point['by']} ({', '.join(f'{who} τ={tau}' for who, tau in merged)})")
        last = head
    return points


def run_mode(net: Cluster, task: Task, args: argparse.Namespace, mode: str, target: float) -> dict[str, Any]:
    """One run (``sync`` or ``async``) on a fresh repository of ``net``; its figures."""
    nodes = net.nodes[:args.nodes]
    if mode == "sync":
        policy = {"buffer": len(nodes), "deadline_s": 3600, "timeout_s": 60}
    else:
        policy = {"buffer": args.buffer, "deadline_s": args.deadline_s, "alpha": "0.5",
                  "max_staleness": args.max_staleness, "timeout_s": 10}
    repo_id = net.create_repo(f"digits-{mode}", initial_state(), policy=policy)
    clients = Clients()
    paces = [args.step_s * (args.straggler if i == len(nodes) - 1 else 1.0) for i in range(len(nodes))]
    members = [Client.on(node, repo_id, i, task.slices[i], args.epochs, pace)
               for i, (node, pace) in enumerate(zip(nodes, paces, strict=True))]
    log(f"{mode}: {len(nodes)} clients, steps of {args.step_s:g} s ({nodes[-1].name}: {paces[-1]:g} s), policy "
        f"{json.dumps(policy)}")
    t0 = time.monotonic()
    if mode == "sync":
        round_timeout = max(paces) + 120.0
        for member in members:
            clients.start(member.node.name, lambda m=member: m.sync_loop(args.rounds, clients, t0, round_timeout))
        limit = args.rounds * round_timeout

        def done(points: list[dict[str, Any]]) -> bool:
            return bool(points) and points[-1]["round"] >= args.rounds
    else:
        for member in members:
            clients.start(member.node.name, lambda m=member: m.async_loop(clients, t0))
        limit = args.async_limit_s

        def done(points: list[dict[str, Any]]) -> bool:
            reached = next((i for i, p in enumerate(points) if p["accuracy"] >= target), None)
            return reached is not None and len(points) - 1 - reached >= args.after_target
    try:
        points = monitor(net, repo_id, task, clients, t0, mode, limit, done)
    finally:
        clients.finish()
    wall = time.monotonic() - t0
    reached = next((p for p in points if p["accuracy"] >= target), None)
    if reached is None:
        log(f"{mode}: the target accuracy {100 * target:.1f} % was never reached (best "
            f"{100 * max((p['accuracy'] for p in points), default=0.0):.1f} % in {len(points)} merges, {wall:.0f} s)")
    straggler = nodes[-1].name
    stale = [tau for p in points for who, tau in p["merged"] if who == straggler]
    after = points[points.index(reached):] if reached else []
    return {"time_to_target_s": reached["t_s"] if reached else None,
            "lowest_accuracy_after_target": min((p["accuracy"] for p in after), default=None),
            "final_accuracy": points[-1]["accuracy"] if points else None,
            "best_accuracy": max((p["accuracy"] for p in points), default=None),
            "merges": len(points), "wall_s": round(wall, 1), "contributions_sent": len(clients.sent),
            "straggler_sent": sum(1 for who, _ in clients.sent.values() if who == straggler),
            "straggler_merged": len(stale), "straggler_staleness": stale, "policy": policy, "curve": points}


# -- the report ------------------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None, digits: int = 4) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10, help="sync rounds (and Flower rounds, centralized chunks)")
    parser.add_argument("--epochs", type=int, default=3, help="local epochs per client step")
    parser.add_argument("--step-s", type=float, default=2.0, help="seconds a fast client's step takes at least")
    parser.add_argument("--straggler", type=float, default=5.0, help="how many times slower the last node is")
    parser.add_argument("--buffer", type=int, default=3, help="async: K, contributions per merge")
    parser.add_argument("--max-staleness", type=int, default=10,
                        help="async: merges behind the head a contribution may be (the straggler's is about "
                             "straggler x (nodes - 1) / buffer)")
    parser.add_argument("--deadline-s", type=int, default=5, help="async: merge fewer than K after this long")
    parser.add_argument("--target-fraction", type=float, default=0.95, help="target = this x centralized accuracy")
    parser.add_argument("--after-target", type=int, default=10,
                        help="async: merges to watch after the target (does it hold?)")
    parser.add_argument("--async-limit-s", type=float, default=180.0)
    parser.add_argument("--quick", action="store_true",
                        help="3 nodes, 2 rounds, 0.3 s steps, K = 2, at most 20 s of async")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.rounds, args.step_s, args.buffer, args.async_limit_s = 3, 2, 0.3, 2, 20.0
    if args.nodes < 2 or args.rounds < 1 or args.epochs < 1 or not 1 <= args.buffer < args.nodes or args.step_s < 0:
        parser.error("need --nodes >= 2, --rounds >= 1, --epochs >= 1, 1 <= --buffer < --nodes (K = nodes would "
                     "wait for the straggler: that is the sync run) and --step-s >= 0")
    torch.set_num_threads(1)  # 2 cores, shared with the daemons
    started = time.monotonic()

    x, y, x_test, y_test = load_digits_split(seed=DATA_SEED)
    task = Task(x, y, x_test, y_test, partition(x, y, args.nodes, seed=DATA_SEED, skew=SKEW))
    log(f"digits: {len(y)} training examples in {args.nodes} non-IID slices of "
        f"{', '.join(str(len(s[1])) for s in task.slices)}; {len(y_test)} test examples")
    central = centralized(task, args.rounds, args.epochs)
    target = args.target_fraction * central[-1]
    log(f"centralized: {100 * central[-1]:.1f} % after {args.rounds} x {args.epochs} epochs; target "
        f"{100 * target:.1f} %")
    flower = flower_fedavg(task, args.rounds, args.epochs)
    log(f"Flower FedAvg: {100 * flower[-1]:.1f} % after {args.rounds} rounds")

    with tempfile.TemporaryDirectory() as tmp:
        names = [f"n{i}" for i in range(args.nodes)]
        with running_cluster(Path(tmp), names, on_start=lambda node: log(f"{node.name} up")) as net:
            sync = run_mode(net, task, args, "sync", target)
            asyn = run_mode(net, task, args, "async", target)

    flair = sync["final_accuracy"]
    if sync["merges"] < args.rounds or sync["curve"][-1]["round"] != args.rounds:
        raise SystemExit(f"bench/fl_accuracy.py: the sync run merged {sync['merges']} rounds, not {args.rounds}")
    sync_t, async_t = sync["time_to_target_s"], asyn["time_to_target_s"]
    report = {
        "flair_accuracy": flair,
        "centralized_accuracy": central[-1],
        "flower_fedavg_accuracy": flower[-1],
        "async_time_to_target_s": async_t,
        "sync_time_to_target_s": sync_t,
        "target_accuracy": round(target, 4),
        "flair_vs_centralized": ratio(flair, central[-1]),
        "flair_minus_flower": round(flair - flower[-1], 4),
        "async_speedup": ratio(sync_t, async_t, 2),
        "goals": {"flair_at_least_98pct_of_centralized": flair >= 0.98 * central[-1],
                  "flair_not_below_flower": flair >= flower[-1],
                  "async_reaches_target_sooner": None if async_t is None and sync_t is None
                  else async_t is not None and (sync_t is None or async_t < sync_t)},
        "async_final_accuracy": asyn["final_accuracy"],  # async accuracy can fall again after a crossing
        "async_lowest_after_target": asyn["lowest_accuracy_after_target"],
        "flower_mode": "FedAvg.aggregate_fit in-process (Flower's strategy code driven by this bench, not flwr run)",
        "settings": {"nodes": args.nodes, "rounds": args.rounds, "epochs_per_step": args.epochs, "lr": LR,
                     "batch_size": BATCH, "skew": SKEW, "model": "64-32-10 MLP", "optimizer": "Adam",
                     "step_s": args.step_s, "straggler_factor": args.straggler, "straggler": f"n{args.nodes - 1}",
                     "pacing": "each client step (read head, pull, train) padded with sleep to step_s (the straggler: "
                               "straggler_factor x step_s), then its contribution is sent",
                     "target_fraction": args.target_fraction, "async_buffer": args.buffer, "async_alpha": "0.5",
                     "async_max_staleness": args.max_staleness, "async_deadline_s": args.deadline_s,
                     "async_after_target": args.after_target, "async_limit_s": args.async_limit_s,
                     "train_slices": [len(s[1]) for s in task.slices], "test_examples": len(y_test),
                     "torch_threads": torch.get_num_threads()},
        "sync": {k: v for k, v in sync.items() if k not in ("time_to_target_s", "final_accuracy")},
        "async": {k: v for k, v in asyn.items()
                  if k not in ("time_to_target_s", "final_accuracy", "lowest_accuracy_after_target")},
        "centralized_curve": central,
        "flower_curve": flower,
        "wall_s": round(time.monotonic() - started, 1),
    }
    log(f"Flair sync {100 * flair:.1f} % (x{report['flair_vs_centralized']} of centralized "
        f"{100 * central[-1]:.1f} %, Flower {100 * flower[-1]:.1f} %); time to {100 * target:.1f} %: sync "
        f"{sync_t} s, async {async_t} s")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
