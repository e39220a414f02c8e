"""The parameter and result schemas the API's methods share, each defined once.

A method module takes a param from here as it is (``REPO``), or with its own wording or default
(``replace(BRANCH, description="branch to commit on")``): the schema -- what a value may be -- stays the one
written here, so ``repo`` is checked alike by every method that takes one.
"""

from __future__ import annotations

from typing import Any

from ..core.refs import DEFAULT_BRANCH
from ..storage.repo import WRITE_CODECS
from .dispatch import Param

# -- schemas --------------------------------------------------------------------------------------------------

#: A repository, branch or commit: a full id, an id prefix or a name.
ID: dict[str, Any] = {"type": "string", "maxLength": 200}
#: Free text: commit messages, notes.
TEXT: dict[str, Any] = {"type": "string", "maxLength": 4096}
#: A file the daemon reads or writes, by absolute path.
PATH: dict[str, Any] = {"type": "string", "maxLength": 4096}
#: An Ed25519 public key in base58: a member, an owner.
PUBLIC_KEY: dict[str, Any] = {"type": "string", "maxLength": 64}
#: A count of training examples.
COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}

# -- params ---------------------------------------------------------------------------------------------------

REPO = Param("repo", ID, "repository id, id prefix or name")
COMMIT = Param("commit", ID, "commit id, prefix, or branch name")
BRANCH = Param("branch", ID, "branch", required=False, default=DEFAULT_BRANCH)
MESSAGE = Param("message", TEXT, "commit message")
MEMBER = Param("member", PUBLIC_KEY, "the member's public key (base58)")
EXAMPLES = Param("examples", COUNT, "number of local training examples")
CODEC = Param("codec", {"type": "string", "enum": list(WRITE_CODECS)},
              "how the weights are stored: snapshot-v1 (exact, whole weights in deduplicated pieces), bitdelta-v1 "
              "(exact, the delta against the parent) or a lossy codec", required=False, default=WRITE_CODECS[0])
CID = Param("cid", {"type": "string", "maxLength": 200}, "root CID")
PEER = Param("peer", {"type": "string", "maxLength": 1000}, "the peer's multiaddr, ending in /p2p/<peer id>")
MAX_SIZE = Param("max_size", {"type": "integer", "minimum": 0}, "most bytes the DAG may hold", required=False,
                 default=1 << 30)
#: The params of the methods about one round merge (``repo.verify``, ``repo.provenance``); the merge's bound
#: is the tighter one those methods always had.
MERGE = (REPO, Param("commit", {"type": "string", "maxLength": 128}, "the round merge (id, prefix or branch)"))

# -- results --------------------------------------------------------------------------------------------------

OBJECT: dict[str, Any] = {"type": "object"}
ARRAY: dict[str, Any] = {"type": "array"}
COMMIT_RESULT: dict[str, Any] = {"type": "object",
                                 "description": "a commit: id, parents, author, kind, message, payload, meta, metrics"}

__all__ = ["ARRAY", "BRANCH", "CID", "CODEC", "COMMIT", "COMMIT_RESULT", "COUNT", "EXAMPLES", "ID", "MAX_SIZE",
           "MEMBER", "MERGE", "MESSAGE", "OBJECT", "PATH", "PEER", "PUBLIC_KEY", "REPO", "TEXT"]
