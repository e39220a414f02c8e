"""What a round takes of each contribution (``protocol.rounds``), read a range at a time: its weights, moved onto
the head when it is based on an older merge (``taken``, ``Moved``), and why a round cannot use it (``unusable``):
another layout than the head's, values that are not finite, or beyond what the exact merge arithmetic holds
(``MAX_VALUE``, ``MAX_INTEGER``). Every reason depends only on the bytes of the contribution, its base and the
head, so every member finds the same; ``screen`` keeps each answer in the node's ``RoundMemory``, by the hashes
that name those bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..core.errors import IntegrityError, InvalidInput, MergeError
from ..core.ids import CommitId
from ..core.round_rules import RoundPolicy
from ..storage import adapters
from ..storage.repo import Repository
from ..tensors.lazy import Computed

if TYPE_CHECKING:
    import torch

    from ..tensors.safetensors_io import Ranges
    from .rounds import Contribution, RoundMemory, RoundView

#: The largest magnitude of a floating value a round takes (moved onto the head): well inside what the exact
#: merge arithmetic holds for any strategy and any number of inputs (``tensors.fixedpoint``).
MAX_VALUE = float(1 << 19)
MAX_INTEGER = 1 << 40  # the same for integer tensors (counters)
CACHE_SIZE = 4096  # answers each of a node's round caches keeps (``RoundMemory``), the oldest forgotten first


def screen(memory: RoundMemory, repo: Repository, current: RoundView, head: Mapping[str, torch.Tensor],
           c: Contribution
           ) -> tuple[str | None, Any]:
    """Why a round on ``current.head`` excludes contribution ``c`` (None if it can be merged), and, if it can,
    what the merge takes of it: its state, moved onto the head if it is based on an older merge (its own state
    when merges are proven, which take the base apart). The reasons depend only on the bytes of the
    contribution, its base and the head (all named by their hashes), so every node finds the same; a node that
    cannot read the payloads (``NotAMember``) or lacks a record (``NotFound``) raises instead of guessing."""
    cache = memory.screened
    key = screen_key(c.commit, current.head, current.policy)
    if key in cache:  # the same bytes give the same answer: read them once
        reason = cache[key]
        return reason, None if reason is not None else taken(repo, current, head, c)
    try:
        value = taken(repo, current, head, c)
        reason = unusable(repo, head, value)
    except (IntegrityError, InvalidInput, MergeError, RecursionError):
        reason, value = "undecodable", None
    remember(cache, key, reason)
    return reason, value if reason is None else None


def screen_key(contribution: CommitId, head: CommitId, policy: RoundPolicy) -> str:
    return f"{contribution}:{head}:{'proven' if policy.proof_chunk else 'moved'}"


def remember(cache: OrderedDict[str, Any], key: str, value: Any) -> None:
    """Keep ``value`` under ``key`` in one of a node's round caches, the oldest forgotten past ``CACHE_SIZE``."""
    cache[key] = value
    if len(cache) > CACHE_SIZE:
        cache.popitem(last=False)


def taken(repo: Repository, current: RoundView, head: Mapping[str, torch.Tensor], c: Contribution
          ) -> Mapping[str, torch.Tensor]:
    """What a round on ``current.head`` takes of contribution ``c``, read a tensor at a time: its weights, moved
    onto the head (``head + x − base``, exactly) if it is based on an older merge, merges are not proven and
    they are not adapters (combined by what they change, ``round_merges.derive_lazily``)."""
    state = repo.weights(c.commit)
    if c.base == current.head or current.policy.proof_chunk or repo.record.adapter is not None:
        return state
    return Moved(repo.weights(c.base), head, state)


class Moved(Computed):
    """``head + (x − base)`` in the merge arithmetic, computed for each tensor, or each range of one (``ranges``),
    when it is asked for."""

    def __init__(self, base: Mapping[str, torch.Tensor], head: Mapping[str, torch.Tensor],
                 state: Mapping[str, torch.Tensor]) -> None:
        super().__init__(state)
        self.base, self.head, self.state = base, head, state

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.ranges(name).tensor()

    def ranges(self, name: str) -> Ranges:
        """Tensor ``name`` moved onto the head, read by ranges: each range computed from that range of the base,
        the head and the contribution (``fixedpoint.combined``: ``combine_tensor``'s per-tensor rules, decided
        first)."""
        from ..tensors.fixedpoint import WEIGHT_BITS, combined
        from ..tensors.safetensors_io import ranges_of

        self._check(name)
        whole = 1 << WEIGHT_BITS
        return combined(name, ranges_of(self.base, name), [ranges_of(self.head, name), ranges_of(self.state, name)],
                        [whole, whole])

    def _check(self, name: str) -> None:
        from ..tensors.safetensors_io import spec_of

        if not (spec_of(self.base, name) == spec_of(self.head, name) == spec_of(self.state, name) is not None):
            raise MergeError(f"tensor {name} has another layout in the contribution, its base or the head",
                             tensor=name)


def unusable(repo: Repository, head: Mapping[str, torch.Tensor], taken: Mapping[str, torch.Tensor]) -> str | None:
    """Why a round cannot use ``taken`` (None if it can), reading it a range at a time (``PART`` bytes of each
    tensor, moved onto the head if it is): another layout than the head's (``undecodable``, as bytes that do not
    decode), values that are not finite (``non-finite``, found first), or beyond ``MAX_VALUE`` / ``MAX_INTEGER``
    (``out of range``, also when moving it onto the head overflows). ``IntegrityError`` and the like for a
    payload that does not decode."""
    import torch

    from ..tensors.fixedpoint import PART
    from ..tensors.safetensors_io import TORCH_DTYPES, ranges_of, spec_of

    names = sorted(taken)
    adapter = repo.record.adapter  # combined as an adapter (``round_merges.derive_lazily``), whatever its rank
    if adapter is None and (sorted(head) != names or any(spec_of(taken, n) != spec_of(head, n) for n in names)):
        return "undecodable"
    raw = taken.state if isinstance(taken, Moved) else taken
    beyond = False
    for name in names:
        moved = None
        if isinstance(taken, Moved) and not beyond:
            try:
                moved = taken.ranges(name)
            except MergeError:
                beyond = True
        scratch = None
        for at, x in enumerate(ranges_of(raw, name).values(PART)):
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                return "non-finite"
            if beyond:
                continue
            if moved is not None:  # the same range, moved onto the head
                if scratch is None:
                    scratch = torch.empty(PART, dtype=torch.uint8)
                size = x.numel() * x.element_size()
                try:
                    moved.readinto(at * PART, scratch.numpy().data[:size])
                except MergeError:  # moving it onto the head overflows the merge arithmetic
                    beyond = True
                    continue
                x = scratch[:size].view(TORCH_DTYPES[moved.spec.dtype])
            beyond = not tensor_in_range(x)
    if adapter is not None:
        adapters.adapter_of(adapter, repo.record.layout, dict(taken))
    return "out of range" if beyond else None


def tensor_in_range(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is within what a round takes (``MAX_VALUE``, ``MAX_INTEGER``)."""
    import torch

    if not t.numel() or t.dtype == torch.bool:
        return True
    if t.is_floating_point():
        return float(t.abs().max()) <= MAX_VALUE
    return int(t.to(torch.int64).abs().max()) <= MAX_INTEGER
