#!/usr/bin/env python
"""Move one payload between two libp2p hosts on 127.0.0.1: over Bitswap, and over a raw stream, in one run.

Node A stores a random payload as a UnixFS DAG (256 KiB blocks); node B fetches it with Flair's Bitswap block
exchange (every block re-hashed), then reads the same bytes over a raw libp2p stream (length-prefixed 1 MiB
chunks, no hashing): the ceiling of this transport stack. The last line of stdout is one JSON object with
``bitswap_mib_s``, ``raw_stream_mib_s`` and their ratio.

    .venv/bin/python bench/transfer.py              # 100 MB
    .venv/bin/python bench/transfer.py --mb 8       # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time

import trio
from libp2p.custom_types import TProtocol

from flair_node.core.identity import Identity
from flair_node.network.bitswap import BlockExchange
from flair_node.network.host import connect, full_addrs, running_host
from flair_node.storage import unixfs
from flair_node.storage.stores import MemoryObjectStore

RAW_PROTOCOL = TProtocol("/flair/bench-raw/1.0.0")
CHUNK = 1 << 20


async def main(size: int) -> dict[str, float]:
    payload = os.urandom(size)
    a_blocks = unixfs.BlockStore(MemoryObjectStore())
    b_blocks = unixfs.BlockStore(MemoryObjectStore())
    root = unixfs.add(a_blocks, payload)

    async def serve_raw(stream) -> None:
        for start in range(0, size, CHUNK):
            chunk = payload[start:start + CHUNK]
            await stream.write(struct.pack(">I", len(chunk)) + chunk)
        await stream.close()

    async with running_host(Identity.generate()) as a, running_host(Identity.generate()) as b, \
            trio.open_nursery() as nursery:
        a.set_stream_handler(RAW_PROTOCOL, serve_raw)
        a_exchange, b_exchange = BlockExchange(a, a_blocks), BlockExchange(b, b_blocks)
        await nursery.start(a_exchange.run)
        await nursery.start(b_exchange.run)
        peer = await connect(b, full_addrs(a)[0])

        start = time.perf_counter()
        await b_exchange.fetch_dag(root, peer, max_size=size)
        bitswap_s = time.perf_counter() - start
        assert unixfs.cat(b_blocks, root, max_size=size) == payload

        start = time.perf_counter()
        stream = await b.new_stream(peer, [RAW_PROTOCOL])
        received, buffer = bytearray(), b""
        while len(received) < size:
            data = await stream.read(1 << 16)
            if not data:
                break
            buffer += data
            while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack(">I", buffer[:4])[0]:
                n = struct.unpack(">I", buffer[:4])[0]
                received += buffer[4:4 + n]
                buffer = buffer[4 + n:]
        raw_s = time.perf_counter() - start
        assert bytes(received) == payload
        await stream.close()
        nursery.cancel_scope.cancel()
    mib = size / 2**20
    return {"bytes": size, "bitswap_s": round(bitswap_s, 3), "raw_stream_s": round(raw_s, 3),
            "bitswap_mib_s": round(mib / bitswap_s, 1), "raw_stream_mib_s": round(mib / raw_s, 1),
            "bitswap_vs_raw": round(raw_s / bitswap_s, 3)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=100.0, help="payload size in MB (10^6 bytes)")
    args = parser.parse_args()
    print(json.dumps(trio.run(main, int(args.mb * 1e6))))
    sys.exit(0)
