"""Build commit graphs from a compact description, after dulwich's ``build_commit_graph``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.identity import Identity
from ..core.ids import BranchName, CommitId
from ..storage.repo import Repository
from ..tensors.safetensors_io import StateDict


def tiny_state(seed: int) -> StateDict:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)}


def build_commit_graph(repo: Repository, identity: Identity, spec: Sequence[Sequence[int]]) -> dict[int, CommitId]:
    """Commits described by ``[[n, parent, ...], ...]``; ``[1]`` is the repository's root commit.

    Each commit ``n`` gets weights ``tiny_state(n)`` and a branch ``c<n>``; returns ``{n: commit id}``.
    """
    ids: dict[int, CommitId] = {}
    for n, *parents in spec:
        if not parents:
            if ids:
                raise ValueError("only the first commit can be a root (it is the repository's commit 0)")
            ids[n] = repo.head("main")
            repo.create_branch(identity, f"c{n}", ids[n])
            continue
        commit = repo._write_commit(  # noqa: SLF001 - the builder sets parents directly, as dulwich's does
            identity, tiny_state(n), parents=tuple(ids[p] for p in parents), kind="commit" if len(parents) == 1
            else "merge", message=f"commit {n}", meta={"examples": n}, metrics={}, branch=BranchName(f"c{n}"),
            expected=None)
        ids[n] = commit.id
    return ids
