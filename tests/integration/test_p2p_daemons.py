"""Real flair-node processes on 127.0.0.1 gossiping and catching up: a commit made on one node appears on all;
forged and replayed announcements change nothing anywhere; a node killed with -9 catches up when it comes
back; two groups that could not reach each other converge once they can."""

import time

import pytest
import torch
import trio
from safetensors.torch import save_file

from flair_node.core.cid import RAW, cid_for
from flair_node.core.identity import Identity
from flair_node.core.objects import Commit, Payload
from flair_node.core.refs import BranchMove
from flair_node.protocol import announce
from flair_node.storage.stores import DiskObjectStore
from flair_node.testing.cluster import address, configure, wait_until
from flair_node.testing.cluster import public_key as key
from flair_node.testing.daemon import running_daemon
from flair_node.testing.hostile import hostile_peer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def branches(daemon, repo):
    return daemon.client.call("repo.branch", repo=repo)["branches"]


def model(path, seed):
    save_file({"w": torch.randn(64, generator=torch.Generator().manual_seed(seed))}, str(path))
    return str(path)


def team(tmp_path, owner, others, role="contributor"):
    """A repository on ``owner``, every other node invited with ``role`` and cloned from the owner."""
    repo = owner.client.call("repo.init", name="net", model_path=model(tmp_path / "m0.safetensors", 0))["repo"]
    for node in others:
        owner.client.call("repo.invite", repo=repo, member=key(node), role=role)
    for node in others:
        node.client.call("repo.pull", repo=repo, peer=address(owner))
    return repo


def commit(tmp_path, node, repo, branch, seed):
    path = model(tmp_path / f"m{seed}.safetensors", seed)
    if branch not in branches(node, repo):
        node.client.call("repo.branch", repo=repo, name=branch)
    return node.client.call("repo.commit", repo=repo, weights_path=path, message=f"seed {seed}",
                            branch=branch)["id"]


def test_a_commit_reaches_every_node_and_forgeries_reach_none(tmp_path):
    with running_daemon(configure(tmp_path / "a")) as a:
        boot = [address(a)]
        with running_daemon(configure(tmp_path / "b", boot)) as b, \
                running_daemon(configure(tmp_path / "c", boot)) as c, \
                running_daemon(configure(tmp_path / "d", boot)) as d:
            nodes = [a, b, c, d]
            repo = team(tmp_path, a, [b, c, d])
            made = commit(tmp_path, b, repo, "b-work", 1)
            wait_until(lambda: all(branches(n, repo).get("b-work") == made for n in nodes), "b's commit everywhere")

            objects = DiskObjectStore(a.home / "objects")
            move_id = (a.home / "repos" / repo / "refs" / "b-work").read_text().strip()
            genuine = [("commit", objects.get(made)), ("move", objects.get(move_id))]
            forged, replayed = trio.run(forge_and_replay, boot[0], repo, a.client.call("repo.log", repo=repo),
                                        genuine)
            time.sleep(3)  # gossip and catch-up rounds pass
            for node in nodes:
                assert branches(node, repo) == branches(a, repo)
                assert "mallory" not in branches(node, repo)
                log = node.client.call("repo.log", repo=repo)["commits"]
                assert forged not in {c["id"] for c in log}
            status = a.client.call("node.status")["p2p"]
            assert status["gossip"]["unadmitted"] == 1 + replayed  # a non-member is not even read
            assert status["bad_announcements"] == {}


async def forge_and_replay(boot, repo, log, genuine):
    """A non-member pushes onto the repository's topic its own commit and move, then replays a member's genuine
    announcement. Returns the forged commit's id and how many replays it sent."""
    mallory = Identity.generate()
    head = log["commits"][0]
    forged = Commit(repo=repo, parents=(head["id"],), author=mallory.public_key, timestamp_ms=head["timestamp_ms"] + 1,
                    kind="commit", message="forged", payload=Payload(cid=cid_for(RAW, b"x"), codec="bitdelta-v1",
                                                                       size=1)).signed(mallory)
    move = BranchMove(repo=repo, branch="mallory", commit=forged.id, previous="", author=mallory.public_key,
                      epoch=0, timestamp_ms=head["timestamp_ms"] + 2).signed(mallory)
    heard = [announce.pack(repo, genuine, 60_000)[0]]
    with trio.fail_after(30):
        async with hostile_peer(mallory) as peer:
            await peer.connect(boot)
            await peer.push(boot, announce.topic(repo), [
                announce.pack(repo, [("commit", forged.encode()), ("move", move.encode())], 60_000)[0], *heard])
            await trio.sleep(1)
    return forged.id, len(heard)


def test_a_node_killed_with_9_catches_up_when_it_returns(tmp_path):
    with running_daemon(configure(tmp_path / "a")) as a:
        with running_daemon(configure(tmp_path / "b", [address(a)])) as b:
            repo = team(tmp_path, a, [b], role="maintainer")
            b.kill_hard()
        heads = [commit(tmp_path, a, repo, "main", seed) for seed in (1, 2)]
        with running_daemon(configure(tmp_path / "b", [address(a)])) as b:
            wait_until(lambda: branches(b, repo).get("main") == heads[-1], "b back on a's head")
            assert b.client.call("repo.fsck", repo=repo)["ok"]


def test_partitioned_groups_converge_once_healed(tmp_path):
    with running_daemon(configure(tmp_path / "a")) as a, running_daemon(configure(tmp_path / "b")) as b:
        a_addr = address(a)
        b.client.call("repo.list")
        with running_daemon(configure(tmp_path / "c")) as c, running_daemon(configure(tmp_path / "d")) as d:
            repo = team(tmp_path, a, [b, c, d], role="maintainer")
        # c and d come back knowing only each other: a partition.
        with running_daemon(configure(tmp_path / "d")) as d, \
                running_daemon(configure(tmp_path / "c", [address(d)])) as c:
            commit(tmp_path, a, repo, "main", 11)
            commit(tmp_path, b, repo, "left", 12)
            commit(tmp_path, c, repo, "main", 13)
            commit(tmp_path, d, repo, "right", 14)
            wait_until(lambda: "right" in branches(c, repo) and "left" in branches(a, repo), "each side in step")
            assert "right" not in branches(a, repo) and "left" not in branches(c, repo)
            c.client.call("repo.pull", repo=repo, peer=a_addr)  # healed: c reaches a
            nodes = [a, b, c, d]
            wait_until(lambda: all(branches(n, repo) == branches(a, repo) for n in nodes)
                       and {"left", "right"} <= set(branches(a, repo)), "the same heads everywhere")
