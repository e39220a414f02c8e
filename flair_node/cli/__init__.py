"""``flair``: the command line, a client of the daemon's JSON-RPC API (entry point ``flair_node.cli.main:main``)."""

from .reference import reference_markdown as reference_markdown

__all__ = ["reference_markdown"]
