"""A non-member with a front-row seat (issue 18): a stranger's host connected to every node of a repository that
proves and anchors its rounds, subscribed to the repository's topic (its id is public on chain), asking every node
for the repository's heads, reading the chain, and fetching over Bitswap the one block the chain names (the NFT's
metadata). Through a whole round, and a commit on a branch whose name, message and metric are secret, none of
those strings, nor any member's key as Flair spells it, is in any byte it received, decrypted off its
connections (``testing.hostile.wiretap``), nor in what the chain holds of the round: the anchor is signed, paid
for and its NFT held by the aggregator's wallet in the repository, a key derived from its member key.

What it does learn, and the test checks it is all: that the nodes exist (their libp2p identities), and the
sizes and timing of what flows. The nodes' libp2p identities are transport keys of their own
(``network.host``), which tell the stranger neither who they are nor of which repository they are members."""

import struct

import pytest
import trio
from test_p2p_daemons import model, team
from test_proof_daemons import contributed

from flair_node.core.errors import FlairError
from flair_node.core.identity import public_key_bytes
from flair_node.core.ids import Cid
from flair_node.network import rpc
from flair_node.network.bitswap import BlockExchange
from flair_node.network.host import peer_from_text
from flair_node.protocol import announce, sync
from flair_node.protocol.anchoring import parse_anchor_memo
from flair_node.protocol.anchoring.chain import Chain
from flair_node.protocol.anchoring.token2022 import parse_mint
from flair_node.storage import unixfs
from flair_node.storage.stores import MemoryObjectStore
from flair_node.testing.cluster import address, configure, wait_until
from flair_node.testing.daemon import running_daemon
from flair_node.testing.hostile import hostile_peer, wiretap
from flair_node.testing.localnet import running_localnet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BRANCH, MESSAGE, METRIC, VALUE = "kestrel-q7-branch", "kestrel q7 message", "kestrel_q7_metric", 0.731259


def head(daemon, repo, branch="main"):
    return daemon.client.call("repo.branch", repo=repo)["branches"].get(branch)


def secret_round(tmp_path, nodes, repo) -> dict:
    """A secret branch, then a proven round on main, anchored and checked everywhere; what the chain names."""
    a, b, c = nodes
    a.client.call("repo.branch", repo=repo, name=BRANCH)
    weights = model(tmp_path / "secret.safetensors", 9)
    secret = a.client.call("repo.commit", repo=repo, weights_path=weights, message=MESSAGE, branch=BRANCH,
                           metrics={METRIC: VALUE})["id"]
    wait_until(lambda: all(head(n, repo, BRANCH) == secret for n in nodes), "the secret branch everywhere")
    start = head(a, repo)
    wait_until(lambda: contributed(tmp_path, b, repo, 1), "b's contribution (once the SRS is there)")
    wait_until(lambda: contributed(tmp_path, c, repo, 2), "c's contribution (once the SRS is there)")
    wait_until(lambda: all(head(n, repo) not in (None, start) for n in nodes), "the merge everywhere", 60)
    merge = head(a, repo)
    wait_until(lambda: all(n.client.call("repo.verify", repo=repo, commit=merge)["status"] == "verified"
                           for n in nodes), "the merge's proofs verified everywhere", 180)
    author = a.client.call("repo.show", repo=repo, commit=merge)["author"]
    aggregator = next(n for n in nodes if n.client.call("node.whoami")["public_key"] == author)
    wait_until(lambda: all(n.client.call("repo.provenance", repo=repo, commit=merge)["status"]
                           in ("anchored", "verified") for n in nodes), "the anchor made and checked", 120)
    return {"provenance": aggregator.client.call("repo.provenance", repo=repo, commit=merge),
            "aggregator": address(aggregator)}


async def stranger(tmp_path, url, nodes, repo) -> dict:
    """The non-member's whole visit; what it saw."""
    seen: dict = {"refused": []}
    with wiretap() as heard, trio.fail_after(600):
        async with hostile_peer() as eve:
            for node in nodes:
                await eve.connect(address(node))
            await eve.gossip.join(announce.topic(repo), lambda forwarder, data: True)
            for node in nodes:  # the sync protocol, as any peer may ask it
                try:
                    await rpc.request(eve.host, peer_from_text(address(node).rsplit("/p2p/", 1)[-1]), sync.PROTOCOL,
                                      {"op": "heads", "repo": repo})
                except FlairError as exc:
                    seen["refused"].append(str(exc))
            found = await trio.to_thread.run_sync(secret_round, tmp_path, nodes, repo)
            chain = Chain(url)
            try:
                landed = await chain.transaction(found["provenance"]["signature"])
                mint = await chain.account(found["provenance"]["mint"])
            finally:
                await chain.close()
            assert landed is not None and mint is not None
            uri = parse_mint(mint.data).metadata.uri
            blocks = unixfs.BlockStore(MemoryObjectStore())
            exchange = BlockExchange(eve.host, blocks)
            async with trio.open_nursery() as nursery:
                await nursery.start(exchange.run)
                cid = Cid(uri.removeprefix("ipfs://"))
                await exchange.fetch_dag(cid, peer_from_text(found["aggregator"].rsplit("/p2p/", 1)[-1]),
                                         max_size=1 << 16)
                nursery.cancel_scope.cancel()
            seen["metadata"] = unixfs.cat(blocks, cid, max_size=1 << 16)
            signers = [k.encode() for k in landed.signers]
            seen["chain"] = b"".join([*landed.memos, mint.data, seen["metadata"], *signers])
            seen["signers"] = landed.signers
            seen["memo"] = parse_anchor_memo(landed.memos[-1])
            seen["mesh"] = eve.gossip.peers(announce.topic(repo))
            seen["gossip"] = eve.gossip.status()
    seen["heard"] = b"".join(heard)
    return seen


def test_a_non_member_connected_to_every_node_learns_nothing_of_the_repository(tmp_path):
    folder = tmp_path / "chain"
    with running_localnet(folder) as url, running_daemon(configure(tmp_path / "a", chain=url)) as a:
        boot = [address(a)]
        with running_daemon(configure(tmp_path / "b", boot, chain=url)) as b, \
                running_daemon(configure(tmp_path / "c", [*boot, address(b)], chain=url)) as c:
            nodes = (a, b, c)
            model(tmp_path / "m0.safetensors", 0)
            repo = team(tmp_path, a, [b, c], role="maintainer")
            a.client.call("repo.policy", repo=repo, buffer=2, proof_chunk=16)
            wait_until(lambda: all(n.client.call("repo.policy", repo=repo)["proof_srs"] for n in nodes),
                       "the proven policy everywhere")
            keys = [n.client.call("node.whoami")["public_key"] for n in nodes]

            seen = trio.run(stranger, tmp_path, url, nodes, repo)

            heard, chain = seen["heard"], seen["chain"]
            assert repo.encode() in heard and seen["metadata"] in heard  # the tap hears Bitswap's payloads
            assert len(seen["refused"]) == 3 and all("members only" in why for why in seen["refused"])
            assert seen["mesh"] == [] and seen["gossip"]["delivered"] == 0  # not one announcement
            secrets = [BRANCH, MESSAGE, METRIC, repr(VALUE), *keys]
            for secret in secrets:
                assert secret.encode() not in heard, secret
                assert secret.encode() not in chain, secret
            for packed in (struct.pack(">d", VALUE), struct.pack("<d", VALUE)):  # the metric as msgpack holds it
                assert packed not in heard and packed not in chain
            for key in keys:  # nor the member keys' bytes: a node's peer id is its transport key, not its member key
                assert public_key_bytes(key) not in heard, key
                assert public_key_bytes(key) not in chain, key  # the NFT's authority is the aggregator's wallet
            assert seen["signers"] and not set(seen["signers"]) & set(keys)  # the anchor is paid by that wallet
            assert seen["memo"].repo == repo and seen["memo"].branch not in (BRANCH, "main")
