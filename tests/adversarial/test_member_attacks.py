"""Members who cheat (issue 16, findings 3, 4 and 10): each test performs the attack, then checks that nothing
was accepted, on every path a record comes in by (gossip's ``announce.check``, a pull, ``repo.ingest.accept_*``, the
node's own API), and, against a real daemon, that it still answers and its counters name the peer.

- Finding 3: a member moves another member's contribution branch, or points several at one commit.
- Finding 4: a removed member dates a contribution before its removal, on a head made after it.
- Finding 10: a new payload key is sealed to a member whose role has expired.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
import trio
from safetensors.torch import save_file

from flair_node.core import crypto
from flair_node.core.errors import Forbidden, IntegrityError, NotAMember
from flair_node.core.identity import Identity
from flair_node.core.ids import CommitId, RecordId, RepoId
from flair_node.core.membership import MembershipChange, SealedKey, check_move_target
from flair_node.core.objects import Commit, Payload, check_commit_time
from flair_node.core.refs import MAX_CLOCK_SKEW_MS, BranchMove, contribution_branch
from flair_node.network.bitswap import BlockExchange
from flair_node.network.gossipsub import GossipSub
from flair_node.network.host import connect, full_addrs, running_host
from flair_node.protocol import announce, hello, rounds, sync
from flair_node.protocol.rounds import RoundMemory
from flair_node.storage import unixfs
from flair_node.storage.repo import Repository, now_ms
from flair_node.storage.repos import RepoSet
from flair_node.storage.stores import DiskObjectStore
from flair_node.testing.cluster import address, configure, wait_until
from flair_node.testing.commit_graph import tiny_state
from flair_node.testing.daemon import running_daemon
from flair_node.testing.sync import LocalSource

OWNER, ANA, BEN, CY = (Identity.generate() for _ in range(4))


def shift(state: dict[str, torch.Tensor], by: float) -> dict[str, torch.Tensor]:
    return {k: v + by for k, v in state.items()}


def team() -> tuple[RepoSet, Repository]:
    """The owner's node with a repository; Ana, Ben and Cy are contributors."""
    node = RepoSet.in_memory(OWNER)
    repo = node.create("digits", tiny_state(0))
    for member in (ANA, BEN, CY):
        repo.invite(OWNER, member.public_key, "contributor")
    return node, repo


async def clone(who: Identity, source: RepoSet, repo_id: RepoId) -> RepoSet:
    """``who``'s node, with what it pulled of ``repo_id`` from ``source``."""
    node = RepoSet.in_memory(who)
    await sync.pull(node, repo_id, LocalSource(source, who.public_key, node), memory=RoundMemory())
    return node


def signed_move(who: Identity, repo: Repository, branch: str, commit: str, *, at: int | None = None,
                previous: str = "") -> BranchMove:
    return BranchMove(repo=repo.id, branch=branch, commit=CommitId(commit), previous=previous,
                      author=who.public_key, epoch=repo.members.current().epoch,
                      timestamp_ms=now_ms() if at is None else at).signed(who)


def plant(node: RepoSet, repo_id: RepoId, move: BranchMove) -> None:
    """Write ``move`` into a node's own stores past every check: a member's node modified to serve it."""
    repo = node.open_id(repo_id)
    node.objects.put(move.id, move.encode())
    repo.refs.compare_and_swap(move.branch, repo.refs.get(move.branch), RecordId(move.id))


def pending_authors(repo: Repository) -> list[str]:
    memory = rounds.RoundMemory()
    return sorted(c.author for c in rounds.view(repo, "main", memory=memory).pending)


# -- finding 3: contribution branches are their holder's ----------------------------------------------------


async def test_no_one_but_its_holder_moves_a_contribution_branch():
    owner_node, repo = team()
    ana = await clone(ANA, owner_node, repo.id)
    theirs = ana.open_id(repo.id).contribute(ANA, shift(tiny_state(0), 1.0), examples=10)
    await sync.pull(owner_node, repo.id, LocalSource(ana, OWNER.public_key, owner_node), memory=RoundMemory())
    anas_branch = contribution_branch("main", ANA.public_key)
    assert repo.branches()[anas_branch] == theirs.id

    ben = await clone(BEN, owner_node, repo.id)
    head = repo.head("main")
    dropping = signed_move(BEN, repo, anas_branch, head, previous=theirs.id)  # Ben drops Ana's contribution
    by_owner = signed_move(OWNER, repo, anas_branch, head, previous=theirs.id)  # nor may the owner
    for forged in (dropping, by_owner):
        with pytest.raises(Forbidden, match="only that key moves it"):
            announce.check(repo, announce.Announcement(repo.id, moves=(forged,)), now_ms())
        with pytest.raises(Forbidden, match="only that key moves it"):
            repo.ingest.accept_move(forged)
    with pytest.raises(Forbidden, match="only that key moves it"):  # nor through one's own node
        repo.reset_branch(OWNER, anas_branch, head)
    with pytest.raises(Forbidden, match="only that key moves it"):
        ben.open_id(repo.id).create_branch(BEN, contribution_branch("main", CY.public_key), head)
    with pytest.raises(Forbidden, match="no key holds it"):  # a name no key holds is no one's to move
        repo.create_branch(OWNER, "contrib/main", head)

    plant(ben, repo.id, dropping)  # Ben's modified node serves the move to whoever pulls from it
    result = await sync.pull(owner_node, repo.id, LocalSource(ben, OWNER.public_key, owner_node), memory=RoundMemory())
    assert "only that key moves it" in result.refused[dropping.id] and anas_branch not in result.moved
    assert repo.branches()[anas_branch] == theirs.id
    assert pending_authors(repo) == [ANA.public_key]


async def test_one_commit_counts_once_however_many_branches_point_at_it():
    memory = rounds.RoundMemory()
    owner_node, repo = team()
    ana = await clone(ANA, owner_node, repo.id)
    anas = ana.open_id(repo.id).contribute(ANA, shift(tiny_state(0), 1.0), examples=10)
    await sync.pull(owner_node, repo.id, LocalSource(ana, OWNER.public_key, owner_node), memory=RoundMemory())
    ben = await clone(BEN, owner_node, repo.id)
    bens = ben.open_id(repo.id).contribute(BEN, shift(tiny_state(0), 2.0), examples=10)

    # Ben points Ana's and Cy's contribution branches at his own contribution: three branches, one commit.
    onto_ana = signed_move(BEN, repo, contribution_branch("main", ANA.public_key), bens.id, previous=anas.id)
    onto_cy = signed_move(BEN, repo, contribution_branch("main", CY.public_key), bens.id)
    for forged in (onto_ana, onto_cy):
        plant(ben, repo.id, forged)
        with pytest.raises(Forbidden, match="only that key moves it"):
            announce.check(repo, announce.Announcement(repo.id, moves=(forged,)), now_ms())
    result = await sync.pull(owner_node, repo.id, LocalSource(ben, OWNER.public_key, owner_node), memory=RoundMemory())
    assert {onto_ana.id, onto_cy.id} <= result.refused.keys()
    assert result.moved == [contribution_branch("main", BEN.public_key)]  # his own contribution, once
    assert pending_authors(repo) == sorted([ANA.public_key, BEN.public_key])
    assert len({c.commit for c in rounds.view(repo, "main", memory=memory).pending}) == 2

    # Ben's own branch pointed at Ana's contribution, so that hers counts twice: refused wherever it is judged.
    twice = signed_move(BEN, repo, contribution_branch("main", BEN.public_key), anas.id, previous=bens.id)
    with pytest.raises(IntegrityError, match="only its holder's own commits"):
        check_move_target(twice, repo.commit(anas.id))
    with pytest.raises(IntegrityError, match="only its holder's own commits"):
        repo.ingest.accept_move(twice)
    plant(ben, repo.id, twice)
    result = await sync.pull(owner_node, repo.id, LocalSource(ben, OWNER.public_key, owner_node), memory=RoundMemory())
    assert "only its holder's own commits" in result.refused[twice.id] and not result.moved
    assert sorted(c.commit for c in rounds.view(repo, "main", memory=memory).pending) == sorted([anas.id, bens.id])


# -- finding 4: commits are dated after their parents and not ahead of the clock ----------------------------


def backdated(repo: Repository, who: Identity, key: bytes, parent: CommitId, at: int,
              blocks: unixfs.BlockStore) -> Commit:
    """A contribution by ``who`` on ``parent`` dated ``at``, its payload sealed with ``key`` (epoch 0)."""
    data = crypto.encrypt(key, os.urandom(96), f"flair/payload/{repo.id}/bitdelta-v1".encode())
    payload = Payload(cid=unixfs.add(blocks, data), codec="bitdelta-v1", size=len(data), key_epoch=0)
    return Commit(repo=repo.id, parents=(parent,), author=who.public_key, timestamp_ms=at, kind="contribution",
                  message="trained before my removal, honest", payload=payload,
                  meta={"examples": 10_000, "branch": "main"}).signed(who)


async def test_a_removed_member_cannot_date_a_contribution_into_its_term():
    owner_node, repo = team()
    ben = await clone(BEN, owner_node, repo.id)
    bens = ben.open_id(repo.id)
    key0 = crypto.open_sealed_key(bens.members.current().sealed_key(BEN.public_key, 0), BEN)
    removed = repo.remove(OWNER, BEN.public_key)
    removed_ms = removed.members[BEN.public_key].removed_ms
    head = repo.commit_weights(OWNER, tiny_state(5), message="after Ben left")
    assert head.timestamp_ms >= removed_ms

    forged = backdated(repo, BEN, key0, head.id, removed_ms - 1, ben.blocks)
    membership = repo.members.current()
    membership.require(BEN.public_key, "contributor", epoch=0, at_ms=forged.timestamp_ms, what="the hole")
    with pytest.raises(IntegrityError, match="before its parent"):  # the date its role is judged at is false
        check_commit_time(forged, [head], now_ms=now_ms())
    for block_cid, block in unixfs.walk(ben.blocks, forged.payload.cid, max_size=forged.payload.size):
        owner_node.blocks.put(block_cid, block)  # as if fetched: only the record's checks stand in the way
    with pytest.raises(IntegrityError, match="before its parent"):
        repo.ingest.accept_commit(forged)
    assert not repo.objects.has(forged.id)
    honest = backdated(repo, BEN, key0, head.id, head.timestamp_ms, owner_node.blocks)
    with pytest.raises(Forbidden, match="is not a member"):  # dated truthfully, it is after his removal
        repo.ingest.accept_commit(honest)

    # Ben's node serves the backdated contribution on his contribution branch: a pull refuses both.
    ben.objects.put(head.id, head.encode())
    ben.objects.put(forged.id, forged.encode())
    plant(ben, repo.id, signed_move(BEN, bens, contribution_branch("main", BEN.public_key), forged.id,
                                    at=removed_ms - 1))
    result = await sync.pull(owner_node, repo.id, LocalSource(ben, OWNER.public_key, owner_node), memory=RoundMemory())
    assert "before its parent" in result.refused[forged.id] and not result.moved
    assert not repo.objects.has(forged.id) and pending_authors(repo) == []


async def test_commits_are_not_dated_ahead_of_the_clock_and_local_ones_follow_their_parents(monkeypatch):
    owner_node, repo = team()
    ana = await clone(ANA, owner_node, repo.id)
    anas = ana.open_id(repo.id)
    key0 = crypto.open_sealed_key(anas.members.current().sealed_key(ANA.public_key, 0), ANA)
    future = backdated(repo, ANA, key0, repo.head("main"), now_ms() + MAX_CLOCK_SKEW_MS + 60_000, ana.blocks)
    for block_cid, block in unixfs.walk(ana.blocks, future.payload.cid, max_size=future.payload.size):
        owner_node.blocks.put(block_cid, block)
    with pytest.raises(IntegrityError, match="ahead of this node's clock"):
        repo.ingest.accept_commit(future)

    # Ana's clock runs a minute ahead: her commit is taken, and the owner's next commit on it is dated after it.
    ahead = now_ms() + 60_000
    monkeypatch.setattr("flair_node.storage.clock.now_ms", lambda: ahead)
    anas.create_branch(ANA, "ana", anas.head("main"))
    hers = anas.commit_weights(ANA, tiny_state(1), message="a minute ahead", branch="ana")
    monkeypatch.undo()
    await sync.pull(owner_node, repo.id, LocalSource(ana, OWNER.public_key, owner_node), memory=RoundMemory())
    assert repo.head("ana") == hers.id
    mine = repo.merge(OWNER, ["ana"], "main")
    assert mine.timestamp_ms >= hers.timestamp_ms > now_ms()


# -- finding 10: a new key is never sealed to an expired member -----------------------------------------------


def expire(repo: Repository, who: Identity, role: str) -> None:
    """``who`` invited again as ``role`` until 50 ms from now, and those 50 ms passed."""
    repo.invite(OWNER, who.public_key, role, expires_ms=now_ms() + 50)
    time.sleep(0.06)
    assert now_ms() >= repo.members.current().members[who.public_key].expires_ms


def test_an_expired_member_cannot_open_the_key_a_later_removal_starts():
    owner_node, repo = team()
    expire(repo, ANA, "reader")
    before = repo.members.current()
    assert before.expired_holders(now_ms()) == [ANA.public_key]

    # A removal sealing the new key to Ana too, as before the fix: refused by every node.
    new_key = crypto.new_key()
    to_all = MembershipChange(repo=repo.id, previous=before.head, seq=before.seq + 1, author=OWNER.public_key,
                              timestamp_ms=now_ms(), action="remove", member=BEN.public_key, epoch=1,
                              keys=tuple(SealedKey(m, 1, crypto.seal_key(new_key, m))
                                         for m in (OWNER.public_key, ANA.public_key, CY.public_key))).signed(OWNER)
    with pytest.raises(IntegrityError, match="whose role has not expired"):
        repo.ingest.accept_membership(to_all)

    after = repo.remove(OWNER, BEN.public_key)
    assert after.epoch == 1 and after.sealed_key(ANA.public_key, 1) is None
    assert crypto.open_sealed_key(after.sealed_key(CY.public_key, 1), CY) is not None
    commit = repo.commit_weights(OWNER, tiny_state(3), message="sealed with epoch 1")
    assert commit.payload.key_epoch == 1
    for locked_out in (ANA, BEN):
        with pytest.raises(NotAMember):
            Repository.open(repo.id, repo.objects, repo.blocks, repo.refs, reader=locked_out).materialize(commit.id)
    assert torch.equal(Repository.open(repo.id, repo.objects, repo.blocks, repo.refs, reader=CY)
                       .materialize(commit.id)["w"], tiny_state(3)["w"])


def test_an_expiry_rotates_the_key_on_the_owners_node():
    owner_node, repo = team()
    expire(repo, ANA, "contributor")
    with pytest.raises(Forbidden, match="only the owner"):  # only the owner rotates
        Repository.open(repo.id, repo.objects, repo.blocks, repo.refs, reader=CY).rotate_key(CY)
    assert Repository.open(repo.id, repo.objects, repo.blocks, repo.refs, reader=CY).rotate_if_expired(CY) is None
    commit = repo.commit_weights(OWNER, tiny_state(4), message="after Ana's term")  # rotates first
    membership = repo.members.current()
    assert membership.epoch == 1 == commit.payload.key_epoch and membership.expired_holders(now_ms()) == []
    assert membership.sealed_key(ANA.public_key, 1) is None
    with pytest.raises(NotAMember):
        Repository.open(repo.id, repo.objects, repo.blocks, repo.refs, reader=ANA).materialize(commit.id)
    assert repo.rotate_if_expired(OWNER) is None  # once is enough
    assert owner_node.rotate_expired() == []


# -- against a real daemon ----------------------------------------------------------------------------------


def weights_file(path, seed: int) -> str:
    save_file({"w": torch.randn(64, generator=torch.Generator().manual_seed(seed))}, str(path))
    return str(path)


def _branches(daemon, repo: str) -> dict[str, str]:
    return daemon.client.call("repo.branch", repo=repo)["branches"]


async def hostile_member(daemon, repo: str, mallory: Identity, attack) -> None:
    """Mallory's own node, speaking the wire: it clones ``repo`` from ``daemon`` while a member, then runs
    ``attack(host, gossip, node, peer)`` while serving sync and Bitswap from a store it may have tampered with."""
    node = RepoSet.in_memory(mallory)
    with trio.fail_after(90):
        async with running_host(mallory) as host, trio.open_nursery() as nursery:
            exchange = BlockExchange(host, node.blocks)
            await nursery.start(exchange.run)
            sync.serve(host, node)
            gossip = GossipSub(host)
            await nursery.start(gossip.run)
            peer = await connect(host, address(daemon))
            await sync.pull(node, RepoId(repo), sync.PeerSource(host, peer, exchange, mallory), memory=RoundMemory())
            # the daemon knows Mallory as the member it is
            await hello.greet(host, peer, hello.cards(node.all(), mallory, str(host.get_id()), str(peer)))
            await gossip.join(announce.topic(RepoId(repo)), lambda forwarder, data: True)
            await attack(host, gossip, node, peer)
            nursery.cancel_scope.cancel()


async def gossip_to(gossip: GossipSub, repo: str, items: list[tuple[str, bytes]]) -> None:
    topic = announce.topic(RepoId(repo))
    for _ in range(200):  # the mesh forms within a few heartbeats
        if gossip.peers(topic):
            break
        await trio.sleep(0.1)
    await gossip.publish(topic, announce.pack(RepoId(repo), items, 60_000)[0])


@pytest.mark.integration
def test_a_daemon_refuses_a_member_moving_others_contribution_branches(tmp_path):
    mallory, absent = Identity.generate(), Identity.generate()
    with running_daemon(configure(tmp_path / "a", aggregate=False)) as a:
        repo = a.client.call("repo.init", name="net", model_path=weights_file(tmp_path / "m0.safetensors", 0))["repo"]
        for member in (mallory, absent):
            a.client.call("repo.invite", repo=repo, member=member.public_key, role="contributor")
        owner_key = a.client.call("node.whoami")["public_key"]
        owners = a.client.call("repo.contribute", repo=repo, examples=10,
                               weights_path=weights_file(tmp_path / "m1.safetensors", 1))["id"]
        owners_branch = contribution_branch("main", owner_key)
        seen: dict[str, object] = {}

        async def attack(host, gossip, node, peer):
            theirs = node.open_id(RepoId(repo))
            state = theirs.materialize(theirs.head("main"))
            mine = theirs.contribute(mallory, {k: v + 1 for k, v in state.items()}, examples=10)
            stolen = signed_move(mallory, theirs, owners_branch, mine.id, previous=owners)
            squatted = signed_move(mallory, theirs, contribution_branch("main", absent.public_key), mine.id)
            for forged in (stolen, squatted):
                plant(node, RepoId(repo), forged)
            seen["forged"] = {stolen.id, squatted.id}
            seen["mine"] = mine.id
            seen["pull"] = await trio.to_thread.run_sync(
                lambda: a.client.call("repo.pull", repo=repo, peer=full_addrs(host)[0]))
            await gossip_to(gossip, repo, [("move", stolen.encode())])
            seen["peer"] = str(host.get_id())
            await trio.to_thread.run_sync(lambda: wait_until(
                lambda: a.client.call("node.status")["p2p"]["bad_announcements"].get(seen["peer"], 0) >= 1,
                "the forged move counted against mallory", timeout=20))

        trio.run(hostile_member, a, repo, mallory, attack)
        pulled = seen["pull"]
        assert seen["forged"] <= set(pulled["refused"]) and all(
            "only that key moves it" in pulled["refused"][f] for f in seen["forged"])
        branches = _branches(a, repo)
        assert branches[owners_branch] == owners  # the owner's contribution is still the one pending
        assert contribution_branch("main", absent.public_key) not in branches
        assert branches.get(contribution_branch("main", mallory.public_key)) == seen["mine"]  # hers, once
        pending = a.client.call("round.status", repo=repo)["pending"]
        assert sorted(p["commit"] for p in pending) == sorted([owners, seen["mine"]])
        status = a.client.call("node.status")["p2p"]
        assert status["bad_announcements"][seen["peer"]] >= 1


@pytest.mark.integration
def test_a_daemon_refuses_a_removed_members_backdated_contribution(tmp_path):
    mallory = Identity.generate()
    with running_daemon(configure(tmp_path / "a", aggregate=False)) as a:
        repo = a.client.call("repo.init", name="net", model_path=weights_file(tmp_path / "m0.safetensors", 0))["repo"]
        a.client.call("repo.invite", repo=repo, member=mallory.public_key, role="contributor")
        seen: dict[str, object] = {}

        async def attack(host, gossip, node, peer):
            theirs = node.open_id(RepoId(repo))
            key0 = crypto.open_sealed_key(theirs.members.current().sealed_key(mallory.public_key, 0), mallory)
            await trio.to_thread.run_sync(lambda: a.client.call("repo.remove", repo=repo,
                                                                member=mallory.public_key))
            removed_ms = now_ms()  # no earlier than the removal's own time
            head = await trio.to_thread.run_sync(lambda: a.client.call(
                "repo.commit", repo=repo, message="after mallory left",
                weights_path=weights_file(tmp_path / "m2.safetensors", 2))["id"])
            record = DiskObjectStore(a.home / "objects").get(head)  # as gossip showed it to her
            node.objects.put(head, record)
            forged = backdated(theirs, mallory, key0, CommitId(head), removed_ms - 10_000, node.blocks)
            node.objects.put(forged.id, forged.encode())
            plant(node, RepoId(repo), signed_move(mallory, theirs, contribution_branch("main", mallory.public_key),
                                                  forged.id, at=removed_ms - 10_000))
            seen["forged"] = forged.id
            seen["pull"] = await trio.to_thread.run_sync(
                lambda: a.client.call("repo.pull", repo=repo, peer=full_addrs(host)[0]))
            await gossip_to(gossip, repo, [("commit", forged.encode())])
            await trio.sleep(2)  # gossip passes; any pull it triggers reaches her node and is refused again

        trio.run(hostile_member, a, repo, mallory, attack)
        assert "before its parent" in seen["pull"]["refused"][seen["forged"]]
        log = {c["id"] for c in a.client.call("repo.log", repo=repo)["commits"]}
        assert seen["forged"] not in log
        assert contribution_branch("main", mallory.public_key) not in _branches(a, repo)
        assert a.client.call("round.status", repo=repo)["pending"] == []
        assert a.client.call("node.status")["p2p"] is not None
