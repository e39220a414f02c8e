"""``repo.*`` that read history: the log, one commit, the change between two, and a commit's weights written out."""

from __future__ import annotations

from typing import Any

from ...core.errors import InvalidInput, RepositoryNotFound
from ...storage import adapters
from ...storage.history import write_file, write_shards
from .. import files
from ..context import ApiContext
from ..dispatch import MethodTable, Param
from ..params import COMMIT, COMMIT_RESULT, ID, OBJECT, PATH, REPO
from ..views import commit_json

methods = MethodTable()


@methods.method(
    "repo.log", "Commits reachable from a branch (or from every branch), newest first.",
    params=(REPO,
            Param("branch", ID, "branch or commit to start from; all branches if omitted", required=False,
                  default=None),
            Param("limit", {"type": "integer", "minimum": 1}, "most commits to return", required=False,
                  default=1000)),
    result=OBJECT)
async def repo_log(ctx: ApiContext, repo: str, branch: str | None, limit: int) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        r = ctx.repos.open(repo)
        branches = r.branches()
        heads = [r.resolve(branch)] if branch else list(dict.fromkeys(branches.values()))
        return {"commits": [commit_json(c) for c in r.log(heads, limit)], "branches": dict(branches)}

    return await ctx.off_thread(work)


@methods.method("repo.show", "One commit, with its changes against its first parent.", params=(REPO, COMMIT),
                result=COMMIT_RESULT)
async def repo_show(ctx: ApiContext, repo: str, commit: str) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        r = ctx.repos.open(repo)
        c = r.commit(r.resolve(commit))
        changes = r.diff(c.parents[0], c.id) if c.parents else []
        return {**commit_json(c), "changes": changes}

    return await ctx.off_thread(work)


@methods.method(
    "repo.diff", "Per-tensor change from commit A to commit B (L2 norm, largest change, elements changed).",
    params=(REPO, Param("a", ID, "from: commit or branch"), Param("b", ID, "to: commit or branch")),
    result=OBJECT)
async def repo_diff(ctx: ApiContext, repo: str, a: str, b: str) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        r = ctx.repos.open(repo)
        ca, cb = r.resolve(a), r.resolve(b)
        tensors = r.diff(ca, cb)
        total = sum(t["l2"] ** 2 for t in tensors if t["change"] == "values") ** 0.5
        return {"a": ca, "b": cb, "tensors": tensors, "total_l2": total}

    return await ctx.off_thread(work)


@methods.method(
    "repo.checkout", "Write a commit's full weights, bit for bit as committed, to a safetensors file, or with "
    "shard_size to a folder as a Hugging Face sharded checkpoint. In a repository of LoRA adapters, write the "
    "adapter as a PEFT folder (adapter_model.safetensors, adapter_config.json), or with merged the base model's "
    "weights with the adapter's change added.",
    params=(REPO, COMMIT,
            Param("output_path", PATH, "absolute path of the .safetensors file to write (with shard_size: of the "
                  "folder)"),
            Param("overwrite", {"type": "boolean"}, "replace an existing file (write into a folder that is not "
                  "empty)", required=False, default=False),
            Param("shard_size", {"type": "integer", "minimum": 1},
                  "write shards of at most this many bytes of tensors each, and model.safetensors.index.json",
                  required=False, default=None),
            Param("merged", {"type": "boolean"}, "an adapter's: write the base model with the adapter merged in "
                  "(the base repository must be held here)", required=False, default=False)),
    result=OBJECT)
async def repo_checkout(ctx: ApiContext, repo: str, commit: str, output_path: str,
                        overwrite: bool, shard_size: int | None, merged: bool) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        r = ctx.repos.open(repo)
        cid = r.resolve(commit)
        spec = r.record.adapter
        if merged and spec is None:
            raise InvalidInput(f"repository {r.name} holds whole models: merged applies to adapters")
        if spec is not None:
            if merged:
                try:
                    base = ctx.repos.open(spec.base_repo)
                except RepositoryNotFound:
                    raise InvalidInput(f"the base model's repository {spec.base_repo} is not on this node: clone it "
                                       "(flair clone; a member of it must invite this node's key first)",
                                       repo=spec.base_repo) from None
                source = adapters.merged_source(base, spec.base_commit, adapters.read(r, cid))
                if shard_size is not None:
                    out = files.output_folder(output_path, overwrite)
                    written = write_shards(source, out, shard_size)
                else:
                    out = files.output_path(output_path, overwrite)
                    written = write_file(source, out)
                return {"commit": cid, "path": str(out), "bytes": written, "base": spec.base_commit}
            if shard_size is not None:
                raise InvalidInput("an adapter is written as one PEFT folder: shard_size applies to merged weights")
            out = files.output_folder(output_path, overwrite)
            return {"commit": cid, "path": str(out), "bytes": adapters.write_peft(r, cid, out)}
        if shard_size is not None:
            out = files.output_folder(output_path, overwrite)
        else:
            out = files.output_path(output_path, overwrite)
        return {"commit": cid, "path": str(out), "bytes": r.checkout(cid, out, shard_bytes=shard_size)}

    return await ctx.off_thread(work)

