"""Announcements: packed to the size limit, and checked (schema, signatures, roles, clock) before a node takes
or relays them."""

import dataclasses

import msgpack
import pytest

from flair_node.core import encoding
from flair_node.core.errors import Forbidden, IntegrityError
from flair_node.core.identity import Identity
from flair_node.core.membership import invitation
from flair_node.core.refs import BranchMove
from flair_node.core.round_messages import Masked, Roster, RoundMessage
from flair_node.protocol import announce, secure_rounds
from flair_node.storage.repo import Repository, now_ms
from flair_node.storage.repos import RepoSet
from flair_node.testing.commit_graph import make_secure, tiny_state

OWNER, ALICE, MALLORY = Identity.generate(), Identity.generate(), Identity.generate()


def setup():
    """The owner's repository with one commit on ``exp``, and an empty node that holds only its genesis."""
    a = RepoSet.in_memory(OWNER)
    repo = a.create("r", tiny_state(0))
    repo.create_branch(OWNER, "exp", repo.head("main"))
    commit = repo.commit_weights(OWNER, tiny_state(1), message="one", branch="exp")
    b = RepoSet.in_memory(ALICE)
    theirs = b.adopt(repo.record)
    return repo, theirs, commit, repo.branch_move("exp")


def message(repo, items):
    return announce.decode(announce.pack(repo.id, items, 60_000)[0], repo.id)


def test_records_round_trip_and_check():
    repo, theirs, commit, move = setup()
    ann = message(repo, [("commit", commit.encode()), ("move", move.encode())])
    assert ann.commits == (commit,) and ann.moves == (move,)
    announce.check(theirs, ann, now_ms())  # records by the owner: fine on any node that knows the repository


def test_pack_fills_messages_up_to_the_limit_in_order():
    repo, _, commit, move = setup()
    items = [("commit", commit.encode()), ("move", move.encode())] * 40
    messages = announce.pack(repo.id, items, 4096)
    assert len(messages) > 1 and all(len(m) <= 4096 for m in messages)
    decoded = [item for m in messages for item in announce.decode(m, repo.id).items]
    assert decoded == items
    with pytest.raises(IntegrityError, match="does not fit"):
        announce.pack(repo.id, [("commit", b"x" * 5000)], 4096)


def test_a_membership_change_in_the_message_counts_for_the_records_after_it():
    repo, theirs, commit, _ = setup()
    membership = repo.members.current()
    change = invitation(membership, OWNER, ALICE.public_key, "contributor", expires_ms=0,
                        keys={0: repo.keys.key(0)}, now_ms=now_ms())
    mine = BranchMove(repo=repo.id, branch="alice", commit=commit.id, previous="", author=ALICE.public_key,
                      epoch=0, timestamp_ms=now_ms()).signed(ALICE)
    with pytest.raises(Forbidden, match="is not a member"):
        announce.check(theirs, message(repo, [("move", mine.encode())]), now_ms())
    announce.check(theirs, message(repo, [("membership", change.encode()), ("move", mine.encode())]), now_ms())


@pytest.mark.parametrize("damage, error", [
    (lambda data, repo: b"\xc1" + data, "msgpack"),                                     # not msgpack
    (lambda data, repo: encoding.encode({**encoding.decode(data), "extra": 1}), "map of"),  # unknown field
    (lambda data, repo: encoding.encode({**encoding.decode(data), "v": 2}), "version-1"),
    (lambda data, repo: encoding.encode({**encoding.decode(data), "items": []}), "1 to"),
    (lambda data, repo: encoding.encode({**encoding.decode(data), "repo": "ab" * 32}), "another repository"),
    (lambda data, repo: encoding.encode({**encoding.decode(data), "items": [["gift", b"x"]]}), "gift"),
    (lambda data, repo: msgpack.packb({"v": 1, "items": [], "repo": repo}), "canonical"),  # key order
])
def test_malformed_announcements_are_refused(damage, error):
    repo, _, commit, _ = setup()
    data = announce.pack(repo.id, [("commit", commit.encode())], 60_000)[0]
    with pytest.raises(IntegrityError, match=error):
        announce.decode(damage(data, repo.id), repo.id)


def test_forged_and_replayed_records_are_refused():
    repo, theirs, commit, move = setup()
    tampered = dataclasses.replace(commit, message="not what was signed")
    with pytest.raises(IntegrityError):
        announce.check(theirs, message(repo, [("commit", tampered.encode())]), now_ms())
    unsigned = dataclasses.replace(move, signature=bytes(64))
    with pytest.raises(IntegrityError):
        announce.check(theirs, message(repo, [("move", unsigned.encode())]), now_ms())
    by_stranger = dataclasses.replace(commit, author=MALLORY.public_key, signature=b"").signed(MALLORY)
    with pytest.raises(Forbidden, match="is not a member"):
        announce.check(theirs, message(repo, [("commit", by_stranger.encode())]), now_ms())
    early = dataclasses.replace(move, timestamp_ms=now_ms() + 3_600_000, signature=b"").signed(OWNER)
    with pytest.raises(IntegrityError, match="ahead of this node's clock"):
        announce.check(theirs, message(repo, [("move", early.encode())]), now_ms())
    with pytest.raises(announce.Replay):
        announce.check(repo, message(repo, [("commit", commit.encode()), ("move", move.encode())]), now_ms())


def test_a_node_behind_on_membership_does_not_judge_and_pulls_instead():
    repo, theirs, _, _ = setup()
    repo.invite(OWNER, ALICE.public_key, "reader")
    second = repo.invite(OWNER, MALLORY.public_key, "reader")
    latest = repo.members.changes()[-1]
    assert latest.seq == second.seq == 2
    with pytest.raises(announce.Lagging):
        announce.check(theirs, message(repo, [("membership", latest.encode())]), now_ms())


# -- secure round messages ---------------------------------------------------------------------------------

CONTRIBUTORS = [Identity.generate() for _ in range(3)]
READER = Identity.generate()


def secure_team() -> Repository:
    """The owner's repository running secure rounds: three contributors and a reader."""
    return make_secure(RepoSet.in_memory(OWNER).create("private", tiny_state(0)), OWNER, CONTRIBUTORS, [READER])


def advert(repo: Repository, who: Identity) -> RoundMessage:
    node = Repository.open(repo.id, repo.objects, repo.blocks, repo.refs, reader=who)
    return secure_rounds.advertise(node, who, "main", tiny_state(1), 10)[0]


def payload_cid(repo: Repository) -> str:
    return repo.commit(repo.head("main")).payload.cid


def resigned(message: RoundMessage, who: Identity, **changes) -> RoundMessage:
    return dataclasses.replace(message, author=who.public_key, **changes).signed(who)


def test_a_members_secure_round_message_round_trips_and_is_checked_once():
    repo = secure_team()
    sent = advert(repo, CONTRIBUTORS[0])
    ann = message(repo, [("secure", sent.encode())])
    assert ann.messages == (sent,) and ann.items == (("secure", sent.encode()),)
    announce.check(repo, ann, now_ms())
    assert repo.ingest.accept_round_message(sent)
    with pytest.raises(announce.Replay):  # held: nothing new to take or relay
        announce.check(repo, ann, now_ms())
    roster = RoundMessage(repo=repo.id, branch="main", head=sent.head, author=READER.public_key,
                          timestamp_ms=now_ms(), content=Roster((sent.id,))).signed(READER)
    announce.check(repo, message(repo, [("secure", roster.encode())]), now_ms())  # any member, past the advert


@pytest.mark.parametrize("forge, error, match", [
    (lambda m, repo: resigned(m, MALLORY), Forbidden, "is not a member"),
    (lambda m, repo: resigned(m, READER), Forbidden, "needs the role contributor"),
    (lambda m, repo: dataclasses.replace(m, author=CONTRIBUTORS[1].public_key), IntegrityError, "signature"),
    (lambda m, repo: resigned(m, CONTRIBUTORS[0], timestamp_ms=now_ms() + 3_600_000), IntegrityError,
     "ahead of this node's clock"),
    (lambda m, repo: resigned(m, CONTRIBUTORS[0], repo="ab" * 32), IntegrityError, "another repository"),
    (lambda m, repo: resigned(m, CONTRIBUTORS[0], head="ab" * 32), announce.Lagging, "not held here"),
    (lambda m, repo: resigned(m, CONTRIBUTORS[0], content=Masked(roster="cd" * 32, cid=payload_cid(repo),
                                                                  size=10, key_epoch=9)),
     announce.Lagging, "key epoch 9"),
])
def test_secure_round_messages_that_do_not_hold_up_are_refused(forge, error, match):
    repo = secure_team()
    forged = forge(advert(repo, CONTRIBUTORS[0]), repo)
    with pytest.raises(error, match=match):
        announce.check(repo, message(repo, [("secure", forged.encode())]), now_ms())


def test_a_member_invited_in_the_same_message_may_advertise():
    repo = secure_team()
    newcomer = Identity.generate()
    membership = repo.members.current()
    change = invitation(membership, OWNER, newcomer.public_key, "contributor", expires_ms=0,
                        keys={membership.epoch: repo.keys.key(membership.epoch)}, now_ms=now_ms())
    theirs = resigned(advert(repo, CONTRIBUTORS[0]), newcomer)
    with pytest.raises(Forbidden, match="is not a member"):
        announce.check(repo, message(repo, [("secure", theirs.encode())]), now_ms())
    announce.check(repo, message(repo, [("membership", change.encode()), ("secure", theirs.encode())]), now_ms())
