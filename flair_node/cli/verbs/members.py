"""Verbs about who may do what, and how rounds run: ``members``, ``invite``, ``remove``, ``policy``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ...api.client import ApiClient
from ...core.errors import FlairError
from ..format import policy_text, when
from ._base import Verb, repo_argument

MEMBERS = Verb(
    name="members",
    help="list a repository's members and their roles",
    arguments=repo_argument,
    call=lambda c, a: c.call("repo.members", repo=a.repo),
    text=lambda r, a: members_text(r),
)


def _invite_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("member", metavar="PUBKEY", help="the member's public key (their `flair whoami`)")
    p.add_argument("--role", default="contributor", choices=["reader", "contributor", "maintainer"])
    p.add_argument("--expires-days", type=float, default=0.0, metavar="DAYS",
                   help="the role lapses after this many days (default: never)")


def _invite(c: ApiClient, a: argparse.Namespace) -> Any:
    if a.expires_days < 0:
        raise FlairError("--expires-days must be positive")
    expires_ms = int((time.time() + a.expires_days * 86400) * 1000) if a.expires_days else 0
    return c.call("repo.invite", repo=a.repo, member=a.member, role=a.role, expires_ms=expires_ms)


INVITE = Verb(
    name="invite",
    help="grant a public key a role (owner only); every payload key so far is sealed to it",
    arguments=_invite_arguments,
    call=_invite,
    text=lambda r, a: members_text(r),
)


def _remove_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("member", metavar="PUBKEY")


REMOVE = Verb(
    name="remove",
    help="remove a member (owner only); later payloads are sealed with a key they never get",
    arguments=_remove_arguments,
    call=lambda c, a: c.call("repo.remove", repo=a.repo, member=a.member),
    text=lambda r, a: members_text(r),
)


def _policy_arguments(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--privacy", choices=("plain", "secure"),
                   help="plain: members read each contribution; secure: contributions are masked and members, the "
                        "aggregator included, read only merges (switching to it sets --max-staleness 0 unless given)")
    p.add_argument("--secure-threshold", metavar="F",
                   help="with secure: a contributor's secrets are recovered from more than this fraction of the "
                        "members holding shares of them (0.5 to below 1; higher resists more colluding members, "
                        "tolerates fewer absent ones)")
    dp = p.add_argument_group("differential privacy (set all four together; see docs: Differential privacy)")
    dp.add_argument("--dp-clip", metavar="C", help="clip each contribution's whole update to this L2 norm")
    dp.add_argument("--dp-noise", metavar="Z", help="noise multiplier: Gaussian noise of standard deviation Z x C "
                                                    "on every value")
    dp.add_argument("--dp-delta", metavar="D", help="the delta the privacy loss is accounted at (1e-5, say)")
    dp.add_argument("--dp-epsilon", metavar="E", help="each member's budget: the epsilon its contributions to this "
                                                      "repository may spend in all")
    dp.add_argument("--no-dp", action="store_true", help="turn differential privacy off")
    p.add_argument("--norm-bound", metavar="B",
                   help="clip each contribution's update to this L2 norm, which every member checks (with --privacy "
                        "secure, through an EZKL proof with every masked update: needs --proof-chunk, kzg)")
    p.add_argument("--no-norm-bound", action="store_true", help="turn norm proofs off")


def _policy(c: ApiClient, a: argparse.Namespace) -> Any:
    """``repo.policy`` with only the options given: the daemon keeps the value of every other one."""
    fields = {"strategy": a.strategy, "buffer": a.buffer, "deadline_s": a.deadline, "alpha": a.alpha,
              "max_staleness": a.max_staleness, "timeout_s": a.timeout, "proof_chunk": a.proof_chunk,
              "proof_scheme": a.proof_scheme,
              "contribution_nfts": None if a.contribution_nfts is None else a.contribution_nfts == "on",
              "proof_srs_file": str(a.proof_srs.resolve()) if a.proof_srs else None, "privacy": a.privacy,
              "secure_threshold": a.secure_threshold, "dp_clip": a.dp_clip, "dp_noise": a.dp_noise,
              "dp_delta": a.dp_delta, "dp_epsilon": a.dp_epsilon}
    if a.no_dp:
        if any(fields[name] for name in ("dp_clip", "dp_noise", "dp_delta", "dp_epsilon")):
            raise FlairError("--no-dp turns differential privacy off; it takes no --dp-* value")
        fields.update(dp_clip="", dp_noise="", dp_delta="", dp_epsilon="")
    fields["norm_bound"] = a.norm_bound
    if a.no_norm_bound:
        if a.norm_bound:
            raise FlairError("--no-norm-bound turns norm proofs off; it takes no --norm-bound")
        fields["norm_bound"] = ""
    if a.param:
        fields["strategy_params"] = dict(strategy_param(text) for text in a.param)
    return c.call("repo.policy", repo=a.repo, **{k: v for k, v in fields.items() if v is not None})


POLICY = Verb(
    name="policy",
    help="show how rounds run in a repository, or set it (owner only; unset options keep their value)",
    arguments=_policy_arguments,
    call=_policy,
    text=lambda r, a: policy_text(r),
)


def strategy_param(text: str) -> tuple[str, int | bool | str]:
    """``NAME=VALUE`` as a strategy parameter: whole numbers and true/false typed, anything else kept as text."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise FlairError(f"--param {text!r}: write NAME=VALUE")
    if value in ("true", "false"):
        return name, value == "true"
    return name, int(value) if value.lstrip("-").isdigit() else value


def members_text(r: dict[str, Any]) -> str:
    """Members with their roles and expiries, the payload key's epoch, the removed, then the round policy."""
    spent = r.get("dp_spent", {})
    budget = r["policy"].get("dp_epsilon")
    lines = [f"{m['key']}  {m['role']:<11}" + (f"  until {when(m['expires_ms'])}" if m["expires_ms"] else "")
             + (f"  epsilon {spent[m['key']]['epsilon'] if m['key'] in spent else '0'} of {budget} spent"
                f" ({spent.get(m['key'], {}).get('contributions', 0)} contributions)" if budget else "")
             for m in r["members"]]
    lines.append(f"payload key epoch {r['epoch']} after {r['changes']} membership changes; protected branches: "
                 f"{', '.join(r['protected_branches'])}")
    if r["removed"]:
        lines.append(f"removed: {', '.join(r['removed'])}")
    return "\n".join([*lines, "", "rounds:", *("  " + line for line in policy_text(r["policy"]).splitlines())])
