"""Anchoring across real processes: a `flair-node localnet` chain and two flair-node daemons configured with it.
The round's aggregator anchors its merge (memo + commit NFT) on its own; the chain holds exactly what
`flair provenance` reports, and the other member checks the anchor record on chain itself. While the chain is
down the anchor is retried with backoff from the node's persisted state, and it lands once the chain is back."""

import re
import socket

import pytest
import trio
from solders.pubkey import Pubkey
from test_p2p_daemons import team
from test_round_daemons import contribute, head

from flair_node.protocol.anchoring import AnchorRecord, parse_anchor_memo, verify_commit_nft
from flair_node.protocol.anchoring.chain import Chain
from flair_node.testing.cluster import address, configure, wait_until
from flair_node.testing.daemon import running_daemon
from flair_node.testing.localnet import running_localnet

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def provenance(node, repo, commit):
    return node.client.call("repo.provenance", repo=repo, commit=commit)


def on_chain(url, mint):
    async def read():
        chain = Chain(url)
        try:
            return await chain.account(mint)
        finally:
            await chain.close()
    return trio.run(read)


def anchored_round(tmp_path, nodes, repo, seed):
    """Both nodes contribute; wait for the merge; return (merge, its aggregator's daemon)."""
    a, b = nodes.values()
    start = head(a, repo)
    contribute(tmp_path, a, repo, seed, 100)
    contribute(tmp_path, b, repo, seed + 1, 300)
    wait_until(lambda: head(a, repo) != start and head(b, repo) == head(a, repo), "the merge on both nodes", 60)
    merge = head(a, repo)
    return merge, nodes[a.client.call("repo.show", repo=repo, commit=merge)["author"]]


def check_on_chain(url, node, repo, merge, round_number):
    found = provenance(node, repo, merge)
    record = parse_anchor_memo(found["memo"].encode())
    assert re.fullmatch("[0-9a-f]{32}", record.branch)  # the branch's tag: the name is not for the chain
    assert record == AnchorRecord(repo=repo, branch=record.branch, round=round_number, commit=merge, proof=None)
    landed = on_chain(url, found["mint"])
    assert found["wallet"] != node.client.call("node.whoami")["public_key"]  # its wallet here, not its member key
    verify_commit_nft(mint=Pubkey.from_string(found["mint"]), owner=Pubkey.from_string(landed.owner),
                      data=landed.data, record=record, aggregator=Pubkey.from_string(found["wallet"]))
    assert found["explorer"]["transaction"].startswith("https://explorer.solana.com/tx/")


def test_the_aggregator_anchors_its_merge_and_retries_while_the_chain_is_down(tmp_path):
    folder, port = tmp_path / "chain", free_port()
    chain = running_localnet(folder, port)
    url = chain.__enter__()
    try:
        with running_daemon(configure(tmp_path / "a", chain=url)) as a:
            with running_daemon(configure(tmp_path / "b", [address(a)], chain=url)) as b:
                nodes = {n.client.call("node.whoami")["public_key"]: n for n in (a, b)}
                repo = team(tmp_path, a, [b], role="maintainer")
                a.client.call("repo.policy", repo=repo, buffer=2, deadline_s=60, timeout_s=6)
                wait_until(lambda: all(n.client.call("repo.policy", repo=repo)["buffer"] == 2 for n in (a, b)),
                           "the policy everywhere")

                # round 1: the aggregator anchors its merge; the chain holds exactly what it reports
                merge, aggregator = anchored_round(tmp_path, nodes, repo, 1)
                wait_until(lambda: provenance(aggregator, repo, merge)["status"] == "anchored", "the anchor", 60)
                check_on_chain(url, aggregator, repo, merge, 1)
                # the other member gets the anchor record and checks the claim on chain itself
                other = b if aggregator is a else a
                wait_until(lambda: provenance(other, repo, merge)["status"] == "verified", "the anchor checked", 60)
                checked, made = provenance(other, repo, merge), provenance(aggregator, repo, merge)
                assert (checked["mint"], checked["signature"], checked["memo"]) == (
                    made["mint"], made["signature"], made["memo"])

                # round 2 while the chain is down: the anchor is retried with backoff; it lands once it is back
                chain.__exit__(None, None, None)
                chain = None
                merge, aggregator = anchored_round(tmp_path, nodes, repo, 3)
                wait_until(lambda: provenance(aggregator, repo, merge).get("attempts", 0) >= 1, "a failed attempt", 30)
                failed = provenance(aggregator, repo, merge)
                assert failed["status"] == "retrying" and "failed" in failed["error"]
                chain = running_localnet(folder, port)
                chain.__enter__()
                wait_until(lambda: provenance(aggregator, repo, merge)["status"] == "anchored", "the late anchor", 60)
                check_on_chain(url, aggregator, repo, merge, 2)
                other = b if aggregator is a else a
                wait_until(lambda: provenance(other, repo, merge)["status"] == "verified", "the late anchor checked",
                           60)
    finally:
        if chain is not None:
            chain.__exit__(None, None, None)
