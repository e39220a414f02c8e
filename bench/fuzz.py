#!/usr/bin/env python
"""Fuzz campaign: mutated inputs for every peer-facing protocol, the JSON-RPC API, safetensors files and proof
bundles, in process and against one real daemon. Nothing may crash, hang or be accepted unless its author was
entitled to it.

Inputs are structure-aware mutations of valid messages (``flair_node.testing.fuzz``: fields swapped, dropped or
added, type confusion, extreme integers, huge lengths, deep nesting, repeated items and links, duplicated keys,
invalid UTF-8, lying lengths, truncation, records re-signed by a stranger or a reader, membership changes from
ahead of the chain), plus random bytes. ``--n`` inputs per target, in process:

    announcements   ``announce.decode`` + ``announce.check`` against a member's node holding only the genesis
    gossip          validly signed pubsub messages (mutated fields, mutated announcements) through a running
                    ``GossipSub`` router and the daemon's own validator (``P2PService``)
    meshsub         protobuf-mutated RPC frames (subscriptions, messages, GRAFT/PRUNE/IHAVE/IWANT): decode and
                    handle in the same router
    sync_requests   ``SyncServer.handle`` (asked by a reader, a stranger, nobody) and encoding its reply
    sync_replies    ``sync.pull`` against a hostile ``Source`` whose heads, records or blocks are mutated
    bitswap         ``bitswap_wire.decode`` + ``BlockExchange._received`` with wants pending, then the shape check
                    of every block delivered and ``_answer`` for the wants received
    jsonrpc         ``ApiServer.admit`` + ``answer`` over the daemon's methods (bodies, tokens, paths), on a node
                    of its own (methods that write where told or dial out are left out)
    safetensors     ``safetensors_io.load_bytes`` + ``check_layout`` (headers mutated as JSON, lengths, bytes)
    proof_bundles   ``merges.check_merge`` of a proof record naming a mutated bundle, read from a UnixFS DAG
                    (whose root is mutated too: repeated links, zero or lying block sizes)

Then ``--live`` inputs per target go over real sockets to one ``flair-node`` daemon on 127.0.0.1
(``testing.daemon.running_daemon``) from a py-libp2p host holding a reader's key: announcements through
GossipSub, raw meshsub frames, sync requests and Bitswap messages on raw streams, mutated sync replies to the
daemon's own pulls (``repo.pull`` from the hostile host), JSON-RPC over HTTP with its token (or a mutated one) and
safetensors files given to ``repo.commit``. The same count of VALID inputs goes first: ``baseline_rss_growth_mb``
is the daemon's resident-set growth under them, ``daemon_rss_growth_mb`` under the hostile ones (VmRSS read
from /proc, as psutil reads it). After the peer-facing phases the daemon must hold exactly the objects and
branches it held before, and its counters must name the hostile peer.

Definitions. A crash is an exception other than a FlairError (the documented refusal; for announcements also
``Lagging`` and ``Replay``) escaping a decoder or handler in process, a JSON-RPC internal error (-32603), or the
daemon exiting or no longer answering. A hang is an input whose handling takes over ``--hang-s`` seconds in
process (``--live-hang-s`` against the daemon, which also answers ``node.whoami`` between batches).
``accepted_forged`` counts mutated inputs accepted (delivered, stored, served or answered) though not validly
signed by an entitled member: an announcement holding a record that is not one of the genuine records, a block
delivered that was not wanted or does not hash to its CID, a record or branch a pull kept that the honest peer
does not hold, a sync answer or API result given to a stranger or without the token, an object the daemon
stored. ``accepted_noncanonical`` (per target) counts genuine records accepted in other bytes than their own
encoding: the same signed record, written another way. Each distinct crash (target, exception, where) is
printed on stderr with an example; ``--save DIR`` writes every crashing and forged input there.

Choices and keys are seeded (``--seed``): the same seed makes the same mutations of the same records, but for
the timestamps records carry (the run's clock). Progress goes to stderr; the last line of stdout is one JSON
object with ``inputs``, ``crashes``, ``hangs``, ``accepted_forged`` and ``daemon_rss_growth_mb`` first, then
``baseline_rss_growth_mb``, per-target figures (with the commonest refusals: how deep the inputs got) and the
crashes by kind.

    .venv/bin/python bench/fuzz.py --n 10000            # the campaign of issue 16 (about an hour on 2 cores)
    .venv/bin/python bench/fuzz.py --n 30 --live 3      # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from flair_node.core import encoding
from flair_node.core.objects import ProofRecord
from flair_node.protocol import announce
from flair_node.storage.repo import now_ms
from flair_node.storage.repos import RepoSet
from flair_node.testing import fuzz
from flair_node.testing.commit_graph import tiny_state
from flair_node.testing.fuzz import CLASSES, Campaign, HostileSource, Publisher, Tally, World, off_loop
from flair_node.testing.fuzz.live import SKIPPED_METHODS, jsonrpc_seeds, judge_reply, run_live

log = logging.getLogger("bench.fuzz")
TARGETS = ("announcements", "gossip", "meshsub", "sync_requests", "sync_replies", "bitswap", "jsonrpc",
           "safetensors", "proof_bundles")


# -- in-process targets ------------------------------------------------------------------------------------------


async def fuzz_announcements(c: Campaign, world: World, rng: random.Random, n: int) -> None:
    def state() -> tuple[Any, ...]:
        return sorted(world.node.objects.keys()), world.node.branches(), world.node.members.current().head

    before = state()

    def make() -> bytes:
        if rng.random() < 0.03:
            return rng.randbytes(rng.randint(0, 300))
        return fuzz.mutate_announcement(rng, rng.choice(world.announcements), CLASSES, world.signers)

    async def handle(data: bytes) -> str:
        try:
            await off_loop(lambda: announce.check(world.node, announce.decode(data, world.repo.id), now_ms()))
        except (announce.Lagging, announce.Replay):
            return "refused"
        return world.verdict(data)

    await c.run("announcements", n, make, handle)
    if state() != before:
        c.crash("announcements", AssertionError("announce.check changed the node's state"), b"")


async def fuzz_routers(c: Campaign, world: World, rng: random.Random, n: int, targets: set[str]) -> None:
    """``gossip`` and ``meshsub``: frames handled by a running GossipSub whose topic's validator is the
    daemon's own (``P2PService``), on a host connected to the hostile host that sends them."""
    from flair_node.daemon.p2p import P2PService
    from flair_node.network import gossipsub_wire as wire
    from flair_node.network.bitswap import BlockExchange
    from flair_node.network.gossipsub import GossipSub
    from flair_node.network.host import connect, full_addrs, running_host
    from flair_node.protocol.rounds import RoundMemory

    topic = announce.topic(world.repo.id)
    async with running_host(world.alice) as node_host, running_host(world.stranger) as hostile_host, \
            trio.open_nursery() as nursery:
        service = P2PService(node_host, BlockExchange(node_host, world.node_set.blocks), world.node_set,
                             memory=RoundMemory())
        router = service.gossip
        await nursery.start(router.run)
        hostile = GossipSub(hostile_host)
        await nursery.start(hostile.run)
        validate = service._validator(world.repo.id)  # noqa: SLF001 - the daemon's validator, as it runs
        current = ["gossip"]  # the target whose inputs the validator judges now

        def judged(forwarder: Any, data: bytes) -> bool:
            try:
                return bool(validate(forwarder, data))
            except Exception as exc:  # the router would count it a rejection; the campaign counts a crash
                c.crash(current[0], exc, data)
                return False

        await router.join(topic, judged)
        await connect(hostile_host, full_addrs(node_host)[0])
        with trio.fail_after(15):
            while hostile_host.get_id() not in router._peers:  # noqa: ASYNC110, SLF001 - no event to wait on
                await trio.sleep(0.05)
        hostile_id = hostile_host.get_id()
        publisher = Publisher(hostile_host.get_id().to_bytes(), hostile_host.get_private_key(), topic, rng)
        seeds = publisher.seeds(world.announcements)

        def gossip_input() -> bytes:
            data = fuzz.mutate_announcement(rng, rng.choice(world.announcements), CLASSES, world.signers)
            return wire.publish(publisher.signed(data[:70_000], mutate=rng.random() < 0.3))

        def meshsub_input() -> bytes:
            return fuzz.mutate_protobuf(rng, rng.choice(seeds)) if rng.random() < 0.95 else rng.randbytes(64)

        async def handle(body: bytes) -> str:
            # what a frame from a peer gets (the peer made known again if a frame before made the router drop it)
            peer = router._peers.get(hostile_id) or router._connected(hostile_id)  # noqa: SLF001
            await router._handle_rpc(peer, await off_loop(wire.decode, body))  # noqa: SLF001
            verdicts = set()
            while True:
                try:
                    verdicts.add(world.verdict(router.messages.receive_nowait().data))
                except trio.WouldBlock:
                    break
            return next((v for v in ("forged", "noncanonical", "accepted") if v in verdicts), "refused")

        for target, make in (("gossip", gossip_input), ("meshsub", meshsub_input)):
            if target not in targets:
                continue
            current[0] = target
            await c.run(target, n, make, handle)
        nursery.cancel_scope.cancel()


async def fuzz_sync_requests(c: Campaign, world: World, rng: random.Random, n: int) -> None:
    from flair_node.protocol.sync import SyncServer

    server = SyncServer(world.owner_set)
    ids = sorted(world.genuine_keys)
    seeds = [encoding.encode({"op": "heads", "repo": world.repo.id}),
             encoding.encode({"op": "records", "repo": world.repo.id, "ids": ids[:5]}),
             encoding.encode({"op": "records", "repo": world.repo.id, "ids": ids})]
    askers = [world.reader.public_key, world.stranger.public_key, None, world.alice.public_key]

    async def handle(item: tuple[bytes, int]) -> str:
        data, who = item
        reply = await server.handle(askers[who], await off_loop(encoding.decode, data))
        encoding.encode({"ok": reply})  # what rpc.serve sends back
        return "accepted" if who in (0, 3) else "forged"  # a stranger or nobody got an answer

    def make() -> tuple[bytes, int]:
        data = fuzz.mutate_msgpack(rng, rng.choice(seeds)) if rng.random() < 0.97 else rng.randbytes(40)
        return data, rng.randrange(len(askers))

    await c.run("sync_requests", n, make, handle)


async def fuzz_sync_replies(c: Campaign, world: World, rng: random.Random, n: int) -> None:
    from flair_node.protocol import sync
    from flair_node.protocol.rounds import RoundMemory

    async def handle(item: tuple[str, int]) -> str:
        mode, seed = item
        into = RepoSet.in_memory(world.alice)
        try:
            await sync.pull(into, world.repo.id, HostileSource(world, into, random.Random(seed), mode),
                            memory=RoundMemory())
        finally:
            kept = set(into.objects.keys()) - world.genuine_keys
            heads = {h for r in into.all() for h in r.branches().values()} - world.genuine_keys
            stray = [r.id for r in into.all() if r.id != world.repo.id]
        if kept or heads or stray:
            return "forged"
        return "accepted"

    await c.run("sync_replies", n, lambda: (rng.choice(("heads", "records", "records", "blocks")),
                                            rng.getrandbits(64)), handle)


async def fuzz_bitswap(c: Campaign, world: World, rng: random.Random, n: int) -> None:
    from flair_node.core.cid import DAG_PB, RAW, FileNode, Link, cid_for, encode_file_node, parse_cid
    from flair_node.network import bitswap_wire as wire
    from flair_node.network.bitswap import BlockExchange, _Fetch
    from flair_node.storage import unixfs
    from flair_node.storage.stores import MemoryObjectStore

    leaves = [b"leaf-%d-" % i * 40 for i in range(3)]
    leaf_cids = [parse_cid(cid_for(RAW, leaf)) for leaf in leaves]
    node = encode_file_node(FileNode(tuple(Link(c.text, len(b)) for c, b in zip(leaf_cids, leaves, strict=True)),
                                     tuple(len(b) for b in leaves)))
    node_cid = parse_cid(cid_for(DAG_PB, node))
    blocks = [*zip(leaf_cids, leaves, strict=True), (node_cid, node)]
    wanted = {cid: block for cid, block in blocks}
    exchange = BlockExchange(None, unixfs.BlockStore(MemoryObjectStore()), clock=time.monotonic)
    for cid, block in blocks[:2]:
        exchange.blocks.put(cid, block)
    seeds = [fuzz.unframe(wire.frame(m)) for m in (
        wire.Message(blocks=tuple(blocks)),
        wire.Message(wants=tuple(wire.Want(cid, send_dont_have=True) for cid, _ in blocks), have=(node_cid,),
                     dont_have=(leaf_cids[0],)),
        wire.Message(wants=(wire.Want(node_cid, cancel=True), wire.Want(leaf_cids[1], have_only=True)), full=True,
                     blocks=blocks[:1]))]
    peers = [f"peer-{i}" for i in range(4)]

    async def handle(item: tuple[bytes, int]) -> str:
        body, who = item
        message = await off_loop(wire.decode, body)
        fetch = _Fetch(peers[0], 64)
        exchange._fetches.add(fetch)  # noqa: SLF001 - wants pending, as during fetch_dag
        for cid in wanted:
            exchange._wants[cid] = [fetch]  # noqa: SLF001
        try:
            exchange._received(peers[who], message)  # noqa: SLF001
            exchange._answer(list(message.wants)[:64])  # noqa: SLF001 - what serving those wants reads
        finally:
            exchange._wants.clear()  # noqa: SLF001
            exchange._fetches.discard(fetch)  # noqa: SLF001
        forged = delivered = 0
        while True:
            try:
                cid, block = fetch.receive.receive_nowait()
            except trio.WouldBlock:
                break
            if not isinstance(block, bytes):
                continue  # a DONT_HAVE
            delivered += 1
            forged += cid not in wanted or hashlib.sha256(block).digest() != cid.digest or who != 0
            unixfs.shape(node_cid.text, cid, block)  # what fetch_dag checks of every block that arrives
        return "forged" if forged else "accepted" if delivered else "refused"

    def make() -> tuple[bytes, int]:
        body = fuzz.mutate_protobuf(rng, rng.choice(seeds)) if rng.random() < 0.95 else rng.randbytes(80)
        return body, rng.randrange(len(peers))

    await c.run("bitswap", n, make, handle)


# -- JSON-RPC, safetensors, proof bundles ------------------------------------------------------------------------


async def fuzz_jsonrpc(c: Campaign, world: World, rng: random.Random, n: int, root: Path) -> None:
    import h11

    from flair_node.api.context import ApiContext
    from flair_node.api.methods import build_registry
    from flair_node.api.server import ApiServer
    from flair_node.tensors.safetensors_io import save_bytes

    repos = RepoSet.on_disk(root / "api-node", world.owner)
    model = root / "model.safetensors"
    model.write_bytes(save_bytes(tiny_state(0)))
    repo = repos.create("api", tiny_state(0))
    token = "t0k3n-" + rng.randbytes(12).hex()
    server = ApiServer(build_registry(ApiContext(world.owner, repos)), token)
    seeds = jsonrpc_seeds(repo.id, model, world.reader.public_key)
    seeds = [s for s in seeds if s["method"] not in SKIPPED_METHODS]

    async def handle(item: tuple[bytes, str, str]) -> str:
        body, auth, path = item
        headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")] + \
            ([(b"authorization", auth.encode("latin-1"))] if auth else [])  # as bytes come off the wire
        request = h11.Request(method="POST", target=path.encode("latin-1"), headers=headers)
        refusal = server.admit(request)  # the head first, as the HTTP server does: no token, no body read
        status, reply, _ = refusal if refusal is not None else await server.answer(request, body)
        return judge_reply(status, reply, auth == f"Bearer {token}")

    await c.run("jsonrpc", n, lambda: fuzz.mutate_jsonrpc(rng, seeds, token), handle)


async def fuzz_safetensors(c: Campaign, world: World, rng: random.Random, n: int) -> None:
    import torch

    from flair_node.tensors.safetensors_io import check_layout, layout_of, load_bytes, save_bytes

    state = tiny_state(3)
    mixed = {"w": torch.ones(2, 3, dtype=torch.float16), "i": torch.arange(4), "m": torch.ones(2, dtype=torch.bool),
             "e": torch.zeros(0)}
    seeds = [save_bytes(state), save_bytes(mixed)]
    layout = layout_of(state)

    async def handle(data: bytes) -> str:
        await off_loop(lambda: check_layout(load_bytes(data, "fuzzed"), layout))
        return "accepted"

    await c.run("safetensors", n, lambda: fuzz.mutate_safetensors(rng, seeds), handle)


async def fuzz_proof_bundles(c: Campaign, world: World, rng: random.Random, n: int) -> None:
    """Bundles as ``check_merge`` reads them: a proof record of a round merge names a UnixFS DAG of JSON."""
    from dataclasses import replace

    from flair_node.core.cid import DAG_PB, FileNode, Link, cid_for, encode_file_node, parse_cid
    from flair_node.core.ids import BranchName
    from flair_node.protocol.proofs import merges
    from flair_node.protocol.proofs.circuits import Circuits
    from flair_node.storage import unixfs

    repo = world.repo
    circuits = Circuits.in_temporary_folder()  # the fuzzing node's
    contribution = repo._write_commit(  # noqa: SLF001 - records only: what a proof statement reads
        world.owner, tiny_state(4), parents=(repo.head("main"),), kind="commit", message="c",
        meta={"examples": 1, "commitments": ["ab" * 32, "cd" * 32]}, metrics={}, branch=BranchName("pr"),
        expected=None)
    merge = repo._write_commit(  # noqa: SLF001
        world.owner, tiny_state(5), parents=(repo.head("main"), contribution.id), kind="round", message="r",
        meta={"sums": ["ef" * 32, "01" * 32], "contributions": [[contribution.id, 1, 0, 65536]], "step": 65536,
              "examples": 1}, metrics={},
        branch=BranchName("pr"), expected=contribution.id)
    felts = ["0x" + "12" * 32] * 3
    bundle = {"v": merges.BUNDLE_VERSION, "repo": repo.id, "commit": merge.id,
              "proofs": {str(j): {"instances": [felts], "proof": list(range(200)), "transcript_type": "EVM"}
                         for j in range(2)}}
    seed = json.dumps(bundle).encode()
    record = ProofRecord(repo=repo.id, commit=merge.id, chunks=(0, 1), proofs=unixfs.add(repo.blocks, seed),
                         size=len(seed), vk="ab" * 32, author=world.owner.public_key, timestamp_ms=now_ms())
    genuine = set(repo.blocks.keys())  # never removed: every block made for one input is, once it is judged

    def make() -> tuple[str, int, list[str]]:
        """(root CID, size the record declares, the blocks made for it: removed once it is judged)."""
        data = fuzz.mutate_json(rng, seed) if rng.random() < 0.8 else fuzz.mutate_bytes(rng, seed)
        size, root = len(data), unixfs.add(repo.blocks, data)
        made = unixfs.block_keys(repo.blocks, root, max_size=size)
        if rng.random() < 0.3:  # the DAG itself lies: repeated links, sizes of zero, sizes that do not add up
            links = [Link(root, len(data))] * rng.choice(fuzz.REPEATS)
            sizes = [rng.choice([0, len(data), 1 << 20, 2**40])] * len(links)
            node = encode_file_node(FileNode(tuple(links), tuple(sizes)))
            node = fuzz.mutate_protobuf(rng, node) if rng.random() < 0.3 else node
            root = cid_for(DAG_PB, node)
            repo.blocks.put(parse_cid(root), node)
            made.add(parse_cid(root).key)
            size = rng.choice([size, sum(sizes), 2**26])
        return root, rng.choice([size, size, size, max(0, size - 1), 2**26, 2**40]), sorted(made - genuine)

    async def handle(item: tuple[str, int, list[str]]) -> str:
        root, size, made = item
        try:
            await off_loop(lambda: merges.check_merge(repo, replace(record, proofs=root, size=size),
                                                      circuits=circuits))
        finally:
            for key in made:
                repo.blocks.delete_key(key)
        return "forged"  # no mutated bundle of garbage proofs may pass the check

    await c.run("proof_bundles", n, make, handle)


# -- the campaign ----------------------------------------------------------------------------------------------


async def in_process(c: Campaign, world: World, seed: int, n: int, targets: set[str], root: Path) -> None:
    def rng(target: str) -> random.Random:
        return random.Random(f"{seed}:{target}")

    if "announcements" in targets:
        await fuzz_announcements(c, world, rng("announcements"), n)
    if targets & {"gossip", "meshsub"}:
        await fuzz_routers(c, world, rng("routers"), n, targets)
    if "sync_requests" in targets:
        await fuzz_sync_requests(c, world, rng("sync_requests"), n)
    if "sync_replies" in targets:
        await fuzz_sync_replies(c, world, rng("sync_replies"), n)
    if "bitswap" in targets:
        await fuzz_bitswap(c, world, rng("bitswap"), n)
    if "jsonrpc" in targets:
        await fuzz_jsonrpc(c, world, rng("jsonrpc"), n, root)
    if "safetensors" in targets:
        await fuzz_safetensors(c, world, rng("safetensors"), n)
    if "proof_bundles" in targets:
        await fuzz_proof_bundles(c, world, rng("proof_bundles"), n)


def _summary(tally: Tally) -> dict[str, Any]:
    out = asdict(tally)
    out["seconds"] = round(tally.seconds, 1)
    out["refusals"] = dict(sorted(tally.refusals.items(), key=lambda kv: -kv[1])[:8])  # the most common
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="mutated inputs per target, in process")
    parser.add_argument("--live", type=int, default=None,
                        help="mutated inputs per protocol sent to a running daemon (default: n/10, at most 1000; "
                             "0: no daemon)")
    parser.add_argument("--seed", type=int, default=16, help="seed of every choice (the same seed, the same inputs)")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"comma-separated in-process targets (default: all of {', '.join(TARGETS)})")
    parser.add_argument("--hang-s", type=float, default=2.0, help="an input handled in process for longer hangs")
    parser.add_argument("--live-hang-s", type=float, default=10.0,
                        help="a daemon answering an input or node.whoami later than this hangs")
    parser.add_argument("--save", type=Path, default=None, help="folder to write crashing and forged inputs to")
    parser.add_argument("--verbose", action="store_true", help="show Flair's own log lines (refusals are many)")
    args = parser.parse_args()
    targets = {t.strip() for t in args.targets.split(",") if t.strip()}
    if args.n < 0 or not targets <= set(TARGETS):
        parser.error(f"--n must be >= 0 and --targets among {', '.join(TARGETS)}")
    live = min(args.n // 10, 1000) if args.live is None else args.live
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.CRITICAL + 1, stream=sys.stderr)

    start = time.perf_counter()
    c = Campaign(args.hang_s, args.save.resolve() if args.save else None)
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="flair-fuzz-") as tmp:
        root = Path(tmp)
        os.chdir(root)  # a relative path in a mutated request lands here
        try:
            world = World(root / "world", random.Random(f"{args.seed}:world"))
            trio.run(in_process, c, world, args.seed, args.n, targets, root)
            daemon = run_live(c, world, random.Random(f"{args.seed}:live"), live, root, args.live_hang_s) \
                if live else {}
        finally:
            os.chdir(cwd)
    total = Tally()
    for tally in c.tallies.values():
        for name in ("inputs", "crashes", "hangs", "accepted_forged"):
            setattr(total, name, getattr(total, name) + getattr(tally, name))
    report = {"inputs": total.inputs, "crashes": total.crashes, "hangs": total.hangs,
              "accepted_forged": total.accepted_forged,
              "daemon_rss_growth_mb": daemon.get("daemon_rss_growth_mb"),
              "baseline_rss_growth_mb": daemon.get("baseline_rss_growth_mb"),
              "seed": args.seed, "n": args.n, "live": live, "elapsed_s": round(time.perf_counter() - start, 1),
              "targets": {name: _summary(t) for name, t in sorted(c.tallies.items())},
              "crash_kinds": sorted(c.crash_kinds.values(), key=lambda k: -k["count"]), "daemon": daemon}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
