"""``flair train REPO --script train.py``: train on this machine's data, contribute the result to a branch's rounds.

The script is the user's own Python file; it defines (by default) ``train``::

    def train(weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
        ...  # load the model from ``weights``, train on local data
        return model.state_dict(), number_of_examples

It runs here, in this process: the weights come from the daemon, the data never leaves the machine, and only
the trained weights go back, as a contribution based on the exact head the training started from.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..api.client import ApiClient
from ..core.errors import FlairError, InvalidInput


def load_function(script: Path, name: str) -> Callable[..., Any]:
    """Function ``name`` of the Python file ``script``."""
    if not script.is_file():
        raise InvalidInput(f"no training script at {script}")
    spec = importlib.util.spec_from_file_location(f"flair_train_{script.stem}", script)
    if spec is None or spec.loader is None:
        raise InvalidInput(f"{script} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: say where it failed
        raise FlairError(f"training script {script} failed while loading: {exc!r}") from exc
    function: object = getattr(module, name, None)
    if not callable(function):
        raise InvalidInput(f"{script} defines no function {name}(weights) -> (weights, examples)")
    return function


def train(client: ApiClient, home: Path, repo: str, script: Path, *, branch: str, function: str,
          codec: str) -> dict[str, Any]:
    """Pull ``branch``'s head, run the script's training function on it, contribute what it returns."""
    import torch

    from ..sdk import Repo

    fn = load_function(script, function)
    sdk = Repo(client, home, repo)
    heads = sdk.branches()
    if branch not in heads:
        raise InvalidInput(f"no branch {branch!r} in repository {sdk.name}")
    base = heads[branch]
    try:
        result = fn(sdk.pull(base))
    except Exception as exc:
        raise FlairError(f"training function {function} of {script} failed: {exc!r}") from exc
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], dict)
            and all(isinstance(v, torch.Tensor) for v in result[0].values())
            and isinstance(result[1], int) and not isinstance(result[1], bool) and result[1] >= 0):
        raise InvalidInput(f"{function} must return (weights: dict of tensors, examples: int >= 0), "
                           f"not {type(result).__name__}")
    weights, examples = result
    commit = sdk.contribute(weights, examples=examples, branch=branch, base=base, codec=codec,
                            message=f"trained by {script.name} on {examples} examples")
    return {"id": commit, "base": base, "branch": branch, "examples": examples}
