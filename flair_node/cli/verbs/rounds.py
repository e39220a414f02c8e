"""Verbs that take part in a branch's rounds: ``contribute``, ``train``, ``round``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ...api.client import ApiClient
from ..format import when
from ..train import train
from ._base import CODECS, Verb, add_codec, id_text, node_home


def _contribute_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("--weights", type=Path, required=True,
                   help="trained weights (.safetensors; a PEFT adapter folder in a repository of adapters)")
    p.add_argument("--examples", type=int, required=True, help="number of local training examples")
    p.add_argument("--branch", default="main", help="the branch whose rounds it joins (default main)")
    p.add_argument("--base", metavar="REV", help="the commit training started from (default: the branch head)")
    p.add_argument("-m", "--message", default="")
    add_codec(p)


CONTRIBUTE = Verb(
    name="contribute",
    help="contribute trained weights to a branch's rounds (the aggregator of a round merges them)",
    arguments=_contribute_arguments,
    call=lambda c, a: c.call("repo.contribute", repo=a.repo, weights_path=str(a.weights.resolve()),
                             examples=a.examples, branch=a.branch, base=a.base, message=a.message,
                             codec=CODECS[a.codec]),
    text=id_text,
)


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("--script", type=Path, required=True,
                   help="a Python file defining train(weights) -> (trained weights, number of examples)")
    p.add_argument("--function", default="train", help="the function to call (default train)")
    p.add_argument("--branch", default="main")
    add_codec(p)


def _train(c: ApiClient, a: argparse.Namespace) -> Any:
    """Runs the user's script in this process (``cli/train.py``): it needs the home to read the weights."""
    return train(c, node_home(a.home), a.repo, a.script.resolve(), branch=a.branch, function=a.function,
                 codec=CODECS[a.codec])


TRAIN = Verb(
    name="train",
    help="run a training script on a branch's head here, and contribute what it returns to the rounds",
    arguments=_train_arguments,
    call=_train,
    text=lambda r, a: f"{r['id']}  contributed to {a.branch} ({r['examples']} examples, from {r['base'][:12]})",
)


def _round_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["status", "merge"])
    p.add_argument("repo")
    p.add_argument("--branch", default="main")


def _round(c: ApiClient, a: argparse.Namespace) -> Any:
    method = "round.status" if a.action == "status" else "round.merge"
    return c.call(method, repo=a.repo, branch=a.branch)


def _round_text(r: dict[str, Any], a: argparse.Namespace) -> str:
    if a.action == "status":
        return round_text(r)
    return f"{r['id']}  round {r['meta']['round']} of {a.branch}: {len(r['parents']) - 1} contributions"


ROUND = Verb(
    name="round",
    help="a branch's current round: status (who aggregates, what waits) or merge (as its aggregator)",
    arguments=_round_arguments,
    call=_round,
    text=_round_text,
)


def round_text(r: dict[str, Any]) -> str:
    """A round's state: when it opened, who aggregates now and next, what waits, when it merges."""
    policy = r["policy"]
    lines = [f"round {r['round']} of {r['branch']}, opened {when(r['opened_ms'])} UTC at {r['head'][:12]}",
             f"aggregator now: {r['aggregator'] or 'nobody (no member may move the branch)'}",
             f"ranked:         {' '.join(k[:8] for k in r['ranked'])}"]
    if "secure" in r:
        return "\n".join(lines + secure_lines(r["secure"], policy) + dp_lines(r))
    lines.append(f"pending:        {len(r['pending'])} of {policy['buffer']} contributions"
                 + ("; ready to merge" if r["ready"] else f"; merges at {policy['buffer']} or "
                    f"{when(r['opened_ms'] + policy['deadline_s'] * 1000)} UTC"))
    lines += [f"  {c['commit'][:12]}  by {c['author'][:8]}  {c['examples']} examples, staleness {c['staleness']}"
              for c in r["pending"]]
    return "\n".join(lines + dp_lines(r))


def dp_lines(r: dict[str, Any]) -> list[str]:
    """What each member has spent of its privacy budget (``round.status``'s ``dp_spent``), if the policy sets one."""
    if "dp_spent" not in r:
        return []
    policy = r["policy"]
    return [f"privacy spent:  of a budget of epsilon {policy['dp_epsilon']} per member at delta {policy['dp_delta']}",
            *(f"  {key[:8]}  epsilon {spent['epsilon']} ({spent['contributions']} contributions)"
              for key, spent in r["dp_spent"].items())]


def secure_lines(s: dict[str, Any], policy: dict[str, Any]) -> list[str]:
    """A secure round's progress (``round.status``'s ``secure``), phase by phase, and what a stalled one waits
    for."""
    roster = f"{s['roster'][:12]}, taking {s['taken']} adverts" if s["roster"] else "not yet"
    lines = [f"adverts:        {s['adverts']} of {policy['buffer']} (masked contributions, none readable)",
             f"roster:         {roster}",
             f"masked:         {s['masked']}",
             f"unmask:         {s['unmask'][:12] if s['unmask'] else 'not yet'}; {s['reveals']} reveals"]
    if s["waiting_here"]:
        lines.append(f"yours waiting:  {', '.join(a[:12] for a in s['waiting_here'])}")
    for gap in s.get("recovering", []):
        lines.append(f"  {gap['secret']} of {gap['author'][:8]}: {gap['revealed']} of {gap['needed']} shares "
                     f"revealed; not yet from {' '.join(k[:8] for k in gap['silent'])}")
    return lines
