"""Rounds on a branch: the policy an owner sets, who aggregates each round, and how contributions are weighed.

Everything here is a pure function of signed, replicated data (the membership chain, the previous merged
commit), so every member computes the same answer with no coordinator:

- **Ranking.** For the round that follows merged commit ``previous``, eligible members who merged a round
  longest ago (or never) come first, so every one takes a turn before anyone takes a second; among equals the
  order is by ``sha256(previous id ‖ member key)`` (rendezvous hashing), unknown until ``previous`` exists.
- **Windows.** A round opens at ``previous``'s timestamp (``opened_ms``) and is due at the deadline
  (``opened_ms + deadline``), or earlier when it filled up: when its K-th contribution was signed
  (``filled_at``, from the signed timestamps of the contributions a merge takes, so every member computes it
  from the merge alone). The first-ranked member may merge from ``opened_ms`` until one ``timeout`` after the
  round was due; the k-th ranked (k >= 1) takes over for one ``timeout`` after that, and so on; after the last,
  the turn comes round again to the first, one ``timeout`` each, so a round that waited long for contributions
  still has exactly one aggregator at any time, and a dead aggregator delays a round that filled up by one
  ``timeout`` (not by the deadline). A merge is entitled only if its signed timestamp falls in its author's
  window; members ignore any other. A member who withholds a contribution it dated early can make the next
  window open sooner than the others saw the round fill; it gains at most a turn it would have had anyway.
- **Weights.** A contribution based ``τ`` merged commits behind the head weighs ``examples × (1 + τ)^-α``
  (FedBuff-style staleness discount); beyond ``max_staleness`` it is refused. ``weight_counts`` computes the
  weights in decimal arithmetic to 9 digits (no platform's ``pow`` decides them) and returns integers for the
  fixed-point merge to normalise. The weights only share a merge out among its contributions; how far the merge
  moves is discounted too: it goes ``step = Σ examples × (1 + τ)^-α / Σ examples`` of the way from the head to
  what the strategy gives (``step_weight``; 1 when every contribution is fresh), so for the mean the head moves
  by ``Σ examples_i × s(τ_i) × Δ_i / Σ examples``, FedBuff's absolute discount: a round of stale updates takes
  a smaller step instead of applying all of their change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import ROUND_FLOOR, Context, Decimal
from typing import Any

from . import schema
from .errors import IntegrityError, InvalidInput
from .identity import public_key_bytes
from .ids import PublicKey

STRATEGY_NAME = 64  # characters of a strategy name
MAX_STRATEGY_PARAMS = 16
MAX_PROOF_CHUNK = 1 << 16
#: Left out of records while they hold these values, so records made before the fields existed are unchanged.
_OPTIONAL = {"proof_chunk": 0, "proof_scheme": "", "proof_srs": "", "contribution_nfts": False, "privacy": "plain",
             "secure_threshold": "0.5", "dp_clip": "", "dp_noise": "", "dp_delta": "", "dp_epsilon": "",
             "norm_bound": ""}
DP_FIELDS = ("dp_clip", "dp_noise", "dp_delta", "dp_epsilon")
PRIVACY = ("plain", "secure")
PROOF_SCHEMES = ("kzg", "poseidon")  # how contributions and merges commit to their chunks (``protocol.proofs``)
#: A norm bound's largest: a weighted clipped value (2^16 x 500 x 2^24 < 2^49) stays within what a norm proof
#: squares exactly (``protocol.proofs.ezkl_backend.MAX_SQUARED``).
MAX_NORM_BOUND = 500
MAX_SRS_BYTES = 1 << 26  # an SRS file (EZKL's for 2^18 rows is 16 MiB)
_DECIMAL = Context(prec=40)
_WEIGHT_SCALE = Decimal(10) ** 9  # weights are examples x discount, to 9 decimal places


@dataclass(frozen=True)
class RoundPolicy:
    """How rounds run in a repository; set by the owner (a signed membership-chain change), seen by all."""

    strategy: str = "mean"  # an aggregation strategy's name (``protocol.strategies``)
    #: The strategy's parameters: integers, booleans or text (fractions as decimal text, e.g. "0.2": canonical
    #: records hold no floats).
    strategy_params: Mapping[str, int | str | bool] = field(default_factory=dict)
    buffer: int = 3  # K: merge once this many contributions are buffered ...
    deadline_s: int = 60  # ... or this long after the round opened, if at least one is
    alpha: str = "0.5"  # staleness exponent, decimal text: weight = examples x (1 + staleness)^-alpha
    max_staleness: int = 4  # contributions based further behind the head are refused
    timeout_s: int = 60  # how long each aggregator has before the next ranked one takes over
    #: 0: merges are not proven. N: each contribution commits to its fixed-point delta in chunks of N values and
    #: each merge to the chunks of its weighted sums, so EZKL can prove them (``protocol.proofs``); the strategy
    #: must then be the mean.
    proof_chunk: int = 0
    #: With ``proof_chunk``: how chunks are committed, ``kzg`` (KZG commitments, made with the SRS) or
    #: ``poseidon`` (hashes: no SRS needed to commit, ~30x slower to prove).
    proof_scheme: str = ""
    #: The CID of the SRS file (a UnixFS file the owner's node adds, members fetch) the members accept: keys and
    #: KZG commitments are made from it, so a proof made with another SRS is not one they check. Required for
    #: ``kzg``; empty: not chosen yet.
    proof_srs: str = ""
    #: With anchoring on: the aggregator also mints one NFT per merged contribution, to its contributor's
    #: address (``protocol.anchoring.contribution``), besides the merged commit's own.
    contribution_nfts: bool = False
    #: ``plain``: members read each contribution. ``secure``: contributions are masked (``protocol.secure_rounds``)
    #: and members, the aggregator included, read only merges.
    privacy: str = "plain"
    #: With ``secure``: a contributor's secrets are recovered from more than this fraction of the members holding
    #: shares of them (decimal text from 0.5, a majority, to below 1). Higher resists more colluding members and
    #: tolerates fewer absent ones.
    secure_threshold: str = "0.5"
    #: Differential privacy (``core.dp``), all four set or none, each decimal text. ``dp_clip``: the L2 norm C a
    #: contribution's whole update is clipped to; ``dp_noise``: the noise multiplier z (Gaussian noise of
    #: standard deviation z x C on every value); ``dp_delta``: the delta the privacy loss is accounted at;
    #: ``dp_epsilon``: each member's budget, the epsilon its contributions to this repository may spend in all.
    dp_clip: str = ""
    dp_noise: str = ""
    dp_delta: str = ""
    dp_epsilon: str = ""
    #: The L2 norm B each contribution's update is clipped to by its contributor's node, decimal text; every
    #: member checks it (``protocol.norm_bounds``): directly in plain rounds, and with ``secure`` (which needs KZG
    #: commitments, ``proof_chunk``) through the EZKL proof every masked update carries (``protocol.proofs.norms``).
    norm_bound: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, str) or not 0 < len(self.strategy) <= STRATEGY_NAME:
            raise InvalidInput(f"strategy must be a name of 1 to {STRATEGY_NAME} characters")
        if not isinstance(self.strategy_params, Mapping) or len(self.strategy_params) > MAX_STRATEGY_PARAMS or any(
                not isinstance(k, str) or len(k) > STRATEGY_NAME or not isinstance(v, int | str | bool)
                or isinstance(v, str) and len(v) > STRATEGY_NAME for k, v in self.strategy_params.items()):
            raise InvalidInput(f"strategy_params must map at most {MAX_STRATEGY_PARAMS} names to plain values")
        for name, low, high in (("buffer", 1, 10_000), ("deadline_s", 1, 86_400), ("max_staleness", 0, 1_000),
                                ("timeout_s", 1, 86_400), ("proof_chunk", 0, MAX_PROOF_CHUNK)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise InvalidInput(f"{name} must be an integer from {low} to {high}, not {value!r}")
        if not _decimal_in(self.alpha, 0, 10):
            raise InvalidInput(f"alpha must be a decimal number from 0 to 10 written as text, not {self.alpha!r}")
        if not isinstance(self.contribution_nfts, bool):
            raise InvalidInput(f"contribution_nfts is true or false, not {self.contribution_nfts!r}")
        if not isinstance(self.proof_srs, str) or self.proof_srs and not _is_cid(self.proof_srs):
            raise InvalidInput("proof_srs is the CID of an SRS file, or empty")
        if self.proof_chunk:
            if self.strategy != "mean":
                raise InvalidInput(f"proven merges need the mean strategy (a weighted sum), not {self.strategy}")
            if self.proof_scheme not in PROOF_SCHEMES:
                raise InvalidInput(f"proven merges commit with one of {', '.join(PROOF_SCHEMES)}, not "
                                   f"{self.proof_scheme!r}")
            if self.proof_scheme == "kzg" and not self.proof_srs:
                raise InvalidInput("KZG commitments are made with the SRS: proven merges with kzg need proof_srs")
        elif self.proof_scheme or self.proof_srs:
            raise InvalidInput("proof_scheme and proof_srs go with proof_chunk: without it merges are not proven")
        if self.privacy not in PRIVACY:
            raise InvalidInput(f"privacy is one of {', '.join(PRIVACY)}, not {self.privacy!r}")
        if self.privacy == "secure":
            self._check_secure()
        elif self.secure_threshold != "0.5":
            raise InvalidInput("secure_threshold goes with privacy secure")
        if any(getattr(self, name) for name in DP_FIELDS):
            self._check_dp()
        if self.norm_bound:
            self._check_norm_bound()

    @property
    def dp(self) -> bool:
        """Whether contributions are clipped, noised and accounted (``core.dp``)."""
        return bool(self.dp_clip)

    def _check_norm_bound(self) -> None:
        if not _decimal_in(self.norm_bound, 0, MAX_NORM_BOUND) or Decimal(self.norm_bound) <= 0:
            raise InvalidInput(f"norm_bound is a decimal above 0 and at most {MAX_NORM_BOUND} written as text, not "
                               f"{self.norm_bound!r}")
        if self.privacy == "secure" and self.proof_scheme != "kzg":
            raise InvalidInput("a secure round's norm bound is proven, which needs KZG commitments (proof_chunk with "
                               "proof_scheme kzg): the check adds commitments, which hashes cannot do")

    def _check_dp(self) -> None:
        missing = [name for name in DP_FIELDS if not getattr(self, name)]
        if missing:
            raise InvalidInput(f"differential privacy takes all of {', '.join(DP_FIELDS)}; {', '.join(missing)} "
                               "missing")
        for name, low, high in (("dp_clip", 0, 10**6), ("dp_noise", 0, 1000), ("dp_epsilon", 0, 10**4)):
            if not _decimal_in(getattr(self, name), low, high) or Decimal(getattr(self, name)) <= low:
                raise InvalidInput(f"{name} is a decimal above {low} and at most {high} written as text, not "
                                   f"{getattr(self, name)!r}")
        if not _decimal_in(self.dp_delta, 0, 1) or not 0 < Decimal(self.dp_delta) < Decimal("0.1"):
            raise InvalidInput(f"dp_delta is a decimal above 0 and below 0.1 written as text (1e-5, say), not "
                               f"{self.dp_delta!r}")

    def _check_secure(self) -> None:
        """What a secure round can compute from a sum alone (``protocol.secure_rounds``)."""
        if self.strategy != "mean":
            raise InvalidInput(f"secure rounds merge by the mean: {self.strategy} needs each contribution's values, "
                               "which nobody may read in a secure repository")
        if self.strategy_params:
            raise InvalidInput("the mean of a secure round takes no strategy parameters")
        if self.max_staleness:
            raise InvalidInput("secure rounds take only contributions trained from the round's head (max_staleness "
                               "0): a stale one would have to be moved onto the head, which needs its values")
        if self.proof_chunk and not self.norm_bound:
            raise InvalidInput("secure merges are checked by every member re-deriving them from the masked "
                               "updates: a proof would rest on mask corrections only members can compute, so it "
                               "could convince no one else (docs: Secure rounds, Proofs and masked inputs). In a "
                               "secure repository proof_chunk goes with norm_bound: contributions prove their norm")
        if not _decimal_in(self.secure_threshold, 0, 1) or not Decimal("0.5") <= Decimal(self.secure_threshold) < 1:
            raise InvalidInput(f"secure_threshold is a decimal from 0.5 to below 1 written as text, not "
                               f"{self.secure_threshold!r}")

    def holders_needed(self, holders: int) -> int:
        """How many of a secret's ``holders`` must reveal their shares to recover it: more than
        ``secure_threshold`` of them."""
        return int(Decimal(self.secure_threshold) * holders) + 1

    def as_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["strategy_params"] = dict(self.strategy_params)
        return body

    def record(self) -> dict[str, Any]:
        """As a signed record holds it: the fields of ``_OPTIONAL`` only when set, so records made before them
        are unchanged."""
        body = self.as_dict()
        for name, unset in _OPTIONAL.items():
            if body[name] == unset:
                del body[name]
        return body

    @classmethod
    def from_dict(cls, value: Any) -> RoundPolicy:
        """From a decoded record; ``IntegrityError`` if it is not exactly a policy."""
        fields = set(cls.__dataclass_fields__)
        if not isinstance(value, dict) or not fields - set(_OPTIONAL) <= set(value) <= fields:
            raise IntegrityError(f"a round policy is a map of exactly {sorted(fields)} (the proof, privacy, dp and "
                                 "contribution_nfts fields only when set)")
        try:
            return cls(**value)
        except InvalidInput as exc:
            raise IntegrityError(f"round policy: {exc}") from None


def ranking(eligible: Sequence[PublicKey], previous: str, last_turn: Mapping[str, int] | None = None
            ) -> list[PublicKey]:
    """The aggregators of the round after merged commit ``previous``, first-ranked first.

    ``last_turn`` maps members to the last round they merged: who merged longest ago (or never) comes first, so
    the role goes round every eligible member before anyone's second turn; among equals, rendezvous hashing
    decides (highest ``sha256(previous ‖ key)`` first), so the order is unpredictable before ``previous`` exists."""
    seed, turns = previous.encode(), last_turn or {}

    def order(key: PublicKey) -> tuple[int, bytes, str]:
        return -turns.get(key, -1), hashlib.sha256(seed + public_key_bytes(key)).digest(), key

    return sorted(dict.fromkeys(eligible), key=order, reverse=True)


def filled_at(timestamps: Sequence[int], opened_ms: int, policy: RoundPolicy) -> int | None:
    """When a round that opened at ``opened_ms`` filled up, given the signed timestamps of its contributions: the
    K-th earliest (never before the round opened); None with fewer than K (``policy.buffer``)."""
    if len(timestamps) < policy.buffer:
        return None
    return max(opened_ms, sorted(timestamps)[policy.buffer - 1])


def first_window_end(opened_ms: int, policy: RoundPolicy, filled_ms: int | None = None) -> int:
    """When the first-ranked aggregator's window ends: one ``timeout`` after the round was due, at its deadline
    or when it filled up (``filled_at``), whichever came first."""
    due = opened_ms + policy.deadline_s * 1000
    if filled_ms is not None:
        due = min(due, max(opened_ms, filled_ms))
    return due + policy.timeout_s * 1000


def window(rank: int, opened_ms: int, policy: RoundPolicy, *, filled_ms: int | None = None) -> tuple[int, int]:
    """``[start, end)`` in Unix ms during which the ``rank``-th ranked aggregator (0 first) may merge, for a round
    that opened at ``opened_ms`` and filled up at ``filled_ms`` (None: not before its deadline)."""
    if rank < 0:
        raise InvalidInput("rank must be >= 0")
    first_end = first_window_end(opened_ms, policy, filled_ms)
    if rank == 0:
        return opened_ms, first_end
    start = first_end + (rank - 1) * policy.timeout_s * 1000
    return start, start + policy.timeout_s * 1000


def entitled(ranked: Sequence[PublicKey], opened_ms: int, at_ms: int, policy: RoundPolicy, *,
             filled_ms: int | None = None) -> PublicKey | None:
    """The aggregator entitled to merge at ``at_ms``: after the last window the turns cycle through ``ranked``
    again, one ``timeout`` each. None before the round opened or if nobody is eligible."""
    if not ranked or at_ms < opened_ms:
        return None
    first_end = first_window_end(opened_ms, policy, filled_ms)
    if at_ms < first_end:
        return ranked[0]
    return ranked[(1 + (at_ms - first_end) // (policy.timeout_s * 1000)) % len(ranked)]


def turn_ends(opened_ms: int, at_ms: int, policy: RoundPolicy, *, filled_ms: int | None = None) -> int:
    """When the window of whoever may merge at ``at_ms`` ends (Unix ms)."""
    first_end = first_window_end(opened_ms, policy, filled_ms)
    if at_ms < first_end:
        return first_end
    step = policy.timeout_s * 1000
    return first_end + ((at_ms - first_end) // step + 1) * step


def discount(staleness: int, alpha: str) -> Decimal:
    """``(1 + staleness)^-alpha``, to 40 significant digits in decimal arithmetic (the same everywhere)."""
    if staleness < 0:
        raise InvalidInput("staleness must be >= 0")
    return _DECIMAL.power(Decimal(1 + staleness), -Decimal(alpha))


def _is_cid(text: str) -> bool:
    try:
        schema.cid(text, "proof_srs")
    except IntegrityError:
        return False
    return True


def _decimal_in(text: object, low: int, high: int) -> bool:
    if not isinstance(text, str) or not 0 < len(text) <= 16:
        return False
    try:
        value = Decimal(text)
    except ArithmeticError:
        return False
    return value.is_finite() and low <= value <= high


def weight_counts(contributions: Sequence[tuple[int, int]], policy: RoundPolicy) -> list[int]:
    """Integer weights proportional to ``examples × (1 + staleness)^-alpha`` for ``(examples, staleness)`` pairs;
    ``InvalidInput`` if one is staler than the policy allows."""
    counts = []
    for examples, staleness in contributions:
        if not isinstance(examples, int) or examples < 0:
            raise InvalidInput(f"a contribution's examples must be a non-negative integer, not {examples!r}")
        if staleness > policy.max_staleness:
            raise InvalidInput(f"a contribution {staleness} merges behind the head is staler than the policy's "
                               f"{policy.max_staleness}")
        scaled = _DECIMAL.multiply(Decimal(examples) * discount(staleness, policy.alpha), _WEIGHT_SCALE)
        counts.append(int(scaled.to_integral_value(rounding=ROUND_FLOOR)))
    return counts


def step_weight(contributions: Sequence[tuple[int, int]], policy: RoundPolicy, whole: int) -> int:
    """How far a round merge of ``(examples, staleness)`` contributions moves from the head towards what its
    strategy gives, as an integer out of ``whole``: ``Σ examples × (1 + τ)^-α / Σ examples``, rounded down
    (``whole`` when all are fresh; the plain mean of the discounts if no contribution counts examples)."""
    if not contributions or whole < 1:
        raise InvalidInput("a step needs contributions and a positive scale")
    examples = [e for e, _ in contributions]
    counts = examples if sum(examples) else [1] * len(examples)
    discounted = sum((Decimal(n) * discount(t, policy.alpha) for n, (_, t) in zip(counts, contributions,
                                                                                     strict=True)), Decimal(0))
    fraction = _DECIMAL.divide(discounted, Decimal(sum(counts)))
    return min(whole, int(_DECIMAL.multiply(fraction, Decimal(whole)).to_integral_value(rounding=ROUND_FLOOR)))
