"""Human-readable renderings of API results for the CLI (``--json`` prints the results themselves)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .graph import render_graph


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def commit_label(commit: dict[str, Any], tips: dict[str, list[str]]) -> str:
    refs = f" ({', '.join(tips[commit['id']])})" if commit["id"] in tips else ""
    first = commit["message"].splitlines()[0] if commit["message"] else ""
    metrics = " ".join(f"{k}={v:g}" for k, v in sorted(commit["metrics"].items()))
    return f"{commit['id'][:10]}{refs} {commit['kind']}: {first}" + (f"  [{metrics}]" if metrics else "")


def log_text(r: dict[str, Any], graph: bool) -> str:
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
        lines += [f"author: {c['author']}", f"date:   {_when(c['timestamp_ms'])} UTC", "", f"    {c['message']}"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def show_text(r: dict[str, Any]) -> str:
    lines = [f"commit {r['id']}  ({r['kind']})", f"parents:  {' '.join(p[:12] for p in r['parents']) or '-'}",
             f"author:   {r['author']}", f"date:     {_when(r['timestamp_ms'])} UTC",
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
    width = max((len(t["name"]) for t in tensors), default=6)
    lines = [f"{'tensor':<{width}}  {'L2':>12}  {'max |d|':>12}  changed"]
    lines += [f"{t['name']:<{width}}  {t['l2']:>12.6g}  {t['max_abs']:>12.6g}  {t['changed']:,}" for t in tensors]
    return "\n".join(lines)


def status_text(r: dict[str, Any]) -> str:
    lines = [f"repository {r['name']} ({r['repo']})", f"owner      {r['owner']}",
             f"model      {r['tensors']} tensors, {r['parameters']:,} parameters", f"commits    {r['commits']}",
             "branches:"]
    for branch, head in r["heads"].items():
        lines.append(f"  {branch:<20} {head['id'][:12]}  {head['kind']}: {head['message'].splitlines()[0]}")
    return "\n".join([*lines, "rounds:", *("  " + line for line in policy_text(r["policy"]).splitlines())])


def members_text(r: dict[str, Any]) -> str:
    lines = [f"{m['key']}  {m['role']:<11}" + (f"  until {_when(m['expires_ms'])}" if m["expires_ms"] else "")
             for m in r["members"]]
    lines.append(f"payload key epoch {r['epoch']} after {r['changes']} membership changes; protected branches: "
                 f"{', '.join(r['protected_branches'])}")
    if r["removed"]:
        lines.append(f"removed: {', '.join(r['removed'])}")
    return "\n".join([*lines, "", "rounds:", *("  " + line for line in policy_text(r["policy"]).splitlines())])


def policy_text(p: dict[str, Any]) -> str:
    params = " ".join(f"{k}={v}" for k, v in sorted(p["strategy_params"].items()))
    return "\n".join([
        f"strategy       {p['strategy']}" + (f" ({params})" if params else ""),
        f"merge when     {p['buffer']} contributions wait, or {p['deadline_s']} s after the round opened",
        f"staleness      weight = examples x (1 + staleness)^-{p['alpha']}; refused beyond {p['max_staleness']}",
        f"takeover       the next-ranked aggregator after {p['timeout_s']} s more",
        "proofs         " + (f"{p['proof_scheme']} commitments to chunks of {p['proof_chunk']} values: merges can be "
                             "proven (EZKL)" if p.get("proof_chunk") else "off"),
        *([f"proof SRS      {p['proof_srs']}"] if p.get("proof_srs") else []),
        *(["               a development SRS made by this node: proofs convince only who trusts it; set a "
           "production one (proofs.srs, or --proof-srs)"] if p.get("development_srs") else []),
        "NFTs           " + ("the merged commit's, and one per contribution to its contributor"
                             if p.get("contribution_nfts") else "the merged commit's"),
    ])


def verify_text(r: dict[str, Any]) -> str:
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


def owner_text(r: dict[str, Any]) -> str:
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


def round_text(r: dict[str, Any]) -> str:
    policy = r["policy"]
    lines = [f"round {r['round']} of {r['branch']}, opened {_when(r['opened_ms'])} UTC at {r['head'][:12]}",
             f"aggregator now: {r['aggregator'] or 'nobody (no member may move the branch)'}",
             f"ranked:         {' '.join(k[:8] for k in r['ranked'])}",
             f"pending:        {len(r['pending'])} of {policy['buffer']} contributions"
             + ("; ready to merge" if r["ready"] else f"; merges at {policy['buffer']} or "
                f"{_when(r['opened_ms'] + policy['deadline_s'] * 1000)} UTC")]
    lines += [f"  {c['commit'][:12]}  by {c['author'][:8]}  {c['examples']} examples, staleness {c['staleness']}"
              for c in r["pending"]]
    return "\n".join(lines)


def peers_text(p2p: dict[str, Any]) -> str:
    lines = [f"this node: {addr}" for addr in p2p["addrs"]]
    for peer in p2p["peers"]:
        who = f"member key {peer['key']}" if peer["key"] else "no Ed25519 key"
        lines.append(f"{peer['peer']}  {who}  {' '.join(peer['addrs'][:2])}")
    return "\n".join(lines) if p2p["peers"] else "\n".join([*lines, "no peers connected"])


def node_text(r: dict[str, Any], *, bad_input: bool) -> str:
    p2p = r["p2p"]
    counts, gossip = p2p["announcements"], p2p["gossip"].get("bad_peers", {})
    lines = [f"node {r['public_key']}: {r['repositories']} repositories, {len(p2p['peers'])} peers, "
             f"topics {len(p2p['topics'])}",
             "announcements: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) if counts
             else "announcements: none yet",
             f"refused: {p2p['refused_blocks']} blocks, {sum(p2p['bad_announcements'].values())} announcements, "
             f"{sum(gossip.values())} gossip frames or messages, {sum(p2p.get('bad_pulls', {}).values())} pulls"]
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
