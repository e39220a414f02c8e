"""flair_registry, built for tests and demos from ``anchor_program/`` (which is not a package: its ``build.py`` is
loaded by path, once per process)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "anchor_program" / "build.py"


def anchor_build() -> ModuleType:
    """``anchor_program/build.py`` as a module (``compile``, ``link``, ``build``, ``BuildError``)."""
    module = sys.modules.get("flair_anchor_build")
    if module is None:
        spec = importlib.util.spec_from_file_location("flair_anchor_build", BUILD_SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # before exec: dataclasses look their module up there
        spec.loader.exec_module(module)
    return module


def registry_program() -> Path:
    """The built flair_registry .so (rebuilt only when a source is newer); ``BuildError`` without clang-19."""
    path: Path = anchor_build().build()
    return path
