"""mkdocs hook: the reference pages, written from the code at every build so they never drift from it.

``docs/reference/{cli,api,config}.md`` are not files in the repository. Each build asks the package that owns
the interface for its own description (the argparse verbs, the JSON-RPC registry, the configuration's
dataclasses) and adds the Markdown it returns to the site as a generated page. A renamed verb, method or key
changes the page with it, and a broken generator fails the strict build instead of leaving a stale page.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

#: Site path -> (module, function) whose ``function() -> str`` returns the page's Markdown.
PAGES: dict[str, tuple[str, str]] = {
    "reference/cli.md": ("flair_node.cli", "reference_markdown"),
    "reference/api.md": ("flair_node.api", "reference_markdown"),
    "reference/config.md": ("flair_node.daemon.config", "reference_markdown"),
}


def _generator(module: str, name: str) -> Callable[[], str]:
    try:
        function = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"docs/hooks/reference.py: {module}.{name}() is needed to write the reference "
                          f"pages, and it cannot be loaded: {exc}") from exc
    if not callable(function):
        raise PluginError(f"docs/hooks/reference.py: {module}.{name} is not a function")
    return function  # type: ignore[no-any-return]


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add each reference page, generated now, to the files the site is built from."""
    for src_uri, (module, name) in PAGES.items():
        markdown = _generator(module, name)()
        if not isinstance(markdown, str) or not markdown.strip():
            raise PluginError(f"docs/hooks/reference.py: {module}.{name}() returned no Markdown")
        existing = files.get_file_from_path(src_uri)
        if existing is not None:  # a hand-written page of the same name would be silently shadowed
            raise PluginError(f"docs/{src_uri} is generated at build time; remove the file of that name")
        files.append(File.generated(config, src_uri, content=markdown))
    return files
