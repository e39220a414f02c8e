"""Real flair-node processes on 127.0.0.1 finding each other by repository, with no address given: an invited
member clones by id through the DHT, a member that joins later is found by the others, and a node that was not
invited finds nothing."""

import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from flair_node.core.errors import NotFound
from flair_node.testing.cluster import address, configure, wait_until
from flair_node.testing.cluster import public_key as key
from flair_node.testing.daemon import running_daemon

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def discovery(daemon):
    return daemon.client.call("node.status")["p2p"]["discovery"]


def member_peers(daemon, repo):
    cards = daemon.client.call("node.status")["p2p"]["peers"]
    return {p["peer"] for p in cards if p["key"]}


def test_members_clone_by_repository_id_and_find_each_other_and_strangers_find_nothing(tmp_path):
    # the hub is a DHT server holding no repository: the only address anyone is given
    with running_daemon(configure(tmp_path / "hub")) as hub:
        boot = [address(hub)]
        with running_daemon(configure(tmp_path / "owner", boot)) as owner, \
                running_daemon(configure(tmp_path / "ben", boot)) as ben, \
                running_daemon(configure(tmp_path / "cy", boot)) as cy, \
                running_daemon(configure(tmp_path / "dee", boot)) as dee:
            path = tmp_path / "m0.safetensors"
            save_file({"w": torch.randn(64, generator=torch.Generator().manual_seed(0))}, str(path))
            repo = owner.client.call("repo.init", name="net", model_path=str(path))["repo"]
            owner.client.call("repo.invite", repo=repo, member=key(ben), role="contributor")

            started = time.monotonic()
            cloned = ben.client.call("repo.pull", repo=repo)  # no address
            assert cloned["peer"] == address(owner).rsplit("/p2p/", 1)[1]
            assert cloned["changes"] >= 1 and ben.client.call("repo.branch", repo=repo)["branches"]["main"]
            print(f"clone by id: {time.monotonic() - started:.2f} s")

            # a member invited later clones the same way (through the CLI), and the members it did not clone from
            # find it
            owner.client.call("repo.invite", repo=repo, member=key(cy), role="contributor")
            cli = [sys.executable, "-m", "flair_node.cli.main", "--home", str(cy.home)]
            cloned = subprocess.run([*cli, "clone", repo], capture_output=True, text=True, timeout=120)
            assert cloned.returncode == 0 and "found through the DHT" in cloned.stdout, cloned.stderr
            cy_peer = address(cy).rsplit("/p2p/", 1)[1]
            ben_peer = address(ben).rsplit("/p2p/", 1)[1]
            wait_until(lambda: cy_peer in member_peers(ben, repo) and ben_peer in member_peers(cy, repo),
                       "ben and cy connected and proved members to each other", timeout=30)
            # the clone's lookup, then one for more of the repository's nodes (cy has fewer than it wants)
            wait_until(lambda: discovery(cy)["lookups"] >= 2, "cy looking up more members", timeout=10)

            # dee was never invited: no node provides its invitation locator, and the members' one is unknown to it
            with pytest.raises(NotFound, match="no node serving"):
                dee.client.call("repo.pull", repo=repo)
            assert repo not in [r["id"] for r in dee.client.call("repo.list")]
            status = discovery(owner)
            assert status["mode"] == "server" and status["published"] >= 1 and status["routing_table"] >= 1
