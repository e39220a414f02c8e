"""The daemon's JSON-RPC methods: the version-control verbs over one node's repositories.

Tensors never travel inside requests: the caller names a safetensors file (absolute path) that the daemon
reads, or a path it writes. Everything else is validated by the registry before a handler runs; blocking work
(hashing, tensor arithmetic, fsync) goes to a worker thread so the daemon keeps answering.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio

from .. import __version__
from ..core.cid import parse_cid
from ..core.errors import FlairError, InvalidInput, NotFound
from ..core.identity import Identity
from ..core.ids import Cid, is_full_id
from ..core.membership import INVITABLE, PROTECTED_BRANCHES, Member, Membership
from ..core.objects import Commit
from ..core.refs import DEFAULT_BRANCH
from ..core.round_rules import PROOF_SCHEMES, RoundPolicy
from ..storage import unixfs
from ..storage.atomic import atomic_write
from ..storage.repo import DELTA_CODECS, MERGE_ALIASES, MERGE_METHODS, Repository
from ..storage.repos import RepoSet
from ..tensors.params import DEFAULT_TOPK_RATIO
from .dispatch import Param, Registry

if TYPE_CHECKING:
    from ..tensors.safetensors_io import StateDict

T = TypeVar("T")

_STR = {"type": "string", "maxLength": 4096}
_ID = {"type": "string", "maxLength": 200}
_PATH = {"type": "string", "maxLength": 4096}
_COMMIT = {"type": "object", "description": "a commit: id, parents, author, kind, message, payload, meta, metrics"}
MAX_WEIGHTS_BYTES = 64 << 30


def commit_json(commit: Commit) -> dict[str, Any]:
    """The commit's record as JSON: its id, every signed field, and metrics as numbers."""
    body = {k: v for k, v in commit.body().items() if k not in ("v", "type")}
    return {"id": commit.id, **body, "metrics": {k: float(v) for k, v in commit.metrics.items()}}


def repo_json(repo: Repository) -> dict[str, Any]:
    record = repo.record
    return {
        "repo": repo.id,
        "name": record.name,
        "owner": record.owner,
        "created_ms": record.created_ms,
        "branches": dict(repo.branches()),
        "tensors": len(record.layout),
        "parameters": sum(t.numel for t in record.layout),
    }


def members_json(membership: Membership) -> dict[str, Any]:
    def member(m: Member) -> dict[str, Any]:
        return {"key": m.key, "role": m.role, "expires_ms": m.expires_ms, "joined_epoch": m.joined_epoch}

    return {"repo": membership.repo, "owner": membership.owner, "epoch": membership.epoch,
            "changes": membership.seq, "members": [member(m) for m in membership.current()],
            "removed": sorted(k for k, m in membership.members.items() if m.removed_epoch is not None),
            "protected_branches": sorted(PROTECTED_BRANCHES), "policy": membership.policy.as_dict()}


def _input_path(text: str, what: str) -> Path:
    path = Path(text)
    if not path.is_absolute():
        raise InvalidInput(f"{what} must be an absolute path, got {text!r}", path=text)
    if not path.is_file():
        raise InvalidInput(f"{what} {text} does not exist or is not a file", path=text)
    if path.stat().st_size > MAX_WEIGHTS_BYTES:
        raise InvalidInput(f"{what} {text} is larger than {MAX_WEIGHTS_BYTES >> 30} GiB", path=text)
    return path


def _read_weights(text: str, what: str) -> StateDict:
    """The tensors of the safetensors file ``text`` names (an absolute path).

    Here, not at the top, is where a request first needs torch: a daemon that reads and writes no weights never
    imports it (see ``storage.repo``).
    """
    from ..tensors.safetensors_io import load_file

    return load_file(_input_path(text, what))


def _write_weights(path: Path, state: StateDict) -> None:
    from ..tensors.safetensors_io import save_bytes  # torch: see _read_weights

    atomic_write(path, save_bytes(state), mode=0o600)


def _output_path(text: str, overwrite: bool) -> Path:
    path = Path(text)
    if not path.is_absolute():
        raise InvalidInput(f"output must be an absolute path, got {text!r}", path=text)
    if not path.parent.is_dir():
        raise InvalidInput(f"folder {path.parent} does not exist", path=text)
    if path.exists() and not overwrite:
        raise InvalidInput(f"{text} exists: pass overwrite (--force) to replace it", path=text)
    return path


class Network(Protocol):
    """What the daemon's peer-to-peer services offer the API."""

    async def fetch(self, cid: Cid, peer: str, max_size: int) -> int:
        """Fetch the DAG under ``cid`` from the peer at multiaddr ``peer``; how many blocks came."""
        ...

    async def pull(self, repo: str, peer: str) -> dict[str, Any]:
        """Catch repository ``repo`` (a full id) up with the peer at multiaddr ``peer``."""
        ...


def build_registry(identity: Identity, repos: RepoSet, *, on_change: Callable[[], None] = lambda: None,
                   extra_status: Callable[[], dict[str, Any]] = dict, network: Network | None = None,
                   proof_srs: Path | None = None, development_srs: Path | None = None) -> Registry:
    """The methods over ``repos``; ``on_change`` runs after anything is committed, ``extra_status`` adds to
    ``node.status`` (the daemon's services report there), ``network`` reaches peers (the daemon's).
    ``proof_srs`` is the node's production SRS file (config ``proofs.srs``) and ``development_srs`` where it
    makes development ones when it has none (default: a temporary folder)."""
    registry = Registry()

    def dev_folder() -> Path:  # a private folder, made on first use
        nonlocal development_srs
        if development_srs is None:
            development_srs = Path(tempfile.mkdtemp(prefix="flair-srs-"))
        return development_srs

    async def off_thread(fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn)

    async def changing(fn: Callable[[], T]) -> T:
        result = await off_thread(fn)
        on_change()
        return result

    @registry.method("node.whoami", "The node's public key: its peer id, commit author and Solana address.",
                     params=(), result={"type": "object"})
    async def whoami() -> dict[str, Any]:
        return {"public_key": identity.public_key}

    @registry.method("node.status", "Version, identity and repositories of this node.", params=(),
                     result={"type": "object"})
    async def status() -> dict[str, Any]:
        listed = await off_thread(repos.all)
        return {"version": __version__, "public_key": identity.public_key, "pid": os.getpid(),
                "repositories": len(listed), **extra_status()}

    @registry.method("node.gc", "Delete every block no commit of a local repository reaches (unpinned blocks).",
                     params=(), result={"type": "object"})
    async def node_gc() -> dict[str, Any]:
        kept, removed = await off_thread(repos.gc)
        return {"blocks_kept": kept, "blocks_removed": removed}

    @registry.method(
        "block.fetch", "Fetch the DAG under a CID from a peer over Bitswap; every block is re-hashed.",
        params=(Param("cid", {"type": "string", "maxLength": 200}, "root CID (CIDv1, base32)"),
                Param("peer", {"type": "string", "maxLength": 1000}, "the peer's multiaddr, ending in /p2p/<peer id>"),
                Param("max_size", {"type": "integer", "minimum": 0}, "most bytes the DAG may hold", required=False,
                      default=1 << 30)),
        result={"type": "object"})
    async def block_fetch(cid: str, peer: str, max_size: int) -> dict[str, Any]:
        root = parse_cid(cid).text
        fetched = await online().fetch(root, peer, max_size)
        return {"cid": root, "fetched_blocks": fetched}

    def online() -> Network:
        if network is None:
            raise FlairError("this node runs no peer-to-peer services")
        return network

    @registry.method(
        "repo.pull", "Fetch what a member's node has of a repository and this node lacks (creating it: a clone); "
        "every record and block is checked before it is stored.",
        params=(Param("repo", _ID, "repository id (full, for a clone) or the name or id prefix of one kept here"),
                Param("peer", {"type": "string", "maxLength": 1000}, "the peer's multiaddr, ending in /p2p/<peer id>")),
        result={"type": "object"})
    async def repo_pull(repo: str, peer: str) -> dict[str, Any]:
        if not is_full_id(repo):
            repo = (await off_thread(lambda: repos.open(repo))).id
        result = await online().pull(repo, peer)
        on_change()
        return result

    @registry.method(
        "block.has", "Whether every block of the DAG under a CID is stored on this node.",
        params=(Param("cid", {"type": "string", "maxLength": 200}, "root CID"),
                Param("max_size", {"type": "integer", "minimum": 0}, "most bytes the DAG may hold", required=False,
                      default=1 << 30)),
        result={"type": "object"})
    async def block_has(cid: str, max_size: int) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            root = parse_cid(cid).text
            try:
                blocks = sum(1 for _ in unixfs.walk(repos.blocks, root, max_size=max_size))
            except NotFound:
                return {"cid": root, "complete": False}
            return {"cid": root, "complete": True, "blocks": blocks}
        return await off_thread(work)

    @registry.method("repo.list", "Every repository on this node.", params=(), result={"type": "array"})
    async def repo_list() -> list[dict[str, Any]]:
        return await off_thread(lambda: [repo_json(r) for r in repos.all()])

    @registry.method(
        "repo.init", "Create a repository whose commit 0 is the given model's weights.",
        params=(Param("name", {"type": "string", "maxLength": 200}, "repository name"),
                Param("model_path", _PATH, "absolute path of a .safetensors file with the initial weights")),
        result={"type": "object"})
    async def repo_init(name: str, model_path: str) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            state = _read_weights(model_path, "model")
            repo = repos.create(name, state)
            return {**repo_json(repo), "commit": repo.head(DEFAULT_BRANCH)}
        return await changing(work)

    @registry.method(
        "repo.commit", "Commit new weights on a branch: the delta against its head is stored.",
        params=(Param("repo", _ID, "repository id, id prefix or name"),
                Param("weights_path", _PATH, "absolute path of a .safetensors file with the new weights"),
                Param("message", _STR, "commit message"),
                Param("branch", _ID, "branch to commit on", required=False, default=DEFAULT_BRANCH),
                Param("examples", {"type": "integer", "minimum": 0}, "number of local training examples",
                      required=False, default=0),
                Param("metrics", {"type": "object", "additionalProperties": {"type": "number"}},
                      "metrics to record, name -> number", required=False, default=None),
                Param("expected_head", _ID, "refuse unless the branch is still at this commit", required=False,
                      default=None),
                Param("codec", {"type": "string", "enum": list(DELTA_CODECS)},
                      "how the delta is stored: bitdelta-v1 (exact) or a lossy codec", required=False,
                      default="bitdelta-v1"),
                Param("topk_ratio", {"type": "number", "minimum": 1e-6, "maximum": 1},
                      "share of each tensor's elements topk-v1 keeps", required=False, default=DEFAULT_TOPK_RATIO)),
        result=_COMMIT)
    async def repo_commit(repo: str, weights_path: str, message: str, branch: str, examples: int,
                          metrics: dict[str, float] | None, expected_head: str | None, codec: str,
                          topk_ratio: float) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            r = repos.open(repo)
            state = _read_weights(weights_path, "weights")
            expected = r.resolve(expected_head) if expected_head else None
            commit = r.commit_weights(identity, state, message=message, branch=branch, examples=examples,
                                      metrics=metrics, expected_head=expected, codec=codec, topk_ratio=topk_ratio)
            return {**commit_json(commit), "branch": branch}
        return await changing(work)

    @registry.method(
        "repo.contribute", "Contribute weights trained from a commit of a branch to its rounds: stored as the "
        "delta against that commit on this member's contrib/<branch>/<key> branch, for the round's aggregator.",
        params=(Param("repo", _ID, "repository id, id prefix or name"),
                Param("weights_path", _PATH, "absolute path of a .safetensors file with the trained weights"),
                Param("examples", {"type": "integer", "minimum": 0}, "number of local training examples"),
                Param("branch", _ID, "branch whose rounds it joins", required=False, default=DEFAULT_BRANCH),
                Param("base", _ID, "the commit the training started from (default: the branch head)",
                      required=False, default=None),
                Param("message", _STR, "a note on the contribution", required=False, default=""),
                Param("codec", {"type": "string", "enum": list(DELTA_CODECS)},
                      "how the delta is stored: bitdelta-v1 (exact) or a lossy codec", required=False,
                      default="bitdelta-v1")),
        result=_COMMIT)
    async def repo_contribute(repo: str, weights_path: str, examples: int, branch: str, base: str | None,
                              message: str, codec: str) -> dict[str, Any]:
        from ..protocol import rounds

        def work() -> dict[str, Any]:
            r = repos.open(repo)
            start = r.resolve(base) if base is not None else r.head(branch)
            rounds.staleness(r, branch, start)  # refuse now what no round would take
            weights = _read_weights(weights_path, "weights")
            committed = rounds.commitments(r, weights, start, codec)  # when the repository's merges are proven
            commit = r.contribute(identity, weights, branch=branch, examples=examples, base=start,
                                  message=message, codec=codec, commitments=committed)
            return {**commit_json(commit), "branch": branch}
        return await changing(work)

    @registry.method(
        "round.status", "The current round of a branch as this node sees it: head, round number, ranked "
        "aggregators and the one entitled now, pending contributions, whether it may merge.",
        params=(Param("repo", _ID, "repository id, id prefix or name"),
                Param("branch", _ID, "branch", required=False, default=DEFAULT_BRANCH)),
        result={"type": "object"})
    async def round_status(repo: str, branch: str) -> dict[str, Any]:
        from ..protocol import rounds

        return await off_thread(lambda: rounds.view(repos.open(repo), branch).json())

    @registry.method(
        "round.merge", "Merge a branch's pending contributions now, as its round's entitled aggregator.",
        params=(Param("repo", _ID, "repository id, id prefix or name"),
                Param("branch", _ID, "branch", required=False, default=DEFAULT_BRANCH)),
        result=_COMMIT)
    async def round_merge(repo: str, branch: str) -> dict[str, Any]:
        from ..protocol import rounds

        return await changing(lambda: {**commit_json(rounds.merge(repos.open(repo), identity, branch)),
                                       "branch": branch})

    @registry.method(
        "repo.log", "Commits reachable from a branch (or from every branch), newest first.",
        params=(Param("repo", _ID, "repository id, id prefix or name"),
                Param("branch", _ID, "branch or commit to start from; all branches if omitted", required=False,
                      default=None),
                Param("limit", {"type": "integer", "minimum": 1}, "most commits to return", required=False,
                      default=1000)),
        result={"type": "object"})
    async def repo_log(repo: str, branch: str | None, limit: int) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            r = repos.open(repo)
            branches = r.branches()
            heads = [r.resolve(branch)] if branch else list(dict.fromkeys(branches.values()))
            return {"commits": [commit_json(c) for c in r.log(heads, limit)], "branches": dict(branches)}
        return await off_thread(work)

    @registry.method(
        "repo.show", "One commit, with its changes against its first parent.",
        params=(Param("repo", _ID, "repository id, id prefix or name"),
                Param("commit", _ID, "commit id, prefix, or branch name")),
        result=_COMMIT)
    async def repo_show(repo: str, commit: str) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            r = repos.open(repo)
            c = r.commit(r.resolve(commit))
            changes = r.diff(c.parents[0], c.id) if c.parents else []
            return {**commit_json(c), "changes": changes}
        return await off_thread(work)

    @registry.method(
        "repo.diff", "Per-tensor change from commit A to commit B (L2 norm, largest change, elements changed).",
        params=(Param("repo", _ID, "repository id, id prefix or name"),
                Param("a", _ID, "from: commit or branch"), Param("b", _ID, "to: commit or branch")),
        result={"type": "object"})
    async def repo_diff(repo: str, a: str, b: str) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            r = repos.open(repo)
            ca, cb = r.resolve(a), r.resolve(b)
            tensors = r.diff(ca, cb)
            total = sum(t["l2"] ** 2 for t in tensors) ** 0.5
            return {"a": ca, "b": cb, "tensors": tensors, "total_l2": total}
        return await off_thread(work)

    @registry.method(
        "repo.status", "A repository's branches, heads, commit count, layout and round policy.",
        params=(Param("repo", _ID, "repository id, id prefix or name"),), result={"type": "object"})
    async def repo_status(repo: str) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            r = repos.open(repo)
            heads = {b: commit_json(r.commit(c)) for b, c in r.branches().items()}
            return {**repo_json(r), "heads": heads, "commits": sum(1 for _ in r.commits()),
                    "policy": r.members.current().policy.as_dict(),
                    "layout": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in r.record.layout]}
        return await off_thread(work)

    @registry.method(
        "repo.members", "A repository's members, their roles, and its payload key epoch.",
        params=(Param("repo", _ID, "repository id, id prefix or name"),), result={"type": "object"})
    async def repo_members(repo: str) -> dict[str, Any]:
        return await off_thread(lambda: members_json(repos.open(repo).members.current()))

    @registry.method(
        "repo.invite", "Grant a public key a role, sealing every payload key so far to it (owner only).",
        params=(Param("repo", _ID, "repository id, id prefix or name"),
                Param("member", {"type": "string", "maxLength": 64}, "the member's public key (base58)"),
                Param("role", {"type": "string", "enum": list(INVITABLE)}, "reader, contributor or maintainer",
                      required=False, default="contributor"),
                Param("expires_ms", {"type": "integer", "minimum": 0}, "when the role lapses (Unix ms); 0: never",
                      required=False, default=0)),
        result={"type": "object"})
    async def repo_invite(repo: str, member: str, role: str, expires_ms: int) -> dict[str, Any]:
        return await changing(lambda: members_json(repos.open(repo).invite(identity, member, role,
                                                                           expires_ms=expires_ms)))

    @registry.method(
        "repo.policy", "A repository's round policy; with any field given, set it (owner only): the fields not "
        "given keep their current value.",
        params=(Param("repo", _ID, "repository id, id prefix or name"),
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
                Param("proof_srs_file", {"type": "string", "maxLength": 4096}, "absolute path of the SRS file "
                      "members accept (default: the node's proofs.srs, else a development SRS made here); the node "
                      "stores it as blocks members fetch, and the policy names its CID", required=False,
                      default=None),
                Param("contribution_nfts", {"type": "boolean"}, "with anchoring on, also mint one NFT per merged "
                      "contribution to its contributor", required=False, default=None)),
        result={"type": "object"})
    async def repo_policy(repo: str, **fields: Any) -> dict[str, Any]:
        given = {k: v for k, v in fields.items() if v is not None}
        if not given:
            return await off_thread(lambda: repos.open(repo).members.current().policy.as_dict())

        def work() -> dict[str, Any]:
            from ..protocol.proofs import circuits
            from ..protocol.strategies import build_strategy  # loads torch: not while the daemon idles

            r = repos.open(repo)
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
                        given=_input_path(srs_file, "proof_srs_file") if srs_file is not None else None,
                        configured=proof_srs, development=dev_folder())
                    merged["proof_srs"] = circuits.add_srs(r.blocks, path.read_bytes())
            policy = RoundPolicy(**merged)
            build_strategy(policy.strategy, policy.strategy_params)  # refuse what no node could run
            shown = r.set_policy(identity, policy).policy.as_dict()
            return {**shown, "development_srs": True} if development else shown
        return await changing(work)

    @registry.method(
        "repo.remove", "Remove a member; later payloads are sealed with a new key they never get (owner only).",
        params=(Param("repo", _ID, "repository id, id prefix or name"),
                Param("member", {"type": "string", "maxLength": 64}, "the member's public key (base58)")),
        result={"type": "object"})
    async def repo_remove(repo: str, member: str) -> dict[str, Any]:
        return await changing(lambda: members_json(repos.open(repo).remove(identity, member)))

    @registry.method(
        "repo.branch", "List branches, or create one at a commit (default: the head of main) and return it.",
        params=(Param("repo", _ID, "repository id, id prefix or name"),
                Param("name", _ID, "new branch name; omit to list", required=False, default=None),
                Param("at", _ID, "commit or branch the new branch starts at", required=False, default=None)),
        result={"type": "object"})
    async def repo_branch(repo: str, name: str | None, at: str | None) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            r = repos.open(repo)
            if name is None:
                if at is not None:
                    raise InvalidInput("'at' needs a branch name to create")
                return {"branches": dict(r.branches())}
            head = r.resolve(at or DEFAULT_BRANCH)
            return {"created": r.create_branch(identity, name, head), "head": head}
        return await (changing if name is not None else off_thread)(work)

    @registry.method(
        "repo.checkout", "Write a commit's full weights, bit for bit as committed, to a safetensors file.",
        params=(Param("repo", _ID, "repository id, id prefix or name"),
                Param("commit", _ID, "commit id, prefix, or branch name"),
                Param("output_path", _PATH, "absolute path of the .safetensors file to write"),
                Param("overwrite", {"type": "boolean"}, "replace an existing file", required=False,
                      default=False)),
        result={"type": "object"})
    async def repo_checkout(repo: str, commit: str, output_path: str, overwrite: bool) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            r = repos.open(repo)
            cid = r.resolve(commit)
            out = _output_path(output_path, overwrite)
            _write_weights(out, r.materialize(cid))
            return {"commit": cid, "path": str(out), "bytes": out.stat().st_size}
        return await off_thread(work)

    @registry.method(
        "repo.merge", "Merge branches or commits into a branch with one merge commit (exact fixed-point).",
        params=(Param("repo", _ID, "repository id, id prefix or name"),
                Param("sources", {"type": "array", "items": _ID, "maxItems": 64}, "branches or commits to merge"),
                Param("into", _ID, "branch that receives the merge commit"),
                Param("strategy", {"type": "string", "enum": [*MERGE_METHODS, *MERGE_ALIASES]},
                      "mean (weighted by examples since the merge base; average is its older name) or task-arithmetic "
                      "(sum of changes)",
                      required=False, default="mean"),
                Param("message", _STR, "merge commit message", required=False, default=None)),
        result=_COMMIT)
    async def repo_merge(repo: str, sources: list[str], into: str, strategy: str,
                         message: str | None) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            r = repos.open(repo)
            return commit_json(r.merge(identity, sources, into, strategy=strategy, message=message))
        return await changing(work)

    @registry.method(
        "repo.revert", "A new commit on a branch that undoes one commit's change.",
        params=(Param("repo", _ID, "repository id, id prefix or name"),
                Param("commit", _ID, "commit to undo"),
                Param("branch", _ID, "branch to commit on", required=False, default=DEFAULT_BRANCH),
                Param("message", _STR, "commit message", required=False, default=None)),
        result=_COMMIT)
    async def repo_revert(repo: str, commit: str, branch: str, message: str | None) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            r = repos.open(repo)
            return commit_json(r.revert(identity, commit, branch=branch, message=message))
        return await changing(work)

    @registry.method(
        "repo.reset", "Point an existing branch at another commit (git's branch -f); returns the move.",
        params=(Param("repo", _ID, "repository id, id prefix or name"),
                Param("branch", _ID, "the branch to move"),
                Param("commit", _ID, "commit or branch it moves to")),
        result={"type": "object"})
    async def repo_reset(repo: str, branch: str, commit: str) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            r = repos.open(repo)
            move = r.reset_branch(identity, branch, r.resolve(commit))
            return {"branch": move.branch, "head": move.commit, "previous": move.previous, "move": move.id}
        return await changing(work)

    @registry.method(
        "repo.fsck", "Recompute every id, signature and payload hash; report any damage.",
        params=(Param("repo", _ID, "repository id, id prefix or name"),), result={"type": "object"})
    async def repo_fsck(repo: str) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            r = repos.open(repo)
            checked, problems = r.fsck()
            return {"repo": r.id, "checked": checked, "ok": not problems,
                    "problems": [{"object": p.object, "what": p.what} for p in problems]}
        return await off_thread(work)

    return registry


__all__ = ["build_registry", "commit_json", "repo_json"]
