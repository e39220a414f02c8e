"""Real flair-node processes on the emulated internet (``flair_node.testing.wan``): a public node serving as
bootstrap, DHT server and relay, and members in sites behind NAT, each given only the public node's address.
Members clone by repository id, train a round from three sites, end up directly connected where the NATs allow
hole punching (relayed where they do not), a site cut off for 30 s catches up once its link returns, and a
transfer cut in the middle ends from another member that holds the commit."""

import concurrent.futures
import contextlib
import os
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from flair_node.testing import wan
from flair_node.testing.cluster import address, configure, wait_until
from flair_node.testing.cluster import public_key as key
from flair_node.testing.daemon import running_daemon

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(wan.unavailable() is not None, reason=str(wan.unavailable()))]

PORT = 4001  # a fixed listen port: hole punching predicts the public port from it
PARAMETERS = 1_000_000  # 4 MB a commit: 1.6 s on a 20 Mbit/s link
BIG = 6_000_000  # 24 MB: 10 s on a 20 Mbit/s link


@contextlib.contextmanager
def internet(tmp_path, sites, unsolicited="drop"):
    """The testbed, its public node (bootstrap, DHT server, relay) and one daemon per site."""
    with wan.Testbed(sites_count=sites, rate_mbit=20, unsolicited=unsolicited) as net, contextlib.ExitStack() as stack:
        hub = stack.enter_context(running_daemon(
            configure(tmp_path / "hub", listen=f"/ip4/{net.public_address}/tcp/{PORT}", relay_service=True,
                      dht="server"),
            namespace=net.public))
        boot = [address(hub)]
        nodes = [stack.enter_context(running_daemon(
            configure(tmp_path / f"site{site.index}", boot, listen=f"/ip4/{site.address}/tcp/{PORT}"),
            namespace=site.host)) for site in net.sites]
        for node in nodes:  # each learns it cannot be dialled, and takes a slot on the relay
            wait_until(lambda n=node: reachability(n)["reserved"], "a relay slot for each site", 30)
        yield net, hub, nodes


def reachability(node):
    return node.client.call("node.status")["p2p"]["reachability"]


def kinds(node, other):
    """The kinds of ``node``'s connections to ``other``."""
    peer = address(other).rsplit("/p2p/", 1)[1]
    return {c["kind"] for p in node.client.call("node.status")["p2p"]["peers"] if p["peer"] == peer
            for c in p["connections"]}


def head(node, repo):
    return node.client.call("repo.branch", repo=repo)["branches"].get("main")


def blocks(node):
    """How many blocks ``node`` holds on disk."""
    return sum(len(files) for _, _, files in os.walk(node.home / "blocks"))


def weights(tmp_path, seed, parameters=PARAMETERS):
    path = tmp_path / f"w{seed}.safetensors"
    save_file({"w": torch.randn(parameters, generator=torch.Generator().manual_seed(seed))}, str(path))
    return str(path)


def test_members_behind_nat_clone_by_id_train_a_round_connect_directly_and_survive_a_cut(tmp_path):
    with internet(tmp_path, 3) as (net, hub, (a, b, c)):
        assert reachability(hub)["reachability"] == "public"
        assert {reachability(n)["reachability"] for n in (a, b, c)} == {"private"}
        repo = a.client.call("repo.init", name="net", model_path=weights(tmp_path, 0))["repo"]
        for node in (b, c):
            a.client.call("repo.invite", repo=repo, member=key(node), role="maintainer")
        for node in (b, c):  # no address: the DHT names a's relayed address, and the relay joins them
            assert node.client.call("repo.pull", repo=repo)["peer"] == address(a).rsplit("/p2p/", 1)[1]

        # a round from three sites: the elected aggregator merges, and every node follows
        a.client.call("repo.policy", repo=repo, buffer=3, deadline_s=120, timeout_s=20)
        wait_until(lambda: all(n.client.call("repo.policy", repo=repo)["buffer"] == 3 for n in (a, b, c)),
                   "the policy on every node", 30)
        start = head(a, repo)
        contributions = {n.client.call("repo.contribute", repo=repo, weights_path=weights(tmp_path, seed),
                                       examples=100)["id"] for seed, n in ((1, a), (2, b), (3, c))}
        wait_until(lambda: len({head(n, repo) for n in (a, b, c)}) == 1 and head(a, repo) != start,
                   "the round merged and followed on every node", 90)
        merged = a.client.call("repo.show", repo=repo, commit=head(a, repo))
        assert merged["kind"] == "round" and set(merged["parents"][1:]) == contributions

        # these NATs drop unsolicited SYNs, so hole punching upgrades each relayed pair
        wait_until(lambda: "hole-punched" in kinds(b, a) and "hole-punched" in kinds(c, a),
                   "hole-punched connections from b and c to a", 90)
        peers = net.run(net.sites[1].host, [sys.executable, "-m", "flair_node.cli.main", "--home", str(b.home),
                                            "peers"], timeout=30).stdout.decode()
        assert "reachability: private; published as: /ip4/100.64.0.1/" in peers and "hole-punched /ip4/" in peers

        # c's link is cut for 30 s while a commits; once it is back, c catches up without anyone's help
        net.cut(net.sites[2])
        a.client.call("repo.branch", repo=repo, name="exp")
        moved = a.client.call("repo.commit", repo=repo, weights_path=weights(tmp_path, 9), message="while cut",
                              branch="exp")["id"]
        time.sleep(30)
        assert c.client.call("repo.branch", repo=repo)["branches"].get("exp") != moved
        net.restore(net.sites[2])
        restored = time.monotonic()
        # the sync interval, 10 s, and the commit's 1.6 s on the link
        wait_until(lambda: c.client.call("repo.branch", repo=repo)["branches"].get("exp") == moved,
                   "c caught up within the sync interval plus 10 s, and the transfer", 13)
        print(f"c converged {time.monotonic() - restored:.1f} s after its link returned")

        # a transfer cut in the middle: c clones a large repository from a alone (b's link is cut), then a's link
        # is cut and b's returns; c asks b, a member holding it too, for the blocks still missing, and ends the
        # clone while a is still away
        big = a.client.call("repo.init", name="big", model_path=weights(tmp_path, 10, BIG))["repo"]
        for node in (b, c):
            a.client.call("repo.invite", repo=big, member=key(node), role="contributor")
        assert b.client.call("repo.pull", repo=big)["commits"] == 1
        time.sleep(2)  # b tells c its member key in big (a greeting), before its link is cut
        net.cut(net.sites[1])
        before = blocks(c)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            clone = pool.submit(c.client.call, "repo.pull", repo=big)
            wait_until(lambda: blocks(c) > before + 10, "c cloning from a, the only member it reaches", 60,
                       every=0.1)
            net.cut(net.sites[0])
            net.restore(net.sites[1])
            cut = time.monotonic()
            clone.result(timeout=90)
            ended = time.monotonic() - cut
            # c holds the commit while a is still away; which of c's pulls counts it (the clone's, or the
            # catch-up's from b once b is back) is whichever stores it first
            held = head(c, big)
            assert held is not None and held == head(b, big)
        print(f"c ended the clone {ended:.1f} s after a's link was cut")
        net.restore(net.sites[0])


def test_behind_nats_that_refuse_unsolicited_syns_members_stay_relayed_and_still_clone(tmp_path):
    with internet(tmp_path, 2, unsolicited="reject") as (net, hub, (a, b)):
        repo = a.client.call("repo.init", name="net", model_path=weights(tmp_path, 0))["repo"]
        a.client.call("repo.invite", repo=repo, member=key(b), role="contributor")
        assert b.client.call("repo.pull", repo=repo)["commits"] == 1
        time.sleep(15)  # time for hole punching to try, and fail: the routers answer its SYNs with resets
        assert kinds(b, a) == {"relayed"}
        commit = a.client.call("repo.commit", repo=repo, weights_path=weights(tmp_path, 5), message="relayed",
                               branch="main")["id"]
        wait_until(lambda: head(b, repo) == commit, "a commit carried over the relay", 20)
