"""Verbs about what is on Solana, and its proofs: ``owner``, ``registry``, ``handover``, ``verify``, ``provenance``."""

from __future__ import annotations

import argparse
from typing import Any

from ._base import Verb, repo_argument


def _owner_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("--mint", action="store_true", help="mint the repository's ownership token first (owner only)")


OWNER = Verb(
    name="owner",
    help="who owns a repository, by which token on Solana, and the handovers and membership memos",
    arguments=_owner_arguments,
    call=lambda c, a: c.call("repo.owner", repo=a.repo, mint=a.mint),
    text=lambda r, a: owner_text(r),
)


REGISTRY = Verb(
    name="registry",
    help="a repository in the flair_registry program: owner, policy, members and branch heads on chain next to "
         "this node's",
    arguments=repo_argument,
    call=lambda c, a: c.call("repo.registry", repo=a.repo),
    text=lambda r, a: registry_text(r),
)


def _handover_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("member", nargs="?", help="the new owner's public key: a current member")
    who.add_argument("--claim", metavar="SIGNATURE", help="the transaction that moved the token to this node")


HANDOVER = Verb(
    name="handover",
    help="hand a repository over: move its ownership token to a member on chain (owner), or claim a transfer this "
         "node received elsewhere",
    arguments=_handover_arguments,
    call=lambda c, a: c.call("repo.handover", repo=a.repo, member=a.member, claim=a.claim),
    text=lambda r, a: owner_text(r),
)


def _merge_commit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo")
    p.add_argument("commit", help="the round merge (id, prefix or branch)")


VERIFY = Verb(
    name="verify",
    help="whether a round merge's EZKL proofs hold: checked by this node against the published commitments, "
         "without any delta",
    arguments=_merge_commit_arguments,
    call=lambda c, a: c.call("repo.verify", repo=a.repo, commit=a.commit),
    text=lambda r, a: verify_text(r),
)

PROVENANCE = Verb(
    name="provenance",
    help="where a round merge is anchored on Solana: memo, NFT mint, transaction, explorer links",
    arguments=_merge_commit_arguments,
    call=lambda c, a: c.call("repo.provenance", repo=a.repo, commit=a.commit),
    text=lambda r, a: provenance_text(r),
)


def owner_text(r: dict[str, Any]) -> str:
    """Who owns a repository, its ownership token and where it stands on chain, the handovers and memos."""
    lines = [f"owner        {r['owner']}"]
    token = r.get("token")
    if token is None:
        return "\n".join([*lines, "token        none: the owner key in the membership chain owns the repository "
                                   "(mint one with flair owner REPO --mint)"])
    holds = {True: "held by the owner on chain", False: "NOT held by the owner on chain now: its holder publishes "
             "the handover", None: f"holder unknown ({r.get('chain_error', 'no chain.cluster')})"}
    lines += [f"token        {token['mint']}   {r.get('explorer', {}).get('mint', '')}".rstrip(),
              f"             {holds[r.get('owner_holds_token')]}; last moved by transaction "
              f"{token['transaction']} (slot {token['slot']}) on {r['cluster'] or 'no cluster configured'}"]
    for h in r["handovers"]:
        lines.append(f"handover     change {h['seq']}: to {h['to'][:8]} by transaction {h['transaction']} (slot "
                     f"{h['slot']})")
    for m in r.get("memos", []):
        failed = f" ({m['error']})" if m.get("error") and m["status"] != "anchored" else ""
        lines.append(f"memo         change {m['seq']}: {m['status']}{failed}   {m.get('explorer') or ''}".rstrip())
    return "\n".join(lines)


def registry_text(r: dict[str, Any]) -> str:
    """The repository's account in the registry program, each part compared with what this node holds."""
    lines = [f"program      {r['program']} on {r['cluster']}", f"account      {r['address']}   {r['explorer']}"]
    notice = [f"notice       {r['notice']}"] if r.get("notice") else []
    if not r["exists"]:
        return "\n".join([*lines, "             not created yet (the genesis owner's node creates it)", *notice]
                         + ([f"error        {r['error']}"] if r.get("error") else []))

    def same(ok: bool) -> str:
        return "as here" if ok else "DIFFERS from here (the owner's node brings it in line)"

    lines += [f"owner        {r['owner']}  {same(r['owner_matches'])}",
              f"policy       {same(r['policy_matches'])}",
              f"members      {len(r['members'])}, {same(r['members_match'])}"]
    for name, b in sorted(r["branches"].items()):
        known = "" if b["known_here"] else "  (a commit this node does not hold)"
        lines.append(f"branch       {name}: head {b['head'][:12]} at round {b['round']}, {b['merges']} merges "
                     f"recorded, last by {b['last_author'][:8]}{known}")
    lines += notice
    if r.get("error"):
        lines.append(f"error        {r['error']}")
    return "\n".join(lines)


def verify_text(r: dict[str, Any]) -> str:
    """Whether a round merge's proofs held, and how much of the merge they cover."""
    head = f"{r['commit'][:12]}  "
    if r["status"] == "verified":
        whole = r["chunks"] == r["total"]
        covered = (f"all {r['total']} chunks proven" if whole else
                   f"{r['chunks']} of {r['total']} chunks proven, drawn from the merge's id: a merge falsifying 1 % "
                   f"of its chunks is caught with probability {r['detection']:.4f}")
        return "\n".join([head + f"verified: the merge is the weighted sum of its contributions ({covered})",
                           f"proofs by {r['author']}: {r['proofs']} (verifying key sha256 {r['vk'][:16]}...)"])
    if r["status"] == "failed":
        return "\n".join([head + f"FAILED: {r['reason']}", f"proofs by {r['author']}: {r['proofs']}"])
    return head + f"{r['status']}: {r['reason']}"


def provenance_text(r: dict[str, Any]) -> str:
    """Where a round merge is anchored (memo, NFT mint, transaction, links), or why it is not yet."""
    head = f"{r['commit'][:12]}  "
    if r["status"] not in ("anchored", "verified"):
        why = r.get("error") or r.get("reason") or ""
        return head + f"{r['status']}" + (f": {why}" if why else "") + (
            f"\n  attempts {r['attempts']}" if r.get("attempts") else "")
    links = r.get("explorer", {})
    who = "by this node" if r["status"] == "anchored" else f"by {r['author']}, checked on chain by this node"
    return "\n".join([
        head + f"anchored on {r['cluster']} {who}",
        f"  memo         {r['memo']}",
        f"  NFT mint     {r['mint']}   {links.get('mint', '')}",
        f"  transaction  {r.get('signature', '?')}   {links.get('transaction', '')}",
        *([f"  metadata     ipfs://{r['metadata']}"] if r.get("metadata") else []),
    ])
