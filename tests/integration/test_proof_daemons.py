"""Proven rounds across real flair-node processes on 127.0.0.1: the owner turns proofs on (a development SRS,
which members fetch as blocks), members contribute with KZG commitments, the entitled aggregator merges, proves
its merge in a worker process and announces the proofs; every node fetches them by CID, verifies them against
the published commitments and records the result, which ``flair verify`` shows."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from test_p2p_daemons import model, team

from flair_node.core.errors import FlairError
from flair_node.testing.cluster import address, configure, wait_until
from flair_node.testing.daemon import running_daemon

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def head(daemon, repo):
    return daemon.client.call("repo.branch", repo=repo)["branches"].get("main")


def contributed(tmp_path, node, repo, seed):
    """Contribute weights 0.01 away from the head (EZKL proves changes below 1.0 per weight); False while the
    node still waits for the SRS the policy names."""
    base = torch.randn(64, generator=torch.Generator().manual_seed(0))
    path = tmp_path / f"c{seed}.safetensors"
    save_file({"w": base + 0.01 * torch.randn(64, generator=torch.Generator().manual_seed(seed))}, str(path))
    try:
        node.client.call("repo.contribute", repo=repo, weights_path=str(path), examples=100 * seed)
    except FlairError as exc:
        if "has not arrived" in str(exc):
            return False
        raise
    return True


def test_the_aggregator_proves_its_merge_and_every_node_verifies_it(tmp_path):
    with running_daemon(configure(tmp_path / "a")) as a:
        boot = [address(a)]
        with running_daemon(configure(tmp_path / "b", boot)) as b, \
                running_daemon(configure(tmp_path / "c", [*boot, address(b)])) as c:
            nodes = (a, b, c)
            model(tmp_path / "m0.safetensors", 0)
            repo = team(tmp_path, a, [b, c], role="maintainer")
            policy = a.client.call("repo.policy", repo=repo, buffer=2, proof_chunk=16)
            assert policy["proof_scheme"] == "kzg" and policy["development_srs"] and policy["proof_srs"]
            wait_until(lambda: all(n.client.call("repo.policy", repo=repo)["proof_srs"] == policy["proof_srs"]
                                   for n in nodes), "the proven policy everywhere")
            start = head(a, repo)
            wait_until(lambda: contributed(tmp_path, b, repo, 1), "b's contribution (once the SRS is there)")
            wait_until(lambda: contributed(tmp_path, c, repo, 2), "c's contribution (once the SRS is there)")
            wait_until(lambda: all(head(n, repo) not in (None, start) for n in nodes), "the merge everywhere", 60)
            merge = head(a, repo)
            assert {head(n, repo) for n in nodes} == {merge}

            def verified() -> bool:
                return all(n.client.call("repo.verify", repo=repo, commit=merge)["status"] == "verified"
                           for n in nodes)
            wait_until(verified, "the merge's proofs verified on every node", 120)
            found = b.client.call("repo.verify", repo=repo, commit=merge)
            author = a.client.call("repo.show", repo=repo, commit=merge)["author"]
            assert found["chunks"] == found["total"] == 4 and found["author"] == author  # 64 values in chunks of 16
            assert sum(n.client.call("node.status")["proofs"].get("proven", 0) for n in nodes) == 1

            # the CLI says the same; a commit that is not a proven merge says so
            shown = subprocess.run([sys.executable, "-m", "flair_node.cli.main", "--home", str(tmp_path / "c"),
                                    "verify", repo, merge], capture_output=True, text=True, check=True).stdout
            assert "verified: the merge is the weighted sum of its contributions (all 4 chunks proven)" in shown
            assert c.client.call("repo.verify", repo=repo, commit=start)["status"] == "unproven"
