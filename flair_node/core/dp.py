"""Differential privacy of contributions: what a repository's policy promises each member, and its accounting.

A repository whose policy sets the four ``dp_*`` fields (``core.round_rules.RoundPolicy``) makes every
contribution the Gaussian mechanism on its author's whole update: the change from its base, over every floating
tensor at once, is scaled down to an L2 norm of at most C (``dp_clip``), and Gaussian noise of standard
deviation z·C (``dp_noise`` is z, the noise multiplier) is added to every value, by the contributor's own node
before anything is stored (``protocol.dp``). Integer tensors stay as the base holds them.

The guarantee is member-level: for adding or removing all of one member's data, its clipped update against no
update, which are at most C apart. The privacy loss of a member's k contributions to the repository is that of
k compositions of the Gaussian mechanism of noise multiplier z, at the policy's δ (``dp_delta``), as Google's
``dp-accounting`` computes it (its RDP accountant), never a formula written here. A member may spend at most the
policy's ε (``dp_epsilon``) in all: its node refuses a contribution past that, and so does every verifier.

Each contribution records, in its ``meta["dp"]``, what it was made with and what it spends (``record``)::

    {"clip": C, "noise": z, "delta": δ, "count": k, "epsilon_step": ε(1), "epsilon": ε(k)}

as decimal text (records hold no floats), ε to 6 significant digits. ``check`` is what a verifier applies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from .errors import IntegrityError, InvalidInput
from .round_rules import RoundPolicy

_KEYS = {"clip", "noise", "delta", "count", "epsilon_step", "epsilon"}
MAX_COUNT = 1 << 20  # contributions of one member accounted, at most
_TOLERANCE = 1e-5  # relative: a recorded epsilon is rounded to 6 significant digits


class BudgetExceeded(InvalidInput):
    """A contribution would take its author past the repository's privacy budget."""


def epsilon(noise: str, count: int, delta: str) -> float:
    """The ε at ``delta`` of ``count`` compositions of the Gaussian mechanism of noise multiplier ``noise``
    (dp-accounting's RDP accountant); 0 for no contribution."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_COUNT:
        raise InvalidInput(f"a member's contributions are counted from 0 to {MAX_COUNT}, not {count!r}")
    if count == 0:
        return 0.0
    accountant = RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(float(Decimal(noise))), count))
    return float(accountant.get_epsilon(float(Decimal(delta))))


def text(value: float) -> str:
    """``value`` as the decimal text a record holds: 6 significant digits."""
    if not math.isfinite(value):
        raise InvalidInput(f"no finite epsilon: {value}")
    return f"{value:.6g}"


def record(policy: RoundPolicy, count: int) -> dict[str, Any]:
    """What the ``count``-th contribution of a member records under ``policy``; ``BudgetExceeded`` if it would
    spend more than the member's budget."""
    if not policy.dp:
        raise InvalidInput("this repository's policy sets no differential privacy")
    spent = epsilon(policy.dp_noise, count, policy.dp_delta)
    if spent > float(Decimal(policy.dp_epsilon)):
        raise BudgetExceeded(f"contribution {count} of this member would spend ε = {text(spent)} at δ = "
                             f"{policy.dp_delta}, past the repository's budget of {policy.dp_epsilon} per member "
                             f"(z = {policy.dp_noise}); earlier ones spent "
                             f"{text(epsilon(policy.dp_noise, count - 1, policy.dp_delta))}")
    return {"clip": policy.dp_clip, "noise": policy.dp_noise, "delta": policy.dp_delta, "count": count,
            "epsilon_step": text(epsilon(policy.dp_noise, 1, policy.dp_delta)), "epsilon": text(spent)}


def check(meta: Any, policy: RoundPolicy, *, at_least: int) -> int:
    """Its count, if ``meta`` (a contribution's ``meta["dp"]``) is what ``policy`` requires of a member's
    contribution numbered ``at_least`` or later: the policy's parameters, the accountant's epsilons for its count,
    within the budget. ``IntegrityError`` saying what is wrong otherwise."""
    if not isinstance(meta, Mapping) or set(meta) != _KEYS:
        raise IntegrityError(f"a contribution to a repository with differential privacy records {sorted(_KEYS)} "
                             "of it")
    made = (meta["clip"], meta["noise"], meta["delta"])
    if made != (policy.dp_clip, policy.dp_noise, policy.dp_delta):
        raise IntegrityError(f"it was clipped to {made[0]} with noise multiplier {made[1]} at δ = {made[2]}; the "
                             f"policy says {policy.dp_clip}, {policy.dp_noise}, {policy.dp_delta}")
    count = meta["count"]
    if not isinstance(count, int) or isinstance(count, bool) or not at_least <= count <= MAX_COUNT:
        raise IntegrityError(f"its author has contributed at least {at_least - 1} times before: it cannot be its "
                             f"contribution number {count!r}")
    for key, steps in (("epsilon_step", 1), ("epsilon", count)):
        expected = epsilon(policy.dp_noise, steps, policy.dp_delta)
        if not _close(meta[key], expected):
            raise IntegrityError(f"it records {key} {meta[key]!r}; the accountant gives {text(expected)}")
    if float(Decimal(meta["epsilon"])) > float(Decimal(policy.dp_epsilon)):
        raise IntegrityError(f"its author's contributions spend ε = {meta['epsilon']}, past the budget of "
                             f"{policy.dp_epsilon}")
    return count


# -- secure rounds: the noise shared out in the masked ring -------------------------------------------------


def round_rho(noise: str, taken: int, roster: int) -> float:
    """The zero-concentrated DP parameter ρ a secure round gives each contributor it takes: each of the
    ``roster``'s contributors added discrete Gaussian noise of parameter z·Δ/√roster (``noise`` is z, Δ the
    sensitivity), and the merge sums ``taken`` of them. The sum of n such discrete Gaussians is
    ρ = Δ² / (2 n σ²)-concentrated up to a term τ = 10 Σₖ exp(−2π² σ² k / (k + 1)) (Kairouz, Liu and Steinke,
    ICML 2021, Theorem 1), which underflows to 0 at the parameters Flair draws (σ of 16 or more, which
    ``protocol.secure_rounds`` requires), so
    ρ = roster / (2 · taken · z²). The accountant composes and converts it (``secure_epsilon``)."""
    if not 1 <= taken <= roster:
        raise InvalidInput(f"a round takes from 1 to all of its roster's {roster} contributions, not {taken}")
    return roster / (2 * taken * float(Decimal(noise)) ** 2)


def secure_epsilon(rhos: Sequence[float], delta: str) -> float:
    """The ε at ``delta`` of a member's secure rounds, each ``rhos``-concentrated (dp-accounting's RDP
    accountant composing ``ZCDpEvent``s); 0 for none."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    if not rhos:
        return 0.0
    accountant = RdpAccountant()
    accountant.compose(dp_accounting.ComposedDpEvent([dp_accounting.ZCDpEvent(rho) for rho in rhos]))
    return float(accountant.get_epsilon(float(Decimal(delta))))


def _close(recorded: Any, expected: float) -> bool:
    if not isinstance(recorded, str) or len(recorded) > 24:
        return False
    try:
        value = float(Decimal(recorded))
    except ArithmeticError:
        return False
    return math.isfinite(value) and abs(value - expected) <= _TOLERANCE * max(1.0, expected)
