"""``flair``: the git-like command line. It talks to the daemon only through the JSON-RPC API."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..api.client import ApiClient
from ..core.errors import FlairError
from .format import (
    diff_text,
    log_text,
    members_text,
    node_text,
    owner_text,
    peers_text,
    policy_text,
    provenance_text,
    registry_text,
    round_text,
    show_text,
    status_text,
    verify_text,
)

CODECS = {"exact": "bitdelta-v1", "float16": "float16-v1", "int8": "int8-v1", "topk": "topk-v1"}


def _parser() -> argparse.ArgumentParser:
    # --home and --json may come before or after the verb; after it they must not reset what came before.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", type=Path, default=argparse.SUPPRESS,
                        help="node home of the daemon to talk to (default: $FLAIR_HOME)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print machine-readable JSON")

    parser = argparse.ArgumentParser(prog="flair", description="Version control for models trained together.",
                                     parents=[common])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common])

    verb("whoami", "print this node's public key (peer id, commit author, Solana address)")
    verb("repos", "list the repositories on this node")

    p = verb("init", "create a repository; the model's weights are commit 0")
    p.add_argument("name")
    p.add_argument("--model", type=Path, required=True, help="initial weights (.safetensors)")
    p.add_argument("--chain", action="store_true",
                   help="also mint the repository's ownership token on Solana (chain.cluster): whoever holds it owns "
                        "the repository")

    p = verb("owner", "who owns a repository, by which token on Solana, and the handovers and membership memos")
    p.add_argument("repo")
    p.add_argument("--mint", action="store_true", help="mint the repository's ownership token first (owner only)")

    p = verb("registry", "a repository in the flair_registry program: owner, policy, members and branch heads on "
                         "chain next to this node's")
    p.add_argument("repo")

    p = verb("handover", "hand a repository over: move its ownership token to a member on chain (owner), or claim "
                         "a transfer this node received elsewhere")
    p.add_argument("repo")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("member", nargs="?", help="the new owner's public key: a current member")
    who.add_argument("--claim", metavar="SIGNATURE", help="the transaction that moved the token to this node")

    p = verb("commit", "commit new weights on a branch (the delta against its head is stored)")
    p.add_argument("repo")
    p.add_argument("--weights", type=Path, required=True, help="new weights (.safetensors)")
    p.add_argument("-m", "--message", required=True)
    p.add_argument("--branch", default="main")
    p.add_argument("--examples", type=int, default=0, help="number of local training examples")
    p.add_argument("--metric", action="append", default=[], metavar="NAME=VALUE", help="a metric (repeatable)")
    p.add_argument("--codec", default="exact", choices=list(CODECS),
                   help="exact (default), or lossy to save bytes: float16, int8, topk")
    p.add_argument("--topk-ratio", type=float, default=0.01, help="share of each tensor topk keeps (default 0.01)")

    p = verb("contribute", "contribute trained weights to a branch's rounds (the aggregator of a round merges them)")
    p.add_argument("repo")
    p.add_argument("--weights", type=Path, required=True, help="trained weights (.safetensors)")
    p.add_argument("--examples", type=int, required=True, help="number of local training examples")
    p.add_argument("--branch", default="main", help="the branch whose rounds it joins (default main)")
    p.add_argument("--base", metavar="REV", help="the commit training started from (default: the branch head)")
    p.add_argument("-m", "--message", default="")
    p.add_argument("--codec", default="exact", choices=list(CODECS),
                   help="exact (default), or lossy to save bytes: float16, int8, topk")

    p = verb("train", "run a training script on a branch's head here, and contribute what it returns to the rounds")
    p.add_argument("repo")
    p.add_argument("--script", type=Path, required=True,
                   help="a Python file defining train(weights) -> (trained weights, number of examples)")
    p.add_argument("--function", default="train", help="the function to call (default train)")
    p.add_argument("--branch", default="main")
    p.add_argument("--codec", default="exact", choices=list(CODECS),
                   help="exact (default), or lossy to save bytes: float16, int8, topk")

    p = verb("round", "a branch's current round: status (who aggregates, what waits) or merge (as its aggregator)")
    p.add_argument("action", choices=["status", "merge"])
    p.add_argument("repo")
    p.add_argument("--branch", default="main")

    p = verb("verify", "whether a round merge's EZKL proofs hold: checked by this node against the published "
                       "commitments, without any delta")
    p.add_argument("repo")
    p.add_argument("commit", help="the round merge (id, prefix or branch)")

    p = verb("provenance", "where a round merge is anchored on Solana: memo, NFT mint, transaction, explorer links")
    p.add_argument("repo")
    p.add_argument("commit", help="the round merge (id, prefix or branch)")

    p = verb("log", "show the history")
    p.add_argument("repo")
    p.add_argument("--branch", help="start from this branch or commit (default: every branch)")
    p.add_argument("--graph", action="store_true", help="draw the commit graph")
    p.add_argument("-n", "--limit", type=int, default=1000)

    p = verb("show", "show one commit and what it changed; without a commit, the repository and its round policy")
    p.add_argument("repo")
    p.add_argument("commit", nargs="?")

    p = verb("diff", "per-tensor change from A to B")
    p.add_argument("repo")
    p.add_argument("a")
    p.add_argument("b")

    p = verb("status", "branches, heads and layout of a repository; without one, this node's network")
    p.add_argument("repo", nargs="?")
    p.add_argument("--peers", action="store_true", help="also what each peer sent that was refused")

    verb("peers", "this node's addresses and the peers it is connected to")

    p = verb("branch", "list branches, or create one")
    p.add_argument("repo")
    p.add_argument("name", nargs="?")
    p.add_argument("--at", help="commit or branch to start the new branch at (default: main)")

    p = verb("reset", "point an existing branch at another commit (like git branch -f)")
    p.add_argument("repo")
    p.add_argument("branch")
    p.add_argument("commit")

    p = verb("checkout", "write a commit's weights to a safetensors file")
    p.add_argument("repo")
    p.add_argument("commit")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("-f", "--force", action="store_true", help="overwrite the output file")

    p = verb("merge", "merge branches or commits into a branch")
    p.add_argument("repo")
    p.add_argument("sources", nargs="+", metavar="SRC")
    p.add_argument("--into", required=True, help="branch receiving the merge commit")
    p.add_argument("--strategy", default="mean", choices=["mean", "task-arithmetic", "average"],
                   help="mean (weighted by examples; average is its older name) or task-arithmetic")
    p.add_argument("-m", "--message")

    p = verb("revert", "commit the undoing of a commit's change")
    p.add_argument("repo")
    p.add_argument("commit")
    p.add_argument("--branch", default="main")
    p.add_argument("-m", "--message")

    p = verb("fsck", "recompute every id, signature and block hash")
    p.add_argument("repo")

    verb("gc", "delete the blocks that no commit of a local repository reaches")

    p = verb("clone", "copy a repository you are a member of from a member's node (every record checked)")
    p.add_argument("repo", metavar="REPO_ID", help="the repository's full id")
    p.add_argument("--peer", required=True, metavar="MULTIADDR", help="the node's address, ending in /p2p/<id>")

    p = verb("pull", "fetch what a member's node has of a repository and this node lacks")
    p.add_argument("repo")
    p.add_argument("--peer", required=True, metavar="MULTIADDR")

    p = verb("members", "list a repository's members and their roles")
    p.add_argument("repo")

    p = verb("invite", "grant a public key a role (owner only); every payload key so far is sealed to it")
    p.add_argument("repo")
    p.add_argument("member", metavar="PUBKEY", help="the member's public key (their `flair whoami`)")
    p.add_argument("--role", default="contributor", choices=["reader", "contributor", "maintainer"])
    p.add_argument("--expires-days", type=float, default=0.0, metavar="DAYS",
                   help="the role lapses after this many days (default: never)")

    p = verb("remove", "remove a member (owner only); later payloads are sealed with a key they never get")
    p.add_argument("repo")
    p.add_argument("member", metavar="PUBKEY")

    p = verb("policy", "show how rounds run in a repository, or set it (owner only; unset options keep their value)")
    p.add_argument("repo")
    p.add_argument("--strategy", help="aggregation strategy: mean (default), median, trimmed_mean, krum, bulyan")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a strategy parameter (repeat for several; fractions as decimals, e.g. 0.2)")
    p.add_argument("--buffer", type=int, metavar="K", help="merge once K contributions wait ...")
    p.add_argument("--deadline", type=int, metavar="SECONDS", help="... or this long after the round opened")
    p.add_argument("--alpha", metavar="A", help="staleness exponent: weight = examples x (1 + staleness)^-A")
    p.add_argument("--max-staleness", type=int, metavar="N", help="refuse contributions more than N merges behind")
    p.add_argument("--timeout", type=int, metavar="SECONDS", help="how long each aggregator has before the next")
    p.add_argument("--proof-chunk", type=int, metavar="N", help="0: merges are not proven; N: contributions and "
                                                                "merges commit to chunks of N values for EZKL proofs")
    p.add_argument("--proof-scheme", choices=("kzg", "poseidon"),
                   help="how chunks are committed: kzg (default; fast proofs) or poseidon (~30x slower to prove)")
    p.add_argument("--proof-srs", type=Path, metavar="FILE",
                   help="the SRS file members accept for proofs (default: the node's proofs.srs, else a development "
                        "SRS made here); members fetch it from this node, the policy names its CID")
    p.add_argument("--contribution-nfts", choices=("on", "off"),
                   help="with anchoring on, also mint one NFT per merged contribution to its contributor")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.home = getattr(args, "home", None)
    args.json = getattr(args, "json", False)
    try:
        client = _client(args.home)
        result, text = _dispatch(client, args)
    except FlairError as exc:
        if args.json:
            print(json.dumps({"error": {"code": exc.code, "message": exc.message, "data": exc.data}}))
        else:
            print(f"flair: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    elif text:
        print(text)
    if args.verb == "fsck" and not result["ok"]:
        return 1
    return 0


def _client(home: Path | None) -> ApiClient:
    return ApiClient.from_home(_home(home))


def _home(home: Path | None) -> Path:
    if home is not None:
        return Path(home)
    env = os.environ.get("FLAIR_HOME")
    if not env:
        raise FlairError("pass --home DIR or set FLAIR_HOME to the daemon's home")
    return Path(env)


def _metrics(pairs: list[str]) -> dict[str, float]:
    metrics = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            if not sep:
                raise ValueError
            metrics[name] = float(value)
        except ValueError:
            raise FlairError(f"--metric {pair!r} is not NAME=NUMBER") from None
    return metrics


def _dispatch(c: ApiClient, a: argparse.Namespace) -> tuple[Any, str]:
    if a.verb == "whoami":
        r = c.call("node.whoami")
        return r, r["public_key"]
    if a.verb == "repos":
        r = c.call("repo.list")
        return r, "\n".join(f"{x['repo'][:12]}  {x['name']}  ({len(x['branches'])} branches, "
                            f"{x['parameters']:,} parameters)" for x in r) or "no repositories"
    if a.verb == "init":
        r = c.call("repo.init", name=a.name, model_path=str(a.model.resolve()))
        if not a.chain:
            return r, r["repo"]
        try:
            owned = c.call("repo.owner", repo=r["repo"], mint=True)
        except FlairError as exc:
            raise FlairError(f"repository {r['repo']} created, but its ownership token was not minted: {exc}; "
                             f"retry with: flair owner {r['repo']} --mint") from None
        return {**r, "ownership": owned}, "\n".join([r["repo"], owner_text(owned)])
    if a.verb == "owner":
        r = c.call("repo.owner", repo=a.repo, mint=a.mint)
        return r, owner_text(r)
    if a.verb == "registry":
        r = c.call("repo.registry", repo=a.repo)
        return r, registry_text(r)
    if a.verb == "handover":
        r = c.call("repo.handover", repo=a.repo, member=a.member, claim=a.claim)
        return r, owner_text(r)
    if a.verb == "commit":
        r = c.call("repo.commit", repo=a.repo, weights_path=str(a.weights.resolve()), message=a.message,
                   branch=a.branch, examples=a.examples, metrics=_metrics(a.metric), codec=CODECS[a.codec],
                   topk_ratio=a.topk_ratio)
        return r, r["id"]
    if a.verb == "contribute":
        r = c.call("repo.contribute", repo=a.repo, weights_path=str(a.weights.resolve()), examples=a.examples,
                   branch=a.branch, base=a.base, message=a.message, codec=CODECS[a.codec])
        return r, r["id"]
    if a.verb == "train":
        from .train import train

        r = train(c, _home(a.home), a.repo, a.script.resolve(), branch=a.branch, function=a.function,
                  codec=CODECS[a.codec])
        return r, f"{r['id']}  contributed to {a.branch} ({r['examples']} examples, from {r['base'][:12]})"
    if a.verb == "round" and a.action == "status":
        r = c.call("round.status", repo=a.repo, branch=a.branch)
        return r, round_text(r)
    if a.verb == "round":
        r = c.call("round.merge", repo=a.repo, branch=a.branch)
        return r, f"{r['id']}  round {r['meta']['round']} of {a.branch}: {len(r['parents']) - 1} contributions"
    if a.verb == "verify":
        r = c.call("repo.verify", repo=a.repo, commit=a.commit)
        return r, verify_text(r)
    if a.verb == "provenance":
        r = c.call("repo.provenance", repo=a.repo, commit=a.commit)
        return r, provenance_text(r)
    if a.verb == "log":
        r = c.call("repo.log", repo=a.repo, branch=a.branch, limit=a.limit)
        return r, log_text(r, a.graph)
    if a.verb == "show" and a.commit is None:
        r = c.call("repo.status", repo=a.repo)
        return r, status_text(r)
    if a.verb == "show":
        r = c.call("repo.show", repo=a.repo, commit=a.commit)
        return r, show_text(r)
    if a.verb == "diff":
        r = c.call("repo.diff", repo=a.repo, a=a.a, b=a.b)
        return r, diff_text(r["tensors"]) + f"\ntotal L2 {r['total_l2']:.6g}"
    if a.verb == "status" and a.repo:
        r = c.call("repo.status", repo=a.repo)
        return r, status_text(r)
    if a.verb in ("status", "peers"):
        r = c.call("node.status")
        if "p2p" not in r:
            raise FlairError("the daemon runs no peer-to-peer services")
        return r, (node_text(r, bad_input=a.peers) if a.verb == "status" else peers_text(r["p2p"]))
    if a.verb == "branch":
        r = c.call("repo.branch", repo=a.repo, name=a.name, at=a.at)
        if a.name:
            return r, f"created branch {r['created']} at {r['head'][:12]}"
        return r, "\n".join(f"  {b:<24} {h[:12]}" for b, h in r["branches"].items())
    if a.verb == "reset":
        r = c.call("repo.reset", repo=a.repo, branch=a.branch, commit=a.commit)
        return r, f"{r['branch']}: {r['previous'][:12]} -> {r['head'][:12]}"
    if a.verb == "checkout":
        r = c.call("repo.checkout", repo=a.repo, commit=a.commit, output_path=str(a.output.resolve()),
                   overwrite=a.force)
        return r, f"wrote {r['path']} ({r['bytes']:,} bytes) from {r['commit'][:12]}"
    if a.verb == "merge":
        r = c.call("repo.merge", repo=a.repo, sources=a.sources, into=a.into, strategy=a.strategy,
                   message=a.message)
        return r, r["id"]
    if a.verb == "revert":
        r = c.call("repo.revert", repo=a.repo, commit=a.commit, branch=a.branch, message=a.message)
        return r, r["id"]
    if a.verb == "fsck":
        r = c.call("repo.fsck", repo=a.repo)
        lines = [f"checked {r['checked']} commits: " + ("no damage" if r["ok"] else f"{len(r['problems'])} problems")]
        lines += [f"  {p['object'][:12]}  {p['what']}" for p in r["problems"]]
        return r, "\n".join(lines)
    if a.verb in ("clone", "pull"):
        r = c.call("repo.pull", repo=a.repo, peer=a.peer)
        refused = f"; refused {len(r['refused'])} records (see the daemon's log)" if r["refused"] else ""
        return r, (f"{r['commits']} commits, {r['changes']} membership changes; moved "
                   f"{', '.join(r['moved']) or 'no branches'}{refused}")
    if a.verb == "members":
        r = c.call("repo.members", repo=a.repo)
        return r, members_text(r)
    if a.verb == "invite":
        if a.expires_days < 0:
            raise FlairError("--expires-days must be positive")
        expires_ms = int((time.time() + a.expires_days * 86400) * 1000) if a.expires_days else 0
        r = c.call("repo.invite", repo=a.repo, member=a.member, role=a.role, expires_ms=expires_ms)
        return r, members_text(r)
    if a.verb == "remove":
        r = c.call("repo.remove", repo=a.repo, member=a.member)
        return r, members_text(r)
    if a.verb == "policy":
        fields = {"strategy": a.strategy, "buffer": a.buffer, "deadline_s": a.deadline, "alpha": a.alpha,
                  "max_staleness": a.max_staleness, "timeout_s": a.timeout, "proof_chunk": a.proof_chunk,
                  "proof_scheme": a.proof_scheme,
                  "contribution_nfts": None if a.contribution_nfts is None else a.contribution_nfts == "on",
                  "proof_srs_file": str(a.proof_srs.resolve()) if a.proof_srs else None}
        if a.param:
            fields["strategy_params"] = dict(_param(text) for text in a.param)
        r = c.call("repo.policy", repo=a.repo, **{k: v for k, v in fields.items() if v is not None})
        return r, policy_text(r)
    if a.verb == "gc":
        r = c.call("node.gc")
        return r, f"kept {r['blocks_kept']} pinned blocks, removed {r['blocks_removed']} unpinned"
    raise FlairError(f"unknown verb {a.verb}")


def _param(text: str) -> tuple[str, int | bool | str]:
    """``NAME=VALUE`` as a strategy parameter: whole numbers and true/false typed, anything else kept as text."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise FlairError(f"--param {text!r}: write NAME=VALUE")
    if value in ("true", "false"):
        return name, value == "true"
    return name, int(value) if value.lstrip("-").isdigit() else value


if __name__ == "__main__":
    sys.exit(main())
