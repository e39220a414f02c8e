"""A tiny model and data set for the demo and for tests: an MLP on scikit-learn's bundled 8x8 digits.

Everything here is deterministic given its seeds and needs no download: ``load_digits`` ships with
scikit-learn. The model is small enough that a few epochs on a few hundred examples take well under a second
on one CPU core.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

#: The 8x8 digits images have pixel values 0..16.
_PIXEL_MAX = 16.0
INPUTS = 64
HIDDEN = 32
CLASSES = 10


class Progress(Protocol):
    """What ``train_local`` needs of a progress bar (a ``tqdm`` instance fits)."""

    def update(self, n: float | None = 1) -> bool | None: ...

    def set_postfix(self, ordered_dict: object = None, refresh: bool | None = True, **kwargs: object) -> None: ...


def make_mlp(seed: int, hidden: int = HIDDEN) -> nn.Module:
    """A 64 -> ``hidden`` -> 10 ReLU network whose initial weights depend only on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(INPUTS, hidden), nn.ReLU(), nn.Linear(hidden, CLASSES))


def load_digits_split(seed: int = 0, test_fraction: float = 0.25,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: float32 pixels in [0, 1] and int64 labels, shuffled by ``seed``."""
    from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (got {test_fraction})")
    data = load_digits()
    x = torch.from_numpy(data.data).to(torch.float32) / _PIXEL_MAX
    y = torch.from_numpy(data.target).to(torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_test = round(len(y) * test_fraction)
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def partition(x: torch.Tensor, y: torch.Tensor, parts: int, seed: int, skew: float = 0.0,
              ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Split ``(x, y)`` into ``parts`` disjoint slices that together hold every example.

    ``skew = 0`` deals the examples out at random (IID slices of equal size, give or take one). With
    ``0 < skew <= 1`` each class ``c`` favours slice ``c % parts``: that slice receives a share
    ``skew + (1 - skew) / parts`` of the class and every other slice ``(1 - skew) / parts``, so ``skew = 1``
    puts each class wholly in one slice (the most non-IID case). Skewed slices differ in size.
    """
    if parts < 1 or parts > len(y):
        raise ValueError(f"cannot split {len(y)} examples into {parts} parts")
    if not 0.0 <= skew <= 1.0:
        raise ValueError(f"skew must be between 0 and 1 (got {skew})")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)} labels")
    g = torch.Generator().manual_seed(seed)
    if skew == 0.0:
        chunks = list(torch.randperm(len(y), generator=g).tensor_split(parts))
    else:
        buckets: list[list[torch.Tensor]] = [[] for _ in range(parts)]
        for label in torch.unique(y).tolist():
            members = torch.nonzero(y == label).flatten()
            members = members[torch.randperm(len(members), generator=g)]
            shares = torch.full((parts,), (1.0 - skew) / parts, dtype=torch.float64)
            shares[int(label) % parts] += skew
            # Cumulative rounding: the cut points never overlap and the last one is exactly len(members).
            cuts = torch.round(torch.cumsum(shares, 0) * len(members)).to(torch.int64)
            cuts[-1] = len(members)
            start = 0
            for p, end in enumerate(cuts.tolist()):
                buckets[p].append(members[start:end])
                start = end
        chunks = []
        for bucket in buckets:
            indices = torch.cat(bucket)
            chunks.append(indices[torch.randperm(len(indices), generator=g)])
    return [(x[idx], y[idx]) for idx in chunks]


def train_local(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch_size: int,
                progress: Progress | None = None, *, seed: int = 0) -> None:
    """Train ``model`` in place with Adam and cross-entropy; batches are shuffled by ``seed`` alone.

    ``progress`` (for example a ``tqdm`` bar with ``total=epochs * ceil(len(x) / batch_size)``) advances once
    per batch and shows the running loss.
    """
    if epochs < 0 or batch_size < 1 or len(x) == 0:
        raise ValueError(f"need epochs >= 0, batch_size >= 1 and some examples (got {epochs}, {batch_size}, "
                         f"{len(x)} examples)")
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    was_training = model.training
    model.train()
    try:
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=g)
            total, seen = 0.0, 0
            for batch in torch.split(order, batch_size):
                optimizer.zero_grad()
                loss = loss_fn(model(x[batch]), y[batch])
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
                seen += len(batch)
                if progress is not None:
                    progress.update(1)
            if progress is not None:
                progress.set_postfix(loss=f"{total / seen:.3f}")
    finally:
        model.train(was_training)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` that ``model`` labels correctly (0.0 for no examples)."""
    if len(y) == 0:
        return 0.0
    was_training = model.training
    model.eval()
    try:
        predicted = model(x).argmax(dim=1)
    finally:
        model.train(was_training)
    return float((predicted == y).to(torch.float64).mean())
