"""The daemon's local JSON-RPC 2.0 API: a declarative method registry, the methods (``api.methods``, one module per
namespace, bound to an ``ApiContext``), a trio server, a synchronous client and the generated reference.

``ApiServer``, ``ApiContext`` and ``reference_markdown`` are imported lazily, on first use: the CLI imports
``ApiClient`` from here and must not pay for importing trio and h11 on every start.
"""

from typing import TYPE_CHECKING, Any

from .client import API_FILE as API_FILE
from .client import ApiClient as ApiClient
from .dispatch import Method as Method
from .dispatch import MethodTable as MethodTable
from .dispatch import Param as Param
from .dispatch import Registry as Registry
from .dispatch import openrpc_document as openrpc_document
from .errors import InternalError as InternalError
from .errors import InvalidRequest as InvalidRequest
from .errors import MethodNotFound as MethodNotFound
from .errors import ParseError as ParseError

if TYPE_CHECKING:
    from .context import ApiContext as ApiContext
    from .reference import reference_markdown as reference_markdown
    from .server import ApiServer as ApiServer


def __getattr__(name: str) -> Any:
    if name == "ApiServer":
        from .server import ApiServer

        return ApiServer
    if name == "ApiContext":
        from .context import ApiContext

        return ApiContext
    if name == "reference_markdown":
        from .reference import reference_markdown

        return reference_markdown
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["API_FILE", "ApiClient", "ApiContext", "ApiServer", "InternalError", "InvalidRequest", "Method",
           "MethodNotFound", "MethodTable", "Param", "ParseError", "Registry", "openrpc_document",
           "reference_markdown"]
