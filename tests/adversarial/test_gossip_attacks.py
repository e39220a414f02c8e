"""Attacks over gossip and sync on real daemons, by a stranger speaking py-libp2p (``testing.hostile``):

- finding 1: a self-signed membership change ahead of the node's chain (``Lagging``), from a stranger that
  answers ``heads`` with a record nested 600 levels deep, stopped a daemon. Now a non-member's messages are not
  even read (the repository's topic is a closed mesh, issue 18: counted as ``unadmitted``), and a member's claim
  is judged before any work; the deep record, when the API is made to pull from that peer anyway, is an
  ``IntegrityError`` counted against the peer.
- finding 11: ``Lagging`` cost its sender nothing (60 sent, 60 pulls). Now even a member's claims start at most
  one pull per ``LAGGING_EVERY``, and a claim the pull does not bear out counts against it. Deeply nested
  messages no longer write a traceback each (13 of 1 KB wrote 1.5 MB of log), items of 1 or 3 elements are bad
  input like any other, and all of it is counted against the peer.
- finding 13 (API side): ``flair pull`` joins the pull of the same repository from the same peer that gossip
  started, instead of fetching the same records and blocks twice at once.
- issue 18: secure round messages travel on gossip; a stranger's or a removed member's (backdated or not) are
  ignored by the closed mesh, neither kept nor relayed, while a member's pass through. A
  member who overfills a round or withholds a masked update's blocks stops nothing: the excess is refused
  without holding up the rest of the batch, and the masked update is only wanted, never kept without its blocks.

Each asserts: the daemon still answers, nothing was accepted, and the counters name the peer."""

import dataclasses
import time
from functools import partial

import pytest
import trio
from libp2p.pubsub.pb import rpc_pb2
from safetensors.torch import save_file

from flair_node.core import encoding
from flair_node.core.errors import FlairError
from flair_node.core.identity import Identity
from flair_node.core.membership import MembershipChange
from flair_node.core.round_messages import Masked, Roster, RoundMessage
from flair_node.daemon.p2p import P2PService
from flair_node.network import rpc
from flair_node.network.bitswap import BlockExchange
from flair_node.network.host import connect, full_addrs, peer_from_text, peer_id, running_host
from flair_node.protocol import announce, hello, secure_rounds, sync
from flair_node.protocol.rounds import RoundMemory
from flair_node.storage import round_messages, unixfs
from flair_node.storage.repo import Repository, now_ms
from flair_node.storage.repos import RepoSet
from flair_node.storage.stores import MemoryObjectStore
from flair_node.testing.cluster import address, configure
from flair_node.testing.commit_graph import make_secure, tiny_state
from flair_node.testing.daemon import running_daemon
from flair_node.testing.hostile import deep_msgpack, hostile_peer, rpc_frame, sync_reply
from flair_node.testing.sync import LocalSource

ATTACK_TIMEOUT = 60.0


def new_repo(daemon, tmp_path) -> str:
    path = tmp_path / "m0.safetensors"
    save_file(tiny_state(0), str(path))
    return daemon.client.call("repo.init", name="target", model_path=str(path))["repo"]


def state(daemon, repo):
    """What an attack must leave unchanged: branches, members, stored objects."""
    objects = sorted(p.name for p in (daemon.home / "objects").rglob("*") if p.is_file())
    return (daemon.client.call("repo.branch", repo=repo)["branches"], daemon.client.call("repo.members", repo=repo),
            objects)


def log_size(daemon) -> int:
    return (daemon.home / "daemon.log").stat().st_size


def ahead(mallory: Identity, repo: str, seq: int) -> bytes:
    """An announcement of a membership change mallory signed itself, ``seq`` far past the node's chain."""
    change = MembershipChange(repo=repo, previous="0" * 64, seq=seq, author=mallory.public_key,
                              timestamp_ms=now_ms(), action="invite", member=Identity.generate().public_key,
                              role="maintainer").signed(mallory)
    return announce.pack(repo, [("membership", change.encode())], 60_000)[0]


def deep_heads(request) -> bytes:
    """A heads reply whose repository record is msgpack nested 600 levels deep."""
    return sync_reply({"record": deep_msgpack(600), "members": "0" * 64, "moves": []})


async def claim_lagging(target: str, repo: str, count: int, *, identity: Identity | None = None,
                        api_pull=None) -> dict:
    """A hostile peer (``identity`` or a stranger) serving deep heads sends ``count`` Lagging announcements to
    the daemon at ``target``; then ``api_pull(its address)`` if given. What it saw."""
    seen: dict = {}
    with trio.fail_after(ATTACK_TIMEOUT):
        async with hostile_peer(identity) as mallory:
            await mallory.connect(target)
            if identity is not None:
                await mallory.introduce(target, repo)  # a member's node: its pull on being known is answered
                await trio.sleep(1)
            mallory.serve_sync(deep_heads)
            await mallory.push(target, announce.topic(repo), [ahead(mallory.identity, repo, 5 + i)
                                                              for i in range(count)])
            await trio.sleep(3)  # validation, and any pull it starts
            seen["peer"], seen["gossip_requests"] = mallory.peer_id, list(mallory.sync_requests)
            if api_pull is not None:
                try:
                    await trio.to_thread.run_sync(api_pull, mallory.address)
                except FlairError as exc:
                    seen["api_error"] = exc
                seen["api_requests"] = mallory.sync_requests[len(seen["gossip_requests"]):]
    return seen


@pytest.mark.integration
def test_a_strangers_lagging_claim_with_a_600_deep_heads_reply_stops_nothing(tmp_path):
    with running_daemon(configure(tmp_path / "a")) as daemon:
        repo = new_repo(daemon, tmp_path)
        before, log_before = state(daemon, repo), log_size(daemon)

        def api_pull(peer_address: str) -> None:
            daemon.client.call("repo.pull", repo=repo, peer=peer_address)

        seen = trio.run(partial(claim_lagging, address(daemon), repo, 60, api_pull=api_pull))

        assert seen["gossip_requests"] == []  # no stream opened to a stranger, however much it claims
        assert [r["op"] for r in seen["api_requests"]] == ["heads"]  # the API pull asked, and got the deep record
        assert "nested more than" in str(seen["api_error"])  # the decoder's bound, reported to the API caller
        assert daemon.client.call("node.whoami")["public_key"]
        assert daemon.process.poll() is None
        assert state(daemon, repo) == before
        p2p = daemon.client.call("node.status")["p2p"]
        assert p2p["gossip"]["unadmitted"] == 60, p2p  # not members: never read, so never judged
        assert p2p["bad_announcements"] == {} and p2p["announcements"].get("lagging", 0) == 0, p2p
        assert p2p["bad_pulls"] == {seen["peer"]: 1}
        assert log_size(daemon) - log_before < 16_000


@pytest.mark.integration
def test_a_members_false_lagging_claims_cost_it_and_start_one_pull(tmp_path):
    mallory = Identity.generate()
    with running_daemon(configure(tmp_path / "a", sync_interval=600)) as daemon:  # no catch-up pulls meanwhile
        repo = new_repo(daemon, tmp_path)
        daemon.client.call("repo.invite", repo=repo, member=mallory.public_key, role="contributor")
        before = state(daemon, repo)
        seen = trio.run(partial(claim_lagging, address(daemon), repo, 20, identity=mallory))  # within 60 s

        assert [r["op"] for r in seen["gossip_requests"]] == ["heads"]  # 20 claims, one pull
        assert daemon.client.call("node.whoami")["public_key"]
        assert daemon.process.poll() is None
        assert state(daemon, repo) == before
        p2p = daemon.client.call("node.status")["p2p"]
        counts = p2p["announcements"]
        assert counts["lagging"] == 20 and counts["lagging_unfounded"] == 1, counts
        assert counts.get("lagging_limited", 0) == 19, counts  # LAGGING_EVERY, then LAGGING_PENALTY
        assert p2p["bad_pulls"] == {mallory_peer(mallory): 1}  # its deep heads reply
        assert p2p["bad_announcements"] == {mallory_peer(mallory): 1}  # its claim, proven false


def mallory_peer(identity: Identity) -> str:
    return str(peer_id(identity.public_key))


async def side_doors(target: str, repo: str, mallory_id: Identity) -> str:
    """Nested messages, items of the wrong length and raw malformed frames, from one member."""
    with trio.fail_after(ATTACK_TIMEOUT):
        async with hostile_peer(mallory_id) as mallory:
            await mallory.connect(target)
            await mallory.introduce(target, repo)
            topic = announce.topic(repo)
            await mallory.join(topic, mesh_with=target.rsplit("/p2p/", 1)[-1])
            for _ in range(13):  # msgpack nested 1000 deep: each once wrote a 115 KB traceback
                await mallory.publish(topic, deep_msgpack(1000))
            for items in ([["commit"]], [["commit", b"x", b"y"]], [["membership", deep_msgpack(600)]], [[]]):
                await mallory.publish(topic, encoding.encode({"v": 1, "repo": repo, "items": items}))
            deep = mallory.signed_message([topic], deep_msgpack(1000), seqno=1 << 40)
            await mallory.send_frames(target, [rpc_frame(rpc_pb2.RPC(publish=[deep]))])
            await mallory.send_frames(target, [rpc_frame(b"\x12\x05\x0a\xff\xff\xff\x0f")])  # a broken message
            await trio.sleep(2)
            return mallory.peer_id


@pytest.mark.integration
def test_nested_and_misshapen_gossip_is_counted_against_the_peer_and_logged_once(tmp_path):
    with running_daemon(configure(tmp_path / "a")) as daemon:
        repo = new_repo(daemon, tmp_path)
        mallory = Identity.generate()
        daemon.client.call("repo.invite", repo=repo, member=mallory.public_key, role="reader")
        before, log_before = state(daemon, repo), log_size(daemon)
        peer = trio.run(side_doors, address(daemon), repo, mallory)

        assert daemon.client.call("node.whoami")["public_key"]
        assert daemon.process.poll() is None
        assert state(daemon, repo) == before
        p2p = daemon.client.call("node.status")["p2p"]
        assert p2p["bad_announcements"].get(peer) == 13 + 4 + 1, p2p  # 13 nested, 4 misshapen, 1 raw nested
        assert p2p["gossip"]["bad_peers"].get(peer) == 1, p2p["gossip"]  # the malformed frame
        grown = log_size(daemon) - log_before
        assert grown < 8_000, (daemon.home / "daemon.log").read_text()[log_before:]


async def test_an_api_pull_joins_the_gossip_pull_of_the_same_repository_from_the_same_peer(tmp_path):
    owner_id, member_id = Identity.generate(), Identity.generate()
    owner = RepoSet.in_memory(owner_id)
    repo = owner.create("r", tiny_state(0))
    for seed in range(1, 4):
        repo.commit_weights(owner_id, tiny_state(seed), message=f"seed {seed}")
    repo.invite(owner_id, member_id.public_key, "reader")
    member = RepoSet.in_memory(member_id)
    member.adopt(repo.record)
    serving, most = 0, 0
    served = []
    server = sync.SyncServer(owner)

    async def slow_handler(peer, request):
        nonlocal serving, most
        serving += 1
        most = max(most, serving)
        try:
            await trio.sleep(0.3)  # a slow peer: a second pull would overlap this one
            served.append(request["op"])
            return await server.on_request(peer, request)
        finally:
            serving -= 1

    with trio.fail_after(ATTACK_TIMEOUT):
        async with running_host(owner_id) as a, running_host(member_id) as b, trio.open_nursery() as nursery:
            exchange_a = BlockExchange(a, owner.blocks)
            await nursery.start(exchange_a.run)
            server.me = str(a.get_id())
            rpc.serve(a, sync.PROTOCOL, slow_handler)
            exchange_b = BlockExchange(b, member.blocks)
            await nursery.start(exchange_b.run)
            p2p = P2PService(b, exchange_b, member, memory=RoundMemory(), sync_interval=600)
            await nursery.start(p2p.run)
            target = full_addrs(a)[0]
            result, answered = {}, trio.Event()

            async def api() -> None:
                result.update(await p2p.pull_from(repo.id, target))
                answered.set()

            peer = str(await connect(b, target))
            p2p._pull_later(repo.id, peer)  # what an announcement of a commit it lacks starts
            await trio.sleep(0.05)
            nursery.start_soon(api)
            with trio.fail_after(30):
                await answered.wait()
            assert result["commits"] == 4  # what the pull it joined brought: the gossip pull's pass, then its own
            assert most == 1  # never two requests to the peer at once
            assert served.count("heads") == 2  # the gossip pull, and the one more pass the API asked for
            assert member.open_id(repo.id).head("main") == repo.head("main")
            assert p2p.status()["bad_pulls"] == {} and p2p.status()["bad_announcements"] == {}
            assert p2p.counts["pulls"] == 2
            nursery.cancel_scope.cancel()


async def until(condition, what: str) -> None:
    """Wait (bounded) for ``condition()``: py-libp2p and the services under test set no event for it."""
    with trio.move_on_after(ATTACK_TIMEOUT / 2):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.05)
        return
    raise AssertionError(f"waited {ATTACK_TIMEOUT / 2:g} s in vain for {what}")


async def test_an_announced_commit_is_pulled_from_members_only_never_from_a_relay_or_a_stranger():
    """A pull names the repository and carries this node's member key (its claim): an announced commit whose
    publisher is not connected is pulled from the connected members, never from a connected non-member (behind
    NAT, typically the node's relay). Here the publisher is not connected; a member that relays the announcement
    and a stranger serving sync (as a curious relay could) are. The commit comes from the member; the stranger hears
    no sync request."""
    owner, me, member_id = (Identity.generate() for _ in range(3))
    origin = RepoSet.in_memory(owner)  # the owner's node: it publishes, and is not connected to this one
    repo = origin.create("r", tiny_state(0))
    for who in (me, member_id):
        repo.invite(owner, who.public_key, "contributor")
    node = RepoSet.in_memory(me)
    await sync.pull(node, repo.id, LocalSource(origin, me.public_key, node), memory=RoundMemory())

    with trio.fail_after(ATTACK_TIMEOUT):
        async with running_host(Identity.generate()) as host, hostile_peer(member_id) as member, \
                hostile_peer() as stranger, hostile_peer(owner) as publisher, trio.open_nursery() as nursery:
            exchange = BlockExchange(host, node.blocks)
            await nursery.start(exchange.run)
            sync.serve(host, node)
            p2p = P2PService(host, exchange, node, memory=RoundMemory(), sync_interval=600)  # no catch-up meanwhile
            await nursery.start(p2p.run)
            target = full_addrs(host)[0]
            stranger.serve_sync(lambda request: sync_reply({}))  # answers, and records what it was asked
            await stranger.connect(target)
            await member.connect(target)
            await member.introduce(target, repo.id)  # proves its membership: the node pulls from it once
            await until(lambda: p2p.member_peers(repo.id) == 1 and p2p.counts["pulls"] >= 1 and not p2p._pulling,
                        "the node's first pull from the member")

            commit = repo.commit_weights(owner, tiny_state(1), message="news")  # made on the owner's node
            await sync.pull(member.repos, repo.id, LocalSource(origin, member_id.public_key, member.repos),
                            memory=RoundMemory())  # which the member has by now
            news = announce.pack(repo.id, [("commit", commit.encode())], 60_000)[0]
            relayed = publisher.signed_message([announce.topic(repo.id)], news, time.time_ns())
            await member.send_frames(target, [rpc_frame(rpc_pb2.RPC(publish=[relayed]))])
            await until(lambda: node.open_id(repo.id).objects.has(commit.id), "the announced commit")

            connected = host.get_connected_peers()
            assert publisher.host.get_id() not in connected and stranger.host.get_id() in connected
            assert p2p.counts["accepted"] == 1  # it came announced, and was pulled for that
            assert stranger.sync_requests == []  # never asked: it learnt neither the repository nor a member key
            nursery.cancel_scope.cancel()


async def test_a_validator_that_raises_costs_one_log_line_per_peer_and_counts_each_message(caplog):
    from flair_node.network.gossip import MemoryGossipNetwork

    def validate(forwarder, data):
        raise ValueError("not enough values to unpack" + "!" * 5000)  # what a misshapen item once raised

    network = MemoryGossipNetwork()
    a, mallory = network.node("a"), network.node("mallory")
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(mallory.run)
        await a.join("t", validate)
        await mallory.join("t", lambda forwarder, data: True)
        for i in range(1000):
            await mallory.publish("t", b"%d" % i)
        with trio.fail_after(10):
            while a.status()["rejected"] < 1000:  # noqa: ASYNC110  (memory gossip signals no progress)
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert a.status()["bad_peers"] == {"mallory": 1000}
    lines = [r for r in caplog.records if r.name == "flair_node.network.gossip"]
    assert len(lines) == 1 and lines[0].exc_info is None, lines
    assert "mallory" in lines[0].getMessage() and len(lines[0].getMessage()) < 600


# -- secure round messages from outside the repository -------------------------------------------------------


def signed_as(message: RoundMessage, author: Identity, **changes) -> RoundMessage:
    return dataclasses.replace(message, author=author.public_key, **changes).signed(author)


def an_advert(repo: str, head: str) -> RoundMessage:
    """A well-formed advert, dealt on a team of this test's own: ``signed_as`` puts it in ``repo``'s round on
    ``head`` under any author (whose team holds its shares is no business of the gossip gate)."""
    owner, members = Identity.generate(), [Identity.generate() for _ in range(3)]
    team = make_secure(RepoSet.in_memory(owner).create("elsewhere", tiny_state(0)), owner, members)
    node = Repository.open(team.id, team.objects, team.blocks, team.refs, reader=members[0])
    message, _ = secure_rounds.advertise(node, members[0], "main", tiny_state(1), 10)
    return dataclasses.replace(message, repo=repo, head=head)


def held(daemon, record_id: str) -> bool:
    return (daemon.home / "objects" / record_id[:2] / record_id[2:]).exists()


async def secure_gossip(target: str, repo: str, attacks: list[tuple[Identity, list[RoundMessage]]],
                        control: tuple[Identity, RoundMessage], *, listener_id: Identity, between, kept) -> dict:
    """A listener (a member: ``listener_id``) meshes with the daemon at ``target``; each attacker pushes its
    messages, one announcement each; ``between()`` runs (in a thread); then a member pushes ``control`` and this
    waits until the daemon relayed it and ``kept(its id)``. What was seen: the ids of the secure round messages
    the daemon relayed to the listener, the sync requests the attackers got, and what ``between`` returned."""
    daemon_peer = target.rsplit("/p2p/", 1)[-1]
    topic, relayed, asked = announce.topic(repo), set(), []

    async def listen(listener) -> None:
        async for gossiped in listener.gossip.messages:
            relayed.update(m.id for m in announce.decode(gossiped.data, repo).messages)

    async def publish(identity: Identity, messages: list[RoundMessage], *, member: bool = False) -> None:
        async with hostile_peer(identity) as peer:
            await peer.connect(target)
            if member:
                await peer.introduce(target, repo)
            await peer.push(target, topic, [announce.pack(repo, [("secure", m.encode())], 60_000)[0]
                                            for m in messages])
            await trio.sleep(1)  # validation, and any relay or pull it starts
            asked.extend(peer.sync_requests)

    with trio.fail_after(ATTACK_TIMEOUT):
        async with hostile_peer(listener_id) as listener, trio.open_nursery() as nursery:
            await listener.connect(target)
            await listener.introduce(target, repo)
            await listener.join(topic, mesh_with=daemon_peer)
            nursery.start_soon(listen, listener)
            for identity, messages in attacks:
                await publish(identity, messages)
            checked = await trio.to_thread.run_sync(between)
            await publish(control[0], [control[1]], member=True)
            while control[1].id not in relayed or not kept(control[1].id):  # noqa: ASYNC110
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    return {"relayed": relayed, "asked": asked, "between": checked}


@pytest.mark.integration
def test_strangers_and_removed_members_secure_round_messages_are_neither_kept_nor_relayed(tmp_path):
    stranger, removed, listener = Identity.generate(), Identity.generate(), Identity.generate()
    members = [Identity.generate() for _ in range(3)]
    with running_daemon(configure(tmp_path / "a", sync_interval=600)) as daemon:
        repo = new_repo(daemon, tmp_path)
        for member in [*members, removed]:
            daemon.client.call("repo.invite", repo=repo, member=member.public_key, role="contributor")
        daemon.client.call("repo.policy", repo=repo, privacy="secure")
        invited_ms = now_ms()
        daemon.client.call("repo.remove", repo=repo, member=removed.public_key)
        daemon.client.call("repo.invite", repo=repo, member=listener.public_key, role="reader")
        head = daemon.client.call("repo.branch", repo=repo)["branches"]["main"]
        advert = an_advert(repo, head)
        roster = RoundMessage(repo=repo, branch="main", head=head, author=removed.public_key, timestamp_ms=now_ms(),
                              content=Roster((signed_as(advert, members[1]).id,))).signed(removed)
        attacks = [(stranger, [signed_as(advert, stranger),
                               signed_as(advert, stranger, head="ab" * 32)]),  # a round on a head it lacks
                   (removed, [signed_as(advert, removed), signed_as(advert, removed, timestamp_ms=invited_ms),
                              roster])]
        control = signed_as(advert, members[0])
        before = state(daemon, repo)
        seen = trio.run(partial(secure_gossip, address(daemon), repo, attacks, (members[0], control),
                                listener_id=listener, between=partial(state, daemon, repo),
                                kept=partial(held, daemon)))

        sent = [m.id for _, messages in attacks for m in messages]
        assert seen["between"] == before  # nothing kept, before the member's message
        assert not any(held(daemon, i) for i in sent)
        assert seen["relayed"].isdisjoint(sent) and control.id in seen["relayed"]  # the gate relays members' only
        assert seen["asked"] == []  # no pull from a stranger, whatever round it claims
        assert daemon.client.call("node.whoami")["public_key"]
        assert daemon.process.poll() is None
        p2p = daemon.client.call("node.status")["p2p"]
        assert p2p["gossip"]["unadmitted"] == 5, p2p  # the stranger's 2 and the removed member's 3, never read
        assert p2p["bad_announcements"] == {}, p2p


async def test_a_member_overfilling_a_round_or_withholding_a_masked_updates_blocks_stops_nothing(caplog):
    owner, members = Identity.generate(), [Identity.generate() for _ in range(3)]
    repos = RepoSet.in_memory(owner)
    repo = make_secure(repos.create("private", tiny_state(0)), owner, members)
    head = repo.head("main")
    flood = [signed_as(an_advert(repo.id, head), members[1]) for _ in range(round_messages.MAX_PER_PHASE + 1)]
    data = b"masked" * 20  # within what a model of 15 values masks to
    cid = unixfs.add(unixfs.BlockStore(MemoryObjectStore()), data)  # blocks only its author holds
    masked = RoundMessage(repo=repo.id, branch="main", head=head, author=members[0].public_key, timestamp_ms=now_ms(),
                          content=Masked(roster="cd" * 32, cid=cid, size=len(data),
                                         key_epoch=repo.members.current().epoch)).signed(members[0])
    ann = announce.decode(announce.pack(repo.id, [("secure", m.encode()) for m in [*flood, masked]], 60_000)[0],
                          repo.id)
    announce.check(repo, ann, now_ms())  # each new, by a contributor: the gate cannot know the round is full

    async with running_host(owner) as host:
        p2p = P2PService(host, BlockExchange(host, repos.blocks), repos, memory=RoundMemory())
        pull = await trio.to_thread.run_sync(p2p._take, repo.id, [(ann, "publisher")])
        assert pull == {masked.id: "publisher"}  # wanted from its publisher: catch-up brings it with its blocks
        assert [repo.secure.has(m.id) for m in flood] == [True] * round_messages.MAX_PER_PHASE + [False]
        assert not repo.secure.has(masked.id)
        assert p2p.bad_input == {} and not p2p.counts["take_failures"]  # the round's bound, nobody's offence
        refused = [r.getMessage() for r in caplog.records if "not taken" in r.getMessage()]
        assert len(refused) == 1 and "advert messages in this round already" in refused[0], refused

        unixfs.add(repo.blocks, data)  # its blocks arrived
        assert await trio.to_thread.run_sync(p2p._take, repo.id, [(ann, "publisher")]) == {}
        assert repo.secure.has(masked.id)
        assert len([r for r in caplog.records if "not taken" in r.getMessage()]) == 1  # logged once a minute


# -- member cards (``protocol.hello``) from strangers ------------------------------------------------------------


async def hellos(target: str, repo: str, member: Identity, status) -> dict:
    """A member's node introduces itself; a stranger sends malformed hellos, then replays the member's genuine
    cards (written for the member's connection), then pushes onto the topic. What the stranger got, and
    ``status()`` while both are connected."""
    daemon = peer_from_text(target.rsplit("/p2p/", 1)[-1])
    with trio.fail_after(ATTACK_TIMEOUT):
        async with hostile_peer(member) as alice, hostile_peer() as eve:
            await alice.connect(target)
            await alice.introduce(target, repo)
            await eve.connect(target)
            for bad in (None, "cards", [{"tag": b"x"}], [{"tag": b"t" * 16, "box": b"b" * 600}],
                        [{"tag": b"t" * 16, "box": b"b"}] * 300):
                await rpc.request(eve.host, daemon, hello.PROTOCOL, {"cards": bad})
            stolen = hello.cards(alice.repos.all(), member, alice.peer_id, str(daemon))
            reply = await rpc.request(eve.host, daemon, hello.PROTOCOL, {"cards": stolen})
            await eve.push(target, announce.topic(repo), [b"anything"])
            await trio.sleep(1)
            return {"read": hello.read(reply["cards"], eve.repos.all(), eve.peer_id, str(daemon)),
                    "cards": len(reply["cards"]), "eve": eve.peer_id, "alice": alice.peer_id,
                    "status": await trio.to_thread.run_sync(status)}


@pytest.mark.integration
def test_a_strangers_malformed_or_replayed_hellos_prove_nothing_and_cost_it(tmp_path):
    member = Identity.generate()
    with running_daemon(configure(tmp_path / "a", sync_interval=600)) as daemon:
        repo = new_repo(daemon, tmp_path)
        daemon.client.call("repo.invite", repo=repo, member=member.public_key, role="reader")
        seen = trio.run(hellos, address(daemon), repo, member, lambda: daemon.client.call("node.status")["p2p"])

        assert seen["read"] == {} and seen["cards"] == hello.PAD_TO  # its answer: one sealed card, padded
        assert daemon.process.poll() is None
        p2p = seen["status"]
        assert p2p["cards"]["bad"] == {seen["eve"]: 5}, p2p["cards"]  # the malformed ones; the replay opened nothing
        keys = {p["peer"]: p["key"] for p in p2p["peers"]}
        assert keys == {seen["alice"]: member.public_key, seen["eve"]: None}
        assert p2p["gossip"]["unadmitted"] >= 1  # still a stranger on the topic
