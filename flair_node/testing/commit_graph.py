"""Build commit graphs from a compact description, after dulwich's ``build_commit_graph``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from ..core.identity import Identity
from ..core.ids import BranchName, CommitId
from ..core.round_rules import RoundPolicy
from ..storage.repo import Repository
from ..tensors.safetensors_io import StateDict


def tiny_state(seed: int) -> StateDict:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)}


def make_secure(repo: Repository, owner: Identity, contributors: Iterable[Identity],
                readers: Iterable[Identity] = ()) -> Repository:
    """``repo``, owned by ``owner``, with ``contributors`` and ``readers`` invited and secure rounds on."""
    for member in contributors:
        repo.invite(owner, member.public_key, "contributor")
    for member in readers:
        repo.invite(owner, member.public_key, "reader")
    repo.set_policy(owner, RoundPolicy(privacy="secure", max_staleness=0))
    return repo


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
