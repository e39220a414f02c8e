"""Verbs about whole repositories: ``repos``, ``init``, ``fsck``, ``clone``, ``pull``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ...api.client import ApiClient
from ...core.errors import FlairError
from ._base import Verb, repo_argument
from .chain import owner_text


def _repos_text(r: list[dict[str, Any]], a: argparse.Namespace) -> str:
    return "\n".join(f"{x['repo'][:12]}  {x['name']}  ({len(x['branches'])} branches, "
                     f"{x['parameters']:,} parameters)" for x in r) or "no repositories"


REPOS = Verb(
    name="repos",
    help="list the repositories on this node",
    call=lambda c, a: c.call("repo.list"),
    text=_repos_text,
)


def _init_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("--model", type=Path, required=True,
                   help="initial weights (.safetensors, or a sharded checkpoint's folder); with --base, a PEFT "
                        "adapter folder")
    p.add_argument("--base", metavar="REPO[@COMMIT]",
                   help="make a repository of LoRA adapters on this repository's model (at COMMIT, default its main "
                        "head); the repository must be on this node")
    p.add_argument("--rank", type=int, help="with --base: the rank merges re-compress to (svd) above --max-rank "
                                            "(default: the adapter's)")
    p.add_argument("--max-rank", type=int, help="with --base: the highest rank merges stack adapters to exactly "
                                                "(default 256)")
    p.add_argument("--chain", action="store_true",
                   help="also mint the repository's ownership token on Solana (chain.cluster): whoever holds it owns "
                        "the repository")


def _init(c: ApiClient, a: argparse.Namespace) -> Any:
    """``repo.init``; with ``--chain``, then ``repo.owner`` minting the token, as ``ownership`` in the result."""
    adapter: dict[str, Any] = {}
    if a.base:
        base_repo, _, base_commit = a.base.partition("@")
        adapter = {"base_repo": base_repo, **({"base_commit": base_commit} if base_commit else {}),
                   **({"rank": a.rank} if a.rank else {}), **({"max_rank": a.max_rank} if a.max_rank else {})}
    elif a.rank or a.max_rank:
        raise FlairError("--rank and --max-rank describe a repository of adapters: name its model with --base")
    r = c.call("repo.init", name=a.name, model_path=str(a.model.resolve()), **adapter)
    if not a.chain:
        return r
    try:
        owned = c.call("repo.owner", repo=r["repo"], mint=True)
    except FlairError as exc:
        raise FlairError(f"repository {r['repo']} created, but its ownership token was not minted: {exc}; "
                         f"retry with: flair owner {r['repo']} --mint") from None
    return {**r, "ownership": owned}


def _init_text(r: dict[str, Any], a: argparse.Namespace) -> str:
    return "\n".join([r["repo"], owner_text(r["ownership"])]) if a.chain else str(r["repo"])


INIT = Verb(
    name="init",
    help="create a repository; the model's weights (or with --base, a LoRA adapter) are commit 0",
    arguments=_init_arguments,
    call=_init,
    text=_init_text,
)


def _fsck_text(r: dict[str, Any], a: argparse.Namespace) -> str:
    lines = [f"checked {r['checked']} commits: " + ("no damage" if r["ok"] else f"{len(r['problems'])} problems")]
    lines += [f"  {p['object'][:12]}  {p['what']}" for p in r["problems"]]
    return "\n".join(lines)


FSCK = Verb(
    name="fsck",
    help="recompute every id, signature and block hash",
    arguments=repo_argument,
    call=lambda c, a: c.call("repo.fsck", repo=a.repo),
    text=_fsck_text,
    ok=lambda r: bool(r["ok"]),
)


def _pull_text(r: dict[str, Any], a: argparse.Namespace) -> str:
    refused = f"; refused {len(r['refused'])} records (see the daemon's log)" if r["refused"] else ""
    source = "" if a.peer else f" (from {r['peer']}, found through the DHT)"
    return (f"{r['commits']} commits, {r['changes']} membership changes; moved "
            f"{', '.join(r['moved']) or 'no branches'}{refused}{source}")


def _clone_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo", metavar="REPO_ID", help="the repository's full id")
    p.add_argument("--peer", metavar="MULTIADDR",
                   help="a member node's address, ending in /p2p/<id> (default: find one through the DHT)")


def _pull_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("--peer", metavar="MULTIADDR", help="default: a member node found through the DHT")


def _pull_call(c: ApiClient, a: argparse.Namespace) -> Any:
    return c.call("repo.pull", repo=a.repo, **({"peer": a.peer} if a.peer else {}))


# ``clone`` is ``pull`` into a node that holds nothing of the repository yet: the same call, the same answer.
CLONE = Verb(
    name="clone",
    help="copy a repository you are a member of from a member's node (every record checked)",
    arguments=_clone_arguments,
    call=_pull_call,
    text=_pull_text,
)

PULL = Verb(
    name="pull",
    help="fetch what a member's node has of a repository and this node lacks",
    arguments=_pull_arguments,
    call=_pull_call,
    text=_pull_text,
)
