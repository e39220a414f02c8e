"""The bound on each contribution's update: the policy's ``norm_bound``, and ``dp_clip``, which differential
privacy clips to. What a contributor's node clips its update to, and what every member checks.

**Plain rounds** (``clipped``, ``check_plain``): the contributor's node clips its update to ``norm_bound`` (then
differential privacy clips and noises it, ``protocol.dp``), and every member, which reads each delta, checks its
norm directly before counting it: at most the tighter of the two bounds, plus, with differential privacy, what
its noise reaches but with odds below e^-50 (``plain_limit``). Noise cannot be told from an update, so with
differential privacy an update skipping the clip passes while it hides in that reach; one far beyond it does not.

**Secure rounds** (``update``, ``prove``, ``commitments``, ``check_sum``; ``protocol.secure_rounds`` runs the
phases): no member reads a masked update, so what it masks is proven within the bound.

- **Clipping** (``update``): after the differential-privacy clip, in floating point, the change is clipped in the
  merge's fixed point to ``norm_bound`` exactly (``tensors.dp_noise.clip_fixed``), so the bound proven holds.
- **Proving** (``prove``, the contributor, when it masks): the values it is about to mask (its weighted change
  and its noise share) are committed chunk by chunk (KZG) and proven within ``norm_limit`` by a norm proof of
  every group (``proofs.norms``); commitments and proof go out as one UnixFS file, ``{"v": VERSION,
  "commitments": [...], "norm": <bundle>}``, which the masked-update message names.
- **Checking** (``commitments``, every member, before a masked update counts; ``check_sum``, once the masks are
  gone): the proof holds for the commitments, and the unmasked sum is, chunk by chunk, the sum of the taken
  contributors' committed vectors, so no contributor masked another vector than the one it proved.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

import numpy as np

from ..core.encoding import loads_json
from ..core.errors import IntegrityError, InvalidInput
from ..core.ids import Cid, short
from ..core.objects import Commit
from ..core.round_messages import Masked, RoundMessage, content_of
from ..core.round_rules import RoundPolicy
from ..storage import unixfs
from ..storage.repo import Repository
from . import dp
from .round_inputs import remember
from .rounds import RoundMemory

if TYPE_CHECKING:
    import torch

    from ..tensors.safetensors_io import StateDict
    from .proofs.circuits import Circuits
    from .secure_rounds import Plan

VERSION = 1  # of a masked update's norm proof file


# -- plain rounds -----------------------------------------------------------------------------------------

def clipped(policy: RoundPolicy, base: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
            ) -> Mapping[str, torch.Tensor]:
    """``state`` with its update from ``base`` clipped to the policy's ``norm_bound``, if it sets one."""
    from ..tensors.dp_noise import clip

    return clip(base, state, float(Decimal(policy.norm_bound))) if policy.norm_bound else state


def plain_limit(policy: RoundPolicy, state: Mapping[str, torch.Tensor]) -> float:
    """The largest L2 norm (over its floating tensors) a plain contribution ``state`` may change its base by
    (see the module docstring), with room for storing its values in their own precision: an ulp a value,
    twice the rounding. Reads ``state`` a tensor at a time."""
    import torch

    limit = float(min(Decimal(b) for b in (policy.dp_clip, policy.norm_bound) if b))
    count, rounding = 0, 0.0
    for name in state:
        tensor = state[name]
        if tensor.is_floating_point():
            count += tensor.numel()
            rounding += torch.finfo(tensor.dtype).eps * float(tensor.double().norm())
    if policy.dp:
        limit += float(Decimal(policy.dp_noise) * Decimal(policy.dp_clip)) * (math.sqrt(count) + 10)
    return limit + rounding


def check_plain(repo: Repository, commit: Commit, memory: RoundMemory) -> None:
    """``IntegrityError`` unless contribution ``commit``'s update is within ``plain_limit`` (once per commit and
    bound: it and its base never change). One that cannot be read is left to the round's screening to exclude."""
    from ..tensors.dp_noise import update_norm

    policy = repo.members.current().policy
    key = f"{commit.id}:{policy.norm_bound}:{policy.dp_clip}:{policy.dp_noise}"
    if key not in memory.bounded:
        try:
            state, base = repo.weights(commit.id), repo.weights(commit.parents[0])  # a tensor at a time
            norm, limit = update_norm(base, state), plain_limit(policy, state)
        except (InvalidInput, IntegrityError, ValueError):
            return
        why = None if norm <= limit else (f"contribution {short(commit.id)} changes its base by an L2 norm of "
                                          f"{norm:.6g}, beyond the {limit:.6g} the repository's bound allows")
        remember(memory.bounded, key, why)
    why = memory.bounded.get(key)
    if why is not None:
        raise IntegrityError(why)


# -- secure rounds ----------------------------------------------------------------------------------------

def update(policy: RoundPolicy, base: StateDict, state: StateDict) -> np.ndarray:
    """The change a contributor masks, unweighted, in the merge's fixed point: clipped to ``dp_clip`` (in floating
    point, as the accounting assumes) and to ``norm_bound`` (in the fixed point, exactly: what is proven)."""
    from ..tensors.dp_noise import clip_fixed
    from ..tensors.secure_sum import term

    change = term(base, dict(dp.clipped(policy, base, state)), 1)  # a secure round masks the whole vector
    return clip_fixed(change, fixed_norm_bound(policy)) if policy.norm_bound else change


def fixed_norm_bound(policy: RoundPolicy) -> int:
    """The policy's ``norm_bound`` in the merge's fixed point (24 fraction bits), rounded down."""
    from ..tensors.fixedpoint import DEFAULT_SCALE_BITS

    return int(Decimal(policy.norm_bound) * (1 << DEFAULT_SCALE_BITS))


def norm_limit(policy: RoundPolicy, weight: int, count: int, roster: int) -> int:
    """The L2 norm a contributor's masked values (``count`` of them, at ``weight``, in a roster of ``roster``)
    are proven within: its weight times the norm bound, plus, with differential privacy, what its share of the
    noise reaches but with odds below e^-50 (its parameter times √count + 10: the norm of a sub-Gaussian
    vector)."""
    noise = math.ceil(dp.noise_std(policy, count, roster) * (math.sqrt(count) + 10)) if policy.dp else 0
    return weight * fixed_norm_bound(policy) + noise


def prove(repo: Repository, plan: Plan, mine: RoundMessage, values: np.ndarray, circuits: Circuits | None
          ) -> tuple[Cid, int]:
    """The norm proof of ``values`` (see ``norm_limit``) with their chunks' commitments, added to the blocks as
    one file (``VERSION``): its CID and size."""
    import torch

    from ..tensors.dp_noise import norm_squared
    from .proofs import norms, weighted_sum

    policy = repo.members.current().policy
    circuits = circuits or dp.SHARED.circuits
    limit = norm_limit(policy, plan.weights[mine.id], values.size, len(plan.adverts))
    if norm_squared(values) > limit * limit:  # the update is clipped: only the noise takes it there, at odds < e^-50
        raise InvalidInput("the noise drawn takes the update beyond its norm bound: mask again")
    vector = torch.from_numpy(values)
    bundle = norms.prove(circuits.norms(repo, limit * limit), vector, limit * limit)
    commitments = weighted_sum.commitments(vector, policy.proof_chunk, circuits.committer(repo))
    data = json.dumps({"v": VERSION, "commitments": commitments, "norm": bundle},
                      separators=(",", ":")).encode()
    with repo.write_lock:
        return unixfs.add(repo.blocks, data), len(data)


def commitments(repo: Repository, plan: Plan, message: RoundMessage, memory: RoundMemory) -> tuple[str, ...]:
    """The chunk commitments masked update ``message`` publishes with its norm proof, once the proof is checked
    (remembered per message and policy: the message names the file by its hash). ``IntegrityError`` if it has
    no proof, or one that does not show what it masks within ``norm_limit``; ``NotFound`` while the file's
    blocks are not here."""
    from ..tensors.secure_sum import term_size
    from .proofs import norms

    policy = repo.members.current().policy
    key = f"{message.id}:{policy.norm_bound}:{policy.proof_chunk}:{policy.proof_srs}"
    if key in memory.norm_proofs:
        commitments, why = memory.norm_proofs[key]
        if why is not None:
            raise IntegrityError(why)
        return commitments
    content = content_of(message, Masked)
    if content.proof is None:
        raise IntegrityError(f"masked update {short(message.id)} has no norm proof, which this repository's "
                             "policy requires")
    data = unixfs.cat(repo.blocks, content.proof, max_size=content.proof_size)
    count = term_size(repo.materialize(plan.roster.head))
    advert = plan.advert_of(message.author)
    if advert is None:
        raise IntegrityError(f"masked update {short(message.id)} is not by a contributor of its roster")
    limit = norm_limit(policy, plan.weights[advert.id], count, len(plan.adverts))
    chunks = -(-count // policy.proof_chunk)
    try:
        if len(data) != content.proof_size:
            raise IntegrityError(f"it is {len(data)} bytes, not the {content.proof_size} the message says")
        found = loads_json(data, max_depth=norms.MAX_BUNDLE_DEPTH, what="it")
        listed = found.get("commitments") if isinstance(found, dict) else None
        if not (isinstance(found, dict) and found.get("v") == VERSION and isinstance(listed, list)
                and len(listed) == chunks and all(isinstance(c, str) for c in listed)
                and isinstance(found.get("norm"), dict)):
            raise IntegrityError(f"it is not a version-{VERSION} norm proof with {chunks} chunk "
                                 "commitments")
        norms.check(memory.circuits.norms(repo, limit * limit), found["norm"], listed, limit * limit,
                    list(range(norms.group_count(chunks))))
    except IntegrityError as exc:
        why = f"the norm proof of masked update {short(message.id)} does not hold: {exc}"
        remember(memory.norm_proofs, key, ((), why))
        raise IntegrityError(why) from None
    commitments = tuple(listed)
    remember(memory.norm_proofs, key, (commitments, None))
    return commitments


def check_sum(repo: Repository, plan: Plan, masked: Sequence[RoundMessage], plain: np.ndarray, memory: RoundMemory
              ) -> None:
    """``IntegrityError`` unless the unmasked sum ``plain`` is the sum of the vectors the ``masked`` updates'
    norm proofs commit to: then no contributor masked another update than the one it proved within the bound.
    Who did cannot be told from the sum, so the round stalls, as it does for a dealer of bad shares."""
    import torch

    from .proofs import norms

    published = [commitments(repo, plan, m, memory) for m in masked]
    committer = memory.circuits.committer(repo)
    if committer is None:
        raise IntegrityError("norm proofs need KZG commitments, and this repository commits otherwise")
    try:
        norms.check_sum(committer, published, torch.from_numpy(plain))
    except IntegrityError as exc:
        raise IntegrityError(f"the unmasked sum is not the sum of what its contributors proved ({exc}): one of "
                             f"them masked another update than its norm proof is about") from None
