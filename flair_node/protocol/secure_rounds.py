"""Secure rounds: the round of a repository whose policy is ``privacy = "secure"``, in which members, the
aggregator included, read the merge and never one contribution (SecAgg, Bonawitz et al. CCS 2017, with the
logarithmic neighbour graph of SecAgg+, Bell et al. CCS 2020).

A plain contribution is a commit whose payload every member decrypts. A secure one never exists in the clear
outside its contributor's node: the round runs as signed messages (``core.round_messages``), and the merge
is computed from their sum.

1. **Advert** (``advertise``, each contributor, once it has trained): its example count, the bit length of its
   largest change, the X25519 key its pair masks are agreed with, and Shamir shares of its two secrets (the
   self-mask seed and that key's secret), one for each other member, sealed to the member's identity.
2. **Roster** (``roster``, the entitled aggregator, when the round is ready as a plain one is: ``buffer``
   adverts, or the deadline with at least ``MIN_CONTRIBUTORS``): which adverts the round takes. From it every
   member derives the same ``Plan``: the weights (the plain round's, over the roster), the ring (``bits`` plus
   the weights' 16 bits and a sign, packed) and the neighbour graph, seeded by the roster's id.
3. **Masked** (``mask``, each contributor of the roster): its weighted change in the merge's fixed point
   (``tensors.secure_sum.term``), plus its self mask, plus or minus a pair mask with each neighbour, cut to
   the ring, encrypted under the repository key and added as a UnixFS file.
4. **Unmask** (``unmask``, the entitled aggregator): which masked updates the merge takes. The roster's other
   contributors dropped out.
5. **Reveal** (``reveal``, every member holding shares): for each contributor of the roster, its share of the
   self-mask seed if the contributor's update is taken, else its share of the mask key's secret. A member never
   reveals both secrets of one advert, whatever unmasks or rosters ask, and a contributor masks for one roster
   of a round only.

With the policy's **differential privacy** (``core.dp``, ``protocol.dp``), each contributor clips its update when
it advertises and masks, and adds its share of the round's discrete Gaussian noise to its term when it masks;
every contribution weighs the same; a roster takes only adverts whose authors' budgets hold however few of them
the merge takes; and the merge records the ρ it gives each contribution it takes, and each author's ε since.

With the policy's **norm bound** (``protocol.norm_bounds``), each contributor clips its update to it and its
masked update names a norm proof of what it masks, which every member checks before the update counts, and
checks the unmasked sum against.

The **merge** is a round commit on the branch with the head as its only parent; its ``meta["secure"]`` names
the unmask and the reveals it used. The entitled aggregator makes it and every member re-derives it before
following it (``protocol.secure_merges``).

Who may send what: adverts and masked updates come from members holding the contributor role, each once per
round (``check_advert``); rosters, unmasks and merges from the member entitled at their signed time, by the
windows of ``core.round_rules`` over the roster's adverts; reveals from any member holding shares. Times
follow the phases: a roster is signed after its adverts, an unmask after its masked updates, a merge after
the reveals it uses.

What a secure round cannot do: anything that needs one contribution's values. The mean is the only strategy;
a contribution must be trained from the round's head (the policy's ``max_staleness`` is 0); the ring holds the
sum only if each contributor's change is within the ``bits`` it declared, which nobody can check (a
contributor who lies corrupts the merge, as one who sends a bad update in a plain round does; there it can
at least be screened). Each advert tells members the magnitude of its author's largest change (``bits``).
``MIN_CONTRIBUTORS`` is three: with two, each would read the other's update off the merge.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..core import crypto, secagg
from ..core.errors import FlairError, IntegrityError, InvalidInput, NotAMember, NotFound
from ..core.identity import wallet
from ..core.ids import CommitId, PublicKey, short
from ..core.membership import ROLES, Membership
from ..core.refs import check_branch_name
from ..core.round_messages import (
    Advert,
    DealtShare,
    Masked,
    Reveal,
    RevealedShare,
    Roster,
    RoundMessage,
    Unmask,
    content_of,
    share_hash,
)
from ..core.round_rules import RoundPolicy, weight_counts
from ..storage import unixfs
from ..storage.clock import now_ms
from ..storage.repo import Repository
from . import dp, norm_bounds
from .rounds import Contribution, RoundMemory, RoundView

if TYPE_CHECKING:
    from ..tensors.safetensors_io import StateDict
    from .proofs.circuits import Circuits

log = logging.getLogger(__name__)

MIN_CONTRIBUTORS = 3
MASKED_CODEC = "masked-v1"  # what a masked update's encryption is bound to (``storage.keys``)
MAX_TERM_BITS = 46  # a change of more than 2^45 fixed-point units is out of the merge's range anyway


class NotReady(InvalidInput):
    """A phase that cannot run yet: too few of its messages have arrived (more may)."""


class MessageSource(Protocol):
    """Where the messages of secure rounds are found: a repository's ``secure`` (``storage.round_messages``)."""

    def message(self, message_id: str) -> RoundMessage: ...

    def of_round(self, repo: str, branch: str, head: str, phase: str) -> list[RoundMessage]: ...


@dataclass(frozen=True)
class Secrets:
    """A contributor's secrets for one round: never sent, kept by its node until the round is merged."""

    mask_secret: bytes  # the X25519 secret its pair masks are agreed with
    self_seed: bytes  # the seed of its self mask

    @classmethod
    def fresh(cls) -> Secrets:
        secret, _ = secagg.ephemeral_keypair()
        return cls(secret, os.urandom(secagg.SEED_BYTES))

    def encode(self) -> bytes:
        return self.mask_secret + self.self_seed

    @classmethod
    def decode(cls, data: bytes) -> Secrets:
        if len(data) != secagg.KEY_BYTES + secagg.SEED_BYTES:
            raise IntegrityError("a secure contribution's secrets are 64 bytes")
        return cls(data[:secagg.KEY_BYTES], data[secagg.KEY_BYTES:])


@dataclass(frozen=True)
class Plan:
    """What a roster fixes, derived by every member the same way (see the module docstring)."""

    roster: RoundMessage
    adverts: tuple[RoundMessage, ...]  # in the roster's order (by id)
    weights: Mapping[str, int]  # advert id -> weight, out of 2^WEIGHT_BITS
    ring: int  # bits per value of the ring
    context: bytes  # what every pair seed of the round is bound to
    links: Mapping[bytes, frozenset[bytes]]  # mask key -> its neighbours' mask keys

    def advert_of(self, author: str) -> RoundMessage | None:
        return next((a for a in self.adverts if a.author == author), None)

    def by_key(self, mask_key: bytes) -> RoundMessage:
        return next(a for a in self.adverts if content_of(a, Advert).mask_key == mask_key)


# -- each contributor --------------------------------------------------------------------------------------


def advertise(repo: Repository, identity: Any, branch: str, state: StateDict, examples: int, *,
              secrets: Secrets | None = None) -> tuple[RoundMessage, Secrets]:
    """The advert of ``identity``'s contribution of ``state`` (trained from the head of ``branch`` on
    ``examples`` examples) to the secure round the head opened, and the secrets its node keeps."""
    policy = _secure_policy(repo)
    target = check_branch_name(branch)
    head = repo.head(target)
    if not isinstance(examples, int) or isinstance(examples, bool) or examples < 0:
        raise InvalidInput("examples must be an integer >= 0")
    at = now_ms()
    membership = repo.members.current()
    _require_role(membership, identity.public_key, "contributor", at, "contributing to a secure round")
    base = repo.materialize(head)
    change = norm_bounds.update(policy, base, state)
    reach = int(np.abs(change).max(initial=0)) + dp.noise_bound(policy, change.size, MIN_CONTRIBUTORS)
    bits = reach.bit_length() if change.size else 0
    if bits > MAX_TERM_BITS:
        raise InvalidInput(f"the update and its noise need {bits} bits a value; a secure merge holds {MAX_TERM_BITS}")
    holders = _holders(membership, identity.public_key, at)
    needed = policy.holders_needed(len(holders))
    secrets = secrets or Secrets.fresh()
    self_shares = secagg.split(secrets.self_seed, needed, len(holders))
    key_shares = secagg.split(secrets.mask_secret, needed, len(holders))
    dealt = tuple(DealtShare(holder=holder, sealed=crypto.seal_to(holder, bytes([s.x]) + s.y + k.y),
                             self_hash=share_hash("self", s.x, s.y), key_hash=share_hash("key", k.x, k.y))
                  for holder, s, k in zip(holders, self_shares, key_shares, strict=True))
    advert = Advert(examples=examples, bits=bits, mask_key=secagg.public_of(secrets.mask_secret),
                    self_commit=secagg.commitment(secrets.self_seed),
                    key_commit=secagg.commitment(secrets.mask_secret), shares=dealt,
                    wallet=wallet(identity, repo.id).public_key)  # where its NFT goes, with contribution NFTs on
    return _signed(repo, identity, target, head, advert, at), secrets


def mask(repo: Repository, identity: Any, source: MessageSource, roster: RoundMessage, state: StateDict,
         secrets: Secrets, *, circuits: Circuits | None = None) -> RoundMessage:
    """``identity``'s masked update for ``roster``: its weighted change plus its masks, cut to the round's ring,
    encrypted and added to the repository's blocks; with the policy's ``norm_bound``, and the norm proof of what
    it masks (proven with ``circuits``: minutes for a model of millions of values)."""
    from ..tensors import masking
    from ..tensors.dp_noise import discrete_gaussian

    plan = make_plan(repo, source, roster)
    if any(m.author == identity.public_key and content_of(m, Masked).roster != roster.id
           for m in source.of_round(repo.id, roster.branch, roster.head, "masked")):
        raise InvalidInput(f"{short(identity.public_key)} masked its update for another roster of this round: it "
                           "masks for one only (two masked updates of one change would give it away)")
    mine = plan.advert_of(identity.public_key)
    if mine is None:
        raise InvalidInput(f"roster {short(roster.id)} does not take {short(identity.public_key)}'s advert")
    advert = content_of(mine, Advert)
    if advert.mask_key != secagg.public_of(secrets.mask_secret) \
            or advert.self_commit != secagg.commitment(secrets.self_seed):
        raise InvalidInput("these are not the secrets of the advert the roster takes")
    head = repo.materialize(roster.head)
    policy = _policy(repo)
    change = norm_bounds.update(policy, head, state)
    if int(np.abs(change).max(initial=0)).bit_length() > advert.bits:
        raise InvalidInput("the update is not the one advertised: its change needs more bits than the advert said")
    values = change * plan.weights[mine.id]
    if policy.dp:  # this contributor's share of the round's noise
        values += discrete_gaussian(dp.noise_std(policy, values.size, len(plan.adverts)), values.size)
        if int(np.abs(values).max(initial=0)).bit_length() > advert.bits:
            raise InvalidInput("the noise drawn is beyond the bound the advert allowed for: mask again")
    proof = norm_bounds.prove(repo, plan, mine, values, circuits) if policy.norm_bound else None
    seeds = secagg.pair_seeds(secrets.mask_secret, advert.mask_key, plan.links, plan.context)
    published = masking.to_ring(masking.mask(values, secrets.self_seed, advert.mask_key, seeds), plan.ring)
    membership = repo.members.current()
    data = repo.keys.encrypt(published, epoch=membership.epoch, codec=MASKED_CODEC)
    with repo.write_lock:
        cid = unixfs.add(repo.blocks, data)
    content = Masked(roster=roster.id, cid=cid, size=len(data), key_epoch=membership.epoch,
                     proof=proof[0] if proof else None, proof_size=proof[1] if proof else 0)
    return _signed(repo, identity, roster.branch, roster.head, content, now_ms())


def reveal(repo: Repository, identity: Any, source: MessageSource, unmask_message: RoundMessage) -> RoundMessage:
    """``identity``'s shares for ``unmask_message``: of each taken contributor's self seed, of each dropped
    one's mask key. A share its dealer sealed wrong (malformed, or not the one whose hash it published) is left
    out, and the others go out all the same; ``IntegrityError`` if none is left. ``InvalidInput`` if that would
    reveal the other secret of an advert than this member revealed before, for whatever unmask or roster (it
    never reveals both secrets of anyone), or if this node holds another unmask of the same roster (an
    aggregator equivocating: members shown different unmasks could be split)."""
    content = content_of(unmask_message, Unmask)
    plan = make_plan(repo, source, source.message(content.roster))
    taken = _taken(plan, unmask_message)  # from the unmask alone: the masked updates may still be on their way
    revealed = {share.advert: share.kind  # what this member revealed before in this round, whatever asked
                for earlier in source.of_round(repo.id, unmask_message.branch, unmask_message.head, "reveal")
                if earlier.author == identity.public_key for share in content_of(earlier, Reveal).shares}
    shares, bad = [], []
    for advert_message in plan.adverts:
        advert = content_of(advert_message, Advert)
        at = next((i for i, s in enumerate(advert.shares) if s.holder == identity.public_key), None)
        if at is None:
            continue
        kind = "self" if advert_message.author in taken else "key"
        if revealed.get(advert_message.id, kind) != kind:
            raise InvalidInput(f"{short(identity.public_key)} revealed the other secret of advert "
                               f"{short(advert_message.id)} before: it never reveals both")
        try:
            shares.append(_my_share(identity, advert_message, at, kind))
        except IntegrityError as exc:  # its dealer's doing: the other contributors' shares still go out
            log.warning("left out of the reveal for unmask %s: %s", short(unmask_message.id), exc)
            bad.append(str(exc))
    if not shares:
        raise (IntegrityError(bad[0]) if bad else
               InvalidInput(f"{short(identity.public_key)} holds no share of this round's contributors"))
    rivals = [m.id for m in source.of_round(repo.id, unmask_message.branch, unmask_message.head, "unmask")
              if m.id != unmask_message.id and content_of(m, Unmask).roster == content.roster]
    if rivals:
        raise InvalidInput(f"roster {short(content.roster)} has two unmasks ({short(unmask_message.id)}, "
                           f"{short(rivals[0])}): an aggregator showing members different ones could learn an "
                           "update, so this member reveals nothing for either")
    return _signed(repo, identity, unmask_message.branch, unmask_message.head,
                   Reveal(unmask=unmask_message.id, shares=tuple(shares)), now_ms())


def _my_share(identity: Any, advert_message: RoundMessage, at: int, kind: str) -> RevealedShare:
    """The share of ``kind`` that ``advert_message`` dealt ``identity`` (its holder number ``at``), checked
    against the hash its dealer published; ``IntegrityError`` if the dealer sealed it a malformed or wrong one."""
    dealt = content_of(advert_message, Advert).shares[at]
    opened = crypto.open_sealed(dealt.sealed, identity, f"a share of advert {short(advert_message.id)}")
    if len(opened) != 1 + 2 * secagg.SHARE_BYTES or opened[0] != at + 1:
        raise IntegrityError(f"advert {short(advert_message.id)} sealed a malformed share to this member")
    y = opened[1:33] if kind == "self" else opened[33:]
    if share_hash(kind, at + 1, y) != (dealt.self_hash if kind == "self" else dealt.key_hash):
        raise IntegrityError(f"advert {short(advert_message.id)} sealed this member a share that is not the one "
                             "it published the hash of")
    return RevealedShare(advert=advert_message.id, kind=kind, x=at + 1, y=y)


# -- the aggregator ----------------------------------------------------------------------------------------


def roster(repo: Repository, identity: Any, source: MessageSource, branch: str, *, memory: RoundMemory
           ) -> RoundMessage:
    """The roster of the secure round the head of ``branch`` opened, by its entitled aggregator: every valid
    advert, the latest of each member. ``NotReady`` until the round is ready."""
    policy = _secure_policy(repo)
    target = check_branch_name(branch)
    head = repo.head(target)
    adverts = latest_adverts(repo, source, target, head)
    if policy.dp:  # those whose authors' budgets hold whatever the round takes, fewer and fewer until all do
        while adverts and not all(dp.affordable(repo, a.author, head, len(adverts), MIN_CONTRIBUTORS) for a in adverts):
            adverts = [a for a in adverts if dp.affordable(repo, a.author, head, len(adverts), MIN_CONTRIBUTORS)]
    at = now_ms()
    current = _round(repo, target, head, adverts, memory=memory)
    if len(adverts) < MIN_CONTRIBUTORS or not current.ready(at):
        raise NotReady(f"the secure round of {target} on {short(head)} has {len(adverts)} adverts: it waits for "
                       f"{max(MIN_CONTRIBUTORS, policy.buffer)}, or {MIN_CONTRIBUTORS} by its deadline")
    _require_entitled(current, identity.public_key, at, "roster")
    return _signed(repo, identity, target, head, Roster(tuple(a.id for a in adverts)), at)


def unmask(repo: Repository, identity: Any, source: MessageSource, roster_message: RoundMessage, *,
           memory: RoundMemory) -> RoundMessage:
    """The unmask of ``roster_message`` by the entitled aggregator: every masked update that arrived for it.
    ``NotReady`` with fewer than ``MIN_CONTRIBUTORS``."""
    plan = make_plan(repo, source, roster_message)
    at = now_ms()
    _require_entitled(_round(repo, roster_message.branch, roster_message.head, plan.adverts, memory=memory),
                      identity.public_key, at, "unmask")
    from ..tensors.secure_sum import term_size

    count = term_size(repo.materialize(roster_message.head))
    taken: dict[str, RoundMessage] = {}
    for message in source.of_round(repo.id, roster_message.branch, roster_message.head, "masked"):
        try:
            _check_masked(repo, plan, message, memory)
            _masked_bytes(repo, message, plan.ring, count)  # one every member could not sum would stall the round
        except (IntegrityError, NotAMember, NotFound):
            continue
        taken.setdefault(message.author, message)  # one each: a second would be refused by every member
    if len(taken) < MIN_CONTRIBUTORS:
        raise NotReady(f"{len(taken)} masked updates for roster {short(roster_message.id)}: a merge needs "
                       f"{MIN_CONTRIBUTORS}")
    return _signed(repo, identity, roster_message.branch, roster_message.head,
                   Unmask(roster=roster_message.id, masked=tuple(sorted(m.id for m in taken.values())),
                          adverts=tuple(sorted(a.id for a in plan.adverts if a.author in taken))), at)


def latest_adverts(repo: Repository, source: MessageSource, branch: str, head: CommitId) -> list[RoundMessage]:
    """The valid adverts of the round ``head`` opened on ``branch``, the latest of each member, by id."""
    latest: dict[str, RoundMessage] = {}
    for message in source.of_round(repo.id, branch, head, "advert"):
        try:
            check_advert(repo, message)
        except IntegrityError:
            continue
        mine = latest.get(message.author)
        if mine is None or (message.timestamp_ms, message.id) > (mine.timestamp_ms, mine.id):
            latest[message.author] = message
    return sorted(latest.values(), key=lambda m: m.id)


def rosters(repo: Repository, branch: str, head: str) -> list[RoundMessage]:
    """The valid rosters of the round ``head`` opened on ``branch`` that this node holds, earliest signed first."""
    valid = []
    for roster_message in sorted(repo.secure.of_round(repo.id, branch, head, "roster"),
                                 key=lambda m: (m.timestamp_ms, m.id)):
        try:
            make_plan(repo, repo.secure, roster_message)
        except FlairError:
            continue
        valid.append(roster_message)
    return valid


def view(repo: Repository, branch: str, *, memory: RoundMemory) -> RoundView:
    """The secure round of ``branch`` as a round's view (``rounds.RoundView``): its ranked aggregators, windows
    and readiness over its adverts (those of its earliest roster, once there is one), each a pending
    contribution."""
    target = check_branch_name(branch)
    head = repo.head(target)
    taken = rosters(repo, target, head)
    adverts = ([repo.secure.message(a) for a in content_of(taken[0], Roster).adverts] if taken
               else latest_adverts(repo, repo.secure, target, head))
    return _round(repo, target, head, adverts, memory=memory)


# -- every member ------------------------------------------------------------------------------------------


def make_plan(repo: Repository, source: MessageSource, roster_message: RoundMessage) -> Plan:
    """The ``Plan`` roster ``roster_message`` fixes; ``IntegrityError`` if it is no valid roster (its adverts
    invalid, fewer than ``MIN_CONTRIBUTORS``, two of one member, signed before one of them)."""
    from ..tensors.fixedpoint import WEIGHT_BITS, normalize_weights
    from ..tensors.masking import ring_bits

    if roster_message.phase != "roster" or roster_message.repo != repo.id:
        raise IntegrityError(f"message {short(roster_message.id)} is not a roster of this repository")
    ids = content_of(roster_message, Roster).adverts
    if len(ids) < MIN_CONTRIBUTORS:
        raise IntegrityError(f"roster {short(roster_message.id)} takes {len(ids)} adverts; a secure round needs "
                             f"{MIN_CONTRIBUTORS}")
    adverts = tuple(source.message(i) for i in ids)
    for advert in adverts:
        check_advert(repo, advert)
        if (advert.branch, advert.head) != (roster_message.branch, roster_message.head):
            raise IntegrityError(f"roster {short(roster_message.id)} takes an advert of another round")
        if advert.timestamp_ms > roster_message.timestamp_ms:
            raise IntegrityError(f"roster {short(roster_message.id)} takes advert {short(advert.id)}, signed after it")
    keys = [content_of(a, Advert).mask_key for a in adverts]
    if len({a.author for a in adverts}) != len(adverts) or len(set(keys)) != len(adverts):
        raise IntegrityError(f"roster {short(roster_message.id)} takes two adverts of one member, or of one key")
    policy = _policy(repo)
    counts = weight_counts([(content_of(a, Advert).examples, 0) for a in adverts], policy)
    if policy.dp:  # member-level privacy: a member's weight must not grow with its data, so all weigh the same
        weights = dict.fromkeys(ids, 1)
        poor = next((a for a in adverts
                     if not dp.affordable(repo, a.author, roster_message.head, len(ids), MIN_CONTRIBUTORS)), None)
        if poor is not None:
            raise IntegrityError(f"roster {short(roster_message.id)} takes advert {short(poor.id)}, whose author's "
                                 "privacy budget would not hold if the merge took only the fewest it may")
    else:
        weights = dict(zip(ids, normalize_weights(counts), strict=True))
    context = hashlib.sha256(b"flair-secure-round\0" + b"\0".join(
        part.encode() for part in (repo.id, roster_message.branch, roster_message.head, roster_message.id))).digest()
    return Plan(roster=roster_message, adverts=adverts, weights=weights,
                ring=ring_bits(max(content_of(a, Advert).bits for a in adverts), WEIGHT_BITS), context=context,
                links=secagg.neighbours(keys, context))


def check_advert(repo: Repository, message: RoundMessage) -> None:
    """``IntegrityError`` unless ``message`` is an advert of this repository by a member holding the contributor
    role at its time, dealing one share to each of two or more members, with a change the merge can hold."""
    if message.phase != "advert" or message.repo != repo.id:
        raise IntegrityError(f"message {short(message.id)} is not an advert of this repository")
    advert = content_of(message, Advert)
    membership = repo.members.current()
    try:
        _require_role(membership, message.author, "contributor", message.timestamp_ms, "a secure contribution")
    except InvalidInput as exc:
        raise IntegrityError(str(exc)) from None
    if advert.bits > MAX_TERM_BITS:
        raise IntegrityError(f"advert {short(message.id)} declares a change of {advert.bits} bits, beyond what a "
                             "merge holds")
    members = {m.key for m in membership.current()}
    if message.author in {s.holder for s in advert.shares} or not {s.holder for s in advert.shares} <= members:
        raise IntegrityError(f"advert {short(message.id)} deals shares to itself or to keys that are not members")


# -- internals -----------------------------------------------------------------------------------------------


def _policy(repo: Repository) -> RoundPolicy:
    return repo.members.current().policy


def _secure_policy(repo: Repository) -> RoundPolicy:
    policy = _policy(repo)
    if policy.privacy != "secure":
        raise InvalidInput(f"repository {short(repo.id)} runs plain rounds: its policy's privacy is "
                           f"{policy.privacy}")
    return policy


def _require_role(membership: Membership, key: str, least: str, at_ms: int, what: str) -> None:
    role = membership.role(key, epoch=membership.epoch, at_ms=at_ms)
    if role is None or ROLES.index(role) < ROLES.index(least):
        raise InvalidInput(f"{what} needs the role {least} or more; {short(key)} holds {role or 'none'}")


def _holders(membership: Membership, author: str, at_ms: int) -> list[PublicKey]:
    """Who holds shares of ``author``'s secrets: every other member whose role holds at ``at_ms``."""
    holders = sorted(m.key for m in membership.current()
                     if m.key != author and m.active(epoch=membership.epoch, at_ms=at_ms))
    if not 2 <= len(holders) <= secagg.MAX_HOLDERS:
        raise InvalidInput(f"a secure round needs 3 to {secagg.MAX_HOLDERS + 1} members to share secrets among; "
                           f"this repository has {len(holders) + 1}")
    return holders


def _signed(repo: Repository, identity: Any, branch: str, head: CommitId, content: Any, at_ms: int
            ) -> RoundMessage:
    return RoundMessage(repo=repo.id, branch=check_branch_name(branch), head=head, author=identity.public_key,
                        timestamp_ms=at_ms, content=content).signed(identity)


def _round(repo: Repository, branch: str, head: CommitId, adverts: Iterable[RoundMessage], *,
           memory: RoundMemory) -> RoundView:
    """The round ``head`` opened, as a merge of ``adverts`` sees it: its ranked aggregators and windows."""
    from .rounds import _view_at

    seen = _view_at(memory, repo, branch, head)
    return seen.taking([Contribution(CommitId(a.id), a.author, head, content_of(a, Advert).examples, 0, a.timestamp_ms)
                        for a in adverts])


def _require_entitled(current: RoundView, key: str, at_ms: int, what: str) -> None:
    entitled = current.aggregator(at_ms)
    if entitled != key:
        raise InvalidInput(f"{short(key)} may not {what} round {current.number + 1} of {current.branch} now: the "
                           f"aggregator entitled is {short(entitled) if entitled else 'nobody'}")


def _check_masked(repo: Repository, plan: Plan, message: RoundMessage, memory: RoundMemory) -> None:
    if message.phase != "masked" or message.repo != repo.id:
        raise IntegrityError(f"message {short(message.id)} is not a masked update of this repository")
    content = content_of(message, Masked)
    if content.roster != plan.roster.id or plan.advert_of(message.author) is None:
        raise IntegrityError(f"masked update {short(message.id)} is not by a contributor of roster "
                             f"{short(plan.roster.id)}")
    if message.timestamp_ms < plan.roster.timestamp_ms:
        raise IntegrityError(f"masked update {short(message.id)} is signed before its roster")
    if _policy(repo).norm_bound:
        norm_bounds.commitments(repo, plan, message, memory)


def _taken(plan: Plan, message: RoundMessage) -> set[PublicKey]:
    """The contributors unmask ``message`` says it takes, from its adverts; ``IntegrityError`` if it is no unmask
    of ``plan`` (that they are the authors of its masked updates is checked once those arrive: ``_check_unmask``)."""
    content = content_of(message, Unmask)
    if content.roster != plan.roster.id or (message.branch, message.head) != (plan.roster.branch, plan.roster.head):
        raise IntegrityError(f"unmask {short(message.id)} is not one of roster {short(plan.roster.id)}")
    by_id = {a.id: a for a in plan.adverts}
    if not set(content.adverts) <= by_id.keys() or len(content.adverts) < MIN_CONTRIBUTORS:
        raise IntegrityError(f"unmask {short(message.id)} takes adverts its roster does not, or fewer than "
                             f"{MIN_CONTRIBUTORS}")
    return {by_id[a].author for a in content.adverts}


def _check_unmask(repo: Repository, source: MessageSource, plan: Plan, message: RoundMessage, memory: RoundMemory
                  ) -> list[RoundMessage]:
    """The masked updates unmask ``message`` takes, checked; ``IntegrityError`` if it is no unmask of ``plan``."""
    content = content_of(message, Unmask)
    taken = _taken(plan, message)
    masked = [source.message(m) for m in content.masked]
    for m in masked:
        _check_masked(repo, plan, m, memory)
        if m.timestamp_ms > message.timestamp_ms:
            raise IntegrityError(f"unmask {short(message.id)} takes masked update {short(m.id)}, signed after it")
    if len({m.author for m in masked}) != len(masked) or {m.author for m in masked} != taken:
        raise IntegrityError(f"unmask {short(message.id)} takes two updates of one contributor, or names other "
                             "adverts than its masked updates'")
    return masked


def _check_reveal(repo: Repository, plan: Plan, unmask_message: RoundMessage, message: RoundMessage,
                  taken: set[PublicKey]) -> list[tuple[str, str, secagg.Share]]:
    """The shares reveal ``message`` holds, each checked against the hash its dealer published and of the kind
    the unmask asks for (``IntegrityError`` otherwise)."""
    if message.phase != "reveal" or content_of(message, Reveal).unmask != unmask_message.id:
        raise IntegrityError(f"message {short(message.id)} is not a reveal for unmask {short(unmask_message.id)}")
    if message.timestamp_ms < unmask_message.timestamp_ms:
        raise IntegrityError(f"reveal {short(message.id)} is signed before its unmask")
    by_id = {a.id: a for a in plan.adverts}
    found = []
    for share in content_of(message, Reveal).shares:
        advert_message = by_id.get(share.advert)
        if advert_message is None:
            raise IntegrityError(f"reveal {short(message.id)} holds a share of an advert the roster does not take")
        advert = content_of(advert_message, Advert)
        want = "self" if advert_message.author in taken else "key"
        dealt = next((s for s in advert.shares if s.holder == message.author), None)
        if share.kind != want or dealt is None or share.x != advert.shares.index(dealt) + 1 \
                or share_hash(share.kind, share.x, share.y) != (dealt.self_hash if want == "self" else dealt.key_hash):
            raise IntegrityError(f"reveal {short(message.id)} holds a share of advert {short(share.advert)} that its "
                                 "dealer did not deal to its author, or of the other secret")
        found.append((share.advert, share.kind, secagg.Share(share.x, share.y)))
    return found


def _masked_bytes(repo: Repository, message: RoundMessage, ring: int, count: int) -> bytes:
    """The packed values of masked update ``message``, decrypted; ``IntegrityError`` unless they are ``count``
    values of ``ring`` bits."""
    from ..tensors.masking import packed_size

    content = content_of(message, Masked)
    data = unixfs.cat(repo.blocks, content.cid, max_size=content.size)
    if len(data) != content.size:
        raise IntegrityError(f"masked update {short(message.id)} is {len(data)} bytes, not the {content.size} it says")
    values = repo.keys.decrypt(data, epoch=content.key_epoch, codec=MASKED_CODEC)
    if len(values) != packed_size(count, ring):
        raise IntegrityError(f"masked update {short(message.id)} holds {len(values)} bytes, not {count} values of "
                             f"{ring} bits")
    return values
