#!/usr/bin/env python
"""Gossip between real flair-node processes on 127.0.0.1: a burst of announcements from one node, counted at all.

Starts N daemons (each its own home; node i dials ``--links`` random earlier nodes, so messages must be relayed),
makes node 0 the owner of a repository with every other node a contributor that cloned it, then has node 1 move
``--clients`` branches (one per API client, default 1) back and forth between two commits through its API
(``repo.reset``), ``--burst`` moves in all, as fast as it answers: each is a signed branch move, announced on the
repository's topic (packed many to a message when they queue up) and checked by every node. The publisher reports,
through ``node.announced``, when each move was stored and handed to its announcer (queued: the announcer may hold
it up to 50 ms to pack it with others); every other node reports, through ``node.arrivals``, when it took each move
from gossip. One machine, one clock: gossip latency is arrival minus queued time; end-to-end latency is arrival
minus the move's signing time, which adds the publisher's storing it (and the API's answering under load). Catch-up
pulls are held off during the burst, so only gossip counts. Last line of stdout, one JSON object: ``published``,
``delivered_min`` (fewest moves taken by any node), ``p50_ms``, ``p99_ms`` (gossip), ``p50_from_signing_ms``,
``p99_from_signing_ms`` (end to end), and the baseline ``idle_one_ms``: one lone move's gossip latency measured the
same way in the same run.

    .venv/bin/python bench/gossip.py --nodes 10 --burst 1000
    .venv/bin/python bench/gossip.py --nodes 10 --burst 1000 --clients 4   # four API clients at once
    .venv/bin/python bench/gossip.py --nodes 50 --burst 100
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from safetensors.torch import save_file

from flair_node.testing.commit_graph import tiny_state
from flair_node.testing.daemon import ensure_home, running_daemon


def configure(home: Path, bootstrap: list[str]) -> Path:
    ensure_home(home)
    peers = ", ".join(json.dumps(a) for a in bootstrap)
    (home / "config.toml").write_text(f"[p2p]\nbootstrap = [{peers}]\nsync_interval = 3600.0\n\n"
                                      "[log]\nlevel = \"warning\"\n")
    return home


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def wait_until(check, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench/gossip.py: not within {timeout:g} s: {what}")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--links", type=int, default=3, help="earlier nodes each node dials at start")
    parser.add_argument("--clients", type=int, default=1,
                        help="API clients moving branches at once (each its own branch; more load the publisher)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.nodes < 3:
        parser.error("--nodes must be at least 3 (an owner, a publisher, a receiver)")
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root, nodes, addrs = Path(tmp), [], []
        started = time.monotonic()
        for i in range(args.nodes):
            boot = rng.sample(addrs, min(args.links, len(addrs)))
            node = stack.enter_context(running_daemon(configure(root / f"n{i}", boot), timeout=120))
            nodes.append(node)
            addrs.append(node.client.call("node.status")["p2p"]["addrs"][0])
        print(f"{args.nodes} daemons up in {time.monotonic() - started:.1f} s", file=sys.stderr)

        owner, publisher, receivers = nodes[0], nodes[1], nodes[2:]
        save_file(tiny_state(0), str(root / "m.safetensors"))
        save_file(tiny_state(1), str(root / "m1.safetensors"))
        repo = owner.client.call("repo.init", name="bench", model_path=str(root / "m.safetensors"))["repo"]
        for node in nodes[1:]:
            key = node.client.call("node.whoami")["public_key"]
            owner.client.call("repo.invite", repo=repo, member=key, role="contributor")
        for i, node in enumerate(nodes[1:], start=1):
            node.client.call("repo.pull", repo=repo, peer=addrs[rng.randrange(i)])
        topic = f"flair/repo/{repo}"
        wait_until(lambda: all(n.client.call("node.status")["p2p"]["gossip"]["topics"].get(topic, {}).get("peers")
                               for n in nodes), "every node in the repository's gossip mesh", 60)
        time.sleep(3)  # a few heartbeats: meshes settle

        def moves_at(node, since_ms: int, prefix: str) -> list[dict]:
            return [a for a in node.client.call("node.arrivals", since_ms=since_ms)
                    if a["kind"] == "move" and a["branch"].startswith(prefix)]

        def queued(since_ms: int) -> dict[str, int]:
            return {a["id"]: a["queued_ms"] for a in publisher.client.call("node.announced", since_ms=since_ms)}

        since = int(time.time() * 1000)
        publisher.client.call("repo.branch", repo=repo, name="lone")
        wait_until(lambda: all(moves_at(n, since, "lone") for n in receivers), "the lone move everywhere", 60)
        handed = queued(since)
        idle = [a["arrived_ms"] - handed[a["id"]] for n in receivers for a in moves_at(n, since, "lone")]

        since = int(time.time() * 1000)
        a = publisher.client.call("repo.log", repo=repo, limit=1)["commits"][0]["id"]
        publisher.client.call("repo.branch", repo=repo, name="pub")
        b = publisher.client.call("repo.commit", repo=repo, weights_path=str(root / "m1.safetensors"),
                                  message="a second commit", branch="pub")["id"]
        for k in range(args.clients):
            publisher.client.call("repo.branch", repo=repo, name=f"burst/{k}")
        expected = {"pub": b, **{f"burst/{k}": a for k in range(args.clients)}}
        wait_until(lambda: all(expected.items() <= n.client.call("repo.branch", repo=repo)["branches"].items()
                               for n in receivers), "the second commit and the burst branches everywhere", 60)
        since = int(time.time() * 1000)
        t0 = time.monotonic()

        def move(k: int, count: int) -> None:  # each client swings its own branch between two commits
            for i in range(count):
                publisher.client.call("repo.reset", repo=repo, branch=f"burst/{k}", commit=(b, a)[i % 2])

        shares = [args.burst // args.clients + (k < args.burst % args.clients) for k in range(args.clients)]
        threads = [threading.Thread(target=move, args=(k, shares[k])) for k in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        publish_s = time.monotonic() - t0
        with contextlib.suppress(SystemExit):
            wait_until(lambda: all(len(moves_at(n, since, "burst/")) >= args.burst for n in receivers),
                       "every move everywhere", 30 + args.burst * 0.05)
        got = {i: moves_at(n, since, "burst/") for i, n in enumerate(receivers)}
        handed = queued(since)
        latencies = [a["arrived_ms"] - handed[a["id"]] for moves in got.values() for a in moves]
        from_signing = [a["arrived_ms"] - a["signed_ms"] for moves in got.values() for a in moves]
        rss = [rss_mb(n.pid) for n in nodes]
        wires = [n.client.call("node.status")["p2p"]["gossip"] for n in receivers]
        report = {
            "nodes": args.nodes, "burst": args.burst, "published": args.burst,
            "delivered_min": min(len({a["id"] for a in moves}) for moves in got.values()),
            "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
            "p99_ms": round(percentile(latencies, 0.99), 1) if latencies else None,
            "max_ms": max(latencies) if latencies else None,
            "p50_from_signing_ms": round(statistics.median(from_signing), 1) if from_signing else None,
            "p99_from_signing_ms": round(percentile(from_signing, 0.99), 1) if from_signing else None,
            "publish_s": round(publish_s, 2), "idle_one_ms": round(statistics.median(idle), 1),
            "p99_vs_idle": round(percentile(latencies, 0.99) / max(statistics.median(idle), 1), 1)
            if latencies else None,
            "rss_mb_mean": round(statistics.mean(rss), 1), "rss_mb_max": round(max(rss), 1),
            # per receiving node, over the whole run: frames read, and copies of messages it already had
            "frames_in_mean": round(statistics.mean(w["frames_in"] for w in wires)),
            "duplicates_mean": round(statistics.mean(w["duplicates"] for w in wires)),
            "messages_mean": round(statistics.mean(w["delivered"] for w in wires)),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
