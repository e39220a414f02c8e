"""A contributor running modified software in a secure repository with norm proofs (real EZKL proofs, chunks
of 64): it masks an update far above the bound with the proof of a clipped one, or masks one with no proof.
The first is caught when the round unmasks, by the aggregator and by every member re-deriving a merge; the
second is never taken, and every member refuses an unmask that takes it."""

from __future__ import annotations

import dataclasses

import pytest

from flair_node.core.errors import IntegrityError
from flair_node.core.round_messages import Masked, Unmask
from flair_node.protocol import norm_bounds, rounds, secure_merges, secure_rounds
from flair_node.tensors.secure_sum import term
from tests.unit.test_secure_norm_proofs import CIRCUITS, proven_team, srs  # noqa: F401 (srs: a fixture)
from tests.unit.test_secure_rounds import EVERYONE, Round, as_node

pytestmark = pytest.mark.slow
CHEAT = EVERYONE[-1]


def cheating(monkeypatch, state) -> None:
    """From then on, the cheat's modified node masks its update unclipped and 20 times over, while it proves
    what an honest node would have masked."""
    honest_update, real_prove = norm_bounds.update, norm_bounds.prove

    def prove(repo, plan, mine, values, circuits):
        honest = honest_update(repo.members.current().policy, repo.materialize(plan.roster.head), state)
        return real_prove(repo, plan, mine, honest * plan.weights[mine.id], circuits)

    monkeypatch.setattr(norm_bounds, "update", lambda policy, base, trained: term(base, trained, 1) * 20)
    monkeypatch.setattr(norm_bounds, "prove", prove)


def honest_then_cheat(srs, monkeypatch) -> Round:  # noqa: F811
    """A round of four honest contributors and the cheat, which advertises the bits its cheating needs."""
    repo = proven_team(srs)
    honest = EVERYONE[:-1]
    r = Round(repo, honest)
    r.memory = rounds.RoundMemory(CIRCUITS)
    state = r.states[CHEAT.public_key] = r.states[honest[0].public_key]
    r.examples[CHEAT.public_key] = 100
    cheating(monkeypatch, state)
    advert, r.secrets[CHEAT.public_key] = secure_rounds.advertise(as_node(repo, CHEAT), CHEAT, "main", state, 100)
    monkeypatch.undo()
    r.put(advert)
    return r


def test_an_update_masked_above_the_bound_with_the_proof_of_a_clipped_one_stalls_the_round(srs, monkeypatch):  # noqa: F811
    r = honest_then_cheat(srs, monkeypatch)
    roster = r.roster()
    r.mask(roster, EVERYONE[:-1])
    cheating(monkeypatch, r.states[CHEAT.public_key])
    r.mask(roster, [CHEAT])
    monkeypatch.undo()
    unmask = r.unmask(roster)
    assert len(unmask.content.masked) == 5  # its proof holds: it is about a vector within the bound
    r.reveal(unmask, EVERYONE)
    with pytest.raises(IntegrityError, match="not the sum of what its contributors proved"):
        r.merge(unmask)
    # an aggregator in league with it merges all the same: every member re-deriving the merge refuses it
    reveals = sorted(m.id for m in r.book.of_round(r.repo.id, "main", r.head, "reveal"))
    monkeypatch.setattr(norm_bounds, "check_sum", lambda *args: None)
    state, meta = secure_merges.derive(r.repo, r.book, unmask, reveals, memory=r.memory)
    monkeypatch.undo()
    agg = r.aggregator()
    forced = as_node(r.repo, agg).write_round(agg, state, branch="main", parents=(r.head,), meta=meta,
                                              message="forced")
    for member in EVERYONE:
        with pytest.raises(IntegrityError, match="masked another update than its norm proof is about"):
            secure_merges.verify(as_node(r.repo, member), forced, r.book, memory=rounds.RoundMemory(CIRCUITS))


def test_a_masked_update_without_a_proof_is_not_taken_and_no_member_accepts_an_unmask_that_takes_it(
        srs, monkeypatch):  # noqa: F811
    r = honest_then_cheat(srs, monkeypatch)
    roster = r.roster()
    r.mask(roster, EVERYONE[:-1])
    monkeypatch.setattr(norm_bounds, "prove", lambda *args: None)
    r.mask(roster, [CHEAT])  # modified software: no proof at all
    monkeypatch.undo()
    bare = next(m for m in r.book.of_round(r.repo.id, "main", r.head, "masked") if m.author == CHEAT.public_key)
    assert isinstance(bare.content, Masked) and bare.content.proof is None
    unmask = r.unmask(roster)
    assert bare.id not in unmask.content.masked and len(unmask.content.masked) == 4
    everyone_in = dataclasses.replace(unmask, content=Unmask(
        roster=roster.id, masked=tuple(sorted([*unmask.content.masked, bare.id])),
        adverts=tuple(sorted(roster.content.adverts)))).signed(r.aggregator())
    plan = secure_rounds.make_plan(r.repo, r.book, roster)
    for member in EVERYONE:
        with pytest.raises(IntegrityError, match="has no norm proof"):
            secure_rounds._check_unmask(as_node(r.repo, member), r.book, plan, everyone_in,
                                        rounds.RoundMemory(CIRCUITS))
