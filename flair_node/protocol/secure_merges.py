"""A secure round's merge (``protocol.secure_rounds`` runs the phases before it): the entitled aggregator makes
it (``merge``), and every member re-derives it before following it (``verify``), both through ``derive``: recover
each taken contributor's self seed and each dropped one's mask key from the reveals (each share checked against
the hash its dealer published, each secret against its commitment), add the masked updates in the ring, take
away the self masks and the pair masks the dropped contributors' neighbours still hold, and divide by the taken
contributors' weight (``tensors.secure_sum.merge_sum``). With every contributor in, the result is the plain
round's merge bit for bit; with some dropped out, it is the exact weighted mean of those taken. With the policy's
differential privacy, the merge also records what it gives each contributor (``protocol.dp.secure_record``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core import secagg
from ..core.errors import IntegrityError, NotFound
from ..core.ids import CommitId, short
from ..core.objects import Commit
from ..core.round_messages import Advert, Reveal, RoundMessage, Unmask, content_of
from ..storage.clock import now_ms
from ..storage.repo import Repository
from . import dp, norm_bounds
from .rounds import RoundMemory
from .secure_rounds import (
    MessageSource,
    NotReady,
    _check_reveal,
    _check_unmask,
    _masked_bytes,
    _policy,
    _require_entitled,
    _round,
    make_plan,
)

if TYPE_CHECKING:
    from ..tensors.safetensors_io import StateDict


def merge(repo: Repository, identity: Any, source: MessageSource, unmask_message: RoundMessage, *,
          memory: RoundMemory) -> Commit:
    """The round merge of ``unmask_message`` by the aggregator entitled now, from the valid reveals that arrived
    (one holding a share its dealer did not deal is left out). ``NotReady`` while too few have."""
    plan = make_plan(repo, source, source.message(content_of(unmask_message, Unmask).roster))
    current = _round(repo, unmask_message.branch, unmask_message.head, plan.adverts, memory=memory)
    _require_entitled(current, identity.public_key, now_ms(), "merge")  # before the work, which only it may use
    taken = {m.author for m in _check_unmask(repo, source, plan, unmask_message, memory)}
    reveals = []
    for message in source.of_round(repo.id, unmask_message.branch, unmask_message.head, "reveal"):
        if content_of(message, Reveal).unmask != unmask_message.id:
            continue
        try:
            _check_reveal(repo, plan, unmask_message, message, taken)
        except IntegrityError:
            continue  # a reveal holding a wrong share: left out, never believed
        reveals.append(message.id)
    state, meta = derive(repo, source, unmask_message, reveals, memory=memory)

    def still_entitled(timestamp_ms: int) -> None:
        _require_entitled(current, identity.public_key, timestamp_ms, "merge")

    return repo.write_round(identity, state, branch=unmask_message.branch, parents=(unmask_message.head,),
                            meta=meta, check_time=still_entitled,
                            message=f"round {meta['round']} of {unmask_message.branch}: "
                                    f"{len(meta['secure']['contributions'])} masked contributions, mean")


def derive(repo: Repository, source: MessageSource, unmask_message: RoundMessage, reveals: Sequence[str], *,
           memory: RoundMemory | None = None) -> tuple[StateDict, dict[str, Any]]:
    """The merged state and the ``meta`` of the merge of ``unmask_message`` from the reveals named (see the
    module docstring), with ``memory``'s circuits and checks (a process-wide one by default). ``NotReady`` if
    they recover too few secrets; ``IntegrityError`` if a message does not fit the round, or, with norm proofs,
    if the sum is not that of what the taken contributors proved."""
    from ..tensors import masking
    from ..tensors.fixedpoint import WEIGHT_BITS
    from ..tensors.secure_sum import merge_sum, term_size

    content = content_of(unmask_message, Unmask)
    plan = make_plan(repo, source, source.message(content.roster))
    memory = memory or dp.SHARED
    masked = _check_unmask(repo, source, plan, unmask_message, memory)
    taken = {m.author for m in masked}
    if list(reveals) != sorted(set(reveals)):
        raise IntegrityError("a secure merge lists the reveals it used sorted, each once")
    shares: dict[tuple[str, str], list[secagg.Share]] = {}
    for reveal_id in reveals:
        for advert_id, kind, share in _check_reveal(repo, plan, unmask_message, source.message(reveal_id), taken):
            shares.setdefault((advert_id, kind), []).append(share)
    # Everything the derivation reads is here before a mask is expanded (the costly part): a merge that cannot
    # be checked yet, which a node is asked to follow again and again while its inputs arrive, costs little.
    recoverable = []
    for advert_message in plan.adverts:
        advert = content_of(advert_message, Advert)
        kind = "self" if advert_message.author in taken else "key"
        found = shares.get((advert_message.id, kind), [])
        needed = _policy(repo).holders_needed(len(advert.shares))
        if len(found) < needed:
            raise NotReady(f"{len(found)} of the {needed} shares needed to recover the "
                           f"{'self seed' if kind == 'self' else 'mask key'} of advert {short(advert_message.id)} "
                           "have been revealed")
        recoverable.append((advert_message, advert, kind, found, needed))
    head = repo.materialize(unmask_message.head)
    count = term_size(head)
    published = [_masked_bytes(repo, m, plan.ring, count) for m in masked]
    corrections: list[np.ndarray] = []
    dropped = []
    for advert_message, advert, kind, found, needed in recoverable:
        secret = secagg.recover(found, needed, advert.self_commit if kind == "self" else advert.key_commit)
        if kind == "self":
            corrections.append(masking.prg(secret, count))
            continue
        dropped.append(advert_message.id)
        if secagg.public_of(secret) != advert.mask_key:
            raise IntegrityError(f"advert {short(advert_message.id)} committed to a mask key secret that is not "
                                 "its mask key's")
        survivors = {key: secagg.pair_seed(secret, advert.mask_key, key, plan.context)
                     for key in plan.links[advert.mask_key] if plan.by_key(key).author in taken}
        corrections.append(masking.pair_correction(advert.mask_key, survivors, count))
    plain = masking.from_ring(masking.ring_total(published, plan.ring, count), plan.ring, corrections)
    if _policy(repo).norm_bound:
        norm_bounds.check_sum(repo, plan, masked, plain, memory)
    masked_of = {m.author: m.id for m in masked}
    entries: list[list[Any]] = [[masked_of[a.author], a.author, content_of(a, Advert).examples, plan.weights[a.id]]
                                for a in plan.adverts if a.author in masked_of]
    weight = sum(int(e[3]) for e in entries)
    if weight < 1:
        raise IntegrityError("the contributions a secure merge takes weigh nothing")
    state = merge_sum(head, plain, weight)
    from .strategies import build_strategy

    meta = {"branch": unmask_message.branch, "round": _round_number(repo, unmask_message.head),
            "strategy": build_strategy("mean", {}).describe(),
            "secure": {"roster": content.roster, "unmask": unmask_message.id, "reveals": list(reveals),
                       "contributions": entries, "dropped": dropped, "ring_bits": plan.ring},
            "examples": sum(int(e[2]) for e in entries), "step": 1 << WEIGHT_BITS}
    policy = _policy(repo)
    if policy.dp:
        meta["dp"] = dp.secure_record(repo, policy, unmask_message.head, [e[1] for e in entries], len(plan.adverts))
    return state, meta


def verify(repo: Repository, commit: Commit, source: MessageSource, *, memory: RoundMemory) -> None:
    """Check secure round merge ``commit``: signed by the aggregator entitled at its time, after the reveals it
    names, and re-deriving to the same meta and bytes. ``MergeMismatch`` if it does not (final);
    ``IntegrityError`` saying what is wrong otherwise (perhaps only for now: messages it names may not have
    arrived)."""
    from .rounds import MergeMismatch, _same_state

    secure = commit.meta.get("secure")
    if commit.kind != "round" or len(commit.parents) != 1 or not isinstance(secure, dict):
        raise IntegrityError(f"commit {short(commit.id)} is not a secure round merge")
    if repo.record.adapter is not None:
        raise MergeMismatch(f"commit {short(commit.id)} is a secure round merge in a repository of LoRA adapters, "
                            "whose masked sums of factors are not the sum of what the adapters change")
    try:
        unmask_message = source.message(secure["unmask"])
        reveals = secure["reveals"]
        if not isinstance(reveals, list) or not all(isinstance(r, str) for r in reveals):
            raise MergeMismatch(f"secure merge {short(commit.id)} does not list its reveals")
        if unmask_message.head != commit.parents[0] or unmask_message.branch != commit.meta.get("branch"):
            raise MergeMismatch(f"secure merge {short(commit.id)} names the unmask of another round")
        late = [r for r in reveals if source.message(r).timestamp_ms > commit.timestamp_ms]
        if late:
            raise MergeMismatch(f"secure merge {short(commit.id)} uses reveal {short(late[0])}, signed after it")
        plan = make_plan(repo, source, source.message(content_of(unmask_message, Unmask).roster))
        current = _round(repo, unmask_message.branch, unmask_message.head, plan.adverts, memory=memory)
        if current.aggregator(commit.timestamp_ms) != commit.author:
            raise IntegrityError(f"secure merge {short(commit.id)} is by {short(commit.author)}, who was not the "
                                 "aggregator entitled at its time")
        state, meta = derive(repo, source, unmask_message, reveals, memory=memory)
    except (NotFound, NotReady) as exc:
        raise IntegrityError(f"secure merge {short(commit.id)} cannot be checked yet: {exc}") from None
    if dict(commit.meta) != meta:
        raise MergeMismatch(f"secure merge {short(commit.id)} records other contributions or weights than its "
                            "messages give")
    if not _same_state(repo.materialize(commit.id), state):
        raise MergeMismatch(f"secure merge {short(commit.id)} is not what its masked updates sum to")


def _round_number(repo: Repository, head: CommitId) -> int:
    from .rounds import _rounds_before

    return _rounds_before(repo, head) + 1

