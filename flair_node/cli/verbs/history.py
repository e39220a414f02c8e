"""Verbs that write or read a repository's history: ``commit``, ``log``, ``show``, ``diff``, ``checkout``."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from ...api.client import ApiClient
from ...core.errors import FlairError
from ..format import status_text, when
from ..log_graph import render_graph
from ._base import CODECS, Verb, add_codec, id_text


def _commit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("--weights", type=Path, required=True,
                   help="new weights (.safetensors, or a sharded checkpoint's folder; a PEFT adapter folder in a "
                        "repository of adapters)")
    p.add_argument("-m", "--message", required=True)
    p.add_argument("--branch", default="main")
    p.add_argument("--examples", type=int, default=0, help="number of local training examples")
    p.add_argument("--metric", action="append", default=[], metavar="NAME=VALUE", help="a metric (repeatable)")
    add_codec(p)
    p.add_argument("--topk-ratio", type=float, default=0.01, help="share of each tensor topk keeps (default 0.01)")


def _commit(c: ApiClient, a: argparse.Namespace) -> Any:
    return c.call("repo.commit", repo=a.repo, weights_path=str(a.weights.resolve()), message=a.message,
                  branch=a.branch, examples=a.examples, metrics=metrics(a.metric), codec=CODECS[a.codec],
                  topk_ratio=a.topk_ratio)


COMMIT = Verb(
    name="commit",
    help="commit new weights on a branch (the delta against its head is stored)",
    arguments=_commit_arguments,
    call=_commit,
    text=id_text,
)


def metrics(pairs: list[str]) -> dict[str, float]:
    """``--metric NAME=VALUE`` options as a dict of numbers; anything else is refused before the call."""
    found = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            if not sep:
                raise ValueError
            found[name] = float(value)
        except ValueError:
            raise FlairError(f"--metric {pair!r} is not NAME=NUMBER") from None
    return found


def _log_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("--branch", help="start from this branch or commit (default: every branch)")
    p.add_argument("--graph", action="store_true", help="draw the commit graph")
    p.add_argument("-n", "--limit", type=int, default=1000)


LOG = Verb(
    name="log",
    help="show the history",
    arguments=_log_arguments,
    call=lambda c, a: c.call("repo.log", repo=a.repo, branch=a.branch, limit=a.limit),
    text=lambda r, a: log_text(r, a.graph),
)


def _show_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("commit", nargs="?")


def _show(c: ApiClient, a: argparse.Namespace) -> Any:
    if a.commit is None:
        return c.call("repo.status", repo=a.repo)
    return c.call("repo.show", repo=a.repo, commit=a.commit)


SHOW = Verb(
    name="show",
    help="show one commit and what it changed; without a commit, the repository and its round policy",
    arguments=_show_arguments,
    call=_show,
    text=lambda r, a: status_text(r) if a.commit is None else show_text(r),
)


def _diff_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("a")
    p.add_argument("b")


DIFF = Verb(
    name="diff",
    help="per-tensor change from A to B",
    arguments=_diff_arguments,
    call=lambda c, a: c.call("repo.diff", repo=a.repo, a=a.a, b=a.b),
    text=lambda r, a: diff_text(r["tensors"]) + f"\ntotal L2 {r['total_l2']:.6g}",
)


def _checkout_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("commit")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="the .safetensors file to write (with --shard-size, the folder; for an adapter, the PEFT "
                        "folder)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite the output file (write into a folder "
                   "that is not empty)")
    p.add_argument("--shard-size", type=size_arg, default=None, metavar="SIZE",
                   help="write a Hugging Face sharded checkpoint: shards of at most SIZE (e.g. 5GB, 500MB) and "
                        "model.safetensors.index.json")
    p.add_argument("--merged", action="store_true",
                   help="an adapter's: write the base model's weights with the adapter merged in")


def size_arg(text: str) -> int:
    """``5GB``, ``500MB``, ``64KiB`` or a number of bytes (decimal units are 10^3 apart, binary ones 2^10)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(?:([KMGT])(I?)B?|B?)", text.strip(), re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: a number, then B, KB, MB, GB, TB, KiB, MiB, GiB "
                                         "or TiB")
    number, prefix, binary = match.groups()
    power = "KMGT".index(prefix.upper()) + 1 if prefix else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


CHECKOUT = Verb(
    name="checkout",
    help="write a commit's weights to a safetensors file, or a sharded checkpoint's folder",
    arguments=_checkout_arguments,
    call=lambda c, a: c.call("repo.checkout", repo=a.repo, commit=a.commit, output_path=str(a.output.resolve()),
                             overwrite=a.force, **({} if a.shard_size is None else {"shard_size": a.shard_size}),
                             **({"merged": True} if a.merged else {})),
    text=lambda r, a: f"wrote {r['path']} ({r['bytes']:,} bytes) from {r['commit'][:12]}",
)


def commit_label(commit: dict[str, Any], tips: dict[str, list[str]]) -> str:
    """One line for a commit in ``log --graph``: short id, the branches ending there, kind, subject, metrics."""
    refs = f" ({', '.join(tips[commit['id']])})" if commit["id"] in tips else ""
    first = commit["message"].splitlines()[0] if commit["message"] else ""
    shown = " ".join(f"{k}={v:g}" for k, v in sorted(commit["metrics"].items()))
    return f"{commit['id'][:10]}{refs} {commit['kind']}: {first}" + (f"  [{shown}]" if shown else "")


def log_text(r: dict[str, Any], graph: bool) -> str:
    """A ``repo.log`` answer git style: one block per commit, or with ``graph`` one line each beside the graph."""
    tips: dict[str, list[str]] = {}
    for branch, head in r["branches"].items():
        tips.setdefault(head, []).append(branch)
    if graph:
        return "\n".join(render_graph(r["commits"], lambda c: commit_label(c, tips)))
    blocks = []
    for c in r["commits"]:
        lines = [f"commit {c['id']}" + (f" ({', '.join(tips[c['id']])})" if c["id"] in tips else "")]
        if len(c["parents"]) > 1:
            lines.append("merge:  " + " ".join(p[:10] for p in c["parents"]))
        lines += [f"author: {c['author']}", f"date:   {when(c['timestamp_ms'])} UTC", "", f"    {c['message']}"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def show_text(r: dict[str, Any]) -> str:
    """One commit: its header, metadata, metrics, message, then its per-tensor change."""
    lines = [f"commit {r['id']}  ({r['kind']})", f"parents:  {' '.join(p[:12] for p in r['parents']) or '-'}",
             f"author:   {r['author']}", f"date:     {when(r['timestamp_ms'])} UTC",
             f"payload:  {r['payload']['codec']} {r['payload']['size']:,} bytes ({r['payload']['cid']})"]
    for key, value in sorted(r["meta"].items()):
        lines.append(f"{key + ':':<10}{value}")
    if r["metrics"]:
        lines.append("metrics:  " + " ".join(f"{k}={v:g}" for k, v in sorted(r["metrics"].items())))
    lines += ["", f"    {r['message']}", ""]
    if r["changes"]:
        lines.append(diff_text(r["changes"]))
    return "\n".join(lines)


def diff_text(tensors: list[dict[str, Any]]) -> str:
    """A table of per-tensor changes: L2 norm, largest absolute change, number of values changed; or, for a
    tensor added, removed or of another shape or dtype, what it was and is."""
    width = max((len(t["name"]) for t in tensors), default=6)
    lines = [f"{'tensor':<{width}}  {'L2':>12}  {'max |d|':>12}  changed"]
    for t in tensors:
        if t["change"] == "values":
            lines.append(f"{t['name']:<{width}}  {t['l2']:>12.6g}  {t['max_abs']:>12.6g}  {t['changed']:,}")
        else:
            lines.append(f"{t['name']:<{width}}  {t['change']}: {_spec_text(t['before'])} -> {_spec_text(t['after'])}")
    return "\n".join(lines)


def _spec_text(spec: list[Any] | None) -> str:
    return "none" if spec is None else f"{spec[0]} {tuple(spec[1])}"
