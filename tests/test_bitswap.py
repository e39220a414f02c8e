"""Bitswap between real libp2p hosts on 127.0.0.1: a node fetches a DAG only another node has, re-hashing
every block; bytes that do not match their CID, and blocks nobody asked for, are refused."""

import os

import pytest
import trio
from libp2p.bitswap import BitswapClient, MemoryBlockStore
from libp2p.bitswap.cid import parse_cid as lib_parse_cid

from flair_node.core.cid import RAW, cid_for
from flair_node.core.errors import RemoteError
from flair_node.core.identity import Identity
from flair_node.network.bitswap import BlockExchange
from flair_node.network.host import connect, full_addrs, running_host
from flair_node.storage import unixfs
from flair_node.storage.stores import MemoryObjectStore

pytestmark = pytest.mark.integration


def store():
    return unixfs.BlockStore(MemoryObjectStore())


async def test_a_node_fetches_a_dag_only_its_peer_has():
    data = os.urandom(700_000)  # three leaves and a root
    a_blocks, b_blocks = store(), store()
    root = unixfs.add(a_blocks, data)
    with trio.fail_after(30):
        async with running_host(Identity.generate()) as a, running_host(Identity.generate()) as b, \
                trio.open_nursery() as nursery:
            a_exchange, b_exchange = BlockExchange(a, a_blocks), BlockExchange(b, b_blocks)
            await nursery.start(a_exchange.run)
            await nursery.start(b_exchange.run)
            peer = await connect(b, full_addrs(a)[0])
            assert await b_exchange.fetch_dag(root, peer, max_size=len(data), block_timeout=10) == 4
            assert unixfs.cat(b_blocks, root, max_size=len(data)) == data
            assert await b_exchange.fetch_dag(root, peer, max_size=len(data)) == 0  # nothing left to fetch
            nursery.cancel_scope.cancel()


async def test_forged_and_unrequested_blocks_are_refused():
    honest = b"the real block" * 100
    cid = cid_for(RAW, honest)
    b_blocks = store()
    with trio.fail_after(30):
        async with running_host(Identity.generate()) as liar, running_host(Identity.generate()) as b, \
                trio.open_nursery() as nursery:
            # The liar keeps other bytes under the honest block's CID, in a store that checks nothing.
            liar_store = MemoryBlockStore()
            await liar_store.put_block(lib_parse_cid(cid), b"forged bytes")
            liar_client = BitswapClient(liar, liar_store)
            liar_client.set_nursery(nursery)
            await liar_client.start()
            b_exchange = BlockExchange(b, b_blocks)
            await nursery.start(b_exchange.run)
            peer = await connect(b, full_addrs(liar)[0])
            with pytest.raises(RemoteError, match="did not deliver"):
                await b_exchange.fetch_dag(cid, peer, max_size=10_000, block_timeout=3)
            assert not b_blocks.has(cid) and list(b_blocks.keys()) == []
            await liar_client.stop()
            nursery.cancel_scope.cancel()


def test_a_daemon_fetches_a_payload_only_another_daemon_has(tmp_path):
    import torch
    from safetensors.torch import save_file

    from flair_node.testing.daemon import running_daemon

    model = tmp_path / "m.safetensors"
    save_file({"w": torch.randn(200_000)}, str(model))  # 800 KB: four leaves and a root
    with running_daemon(tmp_path / "a") as a, running_daemon(tmp_path / "b") as b:
        a.client.call("repo.init", name="shared", model_path=str(model))
        head = a.client.call("repo.log", repo="shared")["commits"][0]
        cid, size = head["payload"]["cid"], head["payload"]["size"]
        assert b.client.call("block.has", cid=cid) == {"cid": cid, "complete": False}
        address = a.client.call("node.status")["p2p"]["addrs"][0]
        assert address.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/" in address
        assert b.client.call("block.fetch", cid=cid, peer=address, max_size=size)["fetched_blocks"] == 5
        assert b.client.call("block.has", cid=cid) == {"cid": cid, "complete": True, "blocks": 5}
        assert b.client.call("block.fetch", cid=cid, peer=address)["fetched_blocks"] == 0
