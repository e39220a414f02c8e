"""Verbs about this node itself: ``whoami``, ``status``, ``peers``, ``gc``."""

from __future__ import annotations

import argparse
from typing import Any

from ...api.client import ApiClient
from ...core.errors import FlairError
from ..format import status_text, when
from ._base import Verb

WHOAMI = Verb(
    name="whoami",
    help="print this node's member key (the author of its commits; its peer id and its wallets are keys of their own)",
    call=lambda c, a: c.call("node.whoami"),
    text=lambda r, a: str(r["public_key"]),
)


def _node_status(c: ApiClient) -> Any:
    """``node.status``, which ``status`` and ``peers`` read only for its peer-to-peer part."""
    r = c.call("node.status")
    if "p2p" not in r:
        raise FlairError("the daemon runs no peer-to-peer services")
    return r


def _status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo", nargs="?")
    p.add_argument("--peers", action="store_true", help="also what each peer sent that was refused")


def _status(c: ApiClient, a: argparse.Namespace) -> Any:
    return c.call("repo.status", repo=a.repo) if a.repo else _node_status(c)


def _status_text(r: dict[str, Any], a: argparse.Namespace) -> str:
    return status_text(r) if a.repo else node_text(r, bad_input=a.peers)


STATUS = Verb(
    name="status",
    help="branches, heads and layout of a repository; without one, this node's network",
    arguments=_status_arguments,
    call=_status,
    text=_status_text,
)

PEERS = Verb(
    name="peers",
    help="this node's addresses and the peers it is connected to",
    call=lambda c, a: _node_status(c),
    text=lambda r, a: peers_text(r["p2p"]),
)

GC = Verb(
    name="gc",
    help="delete the blocks that no commit of a local repository reaches",
    call=lambda c, a: c.call("node.gc"),
    text=lambda r, a: f"kept {r['blocks_kept']} pinned blocks, removed {r['blocks_removed']} unpinned",
)


def peers_text(p2p: dict[str, Any]) -> str:
    """This node's addresses and reachability, then each connected peer with its member key, its connections'
    kinds (direct, relayed, hole-punched) and their addresses."""
    lines = [f"this node: {addr}" for addr in p2p["addrs"]]
    reach = p2p.get("reachability")
    if reach:
        lines.append(f"reachability: {reach['reachability']}; published as: {' '.join(reach['addresses']) or '-'}")
    for peer in p2p["peers"]:
        who = f"member key {peer['key']}" if peer["key"] else "member key unknown (no repository in common)"
        connections = peer.get("connections") or [{"kind": "direct", "addrs": peer["addrs"][:2]}]
        how = ", ".join(f"{c['kind']} {' '.join(c['addrs'][:1])}".strip() for c in connections)
        lines.append(f"{peer['peer']}  {who}  {how}")
    return "\n".join(lines) if p2p["peers"] else "\n".join([*lines, "no peers connected"])


def node_text(r: dict[str, Any], *, bad_input: bool) -> str:
    """The network's health: peers, announcements, what was refused; with ``bad_input``, who sent it."""
    p2p = r["p2p"]
    counts, gossip = p2p["announcements"], p2p["gossip"].get("bad_peers", {})
    lines = [f"node {r['public_key']}: {r['repositories']} repositories, {len(p2p['peers'])} peers, "
             f"topics {len(p2p['topics'])}",
             "announcements: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) if counts
             else "announcements: none yet",
             f"refused: {p2p['refused_blocks']} blocks, {sum(p2p['bad_announcements'].values())} announcements, "
             f"{sum(gossip.values())} gossip frames or messages, {sum(p2p.get('bad_pulls', {}).values())} pulls"]
    found = p2p.get("discovery")
    if found:
        lines.append(f"discovery: DHT {found['mode']}, {found['routing_table']} peers in its table, "
                     f"{found['published']} locators published")
        lines.extend(f"  {d['repo'][:10]}: found {len(d['found'])} nodes, dialled {len(d['dialled'])} "
                     f"({when(d['at_ms'])} UTC)" for d in found["discovered"][-5:])
    if p2p.get("duplicate_blocks"):  # blocks that came twice (two peers asked for one): bandwidth, not an offence
        lines.append(f"duplicate blocks: {p2p['duplicate_blocks']} ({p2p['duplicate_bytes'] / 1e6:.1f} MB)")
    refused = p2p.get("refused_merges", [])
    if refused:
        lines.append(f"round merges not followed: {counts.get('refused_merges', len(refused))}; the latest:")
        lines.extend(f"  {m['commit'][:10]} on {m['branch']} by {m['author'][:10]}: {m['reason']}"
                     for m in refused[-3:])
    proofs = r.get("proofs", {})
    if any(proofs.get(k) for k in ("proven", "prove_failed", "verified", "failed")):
        lines.append(f"merge proofs: {proofs.get('proven', 0)} made here ({proofs.get('prove_failed', 0)} failed), "
                     f"{proofs.get('verified', 0)} verified, {proofs.get('failed', 0)} did not hold (see the log)")
    if bad_input:
        blocks = {peer: rec["refused_blocks"] + rec["malformed_messages"] for peer, rec in p2p["bitswap_peers"].items()}
        pulls = p2p.get("bad_pulls", {})
        for peer in sorted(set(blocks) | set(p2p["bad_announcements"]) | set(gossip) | set(pulls)):
            lines.append(f"  {peer}  bad blocks/messages {blocks.get(peer, 0)}, bad announcements "
                         f"{p2p['bad_announcements'].get(peer, 0)}, bad gossip {gossip.get(peer, 0)}, "
                         f"bad pulls {pulls.get(peer, 0)}")
    return "\n".join(lines)
