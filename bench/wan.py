#!/usr/bin/env python
"""Flair across NATs on the emulated internet (``flair_node.testing.wan``), next to the same work on loopback.

The testbed: a public node (bootstrap, DHT server, relay) and ``--sites`` sites behind NAT (routers that drop
unsolicited SYNs, as home NATs do, or with ``--reject`` refuse them), each link shaped to ``--mbit`` in each
direction, ``--per-site`` daemons per site listening on fixed ports. Every daemon knows only the public node.

- ``clone_by_id_s``: the owner (site 1) makes a repository of ``--parameters`` float32 values and invites every
  other node; each clones it with no address (the DHT, then a relayed dial). The median over the clones.
- ``pairs_connected_share``: for every pair of nodes in different sites, whether one reaches the other at the
  address it publishes (a pull from it, through the relay when it is behind NAT), as a share of the pairs.
- ``direct_share``: once every pair has had ``--settle`` seconds for hole punching, the share of those pairs whose
  connection is direct (hole-punched) rather than relayed only.
- ``round_s``: a round where every node contributes (the policy's buffer is the node count), from the first
  contribution's call to every node following the merge; ``round_loopback_s``: the same round, same node count and
  model, with every daemon on 127.0.0.1 (started after the testbed is gone); ``round_link_s``: the time the links
  impose on it, at the very least: the contributions from other sites cross into the aggregator's site, and the
  merge crosses out to the nodes of the other sites, one after the other on its link; ``round_goal_s`` is
  1.5 x ``round_loopback_s`` + ``round_link_s`` (the issue's goal), ``round_ratio`` = round_s / round_goal_s.
- ``link_utilization``: a node in another site clones a repository whose first commit holds ``--transfer-mb`` MB
  of weights from its owner (Bitswap over whatever connection they have, every block re-hashed and decrypted), as
  a share of the link's capacity; ``tcp_utilization``: a plain TCP transfer of the same size from the owner's site
  to the public node, in the same run (the ceiling of a link as shaped: sites cannot dial each other).

Last line of stdout: one JSON object with those keys and the run's parameters.

    .venv/bin/python bench/wan.py                 # 3 sites x 2 nodes, 20 Mbit/s, 100 MB transfer
    .venv/bin/python bench/wan.py --quick         # 2 sites x 1 node, 8 MB transfer: a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from flair_node.testing import wan
from flair_node.testing.cluster import address, configure, wait_until
from flair_node.testing.cluster import public_key as key
from flair_node.testing.daemon import DaemonProcess, running_daemon

BASE_PORT = 4001
TCP_SINK = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); got = 0; start = None
while True:
    data = c.recv(1 << 20)
    if not data: break
    start = start or time.monotonic(); got += len(data)
print(got, time.monotonic() - start, flush=True)
"""
TCP_SOURCE = "import socket, sys; c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10); " \
             "c.settimeout(600); c.sendall(b'x' * int(sys.argv[3])); c.close()"


def weights(folder: Path, name: str, parameters: int, seed: int) -> str:
    path = folder / f"{name}.safetensors"
    save_file({"w": torch.randn(parameters, generator=torch.Generator().manual_seed(seed))}, str(path))
    return str(path)


def head(node: DaemonProcess, repo: str) -> str | None:
    return node.client.call("repo.branch", repo=repo)["branches"].get("main")


def peer_of(node: DaemonProcess) -> str:
    return address(node).rsplit("/p2p/", 1)[1]


def kinds(node: DaemonProcess, other: DaemonProcess) -> set[str]:
    peer = peer_of(other)
    return {c["kind"] for p in node.client.call("node.status")["p2p"]["peers"] if p["peer"] == peer
            for c in p["connections"]}


def timed_round(nodes: list[DaemonProcess], repo: str, folder: Path, parameters: int, seed: int) -> float:
    """Every node contributes; seconds from the first call to every node following the merge."""
    start = head(nodes[0], repo)
    began = time.monotonic()
    for i, node in enumerate(nodes):
        node.client.call("repo.contribute", repo=repo, examples=100,
                         weights_path=weights(folder, f"c{seed}-{i}", parameters, seed + i))
    wait_until(lambda: len({head(n, repo) for n in nodes}) == 1 and head(nodes[0], repo) != start,
               "the round merged and followed everywhere", 600, every=0.1)
    return time.monotonic() - began


def team(nodes: list[DaemonProcess], folder: Path, parameters: int, buffer: int, *,
         by_id: bool) -> tuple[str, list[float]]:
    """A repository on ``nodes[0]``, every other node a maintainer that cloned it (by id, or from the owner's
    address), the policy's buffer ``buffer`` in force everywhere; and how long each clone took."""
    owner = nodes[0]
    repo = owner.client.call("repo.init", name="bench", model_path=weights(folder, "init", parameters, 0))["repo"]
    for node in nodes[1:]:
        owner.client.call("repo.invite", repo=repo, member=key(node), role="maintainer")
    clones = []
    for node in nodes[1:]:
        began = time.monotonic()
        node.client.call("repo.pull", repo=repo, **({} if by_id else {"peer": address(owner)}))
        clones.append(time.monotonic() - began)
    owner.client.call("repo.policy", repo=repo, buffer=buffer, deadline_s=600, timeout_s=60)
    wait_until(lambda: all(n.client.call("repo.policy", repo=repo)["buffer"] == buffer for n in nodes),
               "the policy on every node", 60)
    return repo, clones


def payload_bytes(node: DaemonProcess, repo: str, commit: str) -> int:
    return int(node.client.call("repo.show", repo=repo, commit=commit)["payload"]["size"])


def on_the_internet(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    with wan.Testbed(sites_count=args.sites, rate_mbit=args.mbit, unsolicited="reject" if args.reject else "drop",
                     prefix=f"wb{int(time.time()) % 10_000}") as net, contextlib.ExitStack() as stack:
        hub = stack.enter_context(running_daemon(
            configure(folder / "hub", listen=f"/ip4/{net.public_address}/tcp/{BASE_PORT}", relay_service=True,
                      dht="server", sync_interval=args.sync_interval), namespace=net.public))
        nodes, site_of = [], []
        for site in net.sites:
            for k in range(args.per_site):
                home = configure(folder / f"s{site.index}n{k}", [address(hub)], sync_interval=args.sync_interval,
                                 listen=f"/ip4/{site.address}/tcp/{BASE_PORT + k}")
                nodes.append(stack.enter_context(running_daemon(home, namespace=site.host)))
                site_of.append(site.index)
        for node in nodes:
            wait_until(lambda n=node: n.client.call("node.status")["p2p"]["reachability"]["reserved"],
                       "a relay slot for every node", 60)
        print(f"{len(nodes)} nodes in {args.sites} sites behind NAT, each holding a relay slot", file=sys.stderr)

        repo, clones = team(nodes, folder, args.parameters, len(nodes), by_id=True)
        print(f"clones by id: {', '.join(f'{c:.2f}' for c in clones)} s", file=sys.stderr)

        pairs = [(i, j) for i in range(len(nodes)) for j in range(i + 1, len(nodes)) if site_of[i] != site_of[j]]
        connected = 0
        for i, j in pairs:  # i reaches j at the address j publishes (relayed: j is behind NAT)
            published = nodes[j].client.call("node.status")["p2p"]["reachability"]["addresses"]
            try:
                nodes[i].client.call("repo.pull", repo=repo, peer=published[0])
                connected += 1
            except Exception as exc:  # a pair that cannot connect is what this measures
                print(f"pair {i}-{j}: {exc}", file=sys.stderr)
        time.sleep(args.settle)
        direct = sum(bool(kinds(nodes[i], nodes[j]) & {"direct", "hole-punched"}) for i, j in pairs)
        print(f"pairs: {connected}/{len(pairs)} connected, {direct} direct", file=sys.stderr)

        round_s = timed_round(nodes, repo, folder, args.parameters, 100)
        merged = head(nodes[0], repo)
        shown = nodes[0].client.call("repo.show", repo=repo, commit=merged)
        contribution = max(payload_bytes(nodes[0], repo, c) for c in shown["parents"][1:])
        aggregator = next(i for i, n in enumerate(nodes) if key(n) == shown["author"])
        outside = sum(site_of[i] != site_of[aggregator] for i in range(len(nodes)))
        link_bits_s = args.mbit * 1e6
        round_link_s = 8 * (outside * contribution + outside * payload_bytes(nodes[0], repo, merged)) / link_bits_s
        print(f"round over the internet: {round_s:.1f} s (links impose at least {round_link_s:.1f} s)", file=sys.stderr)

        # a large repository, cloned by a node of another site from the owner
        source, sink = nodes[0], next(n for i, n in enumerate(nodes) if site_of[i] != site_of[0])
        size = args.transfer_mb * 1_000_000
        large = source.client.call("repo.init", name="large",
                                   model_path=weights(folder, "large", size // 4, 7))["repo"]
        source.client.call("repo.invite", repo=large, member=key(sink), role="reader")
        moved = payload_bytes(source, large, head(source, large) or "")
        began = time.monotonic()
        sink.client.call("repo.pull", repo=large,
                         peer=source.client.call("node.status")["p2p"]["reachability"]["addresses"][0])
        pulled_s = time.monotonic() - began
        link_utilization = 8 * moved / pulled_s / link_bits_s
        how = kinds(sink, source)
        print(f"{moved / 1e6:.0f} MB pulled in {pulled_s:.1f} s over {sorted(how)}: {link_utilization:.0%} of the "
              "link", file=sys.stderr)

        # sites cannot dial each other, so plain TCP's ceiling is measured from the source's site to the public node
        ceiling = tcp_ceiling(net, net.sites[0], size)
        return {"clone_by_id_s": round(statistics.median(clones), 3),
                "pairs_connected_share": round(connected / len(pairs), 3),
                "direct_share": round(direct / len(pairs), 3),
                "round_s": round(round_s, 2), "round_link_s": round(round_link_s, 2),
                "link_utilization": round(link_utilization, 3), "tcp_utilization": round(ceiling, 3),
                "transfer_mb": round(moved / 1e6, 1), "transfer_connection": sorted(how)}


def tcp_ceiling(net: wan.Testbed, site: wan.Site, size: int) -> float:
    """A plain TCP transfer of ``size`` bytes from ``site`` to the public segment, as a share of the link."""
    server = net.start(net.public, [sys.executable, "-c", TCP_SINK, net.public_address, "5999"],
                       stdout=-1, stderr=-1)
    assert server.stdout is not None
    server.stdout.readline()
    net.run(site.host, [sys.executable, "-c", TCP_SOURCE, net.public_address, "5999", str(size)], timeout=600)
    got, seconds = server.communicate(timeout=60)[0].split()
    return 8 * int(got) / float(seconds) / (net.rate_mbit * 1e6)


def on_loopback(args: argparse.Namespace, folder: Path, count: int) -> float:
    """The same round with ``count`` daemons on 127.0.0.1, each dialing the first."""
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(running_daemon(configure(folder / "l0", sync_interval=args.sync_interval)))
        nodes = [first] + [stack.enter_context(running_daemon(
            configure(folder / f"l{i}", [address(first)], sync_interval=args.sync_interval))) for i in range(1, count)]
        repo, _ = team(nodes, folder, args.parameters, count, by_id=False)
        return timed_round(nodes, repo, folder, args.parameters, 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--per-site", type=int, default=2)
    parser.add_argument("--mbit", type=float, default=20.0, help="each site's link, each direction")
    parser.add_argument("--parameters", type=int, default=262_144, help="the round's model (float32 values)")
    parser.add_argument("--transfer-mb", type=int, default=100)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds given to hole punching")
    parser.add_argument("--sync-interval", type=float, default=5.0)
    parser.add_argument("--reject", action="store_true", help="routers refuse unsolicited SYNs (no hole punching)")
    parser.add_argument("--quick", action="store_true", help="2 sites x 1 node, 8 MB transfer, 65k parameters")
    args = parser.parse_args()
    if args.quick:
        args.sites, args.per_site, args.transfer_mb, args.parameters, args.settle = 2, 1, 8, 65_536, 15.0
    why = wan.unavailable()
    if why:
        sys.exit(f"bench/wan.py needs the emulated internet: {why}")
    with tempfile.TemporaryDirectory(prefix="flair-wan-") as tmp:
        folder = Path(tmp)
        report = on_the_internet(args, folder / "wan")
        count = args.sites * args.per_site
        report["round_loopback_s"] = round(on_loopback(args, folder / "loopback", count), 2)
    report["round_goal_s"] = round(1.5 * report["round_loopback_s"] + report["round_link_s"], 2)
    report["round_ratio"] = round(report["round_s"] / report["round_goal_s"], 3)
    report.update(sites=args.sites, nodes=args.sites * args.per_site, mbit=args.mbit, parameters=args.parameters,
                  unsolicited="reject" if args.reject else "drop")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
