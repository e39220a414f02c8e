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
from ..tensors.safetensors_file import FileSource, ShardedSource, open_source

if TYPE_CHECKING:
    from ..tensors.lora import LoraAdapter
    from ..tensors.safetensors_io import StateDict

MAX_WEIGHTS_BYTES = 64 << 30
#: The largest adapter_model.safetensors read (whole, into memory): rank 64 on every linear layer of a 70B-value
#: model is about 1.7 GB.
MAX_ADAPTER_BYTES = 8 << 30
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def input_path(text: str, what: str, *, folder: bool = False) -> Path:
    """The existing file (or, with ``folder``, folder) ``text`` names, refused unless absolute and, a file, at most
    ``MAX_WEIGHTS_BYTES`` long."""
    path = Path(text)
    if not path.is_absolute():
        raise InvalidInput(f"{what} must be an absolute path, got {text!r}", path=text)
    if folder and path.is_dir():
        return path
    if not path.is_file():
        kind = "a file or a folder" if folder else "a file"
        raise InvalidInput(f"{what} {text} does not exist or is not {kind}", path=text)
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
    """The tensors of the weights ``text`` names (as ``open_weights`` reads them), in memory; ``what`` names it in
    errors."""
    from ..tensors.safetensors_io import load_source

    with open_weights(text, what) as source:
        return load_source(source)


def open_weights(text: str, what: str) -> FileSource | ShardedSource:
    """The weights ``text`` names (an absolute path): a safetensors file, a sharded checkpoint's
    ``model.safetensors.index.json``, or a folder holding either (``safetensors_file.open_source``), headers
    checked, to be read tensor by tensor (``with open_weights(...) as source``); ``what`` names it in errors."""
    return open_source(input_path(text, what, folder=True))


def is_adapter(text: str) -> bool:
    """Whether ``text`` names a PEFT adapter: a folder holding adapter_config.json, or an
    adapter_model.safetensors file with one beside it."""
    path = Path(text)
    folder = path if path.is_dir() else path.parent
    return path.is_absolute() and (folder / ADAPTER_CONFIG).is_file() and (path.is_dir() or path.name.endswith(
        ".safetensors"))


def read_adapter(text: str, what: str) -> LoraAdapter:
    """The PEFT LoRA adapter ``text`` names (an absolute path): a folder as PEFT's ``save_pretrained`` writes it,
    or its adapter_model.safetensors with adapter_config.json beside it; checked (``tensors.lora.load_adapter``)."""
    from ..tensors.lora import MAX_CONFIG_BYTES, load_adapter

    path = input_path(text, what, folder=True)
    weights = path / ADAPTER_WEIGHTS if path.is_dir() else path
    config = weights.parent / ADAPTER_CONFIG
    for needed in (weights, config):
        if not needed.is_file():
            raise InvalidInput(f"{what} {text} has no {needed.name}: a PEFT adapter is a folder holding "
                               f"{ADAPTER_WEIGHTS} and {ADAPTER_CONFIG}", path=text)
    if weights.stat().st_size > MAX_ADAPTER_BYTES:
        raise InvalidInput(f"{weights} is larger than {MAX_ADAPTER_BYTES >> 30} GiB, more than an adapter holds",
                           path=text)
    with config.open("rb") as file:  # load_adapter refuses it if longer
        config_bytes = file.read(MAX_CONFIG_BYTES + 1)
    return load_adapter(weights.read_bytes(), config_bytes)


def output_folder(text: str, overwrite: bool) -> Path:
    """The folder ``text`` names to write a sharded checkpoint in, refused unless absolute, in an existing folder,
    and new, empty, or ``overwrite``."""
    path = output_path(text, overwrite=True)
    if path.exists() and not path.is_dir():
        raise InvalidInput(f"{text} is a file: a sharded checkout writes a folder", path=text)
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise InvalidInput(f"folder {text} is not empty: pass overwrite (--force) to write into it", path=text)
    return path


__all__ = ["MAX_ADAPTER_BYTES", "MAX_WEIGHTS_BYTES", "input_path", "is_adapter", "open_weights", "output_folder",
           "output_path", "read_adapter", "read_weights"]
