"""Repository ownership across real processes: a `flair-node localnet` chain and two daemons configured with it.
`flair init --chain` mints the repository's token; `flair handover` moves it to the other member on chain, whose
daemon checks the transfer itself before it takes the new owner; `flair owner` shows the token, the handover and
the membership changes written on chain as memos, with explorer links."""

import json
import subprocess
import sys

import pytest
from test_anchor_daemons import free_port
from test_p2p_daemons import model

from flair_node.testing.cluster import address, configure, wait_until
from flair_node.testing.cluster import public_key as key
from flair_node.testing.daemon import running_daemon
from flair_node.testing.localnet import running_localnet

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def flair(home, *args):
    proc = subprocess.run([sys.executable, "-m", "flair_node.cli.main", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"flair {' '.join(args)} failed ({proc.returncode}): {proc.stderr}"
    return proc.stdout


def test_init_chain_mints_the_token_and_a_handover_moves_ownership_on_every_node(tmp_path):
    with running_localnet(tmp_path / "chain", free_port()) as url, \
            running_daemon(configure(tmp_path / "a", chain=url)) as a, \
            running_daemon(configure(tmp_path / "b", [address(a)], chain=url)) as b:
        made = json.loads(flair(a.home, "init", "owned", "--model", model(tmp_path / "m0.safetensors", 0),
                                "--chain", "--json"))
        repo, token = made["repo"], made["ownership"]["token"]
        assert made["ownership"]["owner"] == key(a) and made["ownership"]["owner_holds_token"] is True
        a.client.call("repo.invite", repo=repo, member=key(b), role="maintainer")
        b.client.call("repo.pull", repo=repo, peer=address(a))
        seen = b.client.call("repo.owner", repo=repo)
        assert seen["token"] == token and seen["owner"] == key(a)

        text = flair(a.home, "handover", repo, key(b))
        assert f"owner        {key(b)}" in text and "handover     change 3" in text
        wait_until(lambda: b.client.call("repo.owner", repo=repo)["owner"] == key(b), "b owning the repository", 30)
        b_status = b.client.call("node.status")["chain"]["ownership"]
        assert b_status.get("checked", 0) >= 2 and not b_status.get("refused")  # the token change and handover
        assert b.client.call("repo.owner", repo=repo)["owner_holds_token"] is True
        b.client.call("repo.policy", repo=repo, buffer=2)  # the new owner sets policy; the old one cannot
        with pytest.raises(Exception, match="only the owner"):
            a.client.call("repo.policy", repo=repo, buffer=3)

        # the changes each owner signed are written on chain as memos
        wait_until(lambda: [m["status"] for m in a.client.call("repo.owner", repo=repo)["memos"]]
                   == ["anchored"] * 3, "a's memos on chain", 30)
        wait_until(lambda: [m["status"] for m in b.client.call("repo.owner", repo=repo)["memos"]]
                   == ["anchored"], "b's policy change on chain", 30)
        shown = flair(b.home, "owner", repo)
        assert "held by the owner on chain" in shown and "https://explorer.solana.com/address/" in shown
