"""Flair's exceptions.

Every error Flair raises on purpose is a ``FlairError``. Those that can cross the JSON-RPC API carry a stable
``code`` (a JSON-RPC error code, application range -32000..-32099) so clients can branch on it.

    FlairError                      -32000
    ├── InvalidInput                -32602  bad parameters, names, files or values
    │   ├── LayoutMismatch          -32010  weights do not match the repository's tensor layout
    │   └── NotSafetensors          -32011  a file that is not a well-formed safetensors file
    ├── NotFound                    -32004
    │   ├── RepositoryNotFound      -32005
    │   ├── CommitNotFound          -32006
    │   └── BranchNotFound          -32007
    ├── AlreadyExists               -32008  a branch or repository that already exists
    ├── RefConflict                 -32009  compare-and-swap on a branch lost: retry on the new head
    ├── MergeError                  -32012  inputs that cannot be merged (no common base, non-finite values, ...)
    ├── IntegrityError              -32013  stored bytes whose hash or signature do not check out
    ├── Unauthorized                -32001  missing or wrong API token (HTTP 401)
    ├── NotAMember                  -32014  this node holds no key for the repository's payloads
    ├── Forbidden                   -32016  the repository's members and roles do not allow this
    ├── RemoteError                 -32015  a remote service (a Kubo node, a peer) failed or refused
    ├── ResourceExhausted           -32017  the disk is full, a quota is used up or no file descriptor is left:
    │                                       the one operation failed, nothing acknowledged was lost
    └── (api/errors.py)                     JSON-RPC protocol errors: ParseError -32700, InvalidRequest -32600,
                                            MethodNotFound -32601, InternalError -32603
"""

from __future__ import annotations

import errno


class FlairError(Exception):
    """Root of Flair's errors. ``code`` is the JSON-RPC error code used when it crosses the API."""

    code: int = -32000

    def __init__(self, message: str, **data: str) -> None:
        super().__init__(message)
        self.message = message
        #: Offending ids and names, sent as the JSON-RPC error's ``data``.
        self.data: dict[str, str] = data

    def __str__(self) -> str:
        return self.message


class InvalidInput(FlairError):
    code = -32602


class LayoutMismatch(InvalidInput):
    code = -32010


class NotSafetensors(InvalidInput):
    code = -32011


class NotFound(FlairError):
    code = -32004


class RepositoryNotFound(NotFound):
    code = -32005


class CommitNotFound(NotFound):
    code = -32006


class BranchNotFound(NotFound):
    code = -32007


class AlreadyExists(FlairError):
    code = -32008


class RefConflict(FlairError):
    code = -32009


class MergeError(FlairError):
    code = -32012


class IntegrityError(FlairError):
    code = -32013


class Unauthorized(FlairError):
    code = -32001


class NotAMember(FlairError):
    code = -32014


class Forbidden(FlairError):
    code = -32016


class RemoteError(FlairError):
    code = -32015


#: The ``errno`` values of an ``OSError`` that say the machine ran out of something, not that the call was wrong.
RESOURCE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE})


class ResourceExhausted(FlairError):
    """The disk (or the user's quota) is full, or the process has no file descriptor left; ``path`` names the file.

    Raised in place of the ``OSError`` (``from_os_error``) so that the one operation fails with a message saying
    what ran out and what to do, and every service that isolates its items on ``FlairError`` goes on.
    """

    code = -32017

    @classmethod
    def from_os_error(cls, exc: OSError, path: object = None) -> ResourceExhausted | None:
        """The ``ResourceExhausted`` for ``exc`` when its errno is one of ``RESOURCE_ERRNOS``, else None."""
        where = path if path is not None else exc.filename
        target = f" {where}" if where is not None else ""
        if exc.errno == errno.ENOSPC:
            message = f"cannot write{target}: no space left on its disk: free some space, then retry"
        elif exc.errno == errno.EDQUOT:
            message = f"cannot write{target}: the disk quota is used up: free some space or raise the quota, " \
                      "then retry"
        elif exc.errno in (errno.EMFILE, errno.ENFILE):
            scope = "this process" if exc.errno == errno.EMFILE else "the system"
            message = f"cannot open{target}: {scope} has no file descriptor left: raise the limit (ulimit -n) " \
                      "or close some connections, then retry"
        else:
            return None
        return cls(message, path=str(where)) if where is not None else cls(message)


def error_for_code(code: int) -> type[FlairError]:
    """The most specific error class for a JSON-RPC code (``FlairError`` when unknown)."""
    stack: list[type[FlairError]] = [FlairError]
    while stack:
        cls = stack.pop()
        if cls.code == code:
            return cls
        stack.extend(cls.__subclasses__())
    return FlairError
