"""Branch names, git's rules made stricter: short, printable, no path tricks."""

from __future__ import annotations

import re

from .errors import InvalidInput
from .ids import BranchName

DEFAULT_BRANCH = BranchName("main")
_ALLOWED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")


def check_branch_name(name: str) -> BranchName:
    """``name`` as a ``BranchName``, or ``InvalidInput`` saying which rule it breaks."""
    if not _ALLOWED.match(name):
        raise InvalidInput(
            f"branch name {name!r} is not allowed: use 1-100 of A-Z a-z 0-9 . _ / -, starting with a letter or digit",
            branch=name,
        )
    if ".." in name or "//" in name or name.endswith(("/", ".", ".lock")) or "/." in name:
        raise InvalidInput(f"branch name {name!r} is not allowed: no '..', '//', '/.', or trailing '/', '.', '.lock'",
                           branch=name)
    return BranchName(name)
