"""What the API's handlers work on: one node's identity and repositories, and the daemon's services they reach.

Every handler of ``api.methods`` takes an ``ApiContext`` as first argument. The daemon builds one (``daemon.node``)
with its services; a test or a tool builds one with just an identity and repositories, and the methods that need
a missing service answer a ``FlairError`` saying so. The services are typed here as ``Protocol``s -- what the API
needs of them, nothing more -- so this layer never imports ``daemon/``, which sits above it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

from ..core.errors import FlairError, InvalidInput
from ..core.identity import Identity
from ..core.ids import Cid, CommitId
from ..protocol.rounds import RoundMemory
from ..storage.repo import Repository
from ..storage.repos import RepoSet
from ..tensors import heap

T = TypeVar("T")


class PeerToPeer(Protocol):
    """What the daemon's peer-to-peer side offers the API (its methods raise while the libp2p host is down)."""

    async def fetch(self, cid: Cid, peer: str, max_size: int) -> int:
        """Fetch the DAG under ``cid`` from the peer at multiaddr ``peer``; how many blocks came."""
        ...

    async def pull(self, repo: str, peer: str | None) -> dict[str, Any]:
        """Catch repository ``repo`` (a full id) up with the peer at multiaddr ``peer``, or with one discovery
        finds (none given)."""
        ...

    def arrivals(self) -> Iterable[tuple[str, str, str, int, int]]:
        """(kind, record id, branch or "", signed ms, arrived ms) of records lately taken from gossip, oldest first."""
        ...

    def announced(self) -> Iterable[tuple[str, str, int, int]]:
        """(kind, record id, queued ms, published ms) of records this node lately announced, oldest first."""
        ...


class Proofs(Protocol):
    """What the daemon's proof service offers the API: its verdicts on the proofs of round merges."""

    def result(self, repo: Repository, merge: CommitId) -> dict[str, Any] | None:
        """What the service found of the proofs of ``merge``, if it checked them."""
        ...

    def verify(self, repo: Repository, merge: CommitId) -> dict[str, Any]:
        """Check the proofs of ``merge`` now and record the verdict (blocking: call it off the event loop)."""
        ...


class Anchoring(Protocol):
    """What the daemon's anchor service offers the API: what it knows of a round merge's anchor on Solana."""

    def provenance(self, repo: Repository, merge: CommitId) -> dict[str, Any] | None:
        """The anchor of ``merge``, with explorer links; None if the service never tried it."""
        ...


class Ownership(Protocol):
    """What the daemon's ownership service offers the API: minting and handing over a repository's token."""

    async def mint(self, repo: Repository) -> None:
        """Mint ``repo``'s ownership token to this node (its owner) and record it."""
        ...

    async def hand_over(self, repo: Repository, member: str) -> None:
        """Move ``repo``'s token to current member ``member`` on chain and record the handover."""
        ...

    async def claim(self, repo: Repository, signature: str) -> None:
        """Record the handover to this node that transaction ``signature`` made elsewhere."""
        ...

    async def describe(self, repo: Repository) -> dict[str, Any]:
        """``repo``'s owner, token, handovers and membership memos, with explorer links."""
        ...


class ChainRegistry(Protocol):
    """What the daemon's service for the flair_registry program offers the API."""

    async def describe(self, repo: Repository) -> dict[str, Any]:
        """The program's accounts for ``repo`` next to this node's view of it."""
        ...


@dataclass(frozen=True)
class ApiContext:
    """One node as its API handlers see it.

    ``on_change`` runs after anything is committed (the daemon wakes its announcer and pinner); ``service_status``
    adds the daemon's services' reports to ``node.status``. ``round_memory`` is what the node's rounds remember and
    the circuits they commit with (``protocol.rounds.RoundMemory``): the daemon passes its own, shared with its round
    service and peer-to-peer side, so ``round.merge`` here holds back as they do. ``proof_srs`` is the node's
    production SRS file (config ``proofs.srs``) and ``development_srs`` the folder where development ones are made
    when it has none (default: a private temporary folder, made on first use). A service left ``None`` is one this
    node does not run: the methods that need it say so (``need_p2p``, ...).
    """

    identity: Identity
    repos: RepoSet
    on_change: Callable[[], None] = lambda: None
    service_status: Callable[[], dict[str, Any]] = dict
    round_memory: RoundMemory = field(default_factory=RoundMemory)
    p2p: PeerToPeer | None = None
    proofs: Proofs | None = None
    anchoring: Anchoring | None = None
    ownership: Ownership | None = None
    chain_registry: ChainRegistry | None = None
    proof_srs: Path | None = None
    development_srs: Path | None = None
    _made: dict[str, Path] = field(default_factory=dict, init=False, repr=False, compare=False)

    # -- the services, or a clear error -------------------------------------------------------------------

    def need_p2p(self) -> PeerToPeer:
        if self.p2p is None:
            raise FlairError("this node runs no peer-to-peer services")
        return self.p2p

    def need_proofs(self) -> Proofs:
        if self.proofs is None:
            raise FlairError("this node runs no proof service")
        return self.proofs

    def need_ownership(self) -> Ownership:
        if self.ownership is None:
            raise InvalidInput("this node has no chain.cluster: set one in its config to mint or move ownership "
                               "tokens")
        return self.ownership

    def need_chain_registry(self) -> ChainRegistry:
        if self.chain_registry is None:
            raise InvalidInput("this node has no chain.registry: set the flair_registry program's address in its "
                               "config")
        return self.chain_registry

    def development_folder(self) -> Path:
        """Where development SRS files are made: ``development_srs``, else a private folder made on first use."""
        if self.development_srs is not None:
            return self.development_srs
        if "srs" not in self._made:
            self._made["srs"] = Path(tempfile.mkdtemp(prefix="flair-srs-"))
        return self._made["srs"]

    # -- running work -------------------------------------------------------------------------------------

    async def off_thread(self, fn: Callable[[], T]) -> T:
        """``fn()`` in a worker thread: hashing, tensor arithmetic and fsync never block the event loop. The heaps
        are trimmed after it, on that thread (``tensors.heap.trim``): the node goes back to near its idle size."""

        def run() -> T:
            try:
                return fn()
            finally:
                heap.trim()

        return await trio.to_thread.run_sync(run)

    async def changing(self, fn: Callable[[], T]) -> T:
        """``off_thread(fn)`` for work that signs or stores something, then ``on_change``."""
        result = await self.off_thread(fn)
        self.on_change()
        return result


__all__ = ["Anchoring", "ApiContext", "ChainRegistry", "Ownership", "PeerToPeer", "Proofs"]
