"""The strategy interface, and the checks every strategy makes before it merges anything.

A strategy is a frozen dataclass whose fields are its parameters. ``aggregate(base, inputs, weights)`` takes
full model states (the update of input i is ``inputs[i] − base``) and integer weights summing to
``2**WEIGHT_BITS`` and returns a full model state. ``by_ranges`` takes the same inputs as mappings that may read
each tensor, or each range of one, when asked (``safetensors_io.LazyState``) and returns a function giving each
tensor of the result as ranges computed as they are read: what a round merge of models larger than memory runs
(``protocol.rounds``), holding a few ranges of each input. A rule that looks at whole updates (Krum's distances)
makes its pass over them first, a range at a time too.
``describe()`` gives what a merged commit records: the strategy's stable ``name`` and its ``params`` as
canonical-encoding-friendly values (ints and strings only: canonical records hold no floats, so a float
parameter is written as its shortest round-trip ``repr``).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch

from ...core.errors import InvalidInput, MergeError
from ...tensors.fixedpoint import WEIGHT_BITS, check_inputs
from ...tensors.safetensors_io import Ranges, StateDict, spec_of

#: Parameters per chunk: each step holds every input's slice of one chunk (n × CHUNK values) and no more.
#: Read through ``chunk_size()`` so tests can shrink it.
CHUNK = 1 << 18

#: What ``params`` and ``describe()`` hold: values the canonical encoding accepts.
ParamValue = int | str


def chunk_size() -> int:
    return CHUNK


class Strategy(ABC):
    """An aggregation rule. Subclasses are frozen dataclasses that validate their fields in ``__post_init__``."""

    name: ClassVar[str]

    def aggregate(self, base: StateDict, inputs: Sequence[StateDict], weights: Sequence[int]) -> StateDict:
        """The merged model state. Synchronous and CPU-bound: the daemon runs it in a worker thread.

        Raises ``InvalidInput`` for bad weights or too few inputs for this rule, ``MergeError`` for inputs
        whose tensors do not match the base's layout or hold NaN or infinite values.
        """
        check_weights(len(inputs), weights)
        self.check_count(len(inputs))
        check_inputs(base, inputs)
        return self._aggregate(base, list(inputs), list(weights))

    def by_ranges(self, base: Mapping[str, torch.Tensor], inputs: Sequence[Mapping[str, torch.Tensor]],
                  weights: Sequence[int]) -> Callable[[str], Ranges]:
        """``aggregate`` as a function giving the result's tensor ``name`` as ``Ranges``, each range computed from
        that range of the base and of each input (``ranges_of``: a file's bytes, or a computed input's) when it is
        read, after the rule's per-tensor decisions (which inputs changed it) and its own pass over the whole
        updates, if it has one: ``aggregate``'s bytes, holding a few ranges of each input instead of whole
        models. The inputs are mappings that may read each tensor when asked (``safetensors_io.LazyState``);
        their layouts are checked from their specs, their values as each range is computed."""
        check_weights(len(inputs), weights)
        self.check_count(len(inputs))
        check_layouts(base, inputs)
        return self._by_ranges(base, list(inputs), list(weights))

    @abstractmethod
    def _by_ranges(self, base: Mapping[str, torch.Tensor], inputs: Sequence[Mapping[str, torch.Tensor]],
                   weights: list[int]) -> Callable[[str], Ranges]: ...

    def check_count(self, n: int) -> None:
        """Raise ``InvalidInput`` unless this rule can merge ``n`` inputs (a round can ask before collecting)."""
        if n < 1:
            raise InvalidInput(f"{self.name} needs at least one input")

    @abstractmethod
    def _aggregate(self, base: StateDict, inputs: list[StateDict], weights: list[int]) -> StateDict: ...

    @property
    def params(self) -> dict[str, ParamValue]:
        values: dict[str, ParamValue] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            values[f.name] = repr(value) if isinstance(value, float) else value
        return values

    def describe(self) -> dict[str, Any]:
        """``{"name": ..., "params": {...}}``: enough for any member to rebuild this exact rule."""
        return {"name": self.name, "params": self.params}

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> Strategy:
        """The strategy with these parameters (as ``params`` writes them; floats may also be given as floats)."""
        hints = typing.get_type_hints(cls)
        fields = {f.name: hints[f.name] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(params) - fields.keys())
        if unknown:
            takes = ", ".join(sorted(fields)) or "none"
            raise InvalidInput(f"strategy {cls.name} has no parameter {unknown[0]!r} (it takes: {takes})")
        missing = sorted(f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                         if f.name not in params and f.default is dataclasses.MISSING)
        if missing:
            raise InvalidInput(f"strategy {cls.name} needs parameter {missing[0]!r}")
        values = {key: _parse(cls.name, key, fields[key], value) for key, value in params.items()}
        return cls(**values)


def _parse(strategy: str, key: str, kind: type, value: object) -> object:
    if kind is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise InvalidInput(f"strategy {strategy}: parameter {key} = {value!r} is not a number") from None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    raise InvalidInput(f"strategy {strategy}: parameter {key} must be {kind.__name__}, not {value!r}")


def require_int(strategy: str, key: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidInput(f"strategy {strategy}: {key} must be an integer >= {minimum}, not {value!r}")


def require_fraction(strategy: str, key: str, value: object, below: float) -> None:
    if not isinstance(value, float) or not math.isfinite(value) or not 0.0 <= value < below:
        raise InvalidInput(f"strategy {strategy}: {key} must be a float in [0, {below}), not {value!r}")


def check_layouts(base: Mapping[str, torch.Tensor], inputs: Sequence[Mapping[str, torch.Tensor]]) -> None:
    """``MergeError`` unless every input holds exactly the base's tensors, each of the base's shape and dtype,
    judged from their specs (a ``LazyState``'s header: no tensor is read)."""
    specs = {name: spec_of(base, name) for name in base}
    for i, state in enumerate(inputs):
        for name, spec in specs.items():
            if spec_of(state, name) != spec:
                raise MergeError(f"input {i} has no tensor {name} of the base's shape and dtype", tensor=name,
                                 input=str(i))
        extra = sorted(set(state) - specs.keys())
        if extra:
            raise MergeError(f"input {i} has tensor {extra[0]}, which is not in the base", tensor=extra[0],
                             input=str(i))


def check_weights(count: int, weights: Sequence[int]) -> None:
    if count == 0:
        raise InvalidInput("no inputs to aggregate")
    if len(weights) != count:
        raise InvalidInput(f"{count} inputs but {len(weights)} weights: give one weight per input")
    if any(not isinstance(w, int) or isinstance(w, bool) or w < 0 for w in weights):
        raise InvalidInput("weights must be integers >= 0")
    if sum(weights) != 1 << WEIGHT_BITS:
        raise InvalidInput(f"weights sum to {sum(weights)}, not 2^{WEIGHT_BITS}: derive them with normalize_weights")


def non_finite_error(name: str, slices: Sequence[torch.Tensor], indices: Sequence[int]) -> MergeError:
    """The error for a chunk found to hold NaN or infinite values, naming the first input that does."""
    for i, x in zip(indices, slices, strict=True):
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            return MergeError(f"input {i} holds NaN or infinite values in tensor {name}: it cannot be merged; "
                              "leave it out of the round", tensor=name, input=str(i))
    return MergeError(f"tensor {name} holds NaN or infinite values: it cannot be merged", tensor=name)
