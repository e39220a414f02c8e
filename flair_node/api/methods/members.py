"""``repo.*`` about who may do what: the members and their roles, inviting and removing one, and the round
policy the owner sets."""

from __future__ import annotations

from typing import Any

from ...core.membership import INVITABLE
from ...core.round_rules import PROOF_SCHEMES, RoundPolicy
from ..context import ApiContext
from ..dispatch import MethodTable, Param
from ..files import input_path
from ..params import MEMBER, OBJECT, PATH, REPO
from ..views import members_json

methods = MethodTable()


@methods.method("repo.members", "A repository's members, their roles, and its payload key epoch.",
                params=(REPO,), result=OBJECT)
async def repo_members(ctx: ApiContext, repo: str) -> dict[str, Any]:
    return await ctx.off_thread(lambda: members_json(ctx.repos.open(repo).members.current()))


@methods.method(
    "repo.invite", "Grant a public key a role, sealing every payload key so far to it (owner only).",
    params=(REPO, MEMBER,
            Param("role", {"type": "string", "enum": list(INVITABLE)}, "reader, contributor or maintainer",
                  required=False, default="contributor"),
            Param("expires_ms", {"type": "integer", "minimum": 0}, "when the role lapses (Unix ms); 0: never",
                  required=False, default=0)),
    result=OBJECT)
async def repo_invite(ctx: ApiContext, repo: str, member: str, role: str, expires_ms: int) -> dict[str, Any]:
    return await ctx.changing(lambda: members_json(ctx.repos.open(repo).invite(ctx.identity, member, role,
                                                                               expires_ms=expires_ms)))


@methods.method("repo.remove",
                "Remove a member; later payloads are sealed with a new key they never get (owner only).",
                params=(REPO, MEMBER), result=OBJECT)
async def repo_remove(ctx: ApiContext, repo: str, member: str) -> dict[str, Any]:
    return await ctx.changing(lambda: members_json(ctx.repos.open(repo).remove(ctx.identity, member)))


@methods.method(
    "repo.policy", "A repository's round policy; with any field given, set it (owner only): the fields not "
    "given keep their current value.",
    params=(REPO,
            Param("strategy", {"type": "string", "maxLength": 64}, "aggregation strategy", required=False,
                  default=None),
            Param("strategy_params", {"type": "object"}, "the strategy's parameters (at most 16; "
                  "numbers with a fraction as decimal text)", required=False, default=None),
            Param("buffer", {"type": "integer", "minimum": 1}, "K: merge once this many contributions wait",
                  required=False, default=None),
            Param("deadline_s", {"type": "integer", "minimum": 1}, "... or this long after the round opened",
                  required=False, default=None),
            Param("alpha", {"type": "string", "maxLength": 16}, "staleness exponent, decimal text",
                  required=False, default=None),
            Param("max_staleness", {"type": "integer", "minimum": 0}, "merges behind the head a "
                  "contribution may be based", required=False, default=None),
            Param("timeout_s", {"type": "integer", "minimum": 1}, "how long each aggregator has before the "
                  "next takes over", required=False, default=None),
            Param("proof_chunk", {"type": "integer", "minimum": 0}, "0: merges are not proven; N: contributions "
                  "and merges commit to chunks of N values, so merges can be proven (needs the mean)",
                  required=False, default=None),
            Param("proof_scheme", {"enum": list(PROOF_SCHEMES)}, "how chunks are committed: kzg (default) or "
                  "poseidon (no SRS needed to commit, ~30x slower to prove)", required=False, default=None),
            Param("proof_srs_file", PATH, "absolute path of the SRS file members accept (default: the node's "
                  "proofs.srs, else a development SRS made here); the node stores it as blocks members fetch, "
                  "and the policy names its CID", required=False, default=None),
            Param("contribution_nfts", {"type": "boolean"}, "with anchoring on, also mint one NFT per merged "
                  "contribution to its contributor", required=False, default=None)),
    result=OBJECT)
async def repo_policy(ctx: ApiContext, repo: str, **fields: Any) -> dict[str, Any]:
    given = {k: v for k, v in fields.items() if v is not None}
    if not given:
        return await ctx.off_thread(lambda: ctx.repos.open(repo).members.current().policy.as_dict())

    def work() -> dict[str, Any]:
        from ...protocol.proofs import circuits
        from ...protocol.strategies import build_strategy  # loads torch: not while the daemon idles

        r = ctx.repos.open(repo)
        srs_file = given.pop("proof_srs_file", None)
        before = r.members.current().policy
        merged = {**before.as_dict(), **given}
        development = False
        if not merged["proof_chunk"]:
            merged.update(proof_scheme="", proof_srs="")
        else:
            merged["proof_scheme"] = merged["proof_scheme"] or "kzg"
            if srs_file is not None or not before.proof_srs or merged["proof_chunk"] != before.proof_chunk \
                    or merged["proof_scheme"] != before.proof_scheme:
                path, development = circuits.choose_srs(
                    merged["proof_chunk"], merged["proof_scheme"],
                    given=input_path(srs_file, "proof_srs_file") if srs_file is not None else None,
                    configured=ctx.proof_srs, development=ctx.development_folder())
                merged["proof_srs"] = circuits.add_srs(r.blocks, path.read_bytes())
        policy = RoundPolicy(**merged)
        build_strategy(policy.strategy, policy.strategy_params)  # refuse what no node could run
        shown = r.set_policy(ctx.identity, policy).policy.as_dict()
        return {**shown, "development_srs": True} if development else shown

    return await ctx.changing(work)
