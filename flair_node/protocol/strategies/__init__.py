"""Aggregation strategies: how a round's aggregator merges the contributions into one model state.

    strategy = build_strategy("krum", {"byzantine": 1, "keep": 3})
    merged = strategy.aggregate(base, inputs, weights)     # synchronous: run it in a worker thread
    record = strategy.describe()                           # {"name": "krum", "params": {"byzantine": 1, "keep": 3}}
    assert build_strategy(record["name"], record["params"]) == strategy

``inputs`` are full model states (input i's update is ``inputs[i] − base``); ``weights`` are integers summing to
2^WEIGHT_BITS (``fixedpoint.normalize_weights`` of examples × staleness); the result is a full model state whose
bytes are the same on every machine, whatever the thread counts or chunk size, so every member can re-derive a
merge and compare. One strategy per module:

    mean           Flair's exact fixed-point weighted mean (the default)          mean.py
    median         coordinate-wise median (Flower's aggregate_median)             median.py
    trimmed_mean   coordinate-wise trimmed mean (aggregate_trimmed_avg)           trimmed_mean.py
    krum           Krum / Multi-Krum (aggregate_krum)                             krum.py
    bulyan         Bulyan over Krum (aggregate_bulyan)                            bulyan.py

Shared parts: ``_base`` (the interface and input checks), ``_order`` (chunked coordinate-wise order statistics),
``_kernels`` (the numba kernels, and why their results never depend on threads or chunking).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ...core.errors import InvalidInput
from ._base import Strategy as Strategy
from .bulyan import Bulyan as Bulyan
from .krum import Krum as Krum
from .mean import Mean as Mean
from .median import Median as Median
from .trimmed_mean import TrimmedMean as TrimmedMean

#: Every strategy by its stable name (the name merged commits record).
STRATEGIES: Mapping[str, type[Strategy]] = MappingProxyType(
    {cls.name: cls for cls in (Mean, Median, TrimmedMean, Krum, Bulyan)})

#: What a round uses unless the repository's policy says otherwise.
DEFAULT: Strategy = Mean()


def build_strategy(name: str, params: Mapping[str, object] | None = None) -> Strategy:
    """The strategy ``name`` with ``params`` (as ``describe()`` records them); ``InvalidInput`` for an unknown
    name, an unknown or missing parameter, or a bad value."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise InvalidInput(f"unknown aggregation strategy {name!r}: use one of {', '.join(sorted(STRATEGIES))}")
    if params is not None and not isinstance(params, Mapping):
        raise InvalidInput(f"parameters of strategy {name} must be a map, not {type(params).__name__}")
    return cls.from_params(params or {})


__all__ = ["DEFAULT", "STRATEGIES", "Bulyan", "Krum", "Mean", "Median", "Strategy", "TrimmedMean", "build_strategy"]
