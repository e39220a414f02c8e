"""The files a request names: tensors never travel inside requests, the caller names a file the daemon reads or
writes, always by absolute path.

torch is imported by the functions that load weights into tensors, not at the top: a daemon that only streams
files to and from its store (``open_weights``, ``storage.pieces``) never imports it (see ``storage.repo`` and
``tests/integration/test_idle_daemon.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import InvalidInput
from ..tensors.safetensors_file import FileSource

if TYPE_CHECKING:
    from ..tensors.safetensors_io import StateDict

MAX_WEIGHTS_BYTES = 64 << 30


def input_path(text: str, what: str) -> Path:
    """The existing file ``text`` names, refused unless absolute and at most ``MAX_WEIGHTS_BYTES`` long."""
    path = Path(text)
    if not path.is_absolute():
        raise InvalidInput(f"{what} must be an absolute path, got {text!r}", path=text)
    if not path.is_file():
        raise InvalidInput(f"{what} {text} does not exist or is not a file", path=text)
    if path.stat().st_size > MAX_WEIGHTS_BYTES:
        raise InvalidInput(f"{what} {text} is larger than {MAX_WEIGHTS_BYTES >> 30} GiB", path=text)
    return path


def output_path(text: str, overwrite: bool) -> Path:
    """The file ``text`` names to write, refused unless absolute, in an existing folder, and new or ``overwrite``."""
    path = Path(text)
    if not path.is_absolute():
        raise InvalidInput(f"output must be an absolute path, got {text!r}", path=text)
    if not path.parent.is_dir():
        raise InvalidInput(f"folder {path.parent} does not exist", path=text)
    if path.exists() and not overwrite:
        raise InvalidInput(f"{text} exists: pass overwrite (--force) to replace it", path=text)
    return path


def read_weights(text: str, what: str) -> StateDict:
    """The tensors of the safetensors file ``text`` names (an absolute path); ``what`` names it in errors."""
    from ..tensors.safetensors_io import load_file

    return load_file(input_path(text, what))


def open_weights(text: str, what: str) -> FileSource:
    """The safetensors file ``text`` names (an absolute path), its header checked, to be read tensor by tensor
    (``with open_weights(...) as source``); ``what`` names it in errors."""
    return FileSource(input_path(text, what))


__all__ = ["MAX_WEIGHTS_BYTES", "input_path", "open_weights", "output_path", "read_weights"]
