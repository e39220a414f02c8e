"""Verbs that create or move branches: ``branch``, ``reset``, ``merge``, ``revert``."""

from __future__ import annotations

import argparse
from typing import Any

from ._base import Verb, id_text


def _branch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("name", nargs="?")
    p.add_argument("--at", help="commit or branch to start the new branch at (default: main)")


def _branch_text(r: dict[str, Any], a: argparse.Namespace) -> str:
    if a.name:
        return f"created branch {r['created']} at {r['head'][:12]}"
    return "\n".join(f"  {b:<24} {h[:12]}" for b, h in r["branches"].items())


BRANCH = Verb(
    name="branch",
    help="list branches, or create one",
    arguments=_branch_arguments,
    call=lambda c, a: c.call("repo.branch", repo=a.repo, name=a.name, at=a.at),
    text=_branch_text,
)


def _reset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("branch")
    p.add_argument("commit")


RESET = Verb(
    name="reset",
    help="point an existing branch at another commit (like git branch -f)",
    arguments=_reset_arguments,
    call=lambda c, a: c.call("repo.reset", repo=a.repo, branch=a.branch, commit=a.commit),
    text=lambda r, a: f"{r['branch']}: {r['previous'][:12]} -> {r['head'][:12]}",
)


def _merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("sources", nargs="+", metavar="SRC")
    p.add_argument("--into", required=True, help="branch receiving the merge commit")
    p.add_argument("--strategy", default="mean", choices=["mean", "task-arithmetic", "average"],
                   help="mean (weighted by examples; average is its older name) or task-arithmetic")
    p.add_argument("-m", "--message")


MERGE = Verb(
    name="merge",
    help="merge branches or commits into a branch",
    arguments=_merge_arguments,
    call=lambda c, a: c.call("repo.merge", repo=a.repo, sources=a.sources, into=a.into, strategy=a.strategy,
                             message=a.message),
    text=id_text,
)


def _revert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("commit")
    p.add_argument("--branch", default="main")
    p.add_argument("-m", "--message")


REVERT = Verb(
    name="revert",
    help="commit the undoing of a commit's change",
    arguments=_revert_arguments,
    call=lambda c, a: c.call("repo.revert", repo=a.repo, commit=a.commit, branch=a.branch, message=a.message),
    text=id_text,
)
