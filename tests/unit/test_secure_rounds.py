"""Secure rounds on one shared copy of a repository (``protocol.secure_rounds``): five members advertise, mask
and reveal; the aggregator merges; every member re-derives the merge, and nobody reads one contribution."""

from __future__ import annotations

import dataclasses
import os
from functools import partial

import numpy as np
import pytest
import torch
import trio

from flair_node.core import crypto, dp
from flair_node.core.errors import IntegrityError, InvalidInput
from flair_node.core.identity import Identity
from flair_node.core.round_messages import Advert, Masked, RoundMessage
from flair_node.core.round_rules import RoundPolicy, weight_counts
from flair_node.protocol import rounds, secure_merges, secure_node, secure_rounds
from flair_node.protocol.rounds import MergeMismatch
from flair_node.protocol.secure_rounds import NotReady
from flair_node.protocol.sync import pull
from flair_node.storage import unixfs
from flair_node.storage.repo import Repository
from flair_node.storage.repos import RepoSet
from flair_node.storage.secure_pending import PendingContributions
from flair_node.tensors import masking
from flair_node.tensors.dp_noise import clip, fixed_sensitivity
from flair_node.tensors.fixedpoint import combine, normalize_weights, same_bits
from flair_node.tensors.secure_sum import merge_sum, term, term_size
from flair_node.testing.sync import LocalSource

OWNER = Identity.generate()
MEMBERS = [Identity.generate() for _ in range(4)]
EVERYONE = [OWNER, *MEMBERS]
SECURE = RoundPolicy(privacy="secure", buffer=5, max_staleness=0)
PARAMETERS = 100_000


def model(seed: int, size: int = PARAMETERS) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(size - 10, generator=g) * 0.1, "b": torch.randn(10, generator=g)}


def trained(base: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    return {k: v + torch.randn(v.shape, generator=g) * 0.01 for k, v in base.items()}


def as_node(repo: Repository, identity: Identity) -> Repository:
    return Repository.open(repo.id, repo.objects, repo.blocks, repo.refs, reader=identity)


NODES: dict[str, RepoSet] = {}  # the owner's node of each repository made here


def team(policy: RoundPolicy = SECURE, size: int = PARAMETERS) -> Repository:
    repos = RepoSet.in_memory(OWNER)
    repo = repos.create("private", model(0, size))
    NODES[repo.id] = repos
    for member in MEMBERS:
        repo.invite(OWNER, member.public_key, "contributor")
    repo.set_policy(OWNER, policy)
    return repo


class Round:
    """One secure round driven by hand: each member's node is the shared repository read with its key."""

    def __init__(self, repo: Repository, contributors: list[Identity]) -> None:
        self.repo, self.book, self.memory = repo, repo.secure, rounds.RoundMemory()
        self.head = repo.head("main")
        self.base = repo.materialize(self.head)
        self.states = {c.public_key: trained(self.base, i) for i, c in enumerate(contributors)}
        self.examples = {c.public_key: 100 + 37 * i for i, c in enumerate(contributors)}
        self.secrets = {}
        for c in contributors:
            advert, self.secrets[c.public_key] = secure_rounds.advertise(
                as_node(repo, c), c, "main", self.states[c.public_key], self.examples[c.public_key])
            self.put(advert)

    def put(self, message: RoundMessage) -> RoundMessage:
        """``message`` as a member's node takes it from a peer: checked, then kept."""
        self.repo.ingest.accept_round_message(message)
        return message

    def adverts(self) -> list[RoundMessage]:
        return self.book.of_round(self.repo.id, "main", self.head, "advert")

    def aggregator(self) -> Identity:
        current = secure_rounds._round(self.repo, "main", self.head, self.adverts(), memory=self.memory)
        key = current.aggregator(rounds.now_ms())
        return next(i for i in EVERYONE if i.public_key == key)

    def roster(self) -> RoundMessage:
        agg = self.aggregator()
        return self.put(secure_rounds.roster(as_node(self.repo, agg), agg, self.book, "main", memory=self.memory))

    def mask(self, roster: RoundMessage, who: list[Identity]) -> None:
        for c in who:
            self.put(secure_rounds.mask(as_node(self.repo, c), c, self.book, roster, self.states[c.public_key],
                                        self.secrets[c.public_key], circuits=self.memory.circuits))

    def unmask(self, roster: RoundMessage) -> RoundMessage:
        agg = self.aggregator()
        return self.put(secure_rounds.unmask(as_node(self.repo, agg), agg, self.book, roster,
                                                  memory=self.memory))

    def reveal(self, unmask: RoundMessage, who: list[Identity]) -> None:
        for member in who:
            self.put(secure_rounds.reveal(as_node(self.repo, member), member, self.book, unmask))

    def merge(self, unmask: RoundMessage):
        agg = self.aggregator()
        return secure_merges.merge(as_node(self.repo, agg), agg, self.book, unmask, memory=self.memory)

    def plain_mean(self, who: list[Identity], weights: list[int]) -> dict[str, torch.Tensor]:
        """The exact mean of ``who``'s contributions with ``weights``, computed in the clear."""
        total = sum((term(self.base, self.states[c.public_key], w) for c, w in zip(who, weights, strict=True)),
                    start=np.zeros(term_size(self.base), dtype=np.int64))
        return merge_sum(self.base, total, sum(weights))


def full_round(repo: Repository) -> tuple[Round, RoundMessage, RoundMessage]:
    r = Round(repo, EVERYONE)
    roster = r.roster()
    r.mask(roster, EVERYONE)
    unmask = r.unmask(roster)
    r.reveal(unmask, EVERYONE)
    return r, roster, unmask


def same_state(a, b) -> bool:
    return a.keys() == b.keys() and all(same_bits(a[k], b[k]) for k in a)


def test_every_contribution_in_merges_to_the_plain_round_merge_bit_for_bit_and_every_member_checks_it():
    repo = team()
    r, roster, unmask = full_round(repo)
    merged = r.merge(unmask)
    assert repo.head("main") == merged.id and merged.parents == (r.head,)
    counts = weight_counts([(r.examples[c.public_key], 0) for c in EVERYONE], SECURE)
    order = [next(i for i in EVERYONE if i.public_key == a.author) for a in
             (r.book.message(a) for a in roster.content.adverts)]
    weights = normalize_weights([counts[EVERYONE.index(c)] for c in order])
    plain = combine(r.base, [r.states[c.public_key] for c in order], weights, shortcuts=False)
    assert same_state(repo.materialize(merged.id), plain)  # what a plain round of the same updates merges to
    assert merged.meta["secure"]["dropped"] == [] and merged.meta["examples"] == sum(r.examples.values())
    for member in EVERYONE:
        secure_merges.verify(as_node(repo, member), merged, r.book, memory=rounds.RoundMemory())


def test_no_member_can_read_a_contribution_from_what_it_holds():
    """A member's node holds every block and message: the masked updates it decrypts are uncorrelated with the
    true changes (|r| < 0.01; with a million values, ten times the standard error of independent ones), and no
    plaintext change is stored anywhere."""
    size = 1_000_000
    repo = team(size=size)
    r, roster, unmask = full_round(repo)
    plan = secure_rounds.make_plan(repo, r.book, roster)
    reader = as_node(repo, MEMBERS[0])
    for masked in r.book.of_round(repo.id, "main", r.head, "masked"):
        packed = secure_rounds._masked_bytes(reader, masked, plan.ring, size)
        values = masking.from_ring(masking.ring_total([packed], plan.ring, size), plan.ring).astype(np.float64)
        for c in EVERYONE:
            change = term(r.base, r.states[c.public_key], 1).astype(np.float64)
            assert abs(np.corrcoef(values, change)[0, 1]) < 0.01
    stored = b"".join(repo.objects.get(k) for k in repo.objects.keys())  # every block and record
    for state in r.states.values():
        assert state["w"][:64].numpy().tobytes() not in stored
    with pytest.raises(IntegrityError):  # a share sealed to another member does not open
        crypto.open_sealed(r.adverts()[0].content.shares[0].sealed, Identity.generate(), "a share")


@pytest.mark.parametrize("gone", ["after masking", "before masking"])
def test_a_contributor_gone_after_masking_is_recovered_and_one_gone_before_is_dropped(gone):
    """With five members, each secret's four holders need three to reveal: one member may vanish."""
    repo = team()
    r = Round(repo, EVERYONE)
    roster = r.roster()
    vanished = next(c for c in EVERYONE if c != r.aggregator())
    r.mask(roster, [c for c in EVERYONE if gone == "after masking" or c != vanished])
    unmask = r.unmask(roster)
    alive = [c for c in EVERYONE if c != vanished]
    r.reveal(unmask, alive[:2])
    with pytest.raises(NotReady):
        r.merge(unmask)
    r.reveal(unmask, alive[2:])
    merged = r.merge(unmask)
    taken = EVERYONE if gone == "after masking" else alive
    plan = secure_rounds.make_plan(repo, r.book, roster)
    weights = [plan.weights[plan.advert_of(c.public_key).id] for c in taken]
    assert same_state(repo.materialize(merged.id), r.plain_mean(taken, weights))
    dropped = [] if gone == "after masking" else [plan.advert_of(vanished.public_key).id]
    assert merged.meta["secure"]["dropped"] == dropped
    for member in alive:
        secure_merges.verify(as_node(repo, member), merged, r.book, memory=rounds.RoundMemory())


def test_a_forged_merge_is_refused_by_every_member():
    repo = team()
    r, roster, unmask = full_round(repo)
    reveals = [m.id for m in r.book.of_round(repo.id, "main", r.head, "reveal")]
    state, meta = secure_merges.derive(repo, r.book, unmask, reveals)
    agg = r.aggregator()
    forged_state = {k: v + 1e-3 for k, v in state.items()}
    forged = as_node(repo, agg).write_round(agg, forged_state, branch="main", parents=(r.head,), meta=meta,
                                            message="forged")
    for member in EVERYONE:
        with pytest.raises(MergeMismatch, match="not what its masked updates sum to"):
            secure_merges.verify(as_node(repo, member), forged, r.book, memory=rounds.RoundMemory())
    entries = [[*e[:3], e[3] + (1 if i == 0 else -1 if i == 1 else 0)]
               for i, e in enumerate(meta["secure"]["contributions"])]
    reweighed = {**meta, "secure": {**meta["secure"], "contributions": entries}}
    with pytest.raises(MergeMismatch, match="other contributions or weights"):
        secure_merges.verify(repo, dataclasses.replace(forged, meta=reweighed).signed(agg), r.book,
                             memory=rounds.RoundMemory())


def test_no_member_reveals_both_secrets_of_anyone_and_no_contributor_masks_for_two_rosters():
    repo = team()
    r = Round(repo, EVERYONE)
    roster = r.roster()
    r.mask(roster, EVERYONE)
    first = r.unmask(roster)
    r.reveal(first, MEMBERS[:1])
    dropped = next(m for m in first.content.masked if r.book.message(m).author != MEMBERS[0].public_key)
    masked = [m for m in first.content.masked if m != dropped]  # the aggregator says a contributor dropped
    agg = r.aggregator()
    plan = secure_rounds.make_plan(repo, r.book, roster)
    adverts = sorted(plan.advert_of(r.book.message(m).author).id for m in masked)
    second = r.put(secure_rounds._signed(repo, agg, "main", r.head,
                                         dataclasses.replace(first.content, masked=tuple(masked),
                                                             adverts=tuple(adverts)), rounds.now_ms()))
    with pytest.raises(InvalidInput, match="never reveals both"):
        secure_rounds.reveal(as_node(repo, MEMBERS[0]), MEMBERS[0], r.book, second)
    with pytest.raises(InvalidInput, match="reveals nothing for either"):  # a member that saw both unmasks
        secure_rounds.reveal(as_node(repo, MEMBERS[1]), MEMBERS[1], r.book, first)
    other = r.put(secure_rounds._signed(repo, agg, "main", r.head, roster.content, rounds.now_ms() + 1))
    assert other.id != roster.id  # a second roster of the same adverts
    with pytest.raises(InvalidInput, match="masks for one only"):
        r.mask(other, EVERYONE[:1])


def test_a_wrong_reveal_is_left_out_and_the_merge_goes_on():
    repo = team()
    r = Round(repo, EVERYONE)
    roster = r.roster()
    r.mask(roster, EVERYONE)
    unmask = r.unmask(roster)
    liar = MEMBERS[-1]
    honest = secure_rounds.reveal(as_node(repo, liar), liar, r.book, unmask)
    bad = [dataclasses.replace(s, y=bytes(32)) for s in honest.content.shares]
    r.put(secure_rounds._signed(repo, liar, "main", r.head,
                                dataclasses.replace(honest.content, shares=tuple(bad)), rounds.now_ms()))
    r.reveal(unmask, [c for c in EVERYONE if c != liar])
    merged = r.merge(unmask)
    assert len(merged.meta["secure"]["reveals"]) == len(EVERYONE) - 1
    secure_merges.verify(as_node(repo, OWNER), merged, r.book, memory=rounds.RoundMemory())


def test_a_share_its_dealer_sealed_wrong_is_left_out_and_the_holder_reveals_the_others():
    """A contributor that seals one holder garbage in place of its share costs that holder nothing but that
    share: its reveal carries every other contributor's, and the cheat's own secret comes from its other holders."""
    repo = team()
    cheat, victim = MEMBERS[-1], MEMBERS[0]
    r = Round(repo, [c for c in EVERYONE if c != cheat])
    state = trained(r.base, 9)
    honest, secrets = secure_rounds.advertise(as_node(repo, cheat), cheat, "main", state, 150)
    shares = tuple(dataclasses.replace(s, sealed=crypto.seal_to(s.holder, os.urandom(65)))
                   if s.holder == victim.public_key else s for s in honest.content.shares)
    r.put(secure_rounds._signed(repo, cheat, "main", r.head, dataclasses.replace(honest.content, shares=shares),
                                honest.timestamp_ms))
    r.states[cheat.public_key], r.secrets[cheat.public_key], r.examples[cheat.public_key] = state, secrets, 150
    roster = r.roster()
    r.mask(roster, EVERYONE)
    unmask = r.unmask(roster)
    r.reveal(unmask, EVERYONE)
    revealed = next(m for m in r.book.of_round(repo.id, "main", r.head, "reveal") if m.author == victim.public_key)
    others = {a.id for a in r.adverts() if a.author not in (victim.public_key, cheat.public_key)}  # none of its own
    assert {share.advert for share in revealed.content.shares} == others
    merged = r.merge(unmask)
    plan = secure_rounds.make_plan(repo, r.book, roster)
    weights = [plan.weights[plan.advert_of(c.public_key).id] for c in EVERYONE]
    assert same_state(repo.materialize(merged.id), r.plain_mean(EVERYONE, weights))


@pytest.mark.parametrize("bad", ["too short", "not sealed"])
def test_a_masked_update_no_member_could_sum_is_left_out_and_its_contributor_dropped(bad):
    """A contributor's masked update that does not decrypt, or holds other than the round's values in its ring,
    would stall the round if an unmask took it (every member's derivation would fail, and a roster has one
    unmask): the aggregator leaves it out, and the round merges as if its contributor had not masked."""
    repo = team()
    r = Round(repo, EVERYONE)
    roster = r.roster()
    cheat = next(c for c in MEMBERS if c != r.aggregator())
    r.mask(roster, [c for c in EVERYONE if c != cheat])
    plan = secure_rounds.make_plan(repo, r.book, roster)
    epoch = repo.members.current().epoch
    data = bytes(masking.packed_size(term_size(r.base), plan.ring) - 1)
    data = repo.keys.encrypt(data, epoch=epoch, codec=secure_rounds.MASKED_CODEC) if bad == "too short" else data
    with repo.write_lock:
        cid = unixfs.add(repo.blocks, data)
    r.put(secure_rounds._signed(repo, cheat, "main", r.head, Masked(roster=roster.id, cid=cid, size=len(data),
                                                                     key_epoch=epoch), rounds.now_ms()))
    unmask = r.unmask(roster)
    assert cheat.public_key not in {r.book.message(m).author for m in unmask.content.masked}
    r.reveal(unmask, EVERYONE)
    merged = r.merge(unmask)
    assert merged.meta["secure"]["dropped"] == [plan.advert_of(cheat.public_key).id]
    honest = [c for c in EVERYONE if c != cheat]
    weights = [plan.weights[plan.advert_of(c.public_key).id] for c in honest]
    assert same_state(repo.materialize(merged.id), r.plain_mean(honest, weights))
    secure_merges.verify(as_node(repo, OWNER), merged, r.book, memory=rounds.RoundMemory())


def test_what_a_secure_round_refuses():
    with pytest.raises(InvalidInput, match="needs each contribution's values"):
        RoundPolicy(privacy="secure", strategy="median", max_staleness=0)
    with pytest.raises(InvalidInput, match="max_staleness 0"):
        RoundPolicy(privacy="secure")
    with pytest.raises(InvalidInput, match="secure_threshold"):
        RoundPolicy(privacy="secure", max_staleness=0, secure_threshold="0.4")
    assert RoundPolicy(privacy="secure", max_staleness=0).holders_needed(4) == 3
    assert "privacy" not in RoundPolicy().record()
    assert RoundPolicy.from_dict(SECURE.record()) == SECURE
    plain = team(RoundPolicy())
    with pytest.raises(InvalidInput, match="runs plain rounds"):
        secure_rounds.advertise(plain, OWNER, "main", model(1), 10)
    repo = team()
    with pytest.raises(InvalidInput, match="runs secure rounds"):  # never a payload every member decrypts
        as_node(repo, MEMBERS[0]).contribute(MEMBERS[0], model(1), examples=10)
    reader = Identity.generate()
    repo.invite(OWNER, reader.public_key, "reader")
    with pytest.raises(InvalidInput, match="role contributor"):
        secure_rounds.advertise(as_node(repo, reader), reader, "main", model(1), 10)
    r = Round(repo, EVERYONE[:2])
    with pytest.raises(NotReady):  # two contributors would each read the other's update off the merge
        r.roster()


def test_messages_decode_only_as_written_and_bounded():
    repo = team()
    r = Round(repo, EVERYONE[:3])
    advert = r.adverts()[0]
    assert RoundMessage.decode(advert.encode()) == advert
    assert isinstance(advert.content, Advert) and len(advert.content.shares) == 4
    body = advert.body()
    body["content"]["bits"] = 63
    from flair_node.core import encoding

    with pytest.raises(IntegrityError, match="bits"):
        RoundMessage.decode(encoding.encode({"body": body, "sig": advert.signature}))
    tampered = dataclasses.replace(advert, content=dataclasses.replace(advert.content, examples=10**6))
    with pytest.raises(IntegrityError):
        tampered.verify()


@pytest.mark.parametrize("forged", [False, True])
def test_a_member_that_pulls_the_round_checks_the_merge_against_its_messages_before_following_it(forged):
    repo = team()
    r, _, unmask = full_round(repo)
    if forged:
        reveals = [m.id for m in r.book.of_round(repo.id, "main", r.head, "reveal")]
        state, meta = secure_merges.derive(repo, r.book, unmask, reveals)
        agg = r.aggregator()
        merged = as_node(repo, agg).write_round(agg, {k: v + 1e-3 for k, v in state.items()}, branch="main",
                                                parents=(r.head,), meta=meta, message="forged")
    else:
        merged = r.merge(unmask)
    peer = RepoSet.in_memory(MEMBERS[0])  # a member's own node, holding nothing yet
    result = trio.run(partial(pull, peer, repo.id, LocalSource(NODES[repo.id], MEMBERS[0].public_key, peer),
                              memory=rounds.RoundMemory()))
    assert result.secure == len(repo.secure.ids("main", r.head))  # every message of the round came with it
    copy = peer.open_id(repo.id)
    if forged:
        assert "main" not in copy.branches()  # a fresh clone: main exists only at the forged merge
        assert "not what its masked updates sum to" in result.refused_merges[0][1]
    else:
        assert copy.head("main") == merged.id and not result.refused


def test_nodes_that_step_run_a_whole_round_and_forget_their_secrets_after(monkeypatch):
    """``secure_node``: each member's node contributes, then does what is due on each pass, until the merge."""
    monkeypatch.setattr(secure_node, "SETTLE_MS", 0)
    repo = team()
    head, base = repo.head("main"), repo.materialize(repo.head("main"))
    pending = {c.public_key: PendingContributions(None) for c in EVERYONE}
    for i, c in enumerate(EVERYONE):
        secure_node.contribute(as_node(repo, c), c, pending[c.public_key], "main", trained(base, i), 50 + i)
    before = secure_node.progress(repo, pending[OWNER.public_key], "main")
    assert (before["adverts"], before["roster"], before["waiting_here"]) == (5, None, pending[OWNER.public_key]
                                                                             .adverts(repo.id))
    merged, done = None, []
    for _ in range(6):
        for c in EVERYONE:
            step = secure_node.step(as_node(repo, c), c, pending[c.public_key], "main", memory=rounds.RoundMemory())
            assert not step.refused
            done += [p.split()[0] for p in step.published]
            merged = merged or step.merged
        if merged:
            break
    assert merged is not None and repo.head("main") == merged.id and merged.parents == (head,)
    assert secure_node.progress(repo, pending[OWNER.public_key], "main") == {  # the next round: nothing yet
        "head": merged.id, "adverts": 0, "roster": None, "taken": 0, "masked": 0, "unmask": None, "reveals": 0,
        "waiting_here": [], "recovering": []}
    assert sorted(set(done)) == ["masked", "reveal", "roster", "unmask"] and done.count("masked") == 5
    for c in EVERYONE:
        assert secure_node.tidy(as_node(repo, c), pending[c.public_key]) != []
        assert pending[c.public_key].adverts(repo.id) == []


def test_a_contribution_saved_and_not_yet_advertised_is_not_forgotten_by_a_pass_running_meanwhile(monkeypatch):
    """The round service's pass (``tidy``, in its thread) forgot a contribution the API had saved and not yet
    advertised, as if its node had stopped in between: the contributor could not mask, and was dropped."""
    import threading

    repo = team()
    base = repo.materialize(repo.head("main"))
    pending, passes = PendingContributions(None), []
    publish = secure_node.publish

    def slow_publish(node, message):  # the pass starts between the save and the advert
        passes.append(threading.Thread(target=lambda: passes.append(secure_node.tidy(node, pending))))
        passes[0].start()
        passes[0].join(0.3)  # it waits for the advert
        return publish(node, message)

    monkeypatch.setattr(secure_node, "publish", slow_publish)
    advert = secure_node.contribute(as_node(repo, OWNER), OWNER, pending, "main", trained(base, 0), 50)
    passes[0].join(10)
    assert passes[1:] == [[]] and pending.adverts(repo.id) == [advert.id]


@pytest.mark.parametrize("arrives", [True, False, None], ids=["arrives", "never-arrives", "not-the-rosters"])
def test_the_aggregator_waits_for_a_masked_update_still_arriving_but_not_forever(monkeypatch, arrives):
    """A masked update announced to the aggregator whose blocks are on their way holds the unmask past
    ``mask_wait_ms`` (it would otherwise be dropped, and its contributor's work lost), up to ``ARRIVING_WAIT_MS``;
    one whose author the roster does not take holds nothing."""
    repo = team()
    r = Round(repo, EVERYONE)
    roster = r.roster()
    late = EVERYONE[-1]
    r.mask(roster, EVERYONE[:-1])
    masked = secure_rounds.mask(as_node(repo, late), late, r.book, roster, r.states[late.public_key],
                                r.secrets[late.public_key])
    agg = r.aggregator()
    node = as_node(repo, agg)
    outsider = Identity.generate()
    node.secure.arriving(masked if arrives is not None else  # as the daemon's gossip intake notes it
                         dataclasses.replace(masked, author=outsider.public_key).signed(outsider))

    waited = secure_node.mask_wait_ms(repo.members.current().policy) + 1_000

    def step_at(after_ms: int) -> list[str]:
        monkeypatch.setattr(secure_node, "now_ms", lambda: roster.timestamp_ms + after_ms)
        done = secure_node.step(node, agg, PendingContributions(None), "main", memory=r.memory)
        return [p.split()[0] for p in done.published]

    if arrives is None:
        assert "unmask" not in step_at(waited - 2_000)  # a contributor that has not masked yet is waited for
        assert "unmask" in step_at(waited)
    elif arrives:
        assert "unmask" not in step_at(waited)
        node.secure.add(masked)  # its blocks came: kept now, and no longer arriving
        assert node.secure.still_arriving("main", r.head) == []
        assert "unmask" in step_at(waited)
    else:
        assert "unmask" not in step_at(waited)
        assert "unmask" in step_at(secure_node.ARRIVING_WAIT_MS + 1_000)
    unmask = node.secure.of_round(repo.id, "main", r.head, "unmask")[0]
    assert len(unmask.content.masked) == (5 if arrives else 4)


def test_a_stalled_round_says_which_secrets_it_waits_for_and_from_whom():
    """Once there is an unmask, ``progress`` (``round.status``, ``flair round``) names each secret the reveals do
    not recover yet, with the holders that have not revealed: who a stalled round waits for."""
    from flair_node.cli.verbs.rounds import round_text

    repo = team()
    r = Round(repo, EVERYONE)
    roster = r.roster()
    r.mask(roster, EVERYONE)
    unmask = r.unmask(roster)
    r.reveal(unmask, EVERYONE[:2])  # three members have gone quiet
    shown = secure_node.progress(repo, PendingContributions(None), "main")
    gaps = {g["author"]: g for g in shown["recovering"]}
    assert set(gaps) == {c.public_key for c in EVERYONE}  # every self seed: 1 or 2 of 3 shares
    for c in EVERYONE:
        silent = {m.public_key for m in EVERYONE[2:]} - {c.public_key}
        assert gaps[c.public_key]["secret"] == "self seed" and set(gaps[c.public_key]["silent"]) == silent
        assert (gaps[c.public_key]["revealed"], gaps[c.public_key]["needed"]) == (4 - len(silent), 3)
    status = {**secure_rounds.view(repo, "main", memory=r.memory).json(), "secure": shown}  # as round.status
    assert status["aggregator"] == r.aggregator().public_key and status["ready"]  # over the roster's adverts
    assert sorted(c["author"] for c in status["pending"]) == sorted(c.public_key for c in EVERYONE)
    text = round_text(status)
    assert f"unmask:         {unmask.id[:12]}; 2 reveals" in text and "not yet from" in text
    r.reveal(unmask, EVERYONE[2:])
    assert secure_node.progress(repo, PendingContributions(None), "main")["recovering"] == []


def test_waiting_contributions_are_kept_private_and_survive_a_restart(tmp_path):
    store = PendingContributions(tmp_path / "secure")
    repo, advert = "ab" * 32, "cd" * 32
    store.save(repo, advert, bytes(range(64)), b"weights")
    assert PendingContributions(tmp_path / "secure").load(repo, advert) == (bytes(range(64)), b"weights")
    for name in (f"{advert}.secrets", f"{advert}.weights"):
        assert (tmp_path / "secure" / repo / name).stat().st_mode & 0o777 == 0o600
    store.drop(repo, advert)
    assert store.adverts(repo) == []


DP = {"dp_clip": "0.5", "dp_noise": "1", "dp_delta": "1e-5"}


def test_with_differential_privacy_each_contributor_adds_its_share_of_the_noise_and_the_merge_accounts_it():
    """Each of the 5 clips its update and masks it with noise of parameter z·Δ/√5: the merge of all five carries
    z·Δ once, and records the ρ it gives each and their ε, which every member re-derives."""
    repo = team(RoundPolicy(**{**SECURE.as_dict(), **DP, "dp_epsilon": "10"}))
    r, roster, unmask = full_round(repo)
    merged = r.merge(unmask)
    rho = dp.round_rho("1", 5, 5)
    assert merged.meta["dp"] == {**{k[3:]: v for k, v in DP.items()}, "taken": 5, "roster": 5, "rho": dp.text(rho),
                                 "spent": {c.public_key: dp.text(dp.secure_epsilon([rho], "1e-5")) for c in EVERYONE}}
    assert all(e[3] == 1 for e in merged.meta["secure"]["contributions"])  # each member weighs the same
    for member in EVERYONE:
        secure_merges.verify(as_node(repo, member), merged, r.book, memory=rounds.RoundMemory())
    # the merge is the mean of the clipped updates plus noise of z·Δ over the five, in the merge's fixed point
    clipped = [clip(r.base, r.states[c.public_key], 0.5) for c in EVERYONE]
    exact = merge_sum(r.base, sum((term(r.base, s, 1) for s in clipped),
                                  start=np.zeros(term_size(r.base), dtype=np.int64)), 5)
    noise = torch.cat([(repo.materialize(merged.id)[k].double() - exact[k].double()).reshape(-1) for k in exact])
    expected = fixed_sensitivity(0.5, term_size(r.base), 24) / 5 / (1 << 24)
    assert float(noise.std()) == pytest.approx(expected, rel=0.03) and abs(float(noise.mean())) < expected / 100


def test_a_secure_round_takes_no_advert_whose_author_could_go_past_its_budget():
    """The budget must hold however few contributions the merge takes (down to 3 of the roster's 5): a second
    round would not keep it, so no roster takes anyone, and one that does is refused by every member."""
    worst, actual = dp.round_rho("1", 3, 5), dp.round_rho("1", 5, 5)
    budget = (dp.secure_epsilon([worst], "1e-5") + dp.secure_epsilon([actual, worst], "1e-5")) / 2
    repo = team(RoundPolicy(**{**SECURE.as_dict(), **DP, "dp_epsilon": f"{budget:.3f}"}))
    r, roster, unmask = full_round(repo)
    r.merge(unmask)
    second = Round(repo, EVERYONE)
    with pytest.raises(NotReady):
        second.roster()
    agg = second.aggregator()
    forced = RoundMessage(repo=repo.id, branch="main", head=second.head, author=agg.public_key,
                          timestamp_ms=rounds.now_ms(),
                          content=dataclasses.replace(roster.content, adverts=tuple(sorted(
                              a.id for a in second.adverts())))).signed(agg)
    with pytest.raises(IntegrityError, match="privacy budget would not hold"):
        secure_rounds.make_plan(repo, second.book, forced)


def test_noise_too_small_to_account_for_is_refused_when_a_contributor_advertises():
    repo = team(RoundPolicy(**{**SECURE.as_dict(), "dp_clip": "0.000001", "dp_noise": "0.1", "dp_delta": "1e-5",
                               "dp_epsilon": "10"}), size=100)
    with pytest.raises(InvalidInput, match="the accounting needs 16 or more"):
        secure_rounds.advertise(as_node(repo, MEMBERS[0]), MEMBERS[0], "main", trained(model(0, 100), 1), 10)
