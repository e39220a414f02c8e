"""A fuzz campaign against one running ``flair-node`` daemon, over real sockets (``bench/fuzz.py --live``): a
py-libp2p host holding a reader's key sends mutated announcements, meshsub frames, sync requests and Bitswap
messages, answers the daemon's own pulls with mutated replies, and mutated JSON-RPC requests and safetensors
files go to the API. ``jsonrpc_seeds`` and ``judge_reply`` serve the in-process JSON-RPC target too."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import trio

from ...core import encoding
from ...core.errors import FlairError, RemoteError
from ...core.ids import RepoId
from ...protocol import announce
from ...storage.repos import RepoSet
from .. import fuzz
from ..commit_graph import tiny_state
from ..memory import rss_mb
from .campaign import Campaign, off_loop, progress
from .world import CLASSES, Publisher, World, lie

log = logging.getLogger(__name__)

SKIPPED_METHODS = ("repo.checkout", "block.fetch", "repo.pull")  # write where told; dial where told


def jsonrpc_seeds(repo: str, model: Path, key: str) -> list[dict[str, Any]]:
    """Valid requests to the daemon's methods (those that touch the file system only to read, and dial nobody)."""
    calls: list[tuple[str, dict[str, Any]]] = [
        ("node.whoami", {}), ("node.status", {}), ("repo.list", {}), ("rpc.discover", {}),
        ("repo.log", {"repo": repo, "branch": "main", "limit": 5}), ("repo.show", {"repo": repo, "commit": "main"}),
        ("repo.status", {"repo": repo}), ("repo.members", {"repo": repo}), ("repo.policy", {"repo": repo}),
        ("repo.branch", {"repo": repo}), ("repo.branch", {"repo": repo, "name": "b1", "at": "main"}),
        ("repo.diff", {"repo": repo, "a": "main", "b": "main"}), ("round.status", {"repo": repo}),
        ("repo.fsck", {"repo": repo}), ("repo.invite", {"repo": repo, "member": key, "role": "reader"}),
        ("repo.commit", {"repo": repo, "weights_path": str(model), "message": "m", "branch": "main"}),
        ("repo.init", {"name": "other", "model_path": str(model)}),
        ("repo.reset", {"repo": repo, "branch": "b1", "commit": "main"}),
        ("block.has", {"cid": "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy", "max_size": 10})]
    return [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]


class InternalErrorReply(Exception):
    """The API answered JSON-RPC -32603: a handler failed with something other than a FlairError."""

    def __init__(self, message: str, method: str) -> None:
        super().__init__(message)
        self.where = f"a method of the API: {method}"


def judge_reply(status: int, reply: bytes | None, authorized: bool) -> str:
    """How the API answered: "refused", "accepted", "forged" (a result without the token); ``InternalErrorReply``."""
    answers = json.loads(reply) if reply else []
    answers = answers if isinstance(answers, list) else [answers]
    for answer in answers:
        error = answer.get("error") if isinstance(answer, dict) else None
        if isinstance(error, dict) and error.get("code") == -32603:
            method = str(error.get("data", {}).get("method"))
            raise InternalErrorReply(f"internal error: {(reply or b'')[:300]!r}", method)
    results = [a for a in answers if isinstance(a, dict) and "result" in a]
    if results and not authorized:
        return "forged"
    return "accepted" if status == 200 and results else "refused"


class Live:
    """One daemon, and a py-libp2p host with a reader's key that speaks to it as a hostile member would (it
    greets the daemon with the reader's member cards, and claims the reader's membership in sync requests)."""

    PHASES = ("announcements", "meshsub", "sync_requests", "sync_replies", "bitswap")

    def __init__(self, c: Campaign, world: World, rng: random.Random, daemon: Any, repo_id: RepoId, root: Path,
                 hang_s: float) -> None:
        self.c, self.world, self.rng, self.daemon, self.repo_id = c, world, rng, daemon, repo_id
        self.root, self.hang_s = root, hang_s
        self.address = daemon.client.call("node.status")["p2p"]["addrs"][0]
        self.view = RepoSet.on_disk(daemon.home, world.reader)  # the daemon's records, read from its files
        repo = self.view.open_id(repo_id)
        self.records = [("commit", c.encode()) for c in repo.commits()] + \
            [("move", move.encode()) for b in repo.branches() if (move := repo.branch_move(b)) is not None] + \
            [("membership", c.encode()) for c in repo.members.changes()]
        self.announcements = [announce.pack(repo_id, [item], 60_000)[0] for item in self.records]
        self.payloads = [c.payload.cid for c in repo.commits()]
        self.daemon_key = daemon.client.call("node.whoami")["public_key"]
        self.hostile_replies = False
        self.host: Any = None
        self.counts: dict[str, int] = {"baseline_inputs": 0, "pings": 0}

    def snapshot(self) -> tuple[set[str], dict[str, str]]:
        objects = set(self.view.objects.keys())
        return objects, dict(self.daemon.client.call("repo.branch", repo=self.repo_id)["branches"])

    async def alive(self, what: str) -> None:
        """The daemon must still answer ``node.whoami`` within the hang bound; else a crash or a hang."""
        from flair_node.api.client import ApiClient

        self.counts["pings"] += 1
        start = time.perf_counter()
        if self.daemon.process.poll() is not None:
            raise DaemonGone(f"the daemon exited with status {self.daemon.process.returncode} during {what}")
        try:
            client = ApiClient.from_home(self.daemon.home, timeout=self.hang_s)
            await trio.to_thread.run_sync(lambda: client.call("node.whoami"))
        except (FlairError, OSError) as exc:
            raise DaemonGone(f"the daemon stopped answering during {what}: {exc!r}") from None
        if time.perf_counter() - start > self.hang_s:
            self.c.tally("live_daemon").hangs += 1

    async def run(self, k: int) -> dict[str, Any]:
        from libp2p.custom_types import TProtocol

        from flair_node.network.gossipsub import GossipSub
        from flair_node.network.host import connect, running_host
        from flair_node.protocol import hello, sync

        async with running_host(self.world.reader) as host, trio.open_nursery() as nursery:
            self.host = host
            self.gossip = GossipSub(host)
            await nursery.start(self.gossip.run)
            await self.gossip.join(announce.topic(self.repo_id), lambda forwarder, data: False)
            host.set_stream_handler(TProtocol(sync.PROTOCOL), self._serve_sync)
            self.peer = await connect(host, self.address)
            cards = await trio.to_thread.run_sync(
                lambda: hello.cards(self.view.all(), self.world.reader, str(host.get_id()), str(self.peer)))
            await hello.greet(host, self.peer, cards)  # known as the reader it is
            with trio.fail_after(20):
                while not self.gossip.peers(announce.topic(self.repo_id)):  # noqa: ASYNC110 - no event to wait on
                    await trio.sleep(0.1)
            rss0 = rss_mb(self.daemon.pid)
            for phase in self.PHASES:  # the same count of valid inputs first: the baseline
                await getattr(self, f"_{phase}")(k, valid=True)
                await self.alive(phase)
            await trio.sleep(1)
            rss1 = rss_mb(self.daemon.pid)
            before = await trio.to_thread.run_sync(self.snapshot)
            self.hostile_replies = True
            for phase in self.PHASES:
                await getattr(self, f"_{phase}")(k, valid=False)
                await self.alive(phase)
            await trio.sleep(2)  # what was queued is taken in
            await self.alive("the peer-facing phases")
            after = await trio.to_thread.run_sync(self.snapshot)
            rss2 = rss_mb(self.daemon.pid)
            status = await trio.to_thread.run_sync(lambda: self.daemon.client.call("node.status"))
            hostile_gossip = self.gossip.status()
            nursery.cancel_scope.cancel()
        stored = sorted(after[0] - before[0])
        moved = {b: h for b, h in after[1].items() if before[1].get(b) != h}
        if stored or moved:
            self.c.tally("live_peer_state").accepted_forged += len(stored) + len(moved)
            print(f"fuzz: live: the daemon took {len(stored)} objects and moved {sorted(moved)}", file=sys.stderr)
        p2p = status.get("p2p", {})
        me = str(self.host.get_id())  # this hostile host, as the daemon's counters name it
        gossip = p2p.get("gossip", {})
        counters = {"bad_announcements": p2p.get("bad_announcements", {}).get(me, 0),
                    "bad_pulls": p2p.get("bad_pulls", {}).get(me, 0),
                    "gossip_bad_peers": gossip.get("bad_peers", {}).get(me, 0),
                    "bitswap": p2p.get("bitswap_peers", {}).get(me, {}),
                    "announcements": p2p.get("announcements", {}),
                    "gossip": {k: v for k, v in gossip.items() if isinstance(v, int)},
                    "hostile_gossip": {k: v for k, v in hostile_gossip.items() if isinstance(v, int)}}
        return {"peer": me, "counters": counters, "baseline_rss_growth_mb": round(rss1 - rss0, 1),
                "daemon_rss_growth_mb": round(rss2 - rss1, 1), "rss_mb": round(rss2, 1),
                "objects_stored": len(stored), "branches_moved": sorted(moved), **self.counts}

    # -- the phases: each sends k inputs, valid (the baseline) or mutated ---------------------------------------

    async def _send(self, target: str, items: list[Any], send: Callable[[Any], Awaitable[str]], valid: bool) -> None:
        for i, item in enumerate(items):
            if valid:
                self.counts["baseline_inputs"] += 1
                with trio.move_on_after(self.hang_s):
                    try:
                        await send(item)
                    except FlairError:
                        pass
            else:
                await self.c.one(f"live_{target}", item, send, hang_s=self.hang_s)
            if i % 100 == 99:
                await self.alive(target)
            progress(f"live {target}{' (valid)' if valid else ''}", i, len(items))

    async def _announcements(self, k: int, *, valid: bool) -> None:
        topic = announce.topic(self.repo_id)

        async def send(data: bytes) -> str:
            await self.gossip.publish(topic, data[:60_000])
            await trio.lowlevel.checkpoint()
            return "sent"

        rng = self.rng
        items = [rng.choice(self.announcements) if valid else
                 fuzz.mutate_announcement(rng, rng.choice(self.announcements), CLASSES, self.world.signers)
                 for _ in range(k)]
        await self._send("announcements", items, send, valid)

    async def _raw(self, protocol: str, payload: bytes, reply: bool) -> bytes:
        """Open a stream of ``protocol`` to the daemon, write ``payload``, read the reply if asked; close."""
        from libp2p.custom_types import TProtocol

        from flair_node.network.host import connect

        if self.peer not in self.host.get_connected_peers():
            await connect(self.host, self.address)  # a ban or a malformed frame may have closed the connection
        try:
            stream = await self.host.new_stream(self.peer, [TProtocol(protocol)])
        except Exception as exc:
            raise RemoteError(f"no {protocol} stream: {exc!r}") from None
        try:
            await stream.write(payload)
            if not reply:
                return b""
            chunks = []
            while True:
                try:
                    data = await stream.read(1 << 16)
                except Exception:  # EOF, reset: the daemon closed it
                    break
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await stream.close()
                except Exception:  # closed from the other side already
                    pass

    async def _meshsub(self, k: int, *, valid: bool) -> None:
        from flair_node.network import gossipsub_wire as wire

        topic = announce.topic(self.repo_id)
        origin, key = self.host.get_id().to_bytes(), self.host.get_private_key()
        publisher = Publisher(origin, key, topic, self.rng)
        seeds = publisher.seeds(self.announcements)

        async def send(body: bytes) -> str:
            await self._raw("/meshsub/1.1.0", wire.frame([body]), reply=False)
            return "sent"

        items = [self.rng.choice(seeds) if valid else fuzz.mutate_protobuf(self.rng, self.rng.choice(seeds))
                 for _ in range(k)]
        await self._send("meshsub", items, send, valid)

    async def _sync_requests(self, k: int, *, valid: bool) -> None:
        from flair_node.protocol import sync

        ids = sorted({hashlib.sha256(encoding.encode(msgpack.unpackb(r, raw=False)["body"])).hexdigest()
                      for _, r in self.records})
        claim = sync.claim(self.world.reader, self.repo_id, str(self.host.get_id()), str(self.peer))
        seeds = [encoding.encode({"op": "heads", "repo": self.repo_id, "as": claim}),
                 encoding.encode({"op": "records", "repo": self.repo_id, "ids": ids[:sync.MAX_IDS], "as": claim})]

        async def send(data: bytes) -> str:
            raw = await self._raw(sync.PROTOCOL, len(data).to_bytes(4, "big") + data, reply=True)
            try:
                answer = msgpack.unpackb(raw[4:], raw=False)
            except Exception:  # nothing, or cut: the daemon refused and closed
                return "refused"
            return "accepted" if isinstance(answer, dict) and "ok" in answer else "refused"

        items = [self.rng.choice(seeds) if valid else fuzz.mutate_msgpack(self.rng, self.rng.choice(seeds))
                 for _ in range(k)]
        await self._send("sync_requests", items, send, valid)

    async def _serve_sync(self, stream: Any) -> None:
        """This host's sync server: honest answers from the daemon's own records, lies once hostile."""
        from flair_node.protocol.sync import SyncServer

        try:
            with trio.fail_after(10):
                head = await stream.read(4)
                length = int.from_bytes(head[:4], "big")
                data = b""
                while len(data) < min(length, 1 << 20):
                    chunk = await stream.read(length - len(data))
                    if not chunk:
                        break
                    data += chunk
                request = encoding.decode(data)
                answer = await SyncServer(self.view).handle(self.daemon_key, request)
                if self.hostile_replies and self.rng.random() < 0.6:
                    answer = lie(self.rng, answer, self.world)
                reply = fuzz.pack({"ok": answer})  # canonical where the lie allows it
                await stream.write(len(reply).to_bytes(4, "big") + reply)
        except Exception as exc:  # a request this host cannot answer: the daemon sees the stream end
            log.debug("hostile sync server: %r", exc)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await stream.close()
                except Exception:  # closed already
                    pass

    async def _sync_replies(self, k: int, *, valid: bool) -> None:
        from flair_node.network.host import full_addrs

        mine = full_addrs(self.host)[0]

        async def send(_: int) -> str:
            await trio.to_thread.run_sync(lambda: self.daemon.client.call("repo.pull", repo=self.repo_id, peer=mine))
            return "accepted"

        await self._send("sync_replies", list(range(k)), send, valid)

    async def _bitswap(self, k: int, *, valid: bool) -> None:
        from flair_node.core.cid import parse_cid
        from flair_node.core.protobuf import varint
        from flair_node.network import bitswap_wire as wire

        cids = [parse_cid(c) for c in self.payloads]
        seeds = [fuzz.unframe(wire.frame(m)) for m in (
            wire.Message(wants=tuple(wire.Want(c, send_dont_have=True) for c in cids)),
            wire.Message(wants=(wire.Want(cids[0], have_only=True),), have=(cids[0],)),
            wire.Message(blocks=((cids[0], self.view.blocks.get(cids[0])),)))]  # unasked: costs the sender

        async def send(body: bytes) -> str:
            await self._raw("/ipfs/bitswap/1.2.0", varint(len(body)) + body, reply=False)
            return "sent"

        items = [self.rng.choice(seeds[:2]) if valid else fuzz.mutate_protobuf(self.rng, self.rng.choice(seeds))
                 for _ in range(k)]
        await self._send("bitswap", items, send, valid)


class DaemonGone(Exception):
    """The daemon exited or stopped answering: a crash."""


def live_api(c: Campaign, daemon: Any, repo_id: RepoId, world: World, rng: random.Random, k: int, root: Path,
             hang_s: float, valid: bool) -> None:
    """JSON-RPC over HTTP (bodies, tokens, paths mutated) and safetensors files given to ``repo.commit``."""
    import http.client
    from urllib.parse import urlsplit

    from flair_node.tensors.safetensors_io import save_bytes

    token = json.loads((daemon.home / "api.json").read_text())["token"]
    url = urlsplit(daemon.url)
    model = root / "live-model.safetensors"
    model.write_bytes(save_bytes(tiny_state(7)))
    seeds = [s for s in jsonrpc_seeds(repo_id, model, world.stranger.public_key)
             if s["method"] not in SKIPPED_METHODS and s["method"] not in ("repo.init", "repo.commit", "repo.invite")]

    def post(item: tuple[bytes, str, str]) -> str:
        body, auth, path = item
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=hang_s * 3)
        try:
            headers = {"content-type": "application/json", **({"authorization": auth} if auth else {})}
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            reply = response.read()
            status = response.status
        finally:
            conn.close()
        try:
            return judge_reply(status, reply, auth == f"Bearer {token}")
        except json.JSONDecodeError:
            return "refused"  # an HTTP refusal with a plain body

    def commit(path: Path) -> str:
        try:
            daemon.client.call("repo.commit", repo=repo_id, weights_path=str(path), message="fuzz", branch="fuzz")
        except FlairError as exc:
            if exc.code == -32603:
                raise InternalErrorReply(f"repo.commit of a mutated file: {exc}", "repo.commit") from None
            raise
        return "accepted"

    daemon.client.call("repo.branch", repo=repo_id, name="fuzz", at="main") if valid else None
    seeds_st = [save_bytes(tiny_state(7)), save_bytes(tiny_state(8))]
    for i in range(k):
        if valid:
            post((json.dumps(rng.choice(seeds)).encode(), f"Bearer {token}", "/"))
        else:
            trio.run(partial(c.one, "live_jsonrpc", fuzz.mutate_jsonrpc(rng, seeds, token), partial(off_loop, post),
                             hang_s=hang_s * 3))
        progress(f"live jsonrpc{' (valid)' if valid else ''}", i, k)
    for i in range(k):
        path = root / f"live-{i % 4}.safetensors"
        path.write_bytes(rng.choice(seeds_st) if valid else fuzz.mutate_safetensors(rng, seeds_st))
        if valid:
            with contextlib.suppress(FlairError):  # a baseline: a refusal is no concern of the campaign's
                commit(path)
        else:
            trio.run(partial(c.one, "live_safetensors", path, partial(off_loop, commit), hang_s=hang_s * 3))
        progress(f"live safetensors{' (valid)' if valid else ''}", i, k)


def run_live(c: Campaign, world: World, rng: random.Random, k: int, root: Path, hang_s: float) -> dict[str, Any]:
    """Start a daemon, give it a repository the hostile reader is invited to, and send ``k`` valid then ``k``
    mutated inputs per protocol (see the module docstring)."""
    from flair_node.tensors.safetensors_io import save_bytes
    from flair_node.testing.daemon import DaemonFailed, running_daemon

    model = root / "daemon-model.safetensors"
    model.write_bytes(save_bytes(tiny_state(0)))
    report: dict[str, Any] = {}
    try:
        with running_daemon(root / "daemon", timeout=60) as daemon:
            client = daemon.client
            repo_id = client.call("repo.init", name="fuzzed", model_path=str(model))["repo"]
            client.call("repo.branch", repo=repo_id, name="exp")
            model.write_bytes(save_bytes(tiny_state(1)))
            client.call("repo.commit", repo=repo_id, weights_path=str(model), message="one", branch="exp")
            client.call("repo.invite", repo=repo_id, member=world.reader.public_key, role="reader")
            live = Live(c, world, rng, daemon, repo_id, root, hang_s)
            try:
                report = trio.run(live.run, k)
                live_api(c, daemon, repo_id, world, rng, k, root, hang_s, valid=True)
                live_api(c, daemon, repo_id, world, rng, k, root, hang_s, valid=False)
                trio.run(live.alive, "the API phases")
            except DaemonGone as exc:
                c.crash("live_daemon", exc, str(exc))
                daemon.killed = True  # it ended already, or is ended now by the block (its own PID)
            report["rss_mb_end"] = round(rss_mb(daemon.pid), 1) if daemon.process.poll() is None else None
            log_text = (daemon.home / "daemon.log").read_text(errors="replace")
            report["daemon_log_tracebacks"] = log_text.count("Traceback (most recent call last)")
    except DaemonFailed as exc:
        c.crash("live_daemon", exc, str(exc)[:300])
    return report
