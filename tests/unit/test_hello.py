"""Member cards (``protocol.hello``): a card proves a member key to the one peer it was written for, and only to
a node holding the repository's key."""

import pytest

from flair_node.core.errors import IntegrityError, InvalidInput
from flair_node.core.identity import Identity
from flair_node.protocol import hello
from flair_node.protocol.rounds import RoundMemory
from flair_node.protocol.sync import pull
from flair_node.storage.clock import now_ms
from flair_node.storage.repos import RepoSet
from flair_node.testing.commit_graph import tiny_state
from flair_node.testing.sync import LocalSource

OWNER, ALICE, BOB, MALLORY = (Identity.generate() for _ in range(4))


async def three_nodes():
    """The owner's, Alice's and Bob's repository sets, each holding the same repository (Alice and Bob are
    contributors), and the repository's id."""
    owner = RepoSet.in_memory(OWNER)
    repo = owner.create("digits", tiny_state(0))
    repo.invite(OWNER, ALICE.public_key, "contributor")
    repo.invite(OWNER, BOB.public_key, "contributor")
    sets = {"owner": owner}
    for name, identity in (("alice", ALICE), ("bob", BOB)):
        sets[name] = RepoSet.in_memory(identity)
        await pull(sets[name], repo.id, LocalSource(owner, identity.public_key, sets[name]), memory=RoundMemory())
    return sets, repo.id


async def test_a_card_proves_the_member_key_to_the_peer_it_was_written_for():
    sets, repo = await three_nodes()
    cards = hello.cards(sets["alice"].all(), ALICE, "alice-peer", "owner-peer")
    assert hello.read(cards, sets["owner"].all(), "owner-peer", "alice-peer") == {repo: ALICE.public_key}
    # Bob holds the key too, but the card was written for another peer: it names nothing to him.
    assert hello.read(cards, sets["bob"].all(), "owner-peer", "alice-peer") == {repo: ALICE.public_key}
    assert hello.read(cards, sets["bob"].all(), "bob-peer", "alice-peer") == {}
    # Replayed by another peer (Mallory's connection) it names nothing either.
    assert hello.read(cards, sets["owner"].all(), "owner-peer", "mallory-peer") == {}


async def test_a_non_member_reads_nothing_off_cards_and_they_all_look_alike():
    sets, _ = await three_nodes()
    stranger = RepoSet.in_memory(MALLORY)
    stranger.create("elsewhere", tiny_state(1))  # a repository of its own, with a key of its own
    cards = hello.cards(sets["alice"].all(), ALICE, "alice-peer", "mallory-peer")
    assert hello.read(cards, stranger.all(), "mallory-peer", "alice-peer") == {}
    assert len(cards) == hello.PAD_TO  # one real card, padded
    assert {len(c["tag"]) for c in cards} == {hello.TAG_BYTES}
    assert max(len(c["box"]) for c in cards) - min(len(c["box"]) for c in cards) <= 1
    assert all(ALICE.public_key.encode() not in c["box"] for c in cards)
    # A node that is in no repository still says hello, with padding only.
    assert len(hello.cards(stranger.all(), MALLORY, "m", "a")) == hello.PAD_TO


async def test_a_removed_members_card_proves_a_key_without_a_role_and_a_forged_card_is_refused():
    sets, repo = await three_nodes()
    sets["owner"].open_id(repo).remove(OWNER, BOB.public_key)
    stale = hello.cards(sets["bob"].all(), BOB, "bob-peer", "owner-peer")  # Bob has not heard yet
    assert hello.read(stale, sets["owner"].all(), "owner-peer", "bob-peer") == {repo: BOB.public_key}
    membership = sets["owner"].open_id(repo).members.current()
    assert membership.role(BOB.public_key, epoch=membership.epoch, at_ms=now_ms()) is None  # what p2p asks next
    await pull(sets["bob"], repo, LocalSource(sets["owner"], ALICE.public_key, sets["bob"]), memory=RoundMemory())
    assert hello.read(hello.cards(sets["bob"].all(), BOB, "bob-peer", "owner-peer"), sets["owner"].all(),
                      "owner-peer", "bob-peer") == {}  # once it knows, a removed member writes no card
    cards = hello.cards(sets["alice"].all(), ALICE, "alice-peer", "owner-peer")
    real = next(c for c in cards if hello.read([c], sets["owner"].all(), "owner-peer", "alice-peer"))
    tampered = {**real, "box": real["box"][:-1] + bytes([real["box"][-1] ^ 1])}
    with pytest.raises(IntegrityError):
        hello.read([tampered], sets["owner"].all(), "owner-peer", "alice-peer")


@pytest.mark.parametrize("hello_", [None, "cards", [{"tag": "x", "box": b""}], [{"tag": b"x", "box": b"x" * 600}],
                                    [{"tag": b"x" * 16, "box": b"x"}] * (hello.MAX_CARDS + hello.PAD_TO + 1)])
async def test_a_malformed_hello_is_invalid_input(hello_):
    sets, _ = await three_nodes()
    with pytest.raises(InvalidInput):
        hello.read(hello_, sets["owner"].all(), "owner-peer", "alice-peer")


async def test_a_node_in_more_repositories_than_a_hello_holds_writes_as_many_cards_as_one_reads(monkeypatch):
    sets, repo = await three_nodes()
    second = sets["owner"].create("other", tiny_state(1))
    second.invite(OWNER, ALICE.public_key, "reader")
    await pull(sets["alice"], second.id, LocalSource(sets["owner"], ALICE.public_key, sets["alice"]),
               memory=RoundMemory())
    monkeypatch.setattr(hello, "MAX_CARDS", 1)
    cards = hello.cards(sets["alice"].all(), ALICE, "alice-peer", "owner-peer")
    assert len(cards) == hello.PAD_TO  # one card, padded: a hello the reader takes whole
    assert len(hello.read(cards, sets["owner"].all(), "owner-peer", "alice-peer")) == 1
