"""Attacks on the messages of secure rounds (``storage.ingest.accept_round_message``, ``storage.round_messages``):
strangers, readers and members who send what they may not, or more than a round keeps."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from flair_node.core.errors import IntegrityError, NotFound
from flair_node.core.identity import Identity
from flair_node.core.ids import CommitId
from flair_node.core.round_messages import Masked, RoundMessage
from flair_node.protocol import secure_rounds
from flair_node.storage import round_messages
from flair_node.storage.clock import now_ms
from flair_node.storage.repo import Repository
from flair_node.storage.repos import RepoSet
from flair_node.testing.commit_graph import make_secure

OWNER = Identity.generate()
MEMBERS = [Identity.generate() for _ in range(3)]
READER = Identity.generate()
STRANGER = Identity.generate()


def state(shift: float = 0.0) -> dict[str, torch.Tensor]:
    return {"w": torch.linspace(-1, 1, 1000) + shift}


def team(repos: RepoSet) -> Repository:
    return make_secure(repos.create("private", state()), OWNER, MEMBERS, [READER])


def as_node(repo: Repository, identity: Identity) -> Repository:
    return Repository.open(repo.id, repo.objects, repo.blocks, repo.refs, reader=identity)


def advert(repo: Repository, who: Identity, shift: float = 0.01) -> RoundMessage:
    message, _ = secure_rounds.advertise(as_node(repo, who), who, "main", state(shift), 10)
    return message


def resigned(message: RoundMessage, who: Identity, **changes) -> RoundMessage:
    return dataclasses.replace(message, author=who.public_key, **changes).signed(who)


def test_messages_kept_survive_a_restart_in_their_round_order(tmp_path):
    repos = RepoSet.on_disk(tmp_path, OWNER)
    repo = team(repos)
    sent = [advert(repo, m) for m in MEMBERS]
    for message in sent:
        assert repo.ingest.accept_round_message(message)
    assert not repo.ingest.accept_round_message(sent[0])  # a replay keeps nothing new
    reopened = RepoSet.on_disk(tmp_path, OWNER).open_id(repo.id)
    assert reopened.secure.ids("main", repo.head("main")) == [m.id for m in sent]
    assert reopened.secure.of_round(repo.id, "main", repo.head("main"), "advert") == sorted(sent, key=lambda m: m.id)
    later = advert(repo, MEMBERS[0], 0.02)
    assert repo.ingest.accept_round_message(later)  # written through the other copy: this one reads it too
    assert reopened.secure.ids("main", repo.head("main")) == [*(m.id for m in sent), later.id]


def test_strangers_readers_and_forgers_are_refused_before_anything_is_kept():
    repo = team(RepoSet.in_memory(OWNER))
    good = advert(repo, MEMBERS[0])
    with pytest.raises(IntegrityError, match="no contributor role"):  # a stranger's advert
        repo.ingest.accept_round_message(resigned(good, STRANGER))
    with pytest.raises(IntegrityError, match="no contributor role"):  # a reader may reveal, not contribute
        repo.ingest.accept_round_message(resigned(good, READER))
    with pytest.raises(IntegrityError):  # a member's message with another's signature
        repo.ingest.accept_round_message(dataclasses.replace(good, author=MEMBERS[1].public_key))
    with pytest.raises(IntegrityError, match="ahead of this node's clock"):
        repo.ingest.accept_round_message(resigned(good, MEMBERS[0], timestamp_ms=now_ms() + 3_600_000))
    with pytest.raises(NotFound):  # a round on a commit this node does not hold: nothing to judge it by
        repo.ingest.accept_round_message(resigned(good, MEMBERS[0], head=CommitId("ab" * 32)))
    other = team(RepoSet.in_memory(OWNER))
    with pytest.raises(IntegrityError, match="another repository"):
        other.ingest.accept_round_message(good)
    assert repo.secure.ids("main", repo.head("main")) == []


def test_a_masked_update_may_name_no_more_than_the_model_masks_to():
    repo = team(RepoSet.in_memory(OWNER))
    huge = Masked(roster="ab" * 32, cid="bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
                  size=1 << 30, key_epoch=0)
    message = RoundMessage(repo=repo.id, branch="main", head=repo.head("main"), author=MEMBERS[0].public_key,
                           timestamp_ms=now_ms(), content=huge).signed(MEMBERS[0])
    with pytest.raises(IntegrityError, match="more than a model of 1000 values masks to"):
        repo.ingest.check_round_message(message)
    # the bound is the round's head's: a model grown since the first commit masks to more
    grown = repo.commit_weights(OWNER, {**repo.materialize(repo.head("main")), "head.weight": torch.zeros(5000)},
                                message="a new head")
    fits = dataclasses.replace(huge, size=8 * 5500)
    message = RoundMessage(repo=repo.id, branch="main", head=grown.id, author=MEMBERS[0].public_key,
                           timestamp_ms=now_ms(), content=fits).signed(MEMBERS[0])
    assert repo.ingest.check_round_message(message)
    with pytest.raises(IntegrityError, match="more than a model of 6000 values masks to"):
        repo.ingest.check_round_message(resigned(message, MEMBERS[0], content=huge))
    # a norm proof where the policy asks for none: its blocks would be fetched for nothing
    proven = dataclasses.replace(huge, size=100, proof=huge.cid, proof_size=1000)
    message = RoundMessage(repo=repo.id, branch="main", head=repo.head("main"), author=MEMBERS[0].public_key,
                           timestamp_ms=now_ms(), content=proven).signed(MEMBERS[0])
    with pytest.raises(IntegrityError, match="norm proof, which this repository's policy does not ask for"):
        repo.ingest.check_round_message(message)


def test_a_member_cannot_fill_a_round(monkeypatch):
    repo = team(RepoSet.in_memory(OWNER))
    for i in range(round_messages.MAX_PER_PHASE):
        repo.ingest.accept_round_message(advert(repo, MEMBERS[0], 0.01 * (i + 1)))
    with pytest.raises(IntegrityError, match="advert messages in this round already"):
        repo.ingest.accept_round_message(advert(repo, MEMBERS[0], 0.5))
    monkeypatch.setattr(round_messages, "MAX_ROUND_MESSAGES", round_messages.MAX_PER_PHASE + 1)
    repo.ingest.accept_round_message(advert(repo, MEMBERS[1]))
    with pytest.raises(IntegrityError, match="holds 5 messages already"):
        repo.ingest.accept_round_message(advert(repo, MEMBERS[2]))
