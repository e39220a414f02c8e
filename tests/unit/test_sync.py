"""Catch-up between nodes: a member pulls what it lacks, everything checked before it is stored, and nodes
that pulled from each other agree on every head. Run over direct store access and over real libp2p hosts."""

import dataclasses

import pytest
import torch
import trio

from flair_node.core.errors import Forbidden
from flair_node.core.identity import Identity
from flair_node.core.ids import RepoId
from flair_node.network import rpc
from flair_node.network.bitswap import BlockExchange
from flair_node.network.host import connect, full_addrs, peer_id, running_host
from flair_node.protocol import sync
from flair_node.protocol.rounds import RoundMemory
from flair_node.protocol.sync import PROTOCOL, PeerSource, SyncServer, claim, claimed, pull
from flair_node.storage.repos import RepoSet
from flair_node.testing.commit_graph import tiny_state
from flair_node.testing.sync import LocalSource

OWNER, ALICE, MALLORY = Identity.generate(), Identity.generate(), Identity.generate()


def owner_repo():
    a = RepoSet.in_memory(OWNER)
    repo = a.create("digits", tiny_state(0))
    repo.create_branch(OWNER, "exp", repo.head("main"))
    repo.commit_weights(OWNER, tiny_state(1), message="one", branch="exp")
    repo.commit_weights(OWNER, tiny_state(2), message="two", branch="exp")
    repo.invite(OWNER, ALICE.public_key, "contributor")
    return a, repo


def same_view(x, y):
    assert x.branches() == y.branches()
    assert x.members.current().head == y.members.current().head


async def test_a_member_clones_and_both_sides_converge():
    a, repo = owner_repo()
    b = RepoSet.in_memory(ALICE)
    result = await pull(b, repo.id, LocalSource(a, ALICE.public_key, b), memory=RoundMemory())
    assert (result.changes, result.commits, sorted(result.moved), result.refused) == (1, 3, ["exp", "main"], {})
    mine = b.open(repo.id)
    same_view(mine, repo)
    assert torch.equal(mine.materialize(mine.head("exp"))["w"], tiny_state(2)["w"])

    mine.create_branch(ALICE, "alice", mine.head("exp"))
    mine.commit_weights(ALICE, tiny_state(3), message="site A", branch="alice")
    back = await pull(a, repo.id, LocalSource(b, OWNER.public_key, a), memory=RoundMemory())
    assert (back.commits, back.moved) == (1, ["alice"])
    same_view(mine, repo)
    again = await pull(a, repo.id, LocalSource(b, OWNER.public_key, a), memory=RoundMemory())
    assert (again.commits, again.moved, again.changes) == (0, [], 0)


async def test_concurrent_moves_of_one_branch_end_the_same_everywhere():
    a, repo = owner_repo()
    repo.invite(OWNER, ALICE.public_key, "maintainer")
    b = RepoSet.in_memory(ALICE)
    await pull(b, repo.id, LocalSource(a, ALICE.public_key, b), memory=RoundMemory())
    mine = b.open(repo.id)
    repo.commit_weights(OWNER, tiny_state(5), message="owner's main")  # both move main, apart
    mine.commit_weights(ALICE, tiny_state(6), message="alice's main")
    await pull(a, repo.id, LocalSource(b, OWNER.public_key, a), memory=RoundMemory())
    await pull(b, repo.id, LocalSource(a, ALICE.public_key, b), memory=RoundMemory())
    same_view(mine, repo)


async def test_non_members_get_nothing():
    a, repo = owner_repo()
    with pytest.raises(Forbidden, match="members only"):
        await SyncServer(a).handle(MALLORY.public_key, {"op": "heads", "repo": repo.id})
    with pytest.raises(Forbidden):
        await SyncServer(a).handle(None, {"op": "records", "repo": repo.id, "ids": [repo.id]})


async def test_a_commit_by_a_non_member_is_refused_with_what_is_built_on_it():
    a, repo = owner_repo()
    head = repo.commit(repo.head("exp"))
    forged = dataclasses.replace(head, parents=(head.id,), author=MALLORY.public_key, message="forged",
                                 signature=b"").signed(MALLORY)
    repo.objects.put(forged.id, forged.encode())  # planted in the owner's store, bypassing every check
    repo._move_branch(OWNER, "exp", forged.id, expected=head.id, epoch=0, timestamp=head.timestamp_ms + 10)
    b = RepoSet.in_memory(ALICE)
    result = await pull(b, repo.id, LocalSource(a, ALICE.public_key, b), memory=RoundMemory())
    assert "is not a member" in result.refused[forged.id]
    assert "refused commit" in result.refused[repo.branch_move("exp").id]
    mine = b.open(repo.id)
    assert mine.objects.has(head.id) and not mine.objects.has(forged.id)  # the rest arrived
    assert list(mine.branches()) == ["main"]  # exp's only move offered points at the forgery


def test_a_sync_claim_holds_only_for_the_pair_of_peers_it_names():
    made = claim(ALICE, RepoId("a" * 64), "asker", "server")
    request = {"op": "heads", "repo": "a" * 64, "as": made}
    assert claimed(request, "asker", "server") == ALICE.public_key
    assert claimed(request, "mallory", "server") is None  # replayed by another peer
    assert claimed(request, "asker", "elsewhere") is None  # or by the server, to another one
    assert claimed({**request, "repo": "b" * 64}, "asker", "server") is None  # or for another repository
    assert claimed({**request, "as": {"key": MALLORY.public_key, "sig": made["sig"]}}, "asker", "server") is None
    assert claimed({"op": "heads", "repo": "a" * 64}, "asker", "server") is None


@pytest.mark.integration
async def test_a_member_clones_over_libp2p():
    """Hosts run on transport keys of their own: the server learns the asker's membership from its claim."""
    a, repo = owner_repo()
    b = RepoSet.in_memory(ALICE)
    with trio.fail_after(30):
        async with running_host(Identity.generate()) as a_host, running_host(Identity.generate()) as b_host, \
                trio.open_nursery() as nursery:
            assert a_host.get_id() != peer_id(OWNER.public_key)
            sync.serve(a_host, a)
            await nursery.start(BlockExchange(a_host, a.blocks).run)
            exchange = BlockExchange(b_host, b.blocks)
            await nursery.start(exchange.run)
            peer = await connect(b_host, full_addrs(a_host)[0])
            result = await pull(b, repo.id, PeerSource(b_host, peer, exchange, ALICE), memory=RoundMemory())
            assert (result.commits, result.refused) == (3, {})
            same_view(b.open(repo.id), repo)

            async with running_host(Identity.generate()) as m_host:  # a non-member over the network: refused
                m_peer = await connect(m_host, full_addrs(a_host)[0])
                with pytest.raises(Forbidden, match="members only"):
                    await pull(RepoSet.in_memory(MALLORY), repo.id, PeerSource(m_host, m_peer, exchange, MALLORY),
                               memory=RoundMemory())
                stolen = claim(ALICE, repo.id, str(b_host.get_id()), str(a_host.get_id()))  # Alice's, replayed
                with pytest.raises(Forbidden, match="members only"):
                    await rpc.request(m_host, m_peer, PROTOCOL, {"op": "heads", "repo": repo.id, "as": stolen})
            nursery.cancel_scope.cancel()


async def two_nodes_with_a_pending_contribution():
    """The owner's node and Alice's (a maintainer), in sync, with one contribution waiting and K = 1: returns
    the aggregator's and the other's (identity, RepoSet, Repository), and the round."""
    from flair_node.core.round_rules import RoundPolicy
    from flair_node.protocol import rounds

    memory = RoundMemory()
    a = RepoSet.in_memory(OWNER)
    repo = a.create("digits", tiny_state(0))
    repo.invite(OWNER, ALICE.public_key, "maintainer")
    repo.set_policy(OWNER, RoundPolicy(buffer=1))
    repo.contribute(OWNER, tiny_state(1), examples=10)
    b = RepoSet.in_memory(ALICE)
    await pull(b, repo.id, LocalSource(a, ALICE.public_key, b), memory=RoundMemory())
    nodes = {OWNER.public_key: (OWNER, a, repo), ALICE.public_key: (ALICE, b, b.open(repo.id))}
    current = rounds.view(repo, "main", memory=memory)
    aggregator = nodes.pop(current.aggregator(current.opened_ms + 1))
    (other,) = nodes.values()
    return aggregator, other, current


async def test_a_pull_follows_a_verified_round_merge_and_refuses_a_forged_one():
    from flair_node.protocol import round_merges, rounds

    memory = RoundMemory()
    (who, theirs, repo), (me, mine, my_repo), current = await two_nodes_with_a_pending_contribution()
    state, meta = round_merges.derive(repo, current, current.pending, memory=memory)
    forged = repo.write_round(who, {k: v + 1 for k, v in state.items()}, branch="main",
                              parents=(current.head, *round_merges.meta_parents(meta)), meta=meta, message="forged")
    result = await pull(mine, repo.id, LocalSource(theirs, me.public_key, mine), memory=RoundMemory())
    assert "main" not in result.moved
    assert "not what its inputs merge to" in result.refused[repo.branch_move("main").id]
    assert my_repo.head("main") == current.head and my_repo.objects.has(forged.id)  # kept, not followed

    (who, theirs, repo), (me, mine, my_repo), current = await two_nodes_with_a_pending_contribution()
    merged = rounds.merge(repo, who, "main", memory=memory)
    result = await pull(mine, repo.id, LocalSource(theirs, me.public_key, mine), memory=RoundMemory())
    assert "main" in result.moved and my_repo.head("main") == merged.id
