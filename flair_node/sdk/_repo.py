from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..api.client import ApiClient
from ..core.refs import DEFAULT_BRANCH
from ..storage.atomic import atomic_write
from ..tensors.lossy import DEFAULT_TOPK_RATIO, ErrorFeedback
from ..tensors.safetensors_io import StateDict, load_file, save_bytes

#: What ``commit`` and ``contribute`` take: a model, its tensors, or the path of a file or folder the daemon reads.
Weights = torch.nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike[str]


class Repo:
    """One repository on the node whose home is ``home``."""

    def __init__(self, client: ApiClient, home: Path, repo: str) -> None:
        self.client = client
        self.home = Path(home)
        info = client.call("repo.status", repo=repo)
        #: The full repository id (``repo`` may be a prefix or a name).
        self.id: str = info["repo"]
        self.name: str = info["name"]
        #: For a repository of LoRA adapters, its base and rank bounds (``repo.status``'s ``adapter``); else None.
        self.adapter: dict[str, Any] | None = info.get("adapter")

    @classmethod
    def connect(cls, home: str | os.PathLike[str], repo: str) -> Repo:
        home = Path(home)
        return cls(ApiClient.from_home(home), home, repo)

    @classmethod
    def init(cls, home: str | os.PathLike[str], name: str, model: torch.nn.Module | Mapping[str, torch.Tensor]) -> Repo:
        """Create a repository on the node whose commit 0 is ``model``'s weights."""
        home = Path(home)
        client = ApiClient.from_home(home)
        with _scratch(home) as path:
            atomic_write(path, save_bytes(_state_dict(model)), mode=0o600)
            info = client.call("repo.init", name=name, model_path=str(path))
        return cls(client, home, info["repo"])

    def pull(self, rev: str = DEFAULT_BRANCH) -> StateDict:
        """The full weights at a branch or commit, bit for bit as committed (an adapter's factors, under PEFT's
        keys, in a repository of adapters)."""
        with _scratch(self.home) as path:
            self.client.call("repo.checkout", repo=self.id, commit=rev, output_path=str(path))
            return load_file(path / "adapter_model.safetensors" if self.adapter else path)

    def checkout(self, rev: str, path: str | os.PathLike[str], *, merged: bool = False,
                 overwrite: bool = False) -> Path:
        """Write the weights at ``rev`` to ``path``: a safetensors file, or in a repository of adapters a PEFT
        folder (``PeftModel.from_pretrained`` loads it), or with ``merged`` the base model with the adapter
        merged in. Returns the path written."""
        out = Path(path).absolute()
        self.client.call("repo.checkout", repo=self.id, commit=rev, output_path=str(out), overwrite=overwrite,
                         **({"merged": True} if merged else {}))
        return out

    def commit(self, model: Weights, *, message: str, examples: int = 0,
               metrics: Mapping[str, float] | None = None, branch: str = DEFAULT_BRANCH,
               expected_head: str | None = None, codec: str = "snapshot-v1", topk_ratio: float = DEFAULT_TOPK_RATIO,
               error_feedback: ErrorFeedback | None = None) -> str:
        """Commit ``model``'s weights on ``branch`` (or the file or folder it names: a PEFT adapter's, in a
        repository of adapters); returns the commit id.

        With a lossy ``codec`` the commit holds the head plus the decoded delta; pass the same
        ``ErrorFeedback`` to every commit so what one commit dropped is carried by the next.
        """
        if isinstance(model, str | os.PathLike):  # a file or folder the daemon reads: a PEFT adapter's, say
            return str(self.client.call("repo.commit", repo=self.id, weights_path=str(Path(model).absolute()),
                                        message=message, branch=branch, examples=examples,
                                        metrics=dict(metrics or {}), expected_head=expected_head, codec=codec,
                                        topk_ratio=topk_ratio)["id"])
        sent = _state_dict(model)
        if error_feedback is not None:
            sent = error_feedback.apply(sent)
        with _scratch(self.home) as path:
            atomic_write(path, save_bytes(sent), mode=0o600)
            result = self.client.call("repo.commit", repo=self.id, weights_path=str(path), message=message,
                                      branch=branch, examples=examples, metrics=dict(metrics or {}),
                                      expected_head=expected_head, codec=codec, topk_ratio=topk_ratio)
        if error_feedback is not None:
            error_feedback.update(sent, self.pull(result["id"]))
        return str(result["id"])

    def contribute(self, model: Weights, *, examples: int,
                   branch: str = DEFAULT_BRANCH, base: str | None = None, message: str = "",
                   codec: str = "snapshot-v1") -> str:
        """Contribute ``model``'s weights, trained from ``base`` (default: the branch head) on ``examples``
        local examples, to the rounds of ``branch``; returns the contribution's commit id. The round's aggregator
        merges it; ``round_status`` shows where it stands. ``model`` may also be the path of a file or folder the
        daemon reads (a PEFT adapter's folder, in a repository of adapters)."""
        if isinstance(model, str | os.PathLike):
            return str(self.client.call("repo.contribute", repo=self.id, weights_path=str(Path(model).absolute()),
                                        examples=examples, branch=branch, base=base, message=message,
                                        codec=codec)["id"])
        with _scratch(self.home) as path:
            atomic_write(path, save_bytes(_state_dict(model)), mode=0o600)
            result = self.client.call("repo.contribute", repo=self.id, weights_path=str(path),
                                      examples=examples, branch=branch, base=base, message=message, codec=codec)
        return str(result["id"])

    def round_status(self, branch: str = DEFAULT_BRANCH) -> dict[str, Any]:
        """The branch's current round: number, head, ranked and entitled aggregators, pending contributions."""
        return dict(self.client.call("round.status", repo=self.id, branch=branch))

    def branch(self, name: str, at: str = DEFAULT_BRANCH) -> None:
        self.client.call("repo.branch", repo=self.id, name=name, at=at)

    def branches(self) -> dict[str, str]:
        return dict(self.client.call("repo.branch", repo=self.id)["branches"])

    def merge(self, sources: Sequence[str], into: str = DEFAULT_BRANCH, *, strategy: str = "mean",
              message: str | None = None) -> str:
        return str(self.client.call("repo.merge", repo=self.id, sources=list(sources), into=into,
                                    strategy=strategy, message=message)["id"])

    def log(self, rev: str | None = None, limit: int = 1000) -> dict[str, Any]:
        return dict(self.client.call("repo.log", repo=self.id, branch=rev, limit=limit))


def _state_dict(model: torch.nn.Module | Mapping[str, torch.Tensor]) -> StateDict:
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    # Own, contiguous CPU copies: safetensors refuses tensors that share storage (tied weights).
    return {name: t.detach().to("cpu").contiguous().clone() for name, t in state.items()}


@contextlib.contextmanager
def _scratch(home: Path) -> Iterator[Path]:
    """A file (or folder: an adapter's checkout) the daemon reads or writes for us; the API takes absolute paths
    only, whatever the home was given as."""
    folder = home.absolute() / "tmp"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"sdk-{uuid.uuid4().hex}.safetensors"
    try:
        yield path
    finally:
        if path.is_dir():
            shutil.rmtree(path)
        path.unlink(missing_ok=True)
