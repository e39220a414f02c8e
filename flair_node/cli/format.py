"""Text helpers shared by several verbs' formatters; each verb's own formatter sits beside it in ``cli/verbs/``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def when(ms: int) -> str:
    """A timestamp in milliseconds as UTC date and time (the caller writes the ``UTC``)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def status_text(r: dict[str, Any]) -> str:
    """A repository's ``repo.status``: name, owner, model, heads and how its rounds run (``status``, ``show``)."""
    lines = [f"repository {r['name']} ({r['repo']})", f"owner      {r['owner']}",
             f"model      {r['tensors']} tensors, {r['parameters']:,} parameters", f"commits    {r['commits']}"]
    if "adapter" in r:
        a = r["adapter"]
        lines.append(f"adapters   LoRA on commit {a['base_commit'][:12]} of repository {a['base_repo'][:12]}; merges "
                     f"stack up to rank {a['max_rank']}, then svd to rank {a['rank']}")
    lines.append("branches:")
    for branch, head in r["heads"].items():
        lines.append(f"  {branch:<20} {head['id'][:12]}  {head['kind']}: {head['message'].splitlines()[0]}")
    return "\n".join([*lines, "rounds:", *("  " + line for line in policy_text(r["policy"]).splitlines())])


def policy_text(p: dict[str, Any]) -> str:
    """A repository's round policy (``policy``, and the tail of ``members`` and ``status``)."""
    params = " ".join(f"{k}={v}" for k, v in sorted(p["strategy_params"].items()))
    return "\n".join([
        f"strategy       {p['strategy']}" + (f" ({params})" if params else ""),
        f"merge when     {p['buffer']} contributions wait, or {p['deadline_s']} s after the round opened",
        f"staleness      weight = examples x (1 + staleness)^-{p['alpha']}; refused beyond {p['max_staleness']}",
        f"takeover       the next-ranked aggregator after {p['timeout_s']} s more",
        "proofs         " + ("off" if not p.get("proof_chunk") else
                             f"{p['proof_scheme']} commitments to chunks of {p['proof_chunk']} values: "
                             + ("each masked update proves its norm (EZKL)" if p.get("privacy") == "secure"
                                else "merges can be proven (EZKL)")),
        "norm bound     " + (f"each contribution clipped to L2 norm {p['norm_bound']}, checked by every member"
                             if p.get("norm_bound") else "off"),
        *([f"proof SRS      {p['proof_srs']}"] if p.get("proof_srs") else []),
        *(["               a development SRS made by this node: proofs convince only who trusts it; set a "
           "production one (proofs.srs, or --proof-srs)"] if p.get("development_srs") else []),
        "NFTs           " + ("the merged commit's, and one per contribution to its contributor"
                             if p.get("contribution_nfts") else "the merged commit's"),
        "privacy        " + (f"secure: contributions are masked, members read only merges; a contributor's secrets "
                             f"are recovered from more than {p['secure_threshold']} of their holders"
                             if p.get("privacy") == "secure" else "plain: members read each contribution"),
        "diff. privacy  " + (f"each contribution clipped to L2 norm {p['dp_clip']}, plus Gaussian noise of "
                             f"{p['dp_noise']} x that; each member may spend epsilon {p['dp_epsilon']} at delta "
                             f"{p['dp_delta']}" if p.get("dp_clip") else "off"),
    ])
