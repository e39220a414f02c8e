"""Pinning to a user's Kubo: same CIDs there, retried from a persisted queue, never blocking a commit."""

import json
import os
import time

import pytest
import torch
from kubo_fake import FakeKubo
from safetensors.torch import save_file

from flair_node.core.errors import RemoteError
from flair_node.core.identity import Identity
from flair_node.network.kubo import KuboPinner
from flair_node.storage import unixfs
from flair_node.storage.repos import RepoSet
from flair_node.testing.commit_graph import tiny_state
from flair_node.testing.daemon import running_daemon


def test_a_payload_dag_lands_in_kubo_under_the_same_cids():
    repos = RepoSet.in_memory(Identity.generate())
    repo = repos.create("big", {"w": torch.randn(600_000)})  # 2.4 MB: a two-level DAG
    commit = repo.commit(repo.head("main"))
    with FakeKubo() as kubo:
        pinner = KuboPinner(kubo.multiaddr)
        pinner.pin_dag(commit.payload.cid, unixfs.walk(repos.blocks, commit.payload.cid,
                                                       max_size=commit.payload.size))
        pinner.close()
        assert kubo.pins == {commit.payload.cid}
        assert set(kubo.blocks) == {cid.text for cid, _ in unixfs.walk(repos.blocks, commit.payload.cid,
                                                                  max_size=commit.payload.size)}
        assert len(kubo.blocks) == 6  # 4 pieces of 512 KiB, the rest (with the header), and the root
        kubo.failing = True
        with pytest.raises(RemoteError, match="fake Kubo is down"):
            KuboPinner(kubo.multiaddr).pin_dag(commit.payload.cid, [])


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.integration
def test_daemon_retries_kubo_from_a_persisted_queue(tmp_path):
    home = tmp_path / "home"
    model = tmp_path / "m.safetensors"
    save_file(tiny_state(0), str(model))
    with FakeKubo() as kubo:
        kubo.failing = True
        os.makedirs(home)
        with running_daemon(home) as daemon:  # creates the identity; config written next
            pass
        (home / "config.toml").write_text(f'[ipfs]\nkubo_api = "{kubo.multiaddr}"\n')
        with running_daemon(home) as daemon:
            started = time.monotonic()
            daemon.client.call("repo.init", name="pinned", model_path=str(model))
            assert time.monotonic() - started < 5  # a down Kubo never holds a commit back
            assert wait_for(lambda: daemon.client.call("node.status")["kubo"]["failures"] >= 1)
            assert daemon.client.call("node.status")["kubo"]["pending"] == 1
            daemon.kill_hard()  # crash with the pin still owed
        kubo.failing = False
        with running_daemon(home) as daemon:
            assert wait_for(lambda: daemon.client.call("node.status")["kubo"]["pinned"] == 1)
            status = daemon.client.call("node.status")["kubo"]
            assert status["pending"] == 0
            head = daemon.client.call("repo.log", repo="pinned")["commits"][0]
            assert kubo.pins == {head["payload"]["cid"]}
        with running_daemon(home) as daemon:  # confirmed pins are remembered across restarts
            time.sleep(0.5)
            assert daemon.client.call("node.status")["kubo"] == {**status, "pinned": 0, "failures": 0,
                                                                 "last_error": None}
    assert json.loads((home / "identity.json").read_text())
