"""The daemon's local JSON-RPC API: method registry, trio server, synchronous client."""

from .client import ApiClient as ApiClient
from .registry import Method as Method
from .registry import Param as Param
from .registry import Registry as Registry

__all__ = ["ApiClient", "Method", "Param", "Registry"]
