"""Members who cheat at rounds (issue 16, findings 3, 4, 5, 7, 8 and 12), each attack performed as modified
software would: records signed with the attacker's own key and written straight into its stores.

- One member, one contribution: moving other members' contribution branches, or several commits, counts once.
- A member removed or expired since it contributed is not counted, whatever the date it signed.
- A contribution whose payload does not decode (a safetensors header nested 100,000 deep), holds NaN or values
  beyond what the merge takes is excluded with its reason, and the round goes on without it; the round service
  survives any error of one item and a full disk.
- A merge signed for a window a year ahead is refused.
- A round merge being checked holds the next aggregator's own merge; a dead aggregator costs one timeout after
  the round filled up, not the deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from flair_node.core import crypto
from flair_node.core.errors import IntegrityError, InvalidInput
from flair_node.core.identity import Identity
from flair_node.core.objects import Commit, Payload
from flair_node.core.refs import BranchMove
from flair_node.core.round_rules import RoundPolicy, filled_at, window
from flair_node.daemon.home import Home
from flair_node.daemon.round_service import RoundService
from flair_node.protocol import round_merges, rounds
from flair_node.storage import pieces, unixfs
from flair_node.storage.repo import Repository, contribution_branch, now_ms
from flair_node.storage.repos import RepoSet
from flair_node.storage.stores import MemoryRefStore
from flair_node.tensors.codec import encode_payload
from flair_node.tensors.safetensors_io import state_source
from flair_node.testing.cluster import address, configure, wait_until
from flair_node.testing.cluster import public_key as key
from flair_node.testing.commit_graph import tiny_state
from flair_node.testing.daemon import running_daemon

OWNER = Identity.generate()
MEMBERS = [Identity.generate() for _ in range(4)]
EVERYONE = [OWNER, *MEMBERS]


def shift(state: dict[str, torch.Tensor], by: float) -> dict[str, torch.Tensor]:
    return {k: v + by if v.is_floating_point() else v for k, v in state.items()}


def team(policy: RoundPolicy, role: str = "maintainer") -> tuple[RepoSet, Repository]:
    repos = RepoSet.in_memory(OWNER)
    repo = repos.create("digits", tiny_state(0))
    for member in MEMBERS:
        repo.invite(OWNER, member.public_key, role)
    repo.set_policy(OWNER, policy)
    return repos, repo


def as_node(repos: RepoSet, repo: Repository, identity: Identity, refs: MemoryRefStore | None = None) -> Repository:
    """The repository as ``identity``'s node holds it: the same records and blocks, its own key, and its own
    branches if ``refs`` is given."""
    return Repository.open(repo.id, repos.objects, repos.blocks, refs or repo.refs, reader=identity)


def by_key(key: str | None) -> Identity:
    return next(i for i in EVERYONE if i.public_key == key)


def point(node: Repository, author: Identity, branch: str, commit: str) -> None:
    """Point ``branch`` at ``commit`` with a move ``author`` signs, written straight into the refs (no role check:
    what modified software does to its own store before it gossips the move)."""
    epoch = node.members.current().epoch
    previous = node.branches().get(branch, "")
    move = BranchMove(repo=node.id, branch=branch, commit=commit, previous=previous, author=author.public_key,
                      epoch=epoch, timestamp_ms=now_ms()).signed(author)
    node.objects.put(move.id, move.encode())
    node.refs.compare_and_swap(branch, node.refs.get(branch), move.id)


def hostile_contribution(node: Repository, author: Identity, payload: bytes, *, examples: int = 100) -> Commit:
    """A contribution to main signed by ``author`` whose payload (before encryption, with the repository's key:
    the author is a member) is ``payload`` bytes, on ``author``'s own contribution branch."""
    epoch = node.members.current().epoch
    data = crypto.encrypt(node.keys.key(epoch), payload, node.keys.context("bitdelta-v1"))
    with node.write_lock:
        cid = unixfs.add(node.blocks, data)
    commit = Commit(repo=node.id, parents=(node.head("main"),), author=author.public_key, timestamp_ms=now_ms(),
                    kind="contribution", message="hostile", meta={"examples": examples, "branch": "main"},
                    payload=Payload(cid=cid, codec="bitdelta-v1", size=len(data), key_epoch=epoch)).signed(author)
    node.objects.put(commit.id, commit.encode())
    point(node, author, contribution_branch("main", author.public_key), commit.id)
    return commit


def nested_header(depth: int = 100_000) -> bytes:
    """A safetensors file whose JSON header is ``depth`` arrays deep: a recursive decoder overflows."""
    header = b"[" * depth + b"]" * depth
    return struct.pack("<Q", len(header)) + header


def snapshot_contribution(node: Repository, author: Identity, state: dict[str, torch.Tensor]) -> Commit:
    """A contribution to main signed by ``author`` holding ``state`` whole, in pieces (``snapshot-v1``), whatever
    its layout: what modified software writes, past the checks of ``Repository.contribute``."""
    epoch = node.members.current().epoch
    source = state_source(state)
    with node.write_lock:
        root, size = pieces.write(node.blocks, node.keys.pieces(epoch=epoch, codec=pieces.CODEC),
                                  pieces.cut(source.segments(pieces.PIECE)))
    commit = Commit(repo=node.id, parents=(node.head("main"),), author=author.public_key, timestamp_ms=now_ms(),
                    kind="contribution", message="another layout", meta={"examples": 100, "branch": "main"},
                    payload=Payload(cid=root, codec=pieces.CODEC, size=size, key_epoch=epoch)).signed(author)
    node.objects.put(commit.id, commit.encode())
    point(node, author, contribution_branch("main", author.public_key), commit.id)
    return commit


def weights_payload(node: Repository, state: dict[str, torch.Tensor]) -> bytes:
    """``state`` as a bit-delta against main's head, however odd its values (NaN, huge)."""
    return encode_payload("bitdelta-v1", state, node.materialize(node.head("main")))


def test_a_contribution_of_another_layout_is_excluded_as_undecodable_and_the_round_goes_on():
    memory = rounds.RoundMemory()
    repos, repo = team(RoundPolicy(buffer=4, deadline_s=600))
    honest, extra, reshaped, retyped = MEMBERS
    good = as_node(repos, repo, honest).contribute(honest, shift(tiny_state(0), 0.5), examples=100)
    state = tiny_state(0)
    bad = {}
    for member, layout in ((extra, {**state, "head.w": torch.zeros(2)}), (reshaped, {**state, "w": state["w"].T}),
                           (retyped, {**state, "b": state["b"].double()})):
        bad[snapshot_contribution(as_node(repos, repo, member), member, layout).id] = member
    current = rounds.view(repo, "main", memory=memory)
    assert len(current.pending) == 4
    aggregator = by_key(current.aggregator(now_ms()))
    merged = rounds.merge(as_node(repos, repo, aggregator), aggregator, "main", memory=memory)
    assert sorted(merged.meta["excluded"]) == sorted([c, "undecodable"] for c in bad)
    assert round_merges.meta_parents(dict(merged.meta)) == [good.id]
    other = next(i for i in EVERYONE if i != aggregator)
    rounds.verify(as_node(repos, repo, other), merged, memory=rounds.RoundMemory())


# -- one member, one contribution (finding 3) -------------------------------------------------------------


def test_a_member_counts_once_however_many_contribution_branches_it_moves():
    memory = rounds.RoundMemory()
    repos, repo = team(RoundPolicy(buffer=3, deadline_s=600))
    cheat = MEMBERS[0]
    node = as_node(repos, repo, cheat)
    own = node.contribute(cheat, shift(tiny_state(0), 1.0), examples=100)
    second = hostile_contribution(node, cheat, weights_payload(node, shift(tiny_state(0), 2.0)))  # replaces own
    third = hostile_contribution(node, cheat, weights_payload(node, shift(tiny_state(0), 3.0)))
    for victim, commit in zip(MEMBERS[1:3], (own.id, second.id), strict=True):  # other members' branches
        point(node, cheat, contribution_branch("main", victim.public_key), commit)
    current = rounds.view(repo, "main", memory=memory)
    assert [(c.author, c.commit) for c in current.pending] == [(cheat.public_key, third.id)]
    assert not current.ready(now_ms())  # one member does not fill a round of three

    # An aggregator (colluding or modified) merges three of the cheat's commits: every member refuses it.
    forced = current.taking([rounds.Contribution(c, cheat.public_key, repo.head("main"), 100, 0, now_ms())
                             for c in sorted((own.id, second.id, third.id))])
    state, meta = round_merges.derive(repo, forced, forced.pending, memory=memory)
    aggregator = by_key(forced.aggregator(now_ms()))
    forged = as_node(repos, repo, aggregator).write_round(
        aggregator, state, branch="main", parents=(forced.head, *round_merges.merge_parents(meta)), meta=meta,
        message="three from one")
    for member in EVERYONE:
        with pytest.raises(IntegrityError, match="two contributions of one member"):
            rounds.verify(as_node(repos, repo, member), forged, memory=memory)


# -- roles are judged at merge time (finding 4) -----------------------------------------------------------


def test_a_removed_or_expired_member_is_not_counted_whatever_the_date_it_signed():
    memory = rounds.RoundMemory()
    repos, repo = team(RoundPolicy(buffer=2, deadline_s=600))
    leaver, honest = MEMBERS[0], MEMBERS[1]
    as_node(repos, repo, leaver).contribute(leaver, shift(tiny_state(0), 5.0), examples=1000)
    as_node(repos, repo, honest).contribute(honest, shift(tiny_state(0), 1.0), examples=10)
    before = rounds.view(repo, "main", memory=memory)
    assert {c.author for c in before.pending} == {leaver.public_key, honest.public_key}
    state, meta = round_merges.derive(repo, before, before.pending, memory=memory)  # what a merge taking both would be

    repo.remove(OWNER, leaver.public_key)  # after it contributed (dated before its removal)
    after = rounds.view(repo, "main", memory=memory)
    assert [c.author for c in after.pending] == [honest.public_key] and not after.ready(now_ms())
    aggregator = by_key(after.ranked[0])  # the removed member ranks no more
    stale = as_node(repos, repo, aggregator).write_round(
        aggregator, state, branch="main", parents=(before.head, *round_merges.merge_parents(meta)), meta=meta,
        message="counts the removed member")
    with pytest.raises(IntegrityError, match="no contributor role"):
        rounds.verify(as_node(repos, repo, honest), stale, memory=memory)

    # A role that expires: counted before its expiry, not after.
    repos, repo = team(RoundPolicy(buffer=1, deadline_s=600))
    brief = Identity.generate()
    repo.invite(OWNER, brief.public_key, "contributor", expires_ms=now_ms() + 400)
    as_node(repos, repo, brief).contribute(brief, shift(tiny_state(0), 1.0), examples=10)
    assert [c.author for c in rounds.view(repo, "main", memory=memory).pending] == [brief.public_key]
    time.sleep(0.5)
    assert rounds.view(repo, "main", memory=memory).pending == ()


# -- unusable contributions are excluded, and the round goes on (findings 5 and 8) ------------------------


def test_undecodable_nan_and_huge_contributions_are_excluded_with_their_reason_and_the_round_goes_on():
    memory = rounds.RoundMemory()
    repos, repo = team(RoundPolicy(buffer=4, deadline_s=600))
    honest, deep, nan, huge = MEMBERS
    start = repo.head("main")
    good = as_node(repos, repo, honest).contribute(honest, shift(tiny_state(0), 0.5), examples=100)
    bad = {}
    for member, payload in ((deep, nested_header()),
                            (nan, {k: torch.full_like(v, math.nan) if v.is_floating_point() else v
                                   for k, v in tiny_state(0).items()}),
                            (huge, shift(tiny_state(0), 1e9))):
        node = as_node(repos, repo, member)
        data = payload if isinstance(payload, bytes) else weights_payload(node, payload)
        bad[hostile_contribution(node, member, data).id] = member
    current = rounds.view(repo, "main", memory=memory)
    assert len(current.pending) == 4 and current.ready(now_ms())

    aggregator = by_key(current.aggregator(now_ms()))
    merged = rounds.merge(as_node(repos, repo, aggregator), aggregator, "main", memory=memory)
    assert repo.head("main") == merged.id
    reasons = {bad[c].public_key: why for c, why in merged.meta["excluded"]}
    assert reasons == {deep.public_key: "undecodable", nan.public_key: "non-finite", huge.public_key: "out of range"}
    assert round_merges.meta_parents(dict(merged.meta)) == [good.id]
    assert sorted(merged.parents[1:]) == sorted([good.id, *bad])  # taken out of the pending set
    for name, tensor in repo.materialize(merged.id).items():  # the mean of the one usable contribution
        assert torch.equal(tensor, shift(repo.materialize(start), 0.5)[name])
    for member in EVERYONE:  # every member re-derives the same exclusions
        rounds.verify(as_node(repos, repo, member), merged, memory=memory)
    after = rounds.view(repo, "main", memory=memory)
    assert after.pending == ()
    shown = after.json()["excluded"]
    assert {(e["commit"], e["reason"], e["round"]) for e in shown} == \
        {(c, why, 1) for c, why in merged.meta["excluded"]}


def test_a_merge_recording_other_exclusions_is_refused():
    memory = rounds.RoundMemory()
    repos, repo = team(RoundPolicy(buffer=2, deadline_s=600))
    honest, cheat = MEMBERS[:2]
    as_node(repos, repo, honest).contribute(honest, shift(tiny_state(0), 0.5), examples=100)
    node = as_node(repos, repo, cheat)
    hostile_contribution(node, cheat, weights_payload(node, {k: torch.full_like(v, math.inf) if v.is_floating_point()
                                                            else v for k, v in tiny_state(0).items()}))
    current = rounds.view(repo, "main", memory=memory)
    state, meta = round_merges.derive(repo, current, current.pending, memory=memory)
    meta["excluded"] = [[c, "undecodable"] for c, _ in meta["excluded"]]  # another reason than the bytes give
    aggregator = by_key(current.aggregator(now_ms()))
    lying = as_node(repos, repo, aggregator).write_round(
        aggregator, state, branch="main", parents=(current.head, *round_merges.merge_parents(meta)), meta=meta,
        message="wrong reason")
    with pytest.raises(IntegrityError, match="records other"):
        rounds.verify(as_node(repos, repo, honest), lying, memory=memory)


def test_too_few_usable_contributions_for_the_strategy_are_left_pending_and_the_bad_one_taken_out():
    memory = rounds.RoundMemory()
    repos, repo = team(RoundPolicy(strategy="krum", strategy_params={"byzantine": 1}, buffer=5, deadline_s=600))
    honest = [OWNER, *MEMBERS[:3]]
    for i, member in enumerate(honest):
        as_node(repos, repo, member).contribute(member, shift(tiny_state(0), 0.1 * (i + 1)), examples=10)
    cheat = MEMBERS[3]
    node = as_node(repos, repo, cheat)
    poison = hostile_contribution(node, cheat, nested_header())
    current = rounds.view(repo, "main", memory=memory)
    assert len(current.pending) == 5  # Krum with f = 1 needs five
    aggregator = by_key(current.aggregator(now_ms()))
    cleanup = rounds.merge(as_node(repos, repo, aggregator), aggregator, "main", memory=memory)
    assert cleanup.parents[1:] == (poison.id,) and cleanup.meta["contributions"] == []
    assert cleanup.meta["excluded"] == [[poison.id, "undecodable"]]
    assert repo.materialize(cleanup.id).keys() == tiny_state(0).keys()
    for name, tensor in repo.materialize(cleanup.id).items():
        assert torch.equal(tensor, tiny_state(0)[name])  # no weight changed
    rounds.verify(as_node(repos, repo, honest[1]), cleanup, memory=memory)
    assert sorted(c.author for c in rounds.view(repo, "main", memory=memory).pending) == \
        sorted(m.public_key for m in honest)


async def test_the_round_service_survives_any_error_of_one_item_and_a_full_disk(monkeypatch):
    repos, repo = team(RoundPolicy(buffer=1, deadline_s=600), role="contributor")  # main: only the owner merges
    other = repos.create("other", tiny_state(1))
    other.set_policy(OWNER, RoundPolicy(buffer=1, deadline_s=600))
    member = MEMBERS[0]
    other.invite(OWNER, member.public_key, "contributor")
    for r in (repo, other):
        as_node(repos, r, member).contribute(member, shift(tiny_state(0 if r is repo else 1), 0.5), examples=10)
    service = RoundService(repos, OWNER, memory=rounds.RoundMemory(), on_change=lambda: None, every=0.01)

    real_merge = rounds.merge

    def crashing(r, *args, **kwargs):
        if r.id == repo.id:
            raise RecursionError("maximum recursion depth exceeded while decoding JSON")
        return real_merge(r, *args, **kwargs)

    monkeypatch.setattr(rounds, "merge", crashing)
    await service.run_once()
    await service.run_once()
    assert service.counts["failed"] == 2 and service.errors == {"RecursionError": 2}
    assert service.counts["merged"] == 1 and repos.open_id(other.id).commit(other.head("main")).kind == "round"

    real_put = repos.objects.put

    def full(key, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rounds, "merge", real_merge)
    monkeypatch.setattr(repos.objects, "put", full)
    await service.run_once()  # the write fails: that one operation, nothing else
    assert service.errors["OSError"] == 1 and repo.commit(repo.head("main")).kind == "init"
    monkeypatch.setattr(repos.objects, "put", real_put)
    await service.run_once()  # room again: the round merges
    assert service.counts["merged"] == 2 and repo.commit(repo.head("main")).kind == "round"


# -- a merge for a window that has not begun (finding 7) --------------------------------------------------


def test_a_round_merge_dated_a_year_ahead_is_refused(monkeypatch):
    memory = rounds.RoundMemory()
    repos, repo = team(RoundPolicy(buffer=2, deadline_s=60, timeout_s=10))
    for i, member in enumerate(MEMBERS[:2]):
        as_node(repos, repo, member).contribute(member, shift(tiny_state(0), i + 1.0), examples=10)
    current = rounds.view(repo, "main", memory=memory)
    ahead = now_ms() + 365 * 86_400_000
    forger = by_key(current.aggregator(ahead))  # the turns cycle: someone's window holds that moment
    monkeypatch.setattr("flair_node.storage.clock.now_ms", lambda: ahead)
    forged = rounds.merge(as_node(repos, repo, forger), forger, "main", at_ms=ahead, memory=memory)
    monkeypatch.undo()
    assert forged.timestamp_ms == ahead
    move = repo.branch_move("main")
    for member in EVERYONE:
        node = as_node(repos, repo, member)
        with pytest.raises(IntegrityError, match="window that has not begun"):
            rounds.verify(node, forged, memory=memory)
        with pytest.raises(IntegrityError, match="window that has not begun"):
            rounds.check_move(node, move, memory=memory)


# -- a round is merged once, and a dead aggregator costs little (finding 12) ------------------------------


def test_windows_follow_the_round_filling_up_or_its_deadline_whichever_is_first():
    policy = RoundPolicy(buffer=2, deadline_s=600, timeout_s=8)
    opened = 1_000_000
    assert filled_at([opened + 5_000], opened, policy) is None  # one of two
    assert filled_at([opened + 9_000, opened - 50, opened + 5_000], opened, policy) == opened + 5_000
    assert filled_at([opened - 50, opened - 40], opened, policy) == opened  # never before the round opened
    assert window(0, opened, policy, filled_ms=opened + 5_000) == (opened, opened + 13_000)
    assert window(1, opened, policy, filled_ms=opened + 5_000) == (opened + 13_000, opened + 21_000)
    assert window(0, opened, policy, filled_ms=opened + 900_000) == (opened, opened + 608_000)  # the deadline first
    assert window(0, opened, policy) == (opened, opened + 608_000)  # not filled: as before


def test_the_backup_s_window_opens_one_timeout_after_the_round_filled_up_not_after_the_deadline(monkeypatch):
    memory = rounds.RoundMemory()
    repos, repo = team(RoundPolicy(buffer=2, deadline_s=3600, timeout_s=8))
    for i, member in enumerate(MEMBERS[:2]):
        as_node(repos, repo, member).contribute(member, shift(tiny_state(0), i + 1.0), examples=10)
    current = rounds.view(repo, "main", memory=memory)
    filled = max(c.timestamp_ms for c in current.pending)
    assert current.filled_ms == filled
    assert current.aggregator(filled + 7_999) == current.ranked[0]
    assert current.aggregator(filled + 8_000) == current.ranked[1]  # not an hour later
    assert current.aggregator(filled + 16_000) == current.ranked[2]
    backup = by_key(current.ranked[1])
    at = filled + 8_000  # the first-ranked is gone: its window lapsed
    monkeypatch.setattr("flair_node.storage.clock.now_ms", lambda: at)
    merged = rounds.merge(as_node(repos, repo, backup), backup, "main", at_ms=at, memory=memory)
    monkeypatch.undo()
    assert merged.timestamp_ms - filled < 2 * 8_000  # within twice the timeout of the round filling up
    for member in EVERYONE:
        rounds.verify(as_node(repos, repo, member), merged, memory=memory)


def test_a_node_does_not_merge_a_round_while_an_entitled_member_s_merge_of_it_is_being_checked(monkeypatch):
    memory = rounds.RoundMemory()
    repos, repo = team(RoundPolicy(buffer=2, deadline_s=3600, timeout_s=8))
    for i, member in enumerate(MEMBERS[:2]):
        as_node(repos, repo, member).contribute(member, shift(tiny_state(0), i + 1.0), examples=10)
    current = rounds.view(repo, "main", memory=memory)
    backup, third = by_key(current.ranked[1]), by_key(current.ranked[2])
    node = as_node(repos, repo, third, own_refs(repo))  # its own branches: it has not taken the backup's merge yet

    at = current.filled_ms + 8_000  # the backup's window; the first-ranked is dead
    monkeypatch.setattr("flair_node.storage.clock.now_ms", lambda: at)
    merged = rounds.merge(as_node(repos, repo, backup), backup, "main", at_ms=at, memory=memory)
    move = repo.branch_move("main")
    assert node.head("main") == current.head  # the third node still sees only its own head

    # Its record arrives (the announcement), its payload not yet: the third node holds its own merge.
    assert rounds.note_merge(node, merged, at_ms=at + 500, memory=memory)
    later = current.filled_ms + 16_000  # the third-ranked's window has opened meanwhile
    monkeypatch.setattr("flair_node.storage.clock.now_ms", lambda: later)
    assert rounds.view(node, "main", at_ms=later, memory=memory).aggregator(later) == third.public_key
    with pytest.raises(InvalidInput, match="is being checked"):
        rounds.merge(node, third, "main", at_ms=later, memory=memory)
    assert rounds.held_by(node, "main", current.head, later, memory=memory) == merged.id
    # at most two timeouts
    assert rounds.held_by(node, "main", current.head, at + 500 + 2 * 8_000, memory=memory) is None

    # Checked and taken: the round is merged once.
    rounds.check_move(node, move, memory=memory)
    assert node.ingest.accept_move(move) and node.head("main") == merged.id
    assert rounds.held_by(node, "main", current.head, later, memory=memory) is None
    assert not rounds.note_merge(node, merged, at_ms=later, memory=memory)  # not the current round any more


def test_only_an_entitled_member_s_merge_holds_a_round_and_each_author_only_once(monkeypatch):
    memory = rounds.RoundMemory()
    repos, repo = team(RoundPolicy(buffer=2, deadline_s=3600, timeout_s=8))
    for i, member in enumerate(MEMBERS[:2]):
        as_node(repos, repo, member).contribute(member, shift(tiny_state(0), i + 1.0), examples=10)
    current = rounds.view(repo, "main", memory=memory)
    node = as_node(repos, repo, by_key(current.ranked[3]), own_refs(repo))
    state, meta = round_merges.derive(repo, current, current.pending, memory=memory)
    first = by_key(current.ranked[0])
    at = current.filled_ms + 1_000  # the first-ranked's window
    monkeypatch.setattr("flair_node.storage.clock.now_ms", lambda: at)
    wrong = as_node(repos, repo, first, own_refs(repo)).write_round(  # signed, in its window, wrong bytes
        first, shift(state, 0.001), branch="main", parents=(current.head, *round_merges.merge_parents(meta)), meta=meta,
        message="not what its inputs merge to")
    monkeypatch.undo()

    def resigned(who: Identity, timestamp_ms: int) -> Commit:
        return dataclasses.replace(wrong, author=who.public_key, timestamp_ms=timestamp_ms, signature=b"").signed(who)

    assert not rounds.note_merge(node, resigned(by_key(current.ranked[2]), at), at_ms=at + 500,
                                 memory=memory)  # not its window
    assert not rounds.note_merge(node, resigned(Identity.generate(), at), at_ms=at + 500, memory=memory)  # not a member
    assert rounds.note_merge(node, wrong, at_ms=at + 500, memory=memory)
    assert rounds.held_by(node, "main", current.head, at + 600, memory=memory) == wrong.id
    move = BranchMove(repo=repo.id, branch="main", commit=wrong.id, previous=current.head, author=first.public_key,
                      epoch=0, timestamp_ms=at).signed(first)
    with pytest.raises(IntegrityError, match="not what its inputs merge to"):
        rounds.check_move(node, move, memory=memory)
    # refused: it holds nothing any more
    assert rounds.held_by(node, "main", current.head, at + 700, memory=memory) is None
    again = resigned(first, at + 1_000)
    assert not rounds.note_merge(node, again, at_ms=at + 1_500, memory=memory)  # once per author and round


def own_refs(repo: Repository) -> MemoryRefStore:
    """A node's own copy of ``repo``'s branches and membership, as they are now."""
    refs = MemoryRefStore()
    refs._refs = dict(repo.refs._refs)
    return refs


# -- against real daemons ---------------------------------------------------------------------------------


def _model(path: Path, seed: int) -> str:
    save_file({"w": torch.randn(64, generator=torch.Generator().manual_seed(seed))}, str(path))
    return str(path)


@pytest.mark.integration
@pytest.mark.slow
def test_hostile_contributions_neither_stop_nor_stall_an_aggregator_and_a_dead_first_costs_one_timeout(tmp_path):
    """A maintainer whose node does not aggregate (so when it ranks first, its window lapses) writes, as modified
    software, a contribution whose safetensors header is nested 100,000 deep and, for an accomplice key, one of
    NaN, and points the accomplice's branch at its own commit too. The aggregator's node takes them by catch-up,
    merges the round without them, says why, names their authors, and keeps merging."""
    timeout_s = 8
    with running_daemon(configure(tmp_path / "a")) as a, \
            contextlib.ExitStack() as stack:
        hostile = stack.enter_context(running_daemon(configure(tmp_path / "m", [address(a)], aggregate=False)))
        accomplice = Identity.generate()
        repo = a.client.call("repo.init", name="net", model_path=_model(tmp_path / "m0.safetensors", 0))["repo"]
        a.client.call("repo.invite", repo=repo, member=key(hostile), role="maintainer")
        a.client.call("repo.invite", repo=repo, member=accomplice.public_key, role="contributor")
        a.client.call("repo.policy", repo=repo, buffer=3, deadline_s=600, timeout_s=timeout_s)
        hostile.client.call("repo.pull", repo=repo, peer=address(a))
        start = a.client.call("round.status", repo=repo)["head"]

        home = hostile.home
        hostile.stop()
        repos = RepoSet.on_disk(home, Home(home).identity())
        mine = repos.open_id(repo)
        deep = hostile_contribution(mine, repos.identity, nested_header())
        theirs = Repository.open(mine.id, repos.objects, repos.blocks, mine.refs, reader=accomplice)
        nan = hostile_contribution(theirs, accomplice, weights_payload(
            theirs, {"w": torch.full((64,), math.nan)}))
        point(mine, repos.identity, f"contrib/main/{Identity.generate().public_key[:16]}", deep.id)  # no one's
        hostile = stack.enter_context(running_daemon(configure(home, [address(a)], aggregate=False)))

        wait_until(lambda: len(a.client.call("round.status", repo=repo)["pending"]) == 2,
                   "both hostile contributions taken by catch-up on the aggregator's node", 40)
        honest = a.client.call("repo.contribute", repo=repo, examples=100,
                               weights_path=_model(tmp_path / "c1.safetensors", 1))["id"]
        wait_until(lambda: a.client.call("round.status", repo=repo)["head"] != start, "round 1 merged",
                   2 * timeout_s + 30)
        status = a.client.call("round.status", repo=repo)
        merged = a.client.call("repo.show", repo=repo, commit=status["head"])
        assert merged["kind"] == "round" and merged["author"] == key(a)
        assert sorted(merged["parents"][1:]) == sorted([honest, deep.id, nan.id])
        assert [entry[0] for entry in merged["meta"]["contributions"]] == [honest]
        assert sorted(map(tuple, merged["meta"]["excluded"])) == sorted([(deep.id, "undecodable"),
                                                                         (nan.id, "non-finite")])
        assert {(e["commit"], e["reason"]) for e in status["excluded"]} == {(deep.id, "undecodable"),
                                                                            (nan.id, "non-finite")}
        assert status["pending"] == []
        rounds_status = a.client.call("node.status")["rounds"]
        assert rounds_status["excluded_by_author"] == {key(hostile): 1, accomplice.public_key: 1}
        assert rounds_status["merged"] == 1

        # Round 2: the hostile node ranks first now (it never merged) and does not merge: the aggregator takes
        # over one timeout after the round filled up, not after the ten-minute deadline.
        a.client.call("repo.policy", repo=repo, buffer=2)
        before = status["head"]
        a.client.call("repo.contribute", repo=repo, examples=50, weights_path=_model(tmp_path / "c2.safetensors", 2))
        hostile.client.call("repo.contribute", repo=repo, examples=50,
                            weights_path=_model(tmp_path / "c3.safetensors", 3))
        wait_until(lambda: len(a.client.call("round.status", repo=repo)["pending"]) == 2, "round 2 filled up", 40)
        second = a.client.call("round.status", repo=repo)
        assert second["ranked"][0] == key(hostile) and second["filled_ms"] is not None
        wait_until(lambda: a.client.call("round.status", repo=repo)["head"] != before, "round 2 merged by the backup",
                   2 * timeout_s + 30)
        merged = a.client.call("repo.show", repo=repo, commit=a.client.call("round.status", repo=repo)["head"])
        assert merged["author"] == key(a) and merged["meta"]["round"] == 2
        took = merged["timestamp_ms"] - second["filled_ms"]
        assert timeout_s * 1000 <= took < 2 * timeout_s * 1000, took
        assert a.client.call("node.whoami")  # still answering
