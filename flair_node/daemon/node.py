"""The node: its home, identity and repositories, and the services that run in one trio nursery.

On start, holding the home's lock, the node makes the home private again (0700) and sweeps what an interrupted run
left in its own stores only (``home.OWN_FOLDERS`` and the files at the top of the home): temp files of
interrupted writes, and scratch folders of proof steps (the worker's plaintext deltas among them). ``HOME/tmp``
(the CLI's and SDK's) and any other folder, such as a localnet's state kept in the home, are never touched.
"""

from __future__ import annotations

import logging
import secrets
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio

from ..api.context import ApiContext
from ..api.methods import build_registry
from ..api.server import ApiServer
from ..core.errors import FlairError
from ..core.ids import Cid, RepoId
from ..network import rpc
from ..network.bitswap import BlockExchange
from ..network.discovery import Kademlia
from ..network.host import full_addrs, running_host
from ..network.kubo import KuboPinner
from ..network.liveness import Liveness
from ..network.relay import Limits, Relays
from ..protocol import sync
from ..protocol.proofs import ezkl_backend
from ..protocol.proofs.circuits import Circuits
from ..protocol.rounds import RoundMemory
from ..storage.atomic import hold_lock, remove_stale_temp_files
from ..storage.repos import RepoSet
from .anchor_service import AnchorService
from .config import NodeConfig
from .discovery_service import DiscoveryService
from .home import Home
from .ownership_service import OwnershipService
from .p2p import P2PService
from .pinning import KuboPinService
from .proof_service import ProofService
from .reachability_service import ReachabilityService
from .registry_service import RegistryService
from .round_service import RoundService

log = logging.getLogger(__name__)


class Node:
    def __init__(self, home: Home, config: NodeConfig) -> None:
        self.home = home
        self.config = config
        self.identity = home.identity()
        self._lock = hold_lock(home.path / "daemon.lock",  # before anything else: one daemon per home
                               f"another flair-node is already running with home {home.path}")
        home.make_private()
        stale = remove_stale_temp_files(home.path, recursive=False)
        stale += sum(remove_stale_temp_files(folder) for folder in home.own_folders if folder.is_dir())
        if stale:
            log.info("removed %d temp files left by an interrupted run", stale)
        scratch = ezkl_backend.remove_scratch(home.path / "proofs")
        if scratch:
            log.info("removed %d proof scratch folders left by an interrupted run", scratch)
        self.api: ApiServer | None = None  # set while the API serves
        self._sync_served: rpc.Served | None = None  # set while the sync protocol is served
        self.repos = RepoSet.on_disk(home.path, self.identity)
        #: What this node's rounds remember (merges checked and held) and the circuits it proves with: one for all
        #: its services, so a merge the peer-to-peer side notes holds the round service's own.
        self.round_memory = RoundMemory(Circuits(home.path / "proofs"))
        self.pinning = KuboPinService(self.repos, KuboPinner(config.ipfs.kubo_api), home.path / "kubo") \
            if config.ipfs.kubo_api else None
        self.p2p: P2PService | None = None  # set while the libp2p host runs
        #: Whether torch and the merge kernel are loaded ahead of need (``_preload``).
        self._tensors: dict[str, Any] = {"preload": "loading" if config.tensors.preload else "off"}
        self.rounds = RoundService(self.repos, self.identity, memory=self.round_memory, on_change=self._changed,
                                   aggregate=config.rounds.aggregate)
        self.proofs = ProofService(self.repos, self.identity, home.path / "proofs" / "verified",
                                   circuits=self.round_memory.circuits,
                                   prove=config.proofs.prove, memory_mb=config.proofs.memory_mb,
                                   on_change=self._changed)
        self.anchoring = AnchorService(self.repos, self.identity, home.path / "anchoring",
                                       cluster=config.chain.cluster, commitment=config.chain.commitment,
                                       on_change=self._changed) \
            if config.chain.cluster else None
        self.ownership = OwnershipService(self.repos, self.identity, home.path / "ownership",
                                          cluster=config.chain.cluster, commitment=config.chain.commitment,
                                          on_change=self._changed) \
            if config.chain.cluster else None
        self.onchain_registry = RegistryService(self.repos, self.identity, cluster=config.chain.cluster,
                                                program=config.chain.registry, commitment=config.chain.commitment) \
            if config.chain.registry else None
        #: What the API's methods work on: this node, with itself as their peer-to-peer side (see ``fetch``).
        self.context = ApiContext(self.identity, self.repos, on_change=self._changed, service_status=self._status,
                                  round_memory=self.round_memory, p2p=self, proofs=self.proofs,
                                  anchoring=self.anchoring, ownership=self.ownership,
                                  chain_registry=self.onchain_registry,
                                  proof_srs=Path(config.proofs.srs) if config.proofs.srs else None,
                                  development_srs=home.path / "proofs" / "development-srs")
        self.registry = build_registry(self.context)

    async def _preload(self) -> None:
        """Load torch and the merge kernel on a thread (``tensors.preload``); a failure only means they are loaded
        when first needed, as without it."""
        began = trio.current_time()
        try:
            await trio.to_thread.run_sync(_warm_up, abandon_on_cancel=True)
        except Exception as exc:  # an import or the kernel failing here fails again, with its error, where needed
            log.warning("torch and the merge kernel did not preload: %s", exc)
            self._tensors = {"preload": "failed"}
            return
        self._tensors = {"preload": "loaded", "seconds": round(trio.current_time() - began, 2)}
        log.info("torch and the merge kernel loaded in %.1f s", self._tensors["seconds"])

    def _changed(self) -> None:
        if self.pinning is not None:
            self.pinning.wake()
        if self.p2p is not None:
            self.p2p.wake()

    def _status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"kubo": self.pinning.status()} if self.pinning is not None else {}
        if self.api is not None:
            status["api"] = self.api.status()
        status["rounds"] = self.rounds.status()
        status["tensors"] = dict(self._tensors)
        status["proofs"] = self.proofs.status()
        status["chain"] = self.anchoring.status() if self.anchoring is not None else {"cluster": ""}
        if self.ownership is not None:
            status["chain"]["ownership"] = dict(self.ownership.counts)
        if self.onchain_registry is not None:
            status["chain"]["registry"] = self.onchain_registry.status()
        if self.p2p is not None:
            bitswap = self.p2p.exchange.status()
            status["p2p"] = {"addrs": full_addrs(self.p2p.host), "refused_blocks": bitswap["refused_blocks"],
                             "duplicate_blocks": bitswap["duplicate_blocks"],
                             "duplicate_bytes": bitswap["duplicate_bytes"], "bitswap_peers": bitswap["peers"],
                             "bitswap_streams": self.p2p.exchange.stream_status(),
                             **self.p2p.status()}
            if self._sync_served is not None:
                status["p2p"]["sync_server"] = self._sync_served.status()
        return status

    def _online(self) -> P2PService:
        if self.p2p is None:
            raise FlairError("the libp2p host is not running")
        return self.p2p

    # -- the API's peer-to-peer side (``api.context.PeerToPeer``): the service while the libp2p host runs --------

    async def fetch(self, cid: Cid, peer: str, max_size: int) -> int:
        p2p = self._online()
        return await p2p.exchange.fetch_dag(cid, await p2p.dial(peer), max_size=max_size)

    async def pull(self, repo: str, peer: str | None) -> dict[str, Any]:
        return await self._online().pull_from(RepoId(repo), peer)

    def arrivals(self) -> Iterable[tuple[str, str, str, int, int]]:
        return self._online().arrivals

    def announced(self) -> Iterable[tuple[str, str, int, int]]:
        return self._online().announced

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the API until cancelled; ``task_status.started`` gets the API URL once api.json is written."""
        token = secrets.token_urlsafe(32)
        server = ApiServer(self.registry, token, host=self.config.api.host, port=self.config.api.port,
                           max_body=self.config.api.max_request_bytes)
        self.api = server
        try:
            async with running_host(self.home.transport(), self.config.p2p.listen, mdns=self.config.p2p.mdns) as host, \
                    trio.open_nursery() as nursery:
                exchange = BlockExchange(host, self.repos.blocks)
                await nursery.start(exchange.run)
                self._sync_served = sync.serve(host, self.repos)
                settings = self.config.p2p
                relays = Relays(host, serve=settings.relay_service,
                                limits=Limits(reservations=settings.relay_reservations,
                                              circuit_mb=settings.relay_circuit_mb, circuit_s=settings.relay_circuit_s))
                await nursery.start(relays.run)
                liveness = Liveness(host)
                await nursery.start(liveness.run)
                p2p = P2PService(host, exchange, self.repos, memory=self.round_memory, bootstrap=settings.bootstrap,
                                 sync_interval=settings.sync_interval, dial=relays.connect)
                dht = None
                if settings.dht != "off":
                    # what it publishes as its addresses is what reachability found (``reach``, made next)
                    dht = Kademlia(host, server=settings.dht == "server", addresses=lambda: reach.addresses())
                    await nursery.start(dht.run)
                reach = ReachabilityService(host, relays, dht, auto_dht=settings.dht == "auto")
                await nursery.start(reach.run)
                p2p.reachability, p2p.liveness = reach, liveness
                if dht is not None:
                    p2p.discovery = DiscoveryService(host, dht, self.repos, member_peers=p2p.member_peers,
                                                     interval=settings.sync_interval, dial=relays.connect)
                    await nursery.start(p2p.discovery.run)
                await nursery.start(p2p.run)
                self.p2p = p2p
                if self.pinning is not None:
                    await nursery.start(self.pinning.run)
                await nursery.start(self.rounds.run)
                await nursery.start(self.proofs.run)
                if self.anchoring is not None:
                    await nursery.start(self.anchoring.run)
                if self.ownership is not None:
                    await nursery.start(self.ownership.run)
                if self.onchain_registry is not None:
                    await nursery.start(self.onchain_registry.run)
                url = await nursery.start(server.run)
                self.home.write_api_file(url, token)
                log.info("flair-node %s serving %s (home %s)", self.identity.public_key, url, self.home.path)
                task_status.started(url)
                if self.config.tensors.preload:
                    nursery.start_soon(self._preload)
        finally:
            self.p2p = None
            self.api = None
            self.home.remove_api_file()

    def close(self) -> None:
        self._lock.close()


def _warm_up() -> None:
    from ..tensors.fixedpoint import warm_up  # imports torch: on the thread that runs this

    warm_up()


async def run_until_signalled(node: Node) -> None:
    """Run ``node`` until SIGINT or SIGTERM, then stop cleanly (api.json removed, nothing half-written)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)

            async def wait_for_signal() -> None:
                async for signum in signals:
                    log.info("received %s, stopping", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(wait_for_signal)
