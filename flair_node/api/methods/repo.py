"""``repo.*`` for whole repositories and new work: listing, creating, committing, contributing to rounds,
pulling from a peer, status and fsck.

Weights never travel inside requests: ``repo.init``, ``repo.commit`` and ``repo.contribute`` name a safetensors
file (absolute path) the daemon reads (``api.files``), or in a repository of LoRA adapters a PEFT adapter folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ...core.errors import FlairError, InvalidInput
from ...core.ids import CommitId, is_full_id
from ...core.objects import MAX_ADAPTER_RANK
from ...core.refs import DEFAULT_BRANCH
from ...storage import adapters
from ...storage.repo import EXACT_CODECS, Repository
from ...tensors.codec_params import DEFAULT_TOPK_RATIO
from ..context import ApiContext
from ..dispatch import MethodTable, Param
from ..files import is_adapter, open_weights, read_adapter, read_weights
from ..params import (
    ARRAY,
    BRANCH,
    CODEC,
    COMMIT_RESULT,
    EXAMPLES,
    ID,
    MESSAGE,
    OBJECT,
    PATH,
    PEER,
    REPO,
)
from ..views import commit_json, main_layout, repo_json

if TYPE_CHECKING:
    import torch

    from ...tensors.safetensors_file import Source
    from ...tensors.safetensors_io import StateDict

methods = MethodTable()


@methods.method("repo.list", "Every repository on this node.", result=ARRAY)
async def repo_list(ctx: ApiContext) -> list[dict[str, Any]]:
    return await ctx.off_thread(lambda: [repo_json(r) for r in ctx.repos.all()])


_RANK = {"type": "integer", "minimum": 1, "maximum": MAX_ADAPTER_RANK}


@methods.method(
    "repo.init", "Create a repository whose commit 0 is the given model's weights; or, with base_repo, a repository "
    "of LoRA adapters on a commit of that repository, whose commit 0 is the given PEFT adapter.",
    params=(Param("name", ID, "repository name"),
            Param("model_path", PATH, "absolute path of a .safetensors file with the initial weights (a sharded "
                  "checkpoint's folder or index; with base_repo, a PEFT adapter folder)"),
            Param("base_repo", ID, "the repository (held here) whose model the adapters adapt", required=False,
                  default=None),
            Param("base_commit", ID, "the commit of base_repo they adapt (default: its main head)", required=False,
                  default=None),
            Param("rank", _RANK, "the rank merges re-compress to above max_rank (default: the adapter's)",
                  required=False, default=None),
            Param("max_rank", _RANK, "the highest rank merges stack to exactly (default 256)", required=False,
                  default=None)),
    result=OBJECT)
async def repo_init(ctx: ApiContext, name: str, model_path: str, base_repo: str | None, base_commit: str | None,
                    rank: int | None, max_rank: int | None) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        if base_repo is not None:
            repo = ctx.repos.create_adapter(name, read_adapter(model_path, "adapter"), base_repo, base_commit,
                                            rank=rank, max_rank=max_rank)
        elif is_adapter(model_path):
            raise InvalidInput(f"{model_path} is a PEFT adapter: name the repository whose model it adapts "
                               "(base_repo; flair init --base REPO[@COMMIT])", path=model_path)
        else:
            if base_commit is not None or rank is not None or max_rank is not None:
                raise InvalidInput("base_commit, rank and max_rank describe an adapter repository: name its "
                                   "base_repo too")
            with open_weights(model_path, "model") as source:
                repo = ctx.repos.create(name, source)
        return {**repo_json(repo), "commit": repo.head(DEFAULT_BRANCH)}

    return await ctx.changing(work)


@methods.method(
    "repo.commit", "Commit new weights on a branch: the delta against its head is stored.",
    params=(REPO,
            Param("weights_path", PATH, "absolute path of a .safetensors file with the new weights"),
            MESSAGE,
            replace(BRANCH, description="branch to commit on"),
            replace(EXAMPLES, required=False, default=0),
            Param("metrics", {"type": "object", "additionalProperties": {"type": "number"}},
                  "metrics to record, name -> number", required=False, default=None),
            Param("expected_head", ID, "refuse unless the branch is still at this commit", required=False,
                  default=None),
            CODEC,
            Param("topk_ratio", {"type": "number", "minimum": 1e-6, "maximum": 1},
                  "share of each tensor's elements topk-v1 keeps", required=False, default=DEFAULT_TOPK_RATIO)),
    result=COMMIT_RESULT)
async def repo_commit(ctx: ApiContext, repo: str, weights_path: str, message: str, branch: str, examples: int,
                      metrics: dict[str, float] | None, expected_head: str | None, codec: str,
                      topk_ratio: float) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        r = ctx.repos.open(repo)
        expected = r.resolve(expected_head) if expected_head else None
        refuse_adapter(r, weights_path)
        if r.record.adapter is not None:
            commit = r.commit_weights(ctx.identity, adapter_state(r, weights_path), message=message, branch=branch,
                                      examples=examples, metrics=metrics, expected_head=expected, codec=codec,
                                      topk_ratio=topk_ratio)
        elif codec == EXACT_CODECS[0]:  # streamed from the file, piece by piece
            with open_weights(weights_path, "weights") as source:
                commit = r.commit_weights(ctx.identity, source, message=message, branch=branch,
                                          examples=examples, metrics=metrics, expected_head=expected)
        else:
            commit = r.commit_weights(ctx.identity, read_weights(weights_path, "weights"), message=message,
                                      branch=branch, examples=examples, metrics=metrics, expected_head=expected,
                                      codec=codec, topk_ratio=topk_ratio)
        return {**commit_json(commit), "branch": branch}

    return await ctx.changing(work)


@methods.method(
    "repo.contribute", "Contribute weights trained from a commit of a branch to its rounds: stored as the "
    "delta against that commit on this member's contrib/<branch>/<key> branch, for the round's aggregator; in a "
    "repository with secure rounds, kept on this node and advertised to the round instead (the result is the "
    "advert, kind advert), then masked when the round's roster takes it.",
    params=(REPO,
            Param("weights_path", PATH, "absolute path of a .safetensors file with the trained weights"),
            EXAMPLES,
            replace(BRANCH, description="branch whose rounds it joins"),
            Param("base", ID, "the commit the training started from (default: the branch head)", required=False,
                  default=None),
            replace(MESSAGE, description="a note on the contribution", required=False, default=""),
            CODEC),
    result=COMMIT_RESULT)
async def repo_contribute(ctx: ApiContext, repo: str, weights_path: str, examples: int, branch: str,
                          base: str | None, message: str, codec: str) -> dict[str, Any]:
    from ...protocol import rounds, secure_node

    def work() -> dict[str, Any]:
        r = ctx.repos.open(repo)
        start = r.resolve(base) if base is not None else r.head(branch)
        rounds.staleness(r, branch, start)  # refuse now what no round would take
        refuse_adapter(r, weights_path)
        policy = r.members.current().policy
        if r.record.adapter is not None:
            adapters.check_policy(policy)
            return publish(ctx, r, adapter_state(r, weights_path), start, branch, examples, message, codec)
        if policy.privacy == "secure":  # masked, never a commit every member decrypts
            if codec not in EXACT_CODECS:
                raise InvalidInput(f"a secure round masks the exact change: it takes no {codec} codec")
            weights = read_weights(weights_path, "weights")
            advert = secure_node.contribute(r, ctx.identity, ctx.repos.pending, branch, weights, examples)
            return {"id": advert.id, "kind": "advert", "branch": branch, "base": start, "examples": examples,
                    "author": advert.author, "timestamp_ms": advert.timestamp_ms, "secure": True}
        with open_weights(weights_path, "weights") as source:
            return publish(ctx, r, source, start, branch, examples, message, codec)

    return await ctx.changing(work)


def publish(ctx: ApiContext, repo: Repository, trained: Source | StateDict, start: CommitId, branch: str,
            examples: int, message: str, codec: str) -> dict[str, Any]:
    """A plain round's contribution of weights ``trained`` (a file's, or in memory), clipped to the policy's norm
    bound and differential privacy's clip and noised when it says so, all before anything is stored. In the exact
    codec and unproven, it streams: each tensor is read, clipped and noised when the commit reaches it
    (``dp_noise.Clipped``); a lossy codec or the commitments of proven merges take the weights whole."""
    from ...protocol import dp, norm_bounds, round_merges
    from ...tensors.safetensors_file import Source
    from ...tensors.safetensors_io import SourceState, computed_source

    policy = repo.members.current().policy
    clipped = bool(policy.dp or policy.norm_bound)
    weights: Mapping[str, torch.Tensor] = SourceState(trained) if isinstance(trained, Source) else trained
    spent, norm = None, None
    if clipped:
        weights = norm_bounds.clipped(policy, repo.weights(start), weights)
        if policy.dp:
            weights, spent, norm = dp.prepare(repo, ctx.identity.public_key, branch, start, weights,
                                              memory=ctx.round_memory)
    committed: list[str] = []
    state: Source | StateDict
    if codec != EXACT_CODECS[0] or policy.proof_chunk:  # whole: the commitments of its chunks, when proven
        state = dict(weights)
        committed = round_merges.commitments(repo, state, start, codec, circuits=ctx.round_memory.circuits)
    elif clipped and isinstance(trained, Source):
        state = computed_source(trained.layout(), weights.__getitem__)
    else:
        state = dict(weights) if clipped else trained
    commit = repo.contribute(ctx.identity, state, branch=branch, examples=examples, base=start, message=message,
                             codec=codec, commitments=committed, dp=spent)
    return {**commit_json(commit), "branch": branch,
            **({"dp": {**spent, "update_norm": f"{norm:.6g}"}} if spent is not None else {})}


def refuse_adapter(repo: Repository, path: str) -> None:
    """``InvalidInput`` if ``path`` is a PEFT adapter and ``repo`` holds whole models."""
    if repo.record.adapter is None and is_adapter(path):
        raise InvalidInput(f"{path} is a PEFT adapter, but repository {repo.name} holds whole models: keep adapters "
                           "in a repository of adapters on it (flair init NAME --model ADAPTER --base "
                           f"{repo.name})", path=path)


def adapter_state(repo: Repository, path: str) -> StateDict:
    """The tensors to commit in adapter repository ``repo`` for the PEFT adapter at ``path``, checked against it
    (``storage.adapters.accept``)."""
    spec = repo.record.adapter
    assert spec is not None
    return adapters.accept(spec, repo.record.layout, read_adapter(path, "adapter"))


@methods.method(
    "repo.pull", "Fetch what a member's node has of a repository and this node lacks (creating it: a clone); "
    "every record and block is checked before it is stored. With no peer, from the first node serving it that "
    "discovery finds (the DHT). A repository of LoRA adapters whose base repository is not here brings it too "
    "(as base, or base_error: why not).",
    params=(replace(REPO, description="repository id (full, for a clone) or the name or id prefix of one kept "
                                      "here"),
            replace(PEER, required=False, default=None,
                    description="the peer's multiaddr, ending in /p2p/<peer id>; none: found through the DHT")),
    result=OBJECT)
async def repo_pull(ctx: ApiContext, repo: str, peer: str | None = None) -> dict[str, Any]:
    if not is_full_id(repo):
        repo = (await ctx.off_thread(lambda: ctx.repos.open(repo))).id
    result = await ctx.need_p2p().pull(repo, peer)
    spec = (await ctx.off_thread(lambda: ctx.repos.open(repo))).record.adapter
    if spec is not None and spec.base_repo not in await ctx.off_thread(ctx.repos.ids):
        try:  # its adapters are of no use without the model they adapt
            result["base"] = await ctx.need_p2p().pull(spec.base_repo, peer)
        except FlairError as exc:  # not a member of the base's repository, say: the adapters are here all the same
            result["base_error"] = str(exc)
    ctx.on_change()
    return result


@methods.method("repo.status", "A repository's branches, heads, commit count, round policy, and the layout of "
                "main's head (of its first commit where this node cannot read main).", params=(REPO,),
                result=OBJECT)
async def repo_status(ctx: ApiContext, repo: str) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        r = ctx.repos.open(repo)
        branches = r.branches()
        heads = {b: commit_json(r.commit(c)) for b, c in branches.items()}
        layout = main_layout(r)
        return {**repo_json(r), "heads": heads, "commits": sum(1 for _ in r.commits()),
                "policy": r.members.current().policy.as_dict(),
                "layout": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in layout]}

    return await ctx.off_thread(work)


@methods.method("repo.fsck", "Recompute every id, signature and payload hash; report any damage.",
                params=(REPO,), result=OBJECT)
async def repo_fsck(ctx: ApiContext, repo: str) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        r = ctx.repos.open(repo)
        checked, problems = r.fsck()
        return {"repo": r.id, "checked": checked, "ok": not problems,
                "problems": [{"object": p.object, "what": p.what} for p in problems]}

    return await ctx.off_thread(work)
