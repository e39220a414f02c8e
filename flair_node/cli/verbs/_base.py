"""What a ``flair`` verb is: its arguments, its API call and its text, written once, side by side.

``cli/main.py`` builds the parser from a list of ``Verb`` objects, finds the one the user named, calls it and prints
its result (as JSON with ``--json``, else as its text). Adding a verb means writing one ``Verb`` in the module of
its group and naming it in ``verbs/__init__.py``; nothing else changes.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...api.client import ApiClient
from ...core.errors import FlairError

# The names the CLI offers for the delta codecs, and the codec id the API takes for each.
CODECS = {"exact": "snapshot-v1", "float16": "float16-v1", "int8": "int8-v1", "topk": "topk-v1"}


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``arguments`` of a verb that takes none beyond ``--home`` and ``--json``."""


def always_ok(result: Any) -> bool:
    """The ``ok`` of a verb whose every answer is a success: ``flair`` exits 0 once the call returned."""
    return True


@dataclass(frozen=True)
class Verb:
    """One ``flair`` verb.

    ``arguments`` adds the verb's own arguments to its argparse parser (``--home`` and ``--json`` come from the
    common parent parser). ``call`` makes the API call(s) and returns the result, which ``--json`` prints as is;
    ``text`` renders it for people (an empty text prints nothing). ``ok`` says whether a result that came back
    still means failure, for the exit code (``fsck`` finding damage).
    """

    name: str
    help: str
    call: Callable[[ApiClient, argparse.Namespace], Any]
    text: Callable[[Any, argparse.Namespace], str]
    arguments: Callable[[argparse.ArgumentParser], None] = no_arguments
    ok: Callable[[Any], bool] = always_ok


def node_home(home: Path | None) -> Path:
    """The daemon's home: ``--home``, else ``$FLAIR_HOME``."""
    if home is not None:
        return Path(home)
    env = os.environ.get("FLAIR_HOME")
    if not env:
        raise FlairError("pass --home DIR or set FLAIR_HOME to the daemon's home")
    return Path(env)


def add_codec(parser: argparse.ArgumentParser) -> None:
    """``--codec``, shared by the verbs that store a delta."""
    parser.add_argument("--codec", default="exact", choices=list(CODECS),
                        help="exact (default), or lossy to save bytes: float16, int8, topk")


def id_text(result: Any, args: argparse.Namespace) -> str:
    """The text of the verbs that answer with a new commit: its id alone, for scripts to capture."""
    return str(result["id"])


def repo_argument(parser: argparse.ArgumentParser) -> None:
    """The ``arguments`` of a verb that takes only the repository (its name, or a prefix of its id)."""
    parser.add_argument("repo")
