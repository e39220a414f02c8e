"""A network of real ``flair-node`` processes on 127.0.0.1, for the multi-node demo, benchmarks and tests.

    with running_cluster(tmp_path, ["ana", "ben", "cy"]) as net:
        repo = net.create_repo("digits", model_state, policy={"buffer": 3, "timeout_s": 10})
        net.nodes[1].repo(repo).contribute(trained, examples=300)
        merged = net.wait_for_merge(repo, since=head)

Each node has its own home under the root folder and dials every node started before it, so the nodes form
one mesh. The first node owns the repositories ``create_repo`` makes; the others are invited and clone it.
Every process is started through ``running_daemon`` and stopped by its PID when the block ends.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.errors import FlairError
from ..sdk import Repo
from ..storage.atomic import atomic_write
from ..tensors.safetensors_io import save_bytes
from .daemon import DaemonProcess, ensure_home, running_daemon

DEFAULT_BRANCH = "main"


def configure(home: Path, bootstrap: Sequence[str] = (), *, sync_interval: float = 1.0,
              aggregate: bool = True, chain: str = "", registry: str = "", listen: str = "",
              relay_service: bool = False, dht: str = "", preload: bool = False) -> Path:
    """Give ``home`` an identity and a config that dials ``bootstrap`` and catches up every ``sync_interval``
    seconds; ``aggregate = False`` keeps its round service from merging; ``chain`` is the Solana cluster it
    anchors its merges on (none by default), ``registry`` the flair_registry program's address there; ``listen``
    its libp2p listen address (default: a free port on 127.0.0.1), ``relay_service`` whether it relays for
    others, ``dht`` its DHT mode (default: auto), ``preload`` whether it loads torch and the merge kernel as it
    starts (``tensors.preload``). Returns ``home``."""
    ensure_home(home)
    peers = ", ".join(json.dumps(a) for a in bootstrap)
    p2p = (f"listen = {json.dumps(listen)}\n" if listen else "") + ("relay_service = true\n" if relay_service else "") \
        + (f"dht = {json.dumps(dht)}\n" if dht else "")
    (home / "config.toml").write_text(f"[p2p]\nbootstrap = [{peers}]\nsync_interval = {sync_interval}\n{p2p}\n"
                                      f"[rounds]\naggregate = {'true' if aggregate else 'false'}\n"
                                      f"[tensors]\npreload = {'true' if preload else 'false'}\n"
                                      + (f"\n[chain]\ncluster = {json.dumps(chain)}\n" if chain else "")
                                      + (f"registry = {json.dumps(registry)}\n" if registry else ""))
    return home


def address(daemon: DaemonProcess) -> str:
    """The daemon's first libp2p listen address, ending in ``/p2p/<peer id>``."""
    return str(daemon.client.call("node.status")["p2p"]["addrs"][0])


def public_key(daemon: DaemonProcess) -> str:
    return str(daemon.client.call("node.whoami")["public_key"])


def wait_until(check: Callable[[], object], what: str, timeout: float = 40.0, every: float = 0.2) -> None:
    """Poll ``check`` until it is true; ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise TimeoutError(f"not within {timeout:g} s: {what}")


@dataclass(frozen=True)
class ClusterNode:
    name: str
    daemon: DaemonProcess
    key: str
    address: str

    def repo(self, repo: str) -> Repo:
        """The SDK's handle on ``repo`` through this node's API."""
        return Repo.connect(self.daemon.home, repo)

    def head(self, repo: str, branch: str = DEFAULT_BRANCH) -> str | None:
        head = self.daemon.client.call("repo.branch", repo=repo)["branches"].get(branch)
        return None if head is None else str(head)


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[ClusterNode, ...]

    @property
    def owner(self) -> ClusterNode:
        return self.nodes[0]

    def node(self, key: str) -> ClusterNode:
        """The node whose identity is ``key``."""
        for node in self.nodes:
            if node.key == key:
                return node
        raise KeyError(key)

    def create_repo(self, name: str, state: Mapping[str, torch.Tensor], *, role: str = "maintainer",
                    policy: Mapping[str, Any] | None = None, timeout: float = 60.0) -> str:
        """A repository on the first node, commit 0 holding ``state``; every other node is invited with ``role``
        and clones it; ``policy`` (``repo.policy`` parameters) is set and awaited on every node. Returns its id."""
        path = self.owner.daemon.home / "tmp" / f"{name}-initial.safetensors"
        path.parent.mkdir(mode=0o700, exist_ok=True)
        atomic_write(path, save_bytes({k: v.detach().contiguous().clone() for k, v in state.items()}), mode=0o600)
        try:
            repo = str(self.owner.daemon.client.call("repo.init", name=name, model_path=str(path))["repo"])
        finally:
            path.unlink(missing_ok=True)
        for node in self.nodes[1:]:
            self.owner.daemon.client.call("repo.invite", repo=repo, member=node.key, role=role)
        for node in self.nodes[1:]:
            node.daemon.client.call("repo.pull", repo=repo, peer=self.owner.address)
        if policy:
            wanted = dict(self.owner.daemon.client.call("repo.policy", repo=repo, **policy))
            wanted.pop("development_srs", None)  # said to the owner only
            wait_until(lambda: all(n.daemon.client.call("repo.policy", repo=repo) == wanted for n in self.nodes),
                       f"the policy of {name} on every node", timeout)
            if wanted.get("proof_srs"):  # members need the SRS to commit: it comes with their next pull
                wait_until(lambda: all(n.daemon.client.call("block.has", cid=wanted["proof_srs"])["complete"]
                                       for n in self.nodes), f"the SRS of {name} on every node", timeout)
        return repo

    def heads(self, repo: str, branch: str = DEFAULT_BRANCH) -> list[str | None]:
        return [node.head(repo, branch) for node in self.nodes]

    def wait_for_merge(self, repo: str, since: str | None, branch: str = DEFAULT_BRANCH, *,
                       timeout: float = 60.0, nodes: Sequence[ClusterNode] | None = None) -> dict[str, Any]:
        """Wait until every node (or ``nodes``) has the same head of ``branch``, other than ``since``; return that
        commit as ``repo.show`` gives it."""
        among = list(nodes or self.nodes)

        def agreed() -> bool:
            heads = {node.head(repo, branch) for node in among}
            return len(heads) == 1 and heads != {since}

        wait_until(agreed, f"a new head of {branch} that every node follows", timeout, every=0.1)
        head = among[0].head(repo, branch)
        return dict(among[0].daemon.client.call("repo.show", repo=repo, commit=head))


@contextlib.contextmanager
def running_cluster(root: Path, names: Sequence[str], *, sync_interval: float = 1.0,
                    aggregate: bool | Sequence[bool] = True, chain: str = "", registry: str = "",
                    on_start: Callable[[ClusterNode], None] | None = None) -> Iterator[Cluster]:
    """Start one daemon per name, homes ``root/<name>``, each dialing every earlier one; stop them all on exit.
    ``aggregate`` may differ per node; ``chain`` is the Solana cluster they anchor on and ``registry`` the
    flair_registry program's address there; ``on_start`` is called as each node comes up (for progress)."""
    if not names or len(set(names)) != len(names):
        raise FlairError(f"a network needs distinct node names (got {list(names)})")
    flags = [aggregate] * len(names) if isinstance(aggregate, bool) else list(aggregate)
    if len(flags) != len(names):
        raise FlairError(f"{len(flags)} aggregate flags for {len(names)} nodes")
    with contextlib.ExitStack() as stack:
        nodes: list[ClusterNode] = []
        for name, flag in zip(names, flags, strict=True):
            home = configure(Path(root) / name, [n.address for n in nodes], sync_interval=sync_interval,
                             aggregate=flag, chain=chain, registry=registry)
            daemon = stack.enter_context(running_daemon(home))
            nodes.append(ClusterNode(name, daemon, public_key(daemon), address(daemon)))
            if on_start is not None:
                on_start(nodes[-1])
        yield Cluster(tuple(nodes))
