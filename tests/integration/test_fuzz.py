"""Fuzzing what peers can send: 10,000 mutated announcements at a node's gate, mutated Bitswap messages and sync
requests, and a thousand mutated announcements over real gossip at a running daemon. Nothing crashes, nothing
invalid is stored, and the node keeps answering. The mutations are ``flair_node.testing.fuzz``'s, which
``bench/fuzz.py`` runs as a whole campaign."""

import json
import random
import time

import pytest
import trio

from flair_node.core.errors import FlairError
from flair_node.core.identity import Identity
from flair_node.network import bitswap_wire as wire
from flair_node.protocol import announce
from flair_node.protocol.sync import SyncServer
from flair_node.storage.repo import now_ms
from flair_node.storage.repos import RepoSet
from flair_node.testing.commit_graph import tiny_state
from flair_node.testing.daemon import running_daemon
from flair_node.testing.fuzz import CLASSES, World, mutate_announcement, mutate_bytes
from flair_node.testing.hostile import hostile_peer

OWNER, ALICE = Identity.generate(), Identity.generate()


def test_ten_thousand_mutated_announcements_are_refused_and_change_nothing(tmp_path):
    world = World(tmp_path, random.Random(20261126))  # a member's node that holds only the genesis
    node = world.node
    before = (sorted(node.objects.keys()), node.branches(), node.members.current().head)
    rng = random.Random(20261126)
    outcomes: dict[str, int] = {}
    for n in range(10_000):  # a quarter structure-aware (fields, types, nesting, re-signed records), the rest bytes
        seed = rng.choice(world.announcements) if n % 100 else rng.randbytes(rng.randint(0, 300))
        data = mutate_announcement(rng, seed, CLASSES, world.signers) if n % 4 == 1 else mutate_bytes(rng, seed)
        try:
            announce.check(node, announce.decode(data, world.repo.id), now_ms())
            outcome = world.verdict(data)  # "accepted" when items were only dropped or repeated: still genuine
        except (FlairError, announce.Lagging, announce.Replay) as exc:
            outcome = type(exc).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert "forged" not in outcomes, outcomes  # no record but a genuine one (by id, so by signature) gets through
    assert sum(outcomes.values()) == 10_000 and outcomes.get("Forbidden", 0) > 0  # re-signed ones got that far
    assert (sorted(node.objects.keys()), node.branches(), node.members.current().head) == before
    assert node.fsck()[1] == []


def test_mutated_bitswap_messages_only_ever_fail_as_integrity_errors():
    from flair_node.core.cid import RAW, cid_for, parse_cid

    block = b"block" * 50
    cid = parse_cid(cid_for(RAW, block))
    framed = wire.frame(wire.Message(wants=(wire.Want(cid, send_dont_have=True),), blocks=((cid, block),),
                                     have=(cid,), dont_have=(cid,)))
    body = framed[2:]
    rng = random.Random(7)
    for _ in range(10_000):  # bytes only: bench/fuzz.py runs field-level (protobuf) mutations as well
        try:
            decoded = wire.decode(mutate_bytes(rng, body))
        except FlairError:
            continue
        for got, data in decoded.blocks:  # whatever parsed: each block's CID is its bytes' hash
            assert got.digest == parse_cid(cid_for(got.codec, data)).digest


async def test_mutated_sync_requests_are_refused_without_harm():
    owner = RepoSet.in_memory(OWNER)
    repo = owner.create("r", tiny_state(0))
    repo.invite(OWNER, ALICE.public_key, "reader")
    server = SyncServer(owner)
    good = {"op": "records", "repo": repo.id, "ids": [repo.head("main")]}
    rng = random.Random(11)
    variants = [{}, {"op": "heads"}, {"op": "records", "repo": repo.id, "ids": ["x"] * 300},
                {"op": "records", "repo": repo.id, "ids": "nope"}, {"op": "drop", "repo": repo.id},
                {"op": "heads", "repo": repo.id[:-1] + "0"}, [], "heads", None, 7]
    for _ in range(300):
        request = rng.choice(variants) if rng.random() < 0.5 else {**good, rng.choice(list(good)): rng.choice(
            [None, 1, "", [], {}, "ab" * 32, [repo.id] * 2])}
        try:
            await server.handle(ALICE.public_key, request)
        except FlairError:
            pass
    assert (await server.handle(ALICE.public_key, good))["records"]  # still serving


@pytest.mark.integration
@pytest.mark.slow
def test_a_running_daemon_survives_a_thousand_mutated_announcements(tmp_path):
    with running_daemon(tmp_path / "a") as daemon:
        model = tmp_path / "m.safetensors"
        from safetensors.torch import save_file

        save_file(tiny_state(0), str(model))
        repo = daemon.client.call("repo.init", name="r", model_path=str(model))["repo"]
        daemon.client.call("repo.branch", repo=repo, name="exp")
        thrower = Identity.generate()  # a member: a stranger's messages are not even read (closed mesh)
        daemon.client.call("repo.invite", repo=repo, member=thrower.public_key, role="reader")
        address = daemon.client.call("node.status")["p2p"]["addrs"][0]
        before = daemon.client.call("repo.branch", repo=repo)["branches"]
        objects = sorted(p.name for p in (daemon.home / "objects").rglob("*") if p.is_file())

        sent = trio.run(throw_mutations, address, repo, daemon.home, 1_000, thrower)
        time.sleep(2)
        status = daemon.client.call("node.status")["p2p"]
        assert daemon.client.call("repo.branch", repo=repo)["branches"] == before
        assert sorted(p.name for p in (daemon.home / "objects").rglob("*") if p.is_file()) == objects
        assert daemon.client.call("repo.fsck", repo=repo)["ok"]
        refused = sum(status["bad_announcements"].values()) + status["announcements"].get("replays", 0)
        assert 0 < refused <= sent, json.dumps(status)


async def throw_mutations(address, repo_id, home, count, identity):
    from flair_node.storage.repos import RepoSet as Stores

    owner_view = Stores.on_disk(home, Identity.generate()).open_id(repo_id)  # read-only use of its records
    rng = random.Random(3)
    pool = [announce.pack(repo_id, [("move", owner_view.branch_move(b).encode())], 60_000)[0]
            for b in owner_view.branches()]
    with trio.fail_after(120):
        async with hostile_peer(identity) as thrower:
            topic = announce.topic(repo_id)
            await thrower.connect(address)
            await thrower.introduce(address, repo_id)  # a member's node, known to the daemon as one
            await thrower.join(topic, mesh_with=address.rsplit("/p2p/", 1)[-1])
            for _ in range(count):
                await thrower.publish(topic, mutate_bytes(rng, rng.choice(pool))[:60_000])
            await trio.sleep(1)
    return count
