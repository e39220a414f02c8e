"""What one node does in the secure rounds of a branch, as its daemon runs them (``protocol.secure_rounds`` holds
the rules; this decides when to apply them).

- ``contribute``: the member's own contribution becomes an advert. The trained weights and the round's secrets
  are kept in the node's pending store (``storage.secure_pending``) before the advert is published, so a crash
  after publishing loses nothing the round needs.
- ``step``, called again and again by the round service, does whatever is due now:
  - as a **contributor**, masks its update for the first valid roster that takes its advert.
  - as a **holder**, reveals its shares for each unmask of the round. It waits ``SETTLE_MS`` after an unmask's
    signed time first, so that a rival unmask of the same roster, which would make it reveal nothing, has time
    to arrive.
  - as the **entitled aggregator**, signs the roster once the round is ready. It signs the unmask once every
    contributor of the roster has masked, or ``mask_wait_ms`` after the roster (half the aggregator's turn, at
    most a minute), or, while masked updates that were announced to it are still arriving (their blocks are
    megabytes: ``RoundMessages.arriving``), up to ``ARRIVING_WAIT_MS`` after it (never a second unmask of a
    roster, whoever signed the first). It then merges as soon as the reveals recover every secret.

``tidy`` forgets the weights and secrets of a contribution once its round is over. Every message this node
signs is kept (``repo.secure``) and announced (``repo.announce``: the daemon gossips it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.errors import FlairError, IntegrityError, InvalidInput, NotFound
from ..core.ids import short
from ..core.refs import check_branch_name
from ..core.round_messages import Advert, Masked, Reveal, Roster, RoundMessage, Unmask, content_of
from ..core.round_rules import RoundPolicy
from ..storage import adapters
from ..storage.clock import now_ms
from ..storage.repo import Repository
from ..storage.secure_pending import PendingContributions
from . import secure_merges, secure_rounds
from .rounds import RoundMemory
from .secure_rounds import NotReady, Secrets

if TYPE_CHECKING:
    from ..tensors.safetensors_io import StateDict

SETTLE_MS = 500  # a holder reveals this long after an unmask's signed time, at the earliest
ARRIVING_WAIT_MS = 60_000  # the aggregator unmasks without masked updates announced to it whose blocks are
#                            still arriving by then


def mask_wait_ms(policy: RoundPolicy) -> int:
    """How long after its roster the aggregator waits for contributors that have not masked (nor announced a
    masked update) before it unmasks without them: half its turn, at most ``ARRIVING_WAIT_MS``. A contributor
    learns of the roster by gossip, or at its next catch-up if gossip missed it, then masks: a wait much shorter
    drops contributors of a busy node, and their work with them."""
    return min(policy.timeout_s * 500, ARRIVING_WAIT_MS)


@dataclass
class Step:
    """What ``step`` did: the messages it published, the merge it made, and what it refused to do (and why)."""

    published: list[str] = field(default_factory=list)  # "<phase> <message id>"
    merged: Any = None  # the round merge commit, if this node made it
    refused: list[str] = field(default_factory=list)
    took: dict[str, float] = field(default_factory=dict)  # seconds each role took


def publish(repo: Repository, message: RoundMessage) -> RoundMessage:
    """Keep this node's own ``message`` and announce it (the daemon gossips it to the repository's members)."""
    repo.secure.add(message)
    repo.announce("secure", message.id, message.encode())
    return message


def contribute(repo: Repository, identity: Any, pending: PendingContributions, branch: str, state: StateDict,
               examples: int) -> RoundMessage:
    """``identity``'s contribution of ``state`` (trained from the head of ``branch`` on ``examples`` examples) to
    the secure round the head opened: kept here, then advertised."""
    from ..tensors.safetensors_io import save_bytes

    if repo.record.adapter is not None:  # a masked sum of factors is not the sum of the adapters' changes
        adapters.check_policy(repo.members.current().policy)
    advert, secrets = secure_rounds.advertise(repo, identity, branch, state, examples)
    with pending.advertising:
        pending.save(repo.id, advert.id, secrets.encode(), save_bytes(state))
        return publish(repo, advert)


def tidy(repo: Repository, pending: PendingContributions) -> list[str]:
    """Forget this node's waiting contributions whose round is over (the branch moved on: merged with them or
    without) or whose advert was never published (the node stopped in between); returns their advert ids."""
    forgotten = []
    with pending.advertising:  # never between a contribution's save and its advert
        for advert_id in pending.adverts(repo.id):
            try:
                advert = repo.secure.message(advert_id)
                over = repo.head(advert.branch) != advert.head
            except NotFound:
                over = True
            if over:
                pending.drop(repo.id, advert_id)
                forgotten.append(advert_id)
    return forgotten


def step(repo: Repository, identity: Any, pending: PendingContributions, branch: str, *, memory: RoundMemory,
         aggregate: bool = True) -> Step:
    """Do what is due now in the secure round of ``branch`` (see the module docstring); as the aggregator only
    if ``aggregate``."""
    done = Step()
    target = check_branch_name(branch)
    head = repo.head(target)
    at = now_ms()
    roles: dict[str, Callable[[], None]] = {
        "contributor": lambda: _as_contributor(repo, identity, pending, target, head, memory, done),
        "holder": lambda: _as_holder(repo, identity, target, head, at, done)}
    if aggregate:
        roles["aggregator"] = lambda: _as_aggregator(repo, identity, target, head, at, memory, done)
    for name, role in roles.items():
        began = time.monotonic()
        try:
            role()
        except NotFound:
            pass  # a message or block it needs has not arrived yet: the next pass, and the other roles, go on
        done.took[name] = time.monotonic() - began
    return done


def progress(repo: Repository, pending: PendingContributions, branch: str) -> dict[str, Any]:
    """How far the secure round of ``branch`` has come, as this node holds its messages: how many adverts,
    masked updates and reveals, the roster and unmask this node would follow (earliest signed), this node's
    own contributions waiting for it, and, once there is an unmask, the secrets its reveals do not recover yet
    (``recovering``: advert, author, which secret, shares revealed and needed, the holders yet to reveal)."""
    head = repo.head(check_branch_name(branch))
    phases = {phase: repo.secure.of_round(repo.id, branch, head, phase)
              for phase in ("advert", "roster", "masked", "unmask", "reveal")}
    rosters = secure_rounds.rosters(repo, branch, head)
    unmasks = sorted(phases["unmask"], key=_signed_order)
    return {"head": head, "adverts": len(phases["advert"]), "roster": rosters[0].id if rosters else None,
            "taken": len(content_of(rosters[0], Roster).adverts) if rosters else 0,
            "masked": len(phases["masked"]),
            "unmask": unmasks[0].id if unmasks else None, "reveals": len(phases["reveal"]),
            "waiting_here": [a for a in pending.adverts(repo.id) if repo.secure.has(a)
                             and repo.secure.message(a).head == head],
            "recovering": _recovering(repo, unmasks[0], phases["reveal"]) if unmasks else []}


def _recovering(repo: Repository, unmask: RoundMessage, reveals: list[RoundMessage]) -> list[dict[str, Any]]:
    """The secrets ``unmask``'s merge needs that the reveals held here do not recover yet (see ``progress``).
    Shares are counted as revealed, not checked: this says who a stalled round waits for."""
    try:
        plan = secure_rounds.make_plan(repo, repo.secure, repo.secure.message(content_of(unmask, Unmask).roster))
    except FlairError:
        return []  # its roster has not arrived, or is no valid one: the merge will say
    taken = set(content_of(unmask, Unmask).adverts)
    revealed: dict[tuple[str, str], set[str]] = {}
    for message in reveals:
        if content_of(message, Reveal).unmask == unmask.id:
            for share in content_of(message, Reveal).shares:
                revealed.setdefault((share.advert, share.kind), set()).add(message.author)
    policy = repo.members.current().policy
    short_of = []
    for advert_message in plan.adverts:
        advert = content_of(advert_message, Advert)
        kind = "self" if advert_message.id in taken else "key"
        found = revealed.get((advert_message.id, kind), set())
        needed = policy.holders_needed(len(advert.shares))
        if len(found) < needed:
            short_of.append({"advert": advert_message.id, "author": advert_message.author,
                             "secret": "self seed" if kind == "self" else "mask key", "revealed": len(found),
                             "needed": needed, "silent": [s.holder for s in advert.shares if s.holder not in found]})
    return short_of


def _as_contributor(repo: Repository, identity: Any, pending: PendingContributions, branch: str, head: str,
                    memory: RoundMemory, done: Step) -> None:
    from ..tensors.safetensors_io import load_bytes

    if any(m.author == identity.public_key for m in repo.secure.of_round(repo.id, branch, head, "masked")):
        return  # masked already: once per round
    for advert_id in pending.adverts(repo.id):
        advert = repo.secure.message(advert_id)
        if (advert.branch, advert.head) != (branch, head):
            continue  # another round's (``tidy`` forgets those that are over)
        for roster in secure_rounds.rosters(repo, branch, head):
            if advert_id not in content_of(roster, Roster).adverts:
                continue
            secrets, weights = pending.load(repo.id, advert_id)
            message = secure_rounds.mask(repo, identity, repo.secure, roster, load_bytes(weights),
                                         Secrets.decode(secrets), circuits=memory.circuits)
            done.published.append(f"masked {publish(repo, message).id}")
            break


def _as_holder(repo: Repository, identity: Any, branch: str, head: str, at: int, done: Step) -> None:
    answered = {content_of(m, Reveal).unmask for m in repo.secure.of_round(repo.id, branch, head, "reveal")
                if m.author == identity.public_key}
    for unmask in repo.secure.of_round(repo.id, branch, head, "unmask"):
        if unmask.id in answered or at - unmask.timestamp_ms < SETTLE_MS:
            continue
        try:
            message = secure_rounds.reveal(repo, identity, repo.secure, unmask)
        except (InvalidInput, IntegrityError) as exc:
            done.refused.append(f"reveal for {short(unmask.id)}: {exc}")
            continue
        done.published.append(f"reveal {publish(repo, message).id}")


def _as_aggregator(repo: Repository, identity: Any, branch: str, head: str, at: int, memory: RoundMemory,
                   done: Step) -> None:
    rosters = secure_rounds.rosters(repo, branch, head)
    try:
        if not rosters:
            message = secure_rounds.roster(repo, identity, repo.secure, branch, memory=memory)
            done.published.append(f"roster {publish(repo, message).id}")
            return
        roster = rosters[0]
        unmasks = [m for m in repo.secure.of_round(repo.id, branch, head, "unmask")
                   if content_of(m, Unmask).roster == roster.id]
        if not unmasks:
            masked = {m.author for m in repo.secure.of_round(repo.id, branch, head, "masked")
                      if content_of(m, Masked).roster == roster.id}
            taking = {repo.secure.message(a).author for a in content_of(roster, Roster).adverts}
            if not taking <= masked:
                waited = at - roster.timestamp_ms
                arriving = {m.author for m in repo.secure.still_arriving(branch, head)  # of the roster's only
                            if isinstance(m.content, Masked) and m.content.roster == roster.id} & taking - masked
                if waited < mask_wait_ms(repo.members.current().policy) or (arriving and waited < ARRIVING_WAIT_MS):
                    return
            message = secure_rounds.unmask(repo, identity, repo.secure, roster, memory=memory)
            done.published.append(f"unmask {publish(repo, message).id}")
            return
        done.merged = secure_merges.merge(repo, identity, repo.secure, min(unmasks, key=_signed_order), memory=memory)
    except NotReady:
        return  # more messages to wait for
    except IntegrityError as exc:  # a round that cannot merge (a contributor masked what it did not prove)
        done.refused.append(str(exc))
    except InvalidInput as exc:
        if "aggregator entitled" not in str(exc):  # not this node's turn is the common case: nothing to say
            done.refused.append(str(exc))


def _signed_order(message: RoundMessage) -> tuple[int, str]:
    return message.timestamp_ms, message.id
