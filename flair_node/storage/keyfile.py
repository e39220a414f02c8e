"""The node's identity on disk: a Solana CLI keypair file (JSON array of 64 bytes), mode 0600."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from ..core.errors import AlreadyExists, FlairError, InvalidInput
from ..core.identity import Identity
from .atomic import atomic_write


def write_keypair(path: Path, identity: Identity) -> None:
    if path.exists():
        raise AlreadyExists(f"{path} already exists: refusing to overwrite an identity", path=str(path))
    atomic_write(path, json.dumps(list(identity.keypair_bytes())).encode(), mode=0o600)


def read_keypair(path: Path) -> Identity:
    try:
        mode = os.stat(path).st_mode
        text = path.read_text()
    except FileNotFoundError:
        raise FlairError(f"no identity at {path}: create one with `flair-node init-home`", path=str(path)) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise FlairError(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}): run `chmod 600 {path}`",
                         path=str(path))
    try:
        values = json.loads(text)
        if not (isinstance(values, list) and len(values) == 64 and all(isinstance(v, int) for v in values)):
            raise ValueError("not a JSON array of 64 integers")
        return Identity.from_keypair_bytes(bytes(values))
    except (ValueError, InvalidInput) as exc:
        raise FlairError(f"{path} is not a Solana keypair file: {exc}", path=str(path)) from None
