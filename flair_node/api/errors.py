"""The JSON-RPC 2.0 protocol errors, as ``FlairError`` subclasses with the codes the specification reserves.

    FlairError (core/errors.py)
    ├── ParseError          -32700  the request body is not JSON
    ├── InvalidRequest      -32600  JSON, but not a JSON-RPC 2.0 request object
    ├── MethodNotFound      -32601  no such method: rpc.discover lists the ones there are
    └── InternalError       -32603  a bug in the daemon; the details are in its log, never in the answer

Invalid params (-32602) is ``core.errors.InvalidInput``. Importing this module registers the classes with
``core.errors.error_for_code``, so the client turns these codes back into the same classes.
"""

from __future__ import annotations

from ..core.errors import FlairError


class ParseError(FlairError):
    code = -32700


class InvalidRequest(FlairError):
    code = -32600


class MethodNotFound(FlairError):
    code = -32601


class InternalError(FlairError):
    code = -32603


__all__ = ["InternalError", "InvalidRequest", "MethodNotFound", "ParseError"]
