#!/usr/bin/env python
"""Plain and secure rounds between real flair-node processes on 127.0.0.1, in the same run (issue 18).

For each member count, starts that many daemons (each its own home, each dialing every earlier one), makes node 0
the owner of two repositories of the same model (``--parameters`` float32 values), one with plain rounds and one
with secure rounds (``privacy = secure``), every other node a maintainer that cloned both, and the policy's
buffer the member count. Then, ``--rounds`` times for each repository, every member contributes weights trained
from the head (the base plus noise) through its API, and the bench waits until every node follows the merge.

- **time**: from the last contribution's API call returning to every node following the merge (seconds);
- **bytes**: TCP bytes every daemon sent during the round (``ss -ti`` counters of the daemons' sockets, before the
  first contribution and after every node followed), divided by the member count.

The daemons catch up every ``--sync-interval`` seconds, by default the daemon's own default (30 s): the
catch-up passes of a test cluster (every 2 s) cost 10 idle daemons about one of the two cores, which no
deployment pays and which weighed on both kinds of round. Before each round the bench waits (up to a minute)
until the daemons are back to the CPU rate they use idle (measured once the repositories are made): a round's
trailing work otherwise lands in the next round's time, and the rounds alternate between the two repositories.

Each figure is the median over the rounds. Last line of stdout, one JSON object: per member count, ``plain_round_s``,
``secure_round_s``, ``secure_time_ratio``, ``plain_bytes_per_member``, ``secure_bytes_per_member``,
``secure_bytes_ratio``; at the top level the same keys for the largest member count (the issue's goal: at 10
members a secure round takes at most 1.5x the time and 1.3x the bytes of a plain one).

    .venv/bin/python bench/secure_rounds.py                       # 5 and 10 members, 1M parameters, 2 rounds
    .venv/bin/python bench/secure_rounds.py --quick               # 3 members, 100k parameters, 1 round
    .venv/bin/python bench/secure_rounds.py --sync-interval 2     # catching up as often as the tests' clusters

**Flower's own SecAgg+** runs in the same run, before the daemons start (``flower``): Flower's ``DefaultWorkflow``
with ``FedAvg``, once as is and once with ``SecAggPlusWorkflow`` on the server and ``secaggplus_mod`` on each
``ClientApp``, for the same member count, model and example counts. Flower's simulation engine needs Ray and a
deployment needs a SuperLink and SuperNodes; instead an in-process ``Grid`` (``LocalGrid``) hands each message,
serialized to Flower's protobuf and back, to the destination node's ``ClientApp`` with that node's own
``Context``. So Flower's figures are its protocol's computation and message sizes with no network: **time** is
the fit round's wall time, **bytes** what each client sent (protobuf sizes), per client. Under ``"flower"`` in
the JSON: the same keys as Flair's, and ``secure_max_error``, the largest difference between the SecAgg+ and the
plain aggregate (SecAgg+ quantizes; Flair's secure merge is the plain one bit for bit). ``--no-flower`` skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from flair_node.daemon.config import P2PConfig
from flair_node.tensors.safetensors_io import save_bytes
from flair_node.testing.cluster import Cluster, ClusterNode, running_cluster
from flair_node.testing.daemon import DaemonFailed

_USERS = re.compile(r"pid=(\d+)")
_SENT = re.compile(r"bytes_sent:(\d+)")


def model(parameters: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(parameters - 10, generator=g) * 0.1, "b": torch.randn(10, generator=g)}


def bytes_sent(pids: set[int]) -> int:
    """TCP bytes sent so far on the established sockets of processes ``pids`` (``ss -tinp``)."""
    out = subprocess.run(["ss", "-tinpH", "state", "established"], capture_output=True, text=True, check=True).stdout
    total, owner = 0, None
    for line in out.splitlines():
        users = _USERS.search(line)
        if users:
            owner = int(users.group(1))
        sent = _SENT.search(line)
        if sent and owner in pids:
            total += int(sent.group(1))
            owner = None
    return total


def cpu_seconds(pids: set[int]) -> float:
    """CPU time (user and system) the processes ``pids`` have used so far (``/proc/<pid>/stat``)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15, in clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def idle_rate(pids: set[int], samples: int = 5) -> float:
    """The cores the idle daemons use between them (their catch-up and round-service passes): the median of
    ``samples`` one-second samples."""
    rates = []
    used = cpu_seconds(pids)
    for _ in range(samples):
        time.sleep(1.0)
        now = cpu_seconds(pids)
        rates.append(now - used)
        used = now
    return statistics.median(rates)


def quiet(pids: set[int], idle: float, *, longest: float = 60.0) -> float:
    """Wait until the daemons are back to about their ``idle`` rate over a second (at most ``longest`` seconds):
    what the last round left running (checks of its merge, catch-up) must not land in the next one's time.
    Seconds waited."""
    began = time.monotonic()
    used = cpu_seconds(pids)
    while time.monotonic() - began < longest:
        time.sleep(1.0)
        now = cpu_seconds(pids)
        if now - used < 1.25 * idle + 0.1:
            break
        used = now
    return time.monotonic() - began


def one_round(cluster: Cluster, repo: str, parameters: int, seed: int, idle: float = 0.0) -> tuple[float, int]:
    """Once the daemons are back to their ``idle`` rate, every member contributes; (seconds from the last
    contribution to every node following, bytes sent)."""
    pids = {node.daemon.process.pid for node in cluster.nodes}
    head = cluster.owner.head(repo)
    base = cluster.owner.daemon.home / "tmp" / "base.safetensors"
    cluster.owner.daemon.client.call("repo.checkout", repo=repo, commit=head, output_path=str(base), overwrite=True)
    from flair_node.tensors.safetensors_io import load_bytes

    start_state = load_bytes(base.read_bytes())
    paths = []
    for i, node in enumerate(cluster.nodes):
        g = torch.Generator().manual_seed(seed * 1000 + i)
        trained = {k: v + torch.randn(v.shape, generator=g) * 0.01 for k, v in start_state.items()}
        path = node.daemon.home / "tmp" / f"bench-{seed}-{i}.safetensors"
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.write_bytes(save_bytes(trained))
        paths.append(path)
    waited = quiet(pids, idle)
    if waited > 2:
        print(f"  (waited {waited:.1f} s for the daemons to go quiet)", file=sys.stderr)
    sent_before = bytes_sent(pids)
    for node, path in zip(cluster.nodes, paths, strict=True):
        node.daemon.client.call("repo.contribute", repo=repo, weights_path=str(path), examples=100 + seed)
    last = time.monotonic()
    cluster.wait_for_merge(repo, head, timeout=600)
    took = time.monotonic() - last
    sent = bytes_sent(pids) - sent_before
    for path in paths:
        path.unlink(missing_ok=True)
    return took, sent


# -- Flower's SecAgg+, in one process --------------------------------------------------------------------


def flower(members: int, parameters: int, rounds: int) -> dict[str, Any]:
    """Flower's FedAvg round, plain and with SecAgg+, on ``members`` clients of ``model(parameters)``: medians over
    ``rounds`` (see the module docstring)."""
    import logging

    import numpy as np
    from flwr.supercore.task_identity import TaskIdentity

    logging.getLogger("flwr").setLevel(logging.ERROR)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # what a ServerApp process sets
    base = model(parameters, 0)["w"].numpy()
    times: dict[str, list[float]] = {"plain": [], "secure": []}
    sent: dict[str, list[float]] = {"plain": [], "secure": []}
    results: dict[str, np.ndarray] = {}
    for r in range(rounds):
        for mode in ("plain", "secure"):
            took, per_client, merged = _flower_round(members, base, r + 1, secure=mode == "secure")
            times[mode].append(took)
            sent[mode].append(per_client)
            results[mode] = merged
            print(f"Flower, {members} clients, {mode} round {r + 1}: {took:.2f} s, {per_client / 1e6:.2f} MB sent "
                  "per client", file=sys.stderr)
    return {**summary(members, parameters, rounds, times, sent),
            "secure_max_error": float(np.abs(results["secure"] - results["plain"]).max())}


def summary(members: int, parameters: int, rounds: int, times: dict[str, list[float]],
            sent: dict[str, list[float]]) -> dict[str, Any]:
    """The JSON figures of a run: the medians over its rounds of each mode's time and bytes a member sent, and
    their ratios."""
    plain_s, secure_s = statistics.median(times["plain"]), statistics.median(times["secure"])
    plain_b, secure_b = statistics.median(sent["plain"]), statistics.median(sent["secure"])
    return {"members": members, "parameters": parameters, "rounds": rounds, "plain_round_s": round(plain_s, 3),
            "secure_round_s": round(secure_s, 3), "secure_time_ratio": round(secure_s / plain_s, 3),
            "plain_bytes_per_member": int(plain_b), "secure_bytes_per_member": int(secure_b),
            "secure_bytes_ratio": round(secure_b / plain_b, 3)}


def _flower_round(members: int, base: Any, seed: int, *, secure: bool) -> tuple[float, float, Any]:
    """One Flower fit round; its wall time, the bytes each client sent (mean), and the aggregate."""
    import numpy as np
    from flwr.app import Context, RecordDict
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerConfig
    from flwr.server.compat import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

    class Member(NumPyClient):  # type: ignore[misc]
        def __init__(self, index: int) -> None:
            self.index = index

        def fit(self, parameters: list[Any], config: Any) -> tuple[list[Any], int, dict[str, Any]]:
            noise = torch.randn(base.shape, generator=torch.Generator().manual_seed(seed * 1000 + self.index))
            return [parameters[0] + noise.numpy() * 0.01], 100 + 40 * self.index, {}

    client_app = ClientApp(client_fn=lambda context: Member(context.node_id - FIRST_NODE).to_client(),
                           mods=[secaggplus_mod] if secure else [])
    grid = LocalGrid(client_app, members)
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=members,
                      min_available_clients=members, initial_parameters=ndarrays_to_parameters([base]))
    context = LegacyContext(Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={}),
                            config=ServerConfig(num_rounds=1), strategy=strategy)
    # SecAgg+ wants an odd number of shares (each client's own among them) and more than half to reconstruct
    fit = SecAggPlusWorkflow(num_shares=members if members % 2 else members - 1,
                             reconstruction_threshold=members // 2 + 1) if secure else None
    started = time.perf_counter()
    DefaultWorkflow(fit_workflow=fit)(grid, context)
    took = time.perf_counter() - started
    merged = context.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()[0]
    return took, sum(grid.sent.values()) / members, np.asarray(merged)


FIRST_NODE = 1000  # node ids of Flower's clients: 1000, 1001, ...


class LocalGrid:
    """Flower's ``Grid`` in one process: each message goes to its node's ``ClientApp`` as protobuf bytes and back
    (what a SuperLink and a SuperNode would carry), each node with a ``Context`` of its own across messages."""

    def __init__(self, client_app: Any, members: int) -> None:
        from types import SimpleNamespace

        from flwr.app import Context, RecordDict

        self.client_app = client_app
        self.contexts = {FIRST_NODE + i: Context(run_id=1, node_id=FIRST_NODE + i, node_config={},
                                                 state=RecordDict(), run_config={}) for i in range(members)}
        self.sent = dict.fromkeys(self.contexts, 0)
        self.run = SimpleNamespace(run_id=1)

    def set_run(self, run: Any) -> None:
        self.run = run

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        import uuid

        from flwr.common.serde import message_from_proto, message_to_proto

        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # what a SuperLink sets
            node = message.metadata.dst_node_id
            reply = self.client_app(message_from_proto(message_to_proto(message)), self.contexts[node])
            reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            wire = message_to_proto(reply)
            self.sent[node] += wire.ByteSize()
            replies.append(message_from_proto(wire))
        return replies


# -- Flair's daemons ----------------------------------------------------------------------------------------


def measure(members: int, parameters: int, rounds: int, root: Path, sync_interval: float) -> dict[str, Any]:
    def started(node: ClusterNode) -> None:
        print(f"  node {node.name} up", file=sys.stderr)

    names = [f"n{i}" for i in range(members)]
    figures: dict[str, list[tuple[float, int]]] = {"plain": [], "secure": []}
    try:
        with running_cluster(root / f"m{members}", names, sync_interval=sync_interval, on_start=started) as cluster:
            common = {"buffer": members, "deadline_s": 600, "timeout_s": 120}
            repos = {"plain": cluster.create_repo("plain", model(parameters, 0), policy=common),
                     "secure": cluster.create_repo("secure", model(parameters, 0),
                                                   policy={**common, "privacy": "secure"})}
            idle = idle_rate({node.daemon.process.pid for node in cluster.nodes})
            print(f"  idle daemons use {idle:.2f} cores between them", file=sys.stderr)
            for r in range(rounds):
                for mode in ("plain", "secure"):  # interleaved, so drift in the machine's load hits both
                    took, sent = one_round(cluster, repos[mode], parameters, r + 1, idle)
                    figures[mode].append((took, sent))
                    print(f"{members} members, {mode} round {r + 1}: {took:.2f} s, {sent / members / 1e6:.2f} MB "
                          "sent per member", file=sys.stderr)
    except DaemonFailed as exc:  # a daemon slow to stop once every round was measured: the figures stand
        if len(figures["secure"]) < rounds:
            raise
        print(f"warning: after the rounds, {exc}".splitlines()[0], file=sys.stderr)
    return summary(members, parameters, rounds, {m: [t for t, _ in f] for m, f in figures.items()},
                   {m: [b / members for _, b in f] for m, f in figures.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--parameters", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sync-interval", type=float, default=P2PConfig().sync_interval,
                        help="seconds between catch-up passes (default: the daemon's own default)")
    parser.add_argument("--quick", action="store_true", help="3 members, 100k parameters, 1 round")
    parser.add_argument("--no-flower", action="store_true", help="leave Flower's SecAgg+ out of the run")
    args = parser.parse_args()
    if args.quick:
        args.members, args.parameters, args.rounds = [3], 100_000, 1
    if min(args.members) < 3:
        parser.error("a secure round needs 3 members")
    flowers = {} if args.no_flower else {m: flower(m, args.parameters, args.rounds) for m in args.members}
    with tempfile.TemporaryDirectory(prefix="flair-secure-bench-") as tmp:
        results = [measure(m, args.parameters, args.rounds, Path(tmp), args.sync_interval) for m in args.members]
    largest = results[-1]
    out = {**{k: largest[k] for k in ("plain_round_s", "secure_round_s", "secure_time_ratio", "secure_bytes_ratio",
                                      "members", "parameters")},
           "by_members": {str(r["members"]): r for r in results}}
    if flowers:
        out["flower"] = flowers[largest["members"]]
        out["flower_by_members"] = {str(m): f for m, f in flowers.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
