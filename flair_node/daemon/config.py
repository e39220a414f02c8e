"""The daemon's TOML configuration (``configs/node.toml`` documents every key and its default)."""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import InvalidInput

_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class NodeConfig:
    api_host: str = "127.0.0.1"
    api_port: int = 0
    max_request_bytes: int = 1 << 20
    log_level: str = "info"
    kubo_api: str = ""
    p2p_listen: str = "/ip4/127.0.0.1/tcp/0"
    p2p_bootstrap: tuple[str, ...] = ()
    p2p_sync_interval: float = 30.0
    p2p_mdns: bool = False
    rounds_aggregate: bool = True
    proofs_srs: str = ""
    proofs_prove: bool = True
    proofs_memory_mb: int = 8192
    chain_cluster: str = ""
    chain_commitment: str = "confirmed"
    chain_registry: str = ""

    @classmethod
    def from_toml(cls, text: str, source: str = "config") -> NodeConfig:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"{source} is not valid TOML: {exc}") from exc
        known = {"api": {"host", "port", "max_request_bytes"}, "log": {"level"}, "ipfs": {"kubo_api"},
                 "p2p": {"listen", "bootstrap", "sync_interval", "mdns"}, "rounds": {"aggregate"},
                 "proofs": {"srs", "prove", "memory_mb"}, "chain": {"cluster", "commitment", "registry"}}
        for section, values in data.items():
            if section not in known or not isinstance(values, dict):
                raise InvalidInput(f"{source}: unknown section [{section}] (known: {', '.join(known)})")
            for key in values:
                if key not in known[section]:
                    raise InvalidInput(f"{source}: unknown key {section}.{key}")
        api: dict[str, Any] = data.get("api", {})
        log: dict[str, Any] = data.get("log", {})
        ipfs: dict[str, Any] = data.get("ipfs", {})
        p2p: dict[str, Any] = data.get("p2p", {})
        rounds: dict[str, Any] = data.get("rounds", {})
        proofs: dict[str, Any] = data.get("proofs", {})
        chain: dict[str, Any] = data.get("chain", {})
        config = cls(
            api_host=api.get("host", cls.api_host),
            api_port=api.get("port", cls.api_port),
            max_request_bytes=api.get("max_request_bytes", cls.max_request_bytes),
            log_level=log.get("level", cls.log_level),
            kubo_api=ipfs.get("kubo_api", cls.kubo_api),
            p2p_listen=p2p.get("listen", cls.p2p_listen),
            p2p_bootstrap=tuple(p2p.get("bootstrap", cls.p2p_bootstrap)) if isinstance(p2p.get("bootstrap", []), list)
            else ("not a list",),
            p2p_sync_interval=p2p.get("sync_interval", cls.p2p_sync_interval),
            p2p_mdns=p2p.get("mdns", cls.p2p_mdns),
            rounds_aggregate=rounds.get("aggregate", cls.rounds_aggregate),
            proofs_srs=proofs.get("srs", cls.proofs_srs),
            proofs_prove=proofs.get("prove", cls.proofs_prove),
            proofs_memory_mb=proofs.get("memory_mb", cls.proofs_memory_mb),
            chain_cluster=chain.get("cluster", cls.chain_cluster),
            chain_commitment=chain.get("commitment", cls.chain_commitment),
            chain_registry=chain.get("registry", cls.chain_registry),
        )
        config.check(source)
        return config

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise InvalidInput(f"no config file at {path}") from None
        return cls.from_toml(text, str(path))

    def check(self, source: str = "config") -> None:
        try:
            loopback = ipaddress.ip_address(self.api_host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise InvalidInput(f"{source}: api.host {self.api_host!r} is not a loopback address")
        if not isinstance(self.api_port, int) or not 0 <= self.api_port <= 65535:
            raise InvalidInput(f"{source}: api.port must be an integer from 0 to 65535")
        if not isinstance(self.max_request_bytes, int) or not 1024 <= self.max_request_bytes <= 1 << 26:
            raise InvalidInput(f"{source}: api.max_request_bytes must be from 1024 to 67108864")
        if not isinstance(self.kubo_api, str) or (self.kubo_api and not self.kubo_api.startswith("/")):
            raise InvalidInput(f"{source}: ipfs.kubo_api must be a multiaddr such as /ip4/127.0.0.1/tcp/5001/http")
        if not isinstance(self.p2p_listen, str) or not self.p2p_listen.startswith("/"):
            raise InvalidInput(f"{source}: p2p.listen must be a multiaddr such as /ip4/0.0.0.0/tcp/4001")
        if not all(isinstance(a, str) and a.startswith("/") and "/p2p/" in a for a in self.p2p_bootstrap):
            raise InvalidInput(f"{source}: p2p.bootstrap is a list of multiaddrs ending in /p2p/<peer id>")
        if not isinstance(self.p2p_sync_interval, int | float) or not 0.1 <= self.p2p_sync_interval <= 86400:
            raise InvalidInput(f"{source}: p2p.sync_interval is a number of seconds from 0.1 to 86400")
        if not isinstance(self.p2p_mdns, bool):
            raise InvalidInput(f"{source}: p2p.mdns is true or false")
        if not isinstance(self.rounds_aggregate, bool):
            raise InvalidInput(f"{source}: rounds.aggregate is true or false")
        if not isinstance(self.proofs_srs, str) or self.proofs_srs and not Path(self.proofs_srs).is_absolute():
            raise InvalidInput(f"{source}: proofs.srs is the absolute path of an SRS file")
        if not isinstance(self.proofs_prove, bool):
            raise InvalidInput(f"{source}: proofs.prove is true or false")
        if not isinstance(self.proofs_memory_mb, int) or isinstance(self.proofs_memory_mb, bool) \
                or not 256 <= self.proofs_memory_mb <= 1 << 20:
            raise InvalidInput(f"{source}: proofs.memory_mb is an integer from 256 to 1048576")
        if not isinstance(self.chain_cluster, str):
            raise InvalidInput(f"{source}: chain.cluster is local, devnet, testnet, mainnet-beta or an RPC URL")
        if self.chain_cluster:
            from ..protocol.anchoring.chain import cluster_url

            try:
                cluster_url(self.chain_cluster)
            except InvalidInput as exc:
                raise InvalidInput(f"{source}: {exc}") from None
        if self.chain_commitment not in ("confirmed", "finalized"):
            raise InvalidInput(f"{source}: chain.commitment is confirmed or finalized")
        if self.chain_registry:
            from solders.pubkey import Pubkey

            try:
                Pubkey.from_string(self.chain_registry)
            except (ValueError, TypeError):
                raise InvalidInput(f"{source}: chain.registry is the flair_registry program's address (base58), "
                                   f"not {self.chain_registry!r}") from None
            if not self.chain_cluster:
                raise InvalidInput(f"{source}: chain.registry needs chain.cluster")
        if self.log_level not in _LEVELS:
            raise InvalidInput(f"{source}: log.level must be one of {', '.join(_LEVELS)}")
