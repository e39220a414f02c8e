"""Membership: a chain of owner-signed changes that every node folds to the same members, roles and keys."""

from dataclasses import replace

import pytest

from flair_node.core import crypto, encoding
from flair_node.core.errors import Forbidden, IntegrityError, InvalidInput
from flair_node.core.identity import Identity
from flair_node.core.membership import (
    ChainRef,
    Membership,
    MembershipChange,
    SealedKey,
    handover,
    invitation,
    policy_change,
    removal,
    token_binding,
)
from flair_node.core.objects import RepositoryRecord, TensorSpec
from flair_node.core.round_rules import RoundPolicy

OWNER, ALICE, BOB, MALLORY = (Identity.generate() for _ in range(4))
KEY0, KEY1 = crypto.new_key(), crypto.new_key()
T = 1_000_000


def genesis() -> Membership:
    record = RepositoryRecord(name="digits", owner=OWNER.public_key, created_ms=T, nonce="n",
                              layout=(TensorSpec("w", "F32", (2,)),),
                              sealed_keys={OWNER.public_key: crypto.seal_key(KEY0, OWNER.public_key)}).signed(OWNER)
    return Membership.genesis(record)


def invite(m: Membership, who: Identity, role: str, expires_ms: int = 0) -> Membership:
    keys = {0: KEY0, 1: KEY1}
    return m.apply(invitation(m, OWNER, who.public_key, role, expires_ms=expires_ms, keys=keys, now_ms=T + m.seq))


def test_at_genesis_the_owner_is_the_only_member():
    m = genesis()
    assert [(x.key, x.role) for x in m.current()] == [(OWNER.public_key, "owner")]
    assert m.role(ALICE.public_key, epoch=0, at_ms=T) is None
    assert crypto.open_sealed_key(m.sealed_key(OWNER.public_key, 0), OWNER) == KEY0


def test_an_invited_member_gets_the_role_and_every_key_so_far():
    m = invite(genesis(), ALICE, "contributor")
    assert m.role(ALICE.public_key, epoch=0, at_ms=T) == "contributor"
    assert crypto.open_sealed_key(m.sealed_key(ALICE.public_key, 0), ALICE) == KEY0
    with pytest.raises(IntegrityError, match="not sealed to this node"):
        crypto.open_sealed_key(m.sealed_key(ALICE.public_key, 0), MALLORY)
    m = invite(m, ALICE, "maintainer")  # a role change is an invitation again
    assert m.role(ALICE.public_key, epoch=0, at_ms=T) == "maintainer" and m.seq == 2


def test_a_removal_opens_a_new_epoch_closed_to_the_removed_member():
    m = invite(invite(genesis(), ALICE, "contributor"), BOB, "reader")
    m = m.apply(removal(m, OWNER, ALICE.public_key, new_key=KEY1, now_ms=T + 5))
    assert m.epoch == 1 and [x.key for x in m.current()] == [OWNER.public_key, BOB.public_key]
    assert m.sealed_key(ALICE.public_key, 1) is None
    assert crypto.open_sealed_key(m.sealed_key(BOB.public_key, 1), BOB) == KEY1
    assert crypto.open_sealed_key(m.sealed_key(OWNER.public_key, 1), OWNER) == KEY1
    assert m.role(ALICE.public_key, epoch=0, at_ms=T) == "contributor"  # what they did before stays theirs
    assert m.role(ALICE.public_key, epoch=1, at_ms=T) is None
    m = invite(m, ALICE, "reader")  # invited back: every key again, the new epoch's too
    assert crypto.open_sealed_key(m.sealed_key(ALICE.public_key, 1), ALICE) == KEY1


def test_a_role_lapses_at_its_expiry():
    m = invite(genesis(), ALICE, "contributor", expires_ms=T + 100)
    assert m.role(ALICE.public_key, epoch=0, at_ms=T + 99) == "contributor"
    assert m.role(ALICE.public_key, epoch=0, at_ms=T + 100) is None
    with pytest.raises(InvalidInput, match="future"):
        invitation(m, OWNER, BOB.public_key, "reader", expires_ms=T, keys={0: KEY0}, now_ms=T + 1)


def test_roles_allow_what_the_policy_says():
    m = invite(invite(invite(genesis(), ALICE, "reader"), BOB, "contributor"), MALLORY, "maintainer")
    with pytest.raises(Forbidden, match="needs the role contributor .* holds the role reader"):
        m.require(ALICE.public_key, "contributor", epoch=0, at_ms=T, what="committing")
    m.require_branch_move(BOB.public_key, "bob/experiment", epoch=0, at_ms=T)
    with pytest.raises(Forbidden, match="moving branch main needs the role maintainer"):
        m.require_branch_move(BOB.public_key, "main", epoch=0, at_ms=T)
    m.require_branch_move(MALLORY.public_key, "main", epoch=0, at_ms=T)
    m.require_branch_move(OWNER.public_key, "main", epoch=0, at_ms=T)
    with pytest.raises(Forbidden, match="is not a member"):
        m.require(Identity.generate().public_key, "reader", epoch=0, at_ms=T, what="pulling")


def test_changes_that_do_not_follow_the_chain_are_refused():
    m = genesis()
    first = invitation(m, OWNER, ALICE.public_key, "reader", expires_ms=0, keys={0: KEY0}, now_ms=T)
    after = m.apply(first)
    with pytest.raises(IntegrityError, match="does not follow"):
        after.apply(first)  # replayed
    fork = replace(invitation(m, OWNER, BOB.public_key, "reader", expires_ms=0, keys={0: KEY0}, now_ms=T), seq=1)
    with pytest.raises(IntegrityError, match="does not follow"):
        after.apply(fork)  # a second change 1


@pytest.mark.parametrize("forge", [
    lambda c: replace(c, author=MALLORY.public_key).signed(MALLORY),          # not the owner
    lambda c: replace(c, role="maintainer"),                                 # altered after signing
    lambda c: replace(c, keys=()).signed(OWNER),                             # no key for the member
    lambda c: replace(c, keys=c.keys * 2).signed(OWNER),                     # a key twice
    lambda c: replace(c, keys=(*c.keys, SealedKey(MALLORY.public_key, 0, b"x" * 80))).signed(OWNER),  # extra key
    lambda c: replace(c, member=OWNER.public_key).signed(OWNER),             # the owner's role
    lambda c: replace(c, member="not-a-key").signed(OWNER),
    lambda c: replace(c, epoch=1).signed(OWNER),                             # an invitation changing the epoch
])
def test_forged_changes_are_refused(forge):
    m = genesis()
    change = invitation(m, OWNER, ALICE.public_key, "contributor", expires_ms=0, keys={0: KEY0}, now_ms=T)
    with pytest.raises(IntegrityError):
        m.apply(forge(change))


def test_removing_a_non_member_or_twice_is_refused():
    m = invite(genesis(), ALICE, "reader")
    with pytest.raises(InvalidInput, match="not a member"):
        removal(m, OWNER, BOB.public_key, new_key=KEY1, now_ms=T)
    m = m.apply(removal(m, OWNER, ALICE.public_key, new_key=KEY1, now_ms=T))
    with pytest.raises(InvalidInput, match="not a member"):
        removal(m, OWNER, ALICE.public_key, new_key=KEY1, now_ms=T)


def test_a_change_survives_its_encoding_and_unknown_fields_are_refused():
    m = genesis()
    change = invitation(m, OWNER, ALICE.public_key, "contributor", expires_ms=T + 10, keys={0: KEY0}, now_ms=T)
    assert MembershipChange.decode(change.encode()) == change
    outer = encoding.decode(change.encode())
    outer["body"]["admin"] = True
    with pytest.raises(IntegrityError, match="unknown fields"):
        MembershipChange.decode(encoding.encode(outer))


def test_the_owner_sets_the_round_policy_in_the_chain():
    m = invite(genesis(), ALICE, "maintainer")
    assert m.policy == RoundPolicy()  # the defaults until the owner sets one
    policy = RoundPolicy(strategy="median", buffer=5, deadline_s=30, alpha="1", max_staleness=2, timeout_s=20)
    change = policy_change(m, OWNER, policy, now_ms=T + 9)
    assert MembershipChange.decode(change.encode()) == change
    after = m.apply(change)
    assert after.policy == policy and after.seq == m.seq + 1 and after.members == m.members
    assert after.epoch == m.epoch and after.sealed == m.sealed


@pytest.mark.parametrize("forge", [
    lambda c: replace(c, author=ALICE.public_key).signed(ALICE),   # a maintainer is not the owner
    lambda c: replace(c, policy=None).signed(OWNER),               # a policy change without a policy
    lambda c: replace(c, member=ALICE.public_key).signed(OWNER),   # naming someone
    lambda c: replace(c, role="maintainer").signed(OWNER),         # granting a role on the side
    lambda c: replace(c, epoch=1).signed(OWNER),                   # changing the key epoch
    lambda c: replace(c, action="invite").signed(OWNER),           # an invitation carrying a policy
])
def test_forged_policy_changes_are_refused(forge):
    m = invite(genesis(), ALICE, "maintainer")
    change = policy_change(m, OWNER, RoundPolicy(strategy="median"), now_ms=T + 9)
    with pytest.raises(IntegrityError):
        m.apply(forge(change))


def test_a_policy_that_breaks_its_own_rules_does_not_decode():
    m = genesis()
    outer = encoding.decode(policy_change(m, OWNER, RoundPolicy(), now_ms=T).encode())
    outer["body"]["policy"]["buffer"] = 0
    with pytest.raises(IntegrityError, match="buffer"):
        MembershipChange.decode(encoding.encode(outer))


# -- the ownership token ----------------------------------------------------------------------------------

GENESIS, MINT = "EtWTRABZaYq6iMfeYKouRu166VU2xqa1wcaWoxPkrZBG", "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU"
TX = "5VERv8NMvzbJMEkV8xnrLkEaWRtSz9CosKDYjCJjBRnbJLgp8uirBgmQpjKhoR4tjF3ZpRzrFmBV6UjKdiSZkQUW"


def bound(m: Membership | None = None) -> Membership:
    m = m or invite(genesis(), ALICE, "maintainer")
    return m.apply(token_binding(m, OWNER, ChainRef(GENESIS, MINT, TX, 10), now_ms=T + 10))


def moved(slot: int, *, mint: str = MINT) -> ChainRef:
    return ChainRef(GENESIS, mint, TX[:-2] + str(slot % 9 + 1) + "A", slot)


def test_the_owner_binds_the_repository_to_an_ownership_token_once():
    m = bound()
    assert m.token == ChainRef(GENESIS, MINT, TX, 10) and m.owner == OWNER.public_key
    with pytest.raises(IntegrityError, match="ownership token is mint"):
        m.apply(token_binding(m, OWNER, ChainRef(GENESIS, MINT, TX, 11), now_ms=T + 11))
    m2 = invite(genesis(), ALICE, "maintainer")
    with pytest.raises(IntegrityError, match="only the owner"):
        m2.apply(token_binding(m2, ALICE, ChainRef(GENESIS, MINT, TX, 10), now_ms=T))


@pytest.mark.parametrize("author", ["owner", "new owner"])
def test_a_handover_makes_the_token_holder_owner_and_the_old_owner_a_maintainer(author):
    m = bound()
    signer = OWNER if author == "owner" else ALICE
    after = m.apply(handover(m, signer, ALICE.public_key, moved(20), now_ms=T + 20))
    assert after.owner == ALICE.public_key and after.token == moved(20)
    assert after.role(ALICE.public_key, epoch=0, at_ms=T) == "owner"
    assert after.role(OWNER.public_key, epoch=0, at_ms=T) == "maintainer"
    assert after.epoch == m.epoch  # the keys stay: the new owner held them already
    # the new owner now changes membership, the old one no longer does
    after = after.apply(invitation(after, ALICE, BOB.public_key, "reader", expires_ms=0, keys={0: KEY0},
                                   now_ms=T + 21))
    with pytest.raises(IntegrityError, match="only the owner"):
        after.apply(policy_change(after, OWNER, RoundPolicy(buffer=2), now_ms=T + 22))
    back = after.apply(handover(after, OWNER, OWNER.public_key, moved(30), now_ms=T + 30))
    assert back.owner == OWNER.public_key and back.role(ALICE.public_key, epoch=0, at_ms=T) == "maintainer"


def test_handovers_that_break_the_rules_are_refused():
    m = bound()
    with pytest.raises(IntegrityError, match="no ownership token"):
        u = invite(genesis(), ALICE, "maintainer")
        u.apply(handover(u, OWNER, ALICE.public_key, moved(20), now_ms=T))
    with pytest.raises(IntegrityError, match="not the repository's ownership token"):
        m.apply(handover(m, OWNER, ALICE.public_key, moved(20, mint=GENESIS), now_ms=T))
    with pytest.raises(IntegrityError, match="not later than the token's last move"):
        m.apply(handover(m, OWNER, ALICE.public_key, moved(10), now_ms=T))  # a replayed transfer
    with pytest.raises(IntegrityError, match="current member"):
        m.apply(handover(m, OWNER, BOB.public_key, moved(20), now_ms=T))  # not invited: holds no keys
    with pytest.raises(IntegrityError, match="owner or the new owner"):
        withbob = invite(m, BOB, "contributor")
        withbob.apply(handover(withbob, BOB, ALICE.public_key, moved(20), now_ms=T))
    with pytest.raises(IntegrityError, match="only those"):
        m.apply(replace(handover(m, OWNER, ALICE.public_key, moved(20), now_ms=T), chain=None).signed(OWNER))


def test_ownership_changes_survive_their_encoding_and_old_changes_keep_their_ids():
    m = invite(genesis(), ALICE, "maintainer")
    change = token_binding(m, OWNER, ChainRef(GENESIS, MINT, TX, 10), now_ms=T)
    assert MembershipChange.decode(change.encode()) == change
    body = change.body()
    body["chain"] = [GENESIS, MINT, "not-base58!", 10]
    with pytest.raises(IntegrityError, match="base58"):
        MembershipChange.decode(encoding.encode({"body": body, "sig": change.signature}))
    plain = invitation(genesis(), OWNER, ALICE.public_key, "reader", expires_ms=0, keys={0: KEY0}, now_ms=T)
    assert "chain" not in plain.body()  # changes without one are encoded as before
