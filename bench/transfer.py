#!/usr/bin/env python
"""Move one payload between two nodes (two processes) on 127.0.0.1: over Bitswap, and over a raw stream.

Node A, a child process, stores a random payload as a UnixFS DAG (256 KiB blocks) and serves it both ways;
node B, this process, fetches it with Flair's Bitswap block exchange (every block re-hashed, DAG bounds
checked), then reads the same bytes over a raw libp2p stream (length-prefixed 1 MiB chunks, nothing checked):
the ceiling of this transport stack (TCP, Noise, Yamux in py-libp2p). Both nodes keep blocks in memory, so
the figures are the exchange's, not the disk's. Each way runs ``--repeat`` times; the best run counts. The
last line of stdout is one JSON object with ``bitswap_mib_s``, ``raw_stream_mib_s`` and their ratio.

    .venv/bin/python bench/transfer.py              # 100 MB
    .venv/bin/python bench/transfer.py --mb 8       # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time

import trio
from libp2p.custom_types import TProtocol

from flair_node.core.identity import Identity
from flair_node.network.bitswap import BlockExchange
from flair_node.network.host import apply_process_defaults, connect, full_addrs, running_host
from flair_node.storage import unixfs
from flair_node.storage.stores import MemoryObjectStore

RAW_PROTOCOL = TProtocol("/flair/bench-raw/1.0.0")
CHUNK = 1 << 20


def payload_of(size: int, seed: int) -> bytes:
    """The same pseudo-random bytes in both processes, without sending them through a pipe."""
    import numpy as np

    return np.random.default_rng(seed).bytes(size)


async def serve(size: int, seed: int) -> None:
    """Node A: print its address and the payload's CID, serve until stdin closes."""
    payload = payload_of(size, seed)
    blocks = unixfs.BlockStore(MemoryObjectStore())
    root = unixfs.add(blocks, payload)

    async def serve_raw(stream) -> None:
        for start in range(0, size, CHUNK):
            chunk = payload[start:start + CHUNK]
            await stream.write(struct.pack(">I", len(chunk)) + chunk)
        await stream.close()

    async with running_host(Identity.generate()) as host, trio.open_nursery() as nursery:
        host.set_stream_handler(RAW_PROTOCOL, serve_raw)
        await nursery.start(BlockExchange(host, blocks).run)
        print(json.dumps({"addr": full_addrs(host)[0], "root": root}), flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)
        nursery.cancel_scope.cancel()


async def fetch(addr: str, root: str, size: int, seed: int, repeat: int) -> dict[str, float]:
    """Node B: fetch over Bitswap into a fresh store each time, then over the raw stream."""
    payload = payload_of(size, seed)
    bitswap_s, raw_s = [], []
    for _ in range(repeat):  # a new node B each time: fresh store, fresh connection
        async with running_host(Identity.generate()) as host, trio.open_nursery() as nursery:
            blocks = unixfs.BlockStore(MemoryObjectStore())
            exchange = BlockExchange(host, blocks)
            await nursery.start(exchange.run)
            peer = await connect(host, addr)
            start = time.perf_counter()
            await exchange.fetch_dag(root, peer, max_size=size)
            bitswap_s.append(time.perf_counter() - start)
            assert unixfs.cat(blocks, root, max_size=size) == payload

            start = time.perf_counter()
            stream = await host.new_stream(peer, [RAW_PROTOCOL])
            received, buffer = bytearray(), bytearray()
            while len(received) < size:
                data = await stream.read(CHUNK)
                if not data:
                    break
                buffer += data
                while len(buffer) >= 4 and len(buffer) >= 4 + (n := struct.unpack(">I", buffer[:4])[0]):
                    received += buffer[4:4 + n]
                    del buffer[:4 + n]
            raw_s.append(time.perf_counter() - start)
            assert bytes(received) == payload
            await stream.close()
            nursery.cancel_scope.cancel()
    mib, best_bitswap, best_raw = size / 2**20, min(bitswap_s), min(raw_s)
    return {"bytes": size, "repeat": repeat, "bitswap_s": round(best_bitswap, 3), "raw_stream_s": round(best_raw, 3),
            "bitswap_mib_s": round(mib / best_bitswap, 1), "raw_stream_mib_s": round(mib / best_raw, 1),
            "bitswap_vs_raw": round(best_raw / best_bitswap, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=100.0, help="payload size in MB (10^6 bytes)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each way; the best counts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # node A's side
    args = parser.parse_args()
    apply_process_defaults()  # py-libp2p's tuning, as `flair-node run` applies it
    size = int(args.mb * 1e6)
    if args.serve:
        trio.run(serve, size, args.seed)
        return
    server = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", "--mb", str(args.mb),
                               "--seed", str(args.seed)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdin is not None
        hello = json.loads(server.stdout.readline())
        result = trio.run(fetch, hello["addr"], hello["root"], size, args.seed, args.repeat)
        server.stdin.close()
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
