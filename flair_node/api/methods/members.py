"""``repo.*`` about who may do what: the members and their roles, inviting and removing one, and the round
policy the owner sets."""

from __future__ import annotations

from typing import Any

from ...core.cid import RAW, cid_for
from ...core.membership import INVITABLE
from ...core.round_rules import PRIVACY, PROOF_SCHEMES, RoundPolicy
from ..context import ApiContext
from ..dispatch import MethodTable, Param
from ..files import input_path
from ..params import MEMBER, OBJECT, PATH, REPO
from ..views import members_json

methods = MethodTable()


@methods.method("repo.members", "A repository's members, their roles, and its payload key epoch; with differential "
                "privacy, what each member's contributions have spent of its budget (dp_spent).",
                params=(REPO,), result=OBJECT)
async def repo_members(ctx: ApiContext, repo: str) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        from ...protocol import dp

        r = ctx.repos.open(repo)
        shown = members_json(r.members.current())
        if r.members.current().policy.dp:  # what each has spent of its privacy budget
            shown["dp_spent"] = dp.spent_by_member(r, ctx.round_memory)
        return shown

    return await ctx.off_thread(work)


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


DP_TEXT = {"type": "string", "maxLength": 16}
#: Stands for the SRS a policy will name when it is checked before the SRS is chosen and stored.
_ANY_CID = cid_for(RAW, b"")


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
                  "contribution to its contributor", required=False, default=None),
            Param("privacy", {"enum": list(PRIVACY)}, "plain: members read each contribution; secure: "
                  "contributions are masked and members, the aggregator included, read only merges (see the secure "
                  "rounds design page). Switching to secure without max_staleness sets it to 0 (secure rounds take "
                  "only fresh contributions); switching to plain without secure_threshold resets it to 0.5",
                  required=False, default=None),
            Param("secure_threshold", {"type": "string", "maxLength": 16}, "with secure: a contributor's secrets "
                  "are recovered from more than this fraction of the members holding shares of them, decimal text "
                  "(from 0.5 to below 1; higher resists more colluding members, tolerates fewer absent ones)",
                  required=False, default=None),
            Param("dp_clip", DP_TEXT, "differential privacy: the L2 norm each contribution's whole update is "
                  "clipped to, decimal text; set the four dp_ fields together, each \"\" to turn it off",
                  required=False, default=None),
            Param("dp_noise", DP_TEXT, "differential privacy: the noise multiplier z (Gaussian noise of standard "
                  "deviation z x dp_clip on every value), decimal text", required=False, default=None),
            Param("dp_delta", DP_TEXT, "differential privacy: the delta the privacy loss is accounted at, "
                  "decimal text below 0.1 (1e-5, say)", required=False, default=None),
            Param("dp_epsilon", DP_TEXT, "differential privacy: each member's budget, the epsilon all its "
                  "contributions to this repository may spend, decimal text", required=False, default=None),
            Param("norm_bound", DP_TEXT, "the L2 norm each contribution's update is clipped to, which every "
                  "member checks (with secure, through an EZKL proof: needs proof_chunk with kzg), decimal text; "
                  "\"\" to turn it off", required=False, default=None)),
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
        merged = {**before.as_dict(), **_switch_defaults(before, given), **given}
        development = False
        if not merged["proof_chunk"]:
            merged.update(proof_scheme="", proof_srs="")
        else:
            merged["proof_scheme"] = merged["proof_scheme"] or "kzg"
        # refuse a policy no SRS would mend before making or storing one: the check commits with poseidon, which
        # needs none (norm proofs need kzg: an SRS is then assumed)
        RoundPolicy(**{**merged, **({"proof_scheme": "poseidon", "proof_srs": ""} if merged["proof_chunk"] else {}),
                       **({"proof_scheme": "kzg", "proof_srs": merged["proof_srs"] or _ANY_CID}
                          if merged["norm_bound"] and merged["proof_chunk"] else {})})
        build_strategy(merged["strategy"], merged["strategy_params"])  # refuse what no node could run
        if merged["proof_chunk"]:
            if srs_file is not None or not before.proof_srs or merged["proof_chunk"] != before.proof_chunk \
                    or merged["proof_scheme"] != before.proof_scheme:
                path, development = circuits.choose_srs(
                    merged["proof_chunk"], merged["proof_scheme"],
                    given=input_path(srs_file, "proof_srs_file") if srs_file is not None else None,
                    configured=ctx.proof_srs, development=ctx.development_folder())
                merged["proof_srs"] = circuits.add_srs(r.blocks, path.read_bytes())
        shown = r.set_policy(ctx.identity, RoundPolicy(**merged)).policy.as_dict()
        return {**shown, "development_srs": True} if development else shown

    return await ctx.changing(work)


def _switch_defaults(before: RoundPolicy, given: dict[str, Any]) -> dict[str, Any]:
    """The fields a call changes unless it gives them: another strategy starts with no parameters (the old
    one's would not fit it); a secure policy refuses stale contributions (``max_staleness`` 0), a plain one any
    ``secure_threshold`` but the default."""
    changed: dict[str, Any] = {}
    if given.get("strategy", before.strategy) != before.strategy:
        changed["strategy_params"] = {}
    privacy = given.get("privacy", before.privacy)
    if privacy != before.privacy:
        changed.update({"max_staleness": 0} if privacy == "secure" else
                       {"secure_threshold": RoundPolicy.secure_threshold})
    return changed
