"""Weights computed when each tensor is asked for: what every such mapping shares, written once.

``Mapping``'s own ``__contains__`` fetches the value to find out whether a key is there, which for these mappings
computes the tensor: merges once read every input twice that way. Importing this module imports no torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from ..core.objects import TensorSpec

if TYPE_CHECKING:
    import torch


class Computed(Mapping[str, "torch.Tensor"]):
    """Tensors computed when each is asked for (a subclass's ``__getitem__``), named and shaped as those of
    ``like``: iterating it, asking whether it holds a tensor, or for a tensor's ``spec`` computes none."""

    def __init__(self, like: Mapping[str, torch.Tensor]) -> None:
        self._like = like

    def __iter__(self) -> Iterator[str]:
        return iter(self._like)

    def __len__(self) -> int:
        return len(self._like)

    def __contains__(self, name: object) -> bool:
        return name in self._like

    def spec(self, name: str) -> TensorSpec:
        """Tensor ``name``'s spec, ``like``'s (``safetensors_io.spec_of``); ``KeyError`` if it holds none."""
        from .safetensors_io import spec_of

        spec = spec_of(self._like, name)
        if spec is None:
            raise KeyError(name)
        return spec
