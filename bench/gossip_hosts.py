#!/usr/bin/env python
"""Gossip a burst between N libp2p hosts in ONE process, on 127.0.0.1: Flair's GossipSub next to py-libp2p's.

For each router in turn (Flair's ``GossipSub``, then py-libp2p 0.8.1's behind ``testing.pylibp2p_gossip``, the
baseline), N hosts, all connected to each other, join one topic; once every mesh is full, host 0 publishes M
messages as fast as ``publish`` lets it (back-pressure included). Each message carries its index; its latency
at a node is the time from just before its ``publish`` call to its arrival in that node's ``messages`` channel
(``time.perf_counter``, same process). All hosts share one Python thread, so the figures are each router's CPU
cost per message, not a network's. Before the burst, ``--probes`` messages are sent one at a time, each once
the previous one reached every node: ``idle_p50_ms`` is the latency of a lone message.

The last line of stdout is one JSON object: ``flair`` and ``py_libp2p``, each with ``published``,
``delivered_min`` (fewest messages any other node got), ``p50_ms`` and ``p99_ms`` over every (message,
receiving node), ``burst_s`` (first publish to last arrival), ``msgs_per_s`` and ``idle_p50_ms``; and
``speedup``: Flair's msgs_per_s over py-libp2p's.

    .venv/bin/python bench/gossip_hosts.py                          # 5 hosts, 1000 messages of 200 bytes
    .venv/bin/python bench/gossip_hosts.py --nodes 3 --messages 100  # a quick run
"""

from __future__ import annotations

import argparse
import json
import struct
import time
from contextlib import AsyncExitStack
from typing import Any

import trio

from flair_node.core.identity import Identity
from flair_node.network.gossip import Gossip
from flair_node.network.gossipsub import DEGREE_LOW, GossipSub
from flair_node.network.host import apply_process_defaults, connect, full_addrs, running_host
from flair_node.testing.pylibp2p_gossip import Libp2pGossip

TOPIC = "flair/bench"


def accept(forwarder: str, data: bytes) -> bool:
    return True


def percentile(sorted_values: list[float], q: float) -> float | None:
    return round(1000 * sorted_values[int(q * (len(sorted_values) - 1))], 1) if sorted_values else None


async def bench(router: type, nodes: int, messages: int, size: int, probes: int, patience: float) -> dict[str, Any]:
    sent_at: list[float] = [0.0] * (probes + messages)  # probes first, then the burst
    latencies: list[float] = []
    counts = [0] * nodes
    last_arrival = 0.0

    async def collect(index: int, gossip: Gossip) -> None:
        nonlocal last_arrival
        async for message in gossip.messages:
            now = time.perf_counter()
            (sequence,) = struct.unpack_from(">I", message.data)
            latencies.append(now - sent_at[sequence])
            counts[index] += 1
            last_arrival = max(last_arrival, now)

    async def send(sequence: int) -> None:
        sent_at[sequence] = time.perf_counter()
        await gossips[0].publish(TOPIC, struct.pack(">I", sequence) + padding)

    async with AsyncExitStack() as stack:
        hosts = [await stack.enter_async_context(running_host(Identity.generate())) for _ in range(nodes)]
        nursery = await stack.enter_async_context(trio.open_nursery())
        gossips: list[Any] = [router(host) for host in hosts]
        for gossip in gossips:
            await nursery.start(gossip.run)
        start = time.perf_counter()
        for i in range(nodes):
            for j in range(i + 1, nodes):
                await connect(hosts[j], full_addrs(hosts[i])[0])
        for index, gossip in enumerate(gossips):
            await gossip.join(TOPIC, accept)
            nursery.start_soon(collect, index, gossip)
        with trio.fail_after(30):
            while not all(len(g.peers(TOPIC)) >= min(nodes - 1, DEGREE_LOW) for g in gossips):  # noqa: ASYNC110
                await trio.sleep(0.01)
        mesh_s = time.perf_counter() - start

        padding = bytes(max(0, size - 4))
        with trio.fail_after(30):
            for sequence in range(probes):
                await send(sequence)
                while min(counts[1:]) <= sequence:  # noqa: ASYNC110
                    await trio.sleep(0.001)
        idle = sorted(latencies)
        latencies.clear()
        counts[:] = [0] * nodes
        first = time.perf_counter()
        with trio.move_on_after(patience):
            for sequence in range(probes, probes + messages):
                await send(sequence)
            while min(counts[1:]) < messages:  # noqa: ASYNC110
                await trio.sleep(0.005)
        published = gossips[0].status()["published"] - probes
        statuses = [g.status() for g in gossips]
        nursery.cancel_scope.cancel()

    latencies.sort()
    burst_s = max(last_arrival - first, 1e-9)
    return {
        "nodes": nodes, "messages": messages, "bytes": size, "published": published,
        "delivered_min": min(counts[1:]),
        "p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99),
        "idle_p50_ms": percentile(idle, 0.5),
        "burst_s": round(burst_s, 3), "msgs_per_s": round(published / burst_s, 1), "mesh_s": round(mesh_s, 3),
        "dropped_full": sum(s["dropped_full"] for s in statuses),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5, help="hosts in this process (at least 2)")
    parser.add_argument("--messages", type=int, default=1000, help="messages published by host 0")
    parser.add_argument("--bytes", type=int, default=200, help="size of each message (at least 4)")
    parser.add_argument("--probes", type=int, default=20, help="lone messages sent before the burst")
    parser.add_argument("--patience", type=float, default=300.0, help="seconds to wait, then report what arrived")
    args = parser.parse_args()
    apply_process_defaults()  # py-libp2p's tuning, as `flair-node run` applies it
    if args.nodes < 2 or args.messages < 1:
        parser.error("need at least 2 nodes and 1 message")
    report = {name: trio.run(bench, router, args.nodes, args.messages, args.bytes, args.probes, args.patience)
              for name, router in (("flair", GossipSub), ("py_libp2p", Libp2pGossip))}
    report["speedup"] = round(report["flair"]["msgs_per_s"] / max(report["py_libp2p"]["msgs_per_s"], 1e-9), 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
