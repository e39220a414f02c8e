"""A node's home folder: identity, config, storage, and the API file the CLI reads.

    HOME/identity.json   Solana CLI keypair of the node: its member key, which signs what it writes (0600)
    HOME/transport.json  the keypair of its libp2p identity, made on first start, never a member key (0600)
    HOME/config.toml     daemon configuration (optional)
    HOME/api.json        {"url", "token"} of the running daemon (0600), removed on a clean stop
    HOME/daemon.lock     held by the running daemon: one daemon per home
    HOME/objects/        commit and repository records, under their ids
    HOME/blocks/         payload blocks (UnixFS DAGs), under the SHA-256 of each block
    HOME/repos/ID/refs/  branches of each repository
    HOME/proofs/         circuits, SRS files, proof verdicts, and the proving worker's scratch (``.job-*``)
    HOME/anchoring/ HOME/ownership/ HOME/kubo/   the chain and pinning services' state
    HOME/tmp/            scratch space for the CLI and SDK: theirs, never swept by the daemon
    HOME/localnet/       ``flair-node localnet``'s default state folder, if used: its own, never swept either

The home is private: the folder is 0700 (``init`` creates it so, and the daemon sets it again on every start),
and the daemon runs with umask 077, so every file in it is 0600 and every folder 0700. ``OWN_FOLDERS`` are the
daemon's own stores, the only places where its start-up sweeps temp files and scratch of an interrupted run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..api.client import API_FILE
from ..core.errors import FlairError
from ..core.identity import Identity
from ..storage.atomic import atomic_write
from ..storage.keyfile import read_keypair, write_keypair
from .config import NodeConfig

IDENTITY_FILE = "identity.json"
TRANSPORT_FILE = "transport.json"
CONFIG_FILE = "config.toml"
#: The folders only the daemon writes (besides files at the top of the home), swept for leftovers on start.
OWN_FOLDERS = ("objects", "blocks", "repos", "proofs", "anchoring", "ownership", "kubo")
DEFAULT_CONFIG = (Path(__file__).resolve().parents[2] / "configs" / "node.toml")


@dataclass(frozen=True)
class Home:
    path: Path

    @property
    def identity_file(self) -> Path:
        return self.path / IDENTITY_FILE

    @property
    def api_file(self) -> Path:
        return self.path / API_FILE

    @property
    def tmp(self) -> Path:
        return self.path / "tmp"

    @property
    def own_folders(self) -> list[Path]:
        """The folders of the daemon's own stores (``OWN_FOLDERS``), whether they exist yet or not."""
        return [self.path / name for name in OWN_FOLDERS]

    def make_private(self) -> None:
        """Set the home folder to 0700 (an older home, or one made by hand, may be open to others)."""
        os.chmod(self.path, 0o700)

    def exists(self) -> bool:
        return self.identity_file.exists()

    def init(self) -> Identity:
        """Create the home with a new identity; refuse to touch an existing one."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.make_private()
        identity = Identity.generate()
        write_keypair(self.identity_file, identity)
        self.tmp.mkdir(mode=0o700, exist_ok=True)
        config = self.path / CONFIG_FILE
        if not config.exists():
            text = DEFAULT_CONFIG.read_text() if DEFAULT_CONFIG.exists() else ""
            atomic_write(config, text.encode())
        return identity

    def identity(self) -> Identity:
        if not self.exists():
            raise FlairError(f"{self.path} is not a flair-node home: run `flair-node init-home {self.path}`",
                             home=str(self.path))
        return read_keypair(self.identity_file)

    def transport(self) -> Identity:
        """The key of this node's libp2p identity (its peer id), made on first use: a key of its own, so that a
        connection tells a peer nothing about which member the node is (``protocol.hello``)."""
        path = self.path / TRANSPORT_FILE
        if not path.exists():
            write_keypair(path, Identity.generate())
        return read_keypair(path)

    def config(self, override: Path | None = None) -> NodeConfig:
        if override is not None:
            return NodeConfig.load(override)
        path = self.path / CONFIG_FILE
        return NodeConfig.load(path) if path.exists() else NodeConfig()

    def write_api_file(self, url: str, token: str) -> None:
        atomic_write(self.api_file, json.dumps({"url": url, "token": token}).encode())

    def remove_api_file(self) -> None:
        try:
            os.unlink(self.api_file)
        except FileNotFoundError:
            pass
