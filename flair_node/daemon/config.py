"""The daemon's TOML configuration: one frozen dataclass per ``[section]``, gathered in ``NodeConfig``.

Each key is written once, as a dataclass field whose metadata (a ``Setting``) holds its documentation and what a
valid value is. Everything else is derived from those fields, so it cannot drift:

- ``NodeConfig.from_toml`` / ``load``: the one generic loader (unknown sections and keys, types, ranges, choices,
  TOML arrays to tuples), then ``NodeConfig.check`` (each field, then the few checks across fields);
- ``default_toml()``: the documented example with every key at its default, which ``configs/node.toml`` is exactly
  (``python -m flair_node.daemon.config > configs/node.toml`` regenerates it; a unit test compares them);
- ``reference_markdown()``: the configuration reference, a table per section
  (``python -m flair_node.daemon.config --markdown``).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import sys
import textwrap
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from ..core.errors import InvalidInput

_LEVELS = ("debug", "info", "warning", "error")
_META = "flair.setting"  # the key of a field's ``Setting`` in its metadata
_WIDTH = 113  # comment lines of the generated TOML, "# " included
_HEADER = ("flair-node configuration. Every key is shown with its default; a file may set any subset.",
           "Read from `flair-node run --config FILE`, else HOME/config.toml (written by `flair-node init-home`).")
_STRINGS = tuple[str, ...]


@dataclass(frozen=True)
class Setting:
    """How one key is documented and checked (the metadata of its field; see ``setting``).

    A value must first have the field's type (``bool``, ``int``, ``float``, ``str`` or ``tuple[str, ...]``; a bool is
    never taken for a number). Then, when given: ``range`` bounds a number, ``choices`` lists the allowed strings, and
    ``valid`` tests anything else (it may raise ``InvalidInput`` itself for a more precise message). ``optional``: the
    empty string is allowed (it turns the feature off) and skips ``valid``. ``expect`` says what a valid value is, for
    error messages and the reference, where ``range`` or ``choices`` cannot say it.
    """

    doc: str
    expect: str = ""
    range: tuple[float, float] | None = None
    unit: str = ""
    choices: tuple[str, ...] = ()
    optional: bool = False
    valid: Callable[[Any], bool] | None = None


def setting(default: Any, doc: str, **spec: Any) -> Any:
    """A config field: its ``default`` and its ``Setting(doc, **spec)``, as a dataclass field."""
    return field(default=default, metadata={_META: Setting(doc, **spec)})


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_multiaddr(text: str) -> bool:
    return text.startswith("/")


def _is_peer_list(addrs: tuple[str, ...]) -> bool:
    return all(_is_multiaddr(a) and "/p2p/" in a for a in addrs)


def _is_cluster(cluster: str) -> bool:
    """Whether ``cluster`` names a cluster or an RPC URL; ``InvalidInput`` (saying what is accepted) if not."""
    from ..protocol.anchoring.chain import cluster_url

    cluster_url(cluster)
    return True


def _is_program_address(text: str) -> bool:
    """Whether ``text`` is a base58 Solana address (the chain client is imported only when a registry is configured)."""
    from ..protocol.anchoring.chain import parse_address

    try:
        parse_address(text)
    except InvalidInput:
        return False
    return True


@dataclass(frozen=True)
class ApiConfig:
    """The JSON-RPC API that the `flair` CLI and the Python SDK talk to."""

    host: str = setting(
        "127.0.0.1",
        "JSON-RPC 2.0 over HTTP for the `flair` CLI and the Python SDK. Only loopback addresses are accepted: the "
        "API can read and write files as the user who runs the daemon, so it must never face a network.",
        expect="a loopback address such as 127.0.0.1 or ::1", valid=_is_loopback)
    port: int = setting(
        0,
        "0 picks a free port; the URL actually bound is written to HOME/api.json together with a fresh token.",
        range=(0, 65535))
    max_request_bytes: int = setting(
        1 << 20,
        "Largest JSON-RPC request body accepted, in bytes (tensors travel as files, never in requests).",
        range=(1024, 1 << 26), unit="bytes")


@dataclass(frozen=True)
class LogConfig:
    """What the daemon logs (to standard error)."""

    level: str = setting("info", "One of: debug, info, warning, error.", choices=_LEVELS)


@dataclass(frozen=True)
class P2PConfig:
    """The node's libp2p host: gossip of commits and moves, sync with peers, Bitswap for payload blocks."""

    listen: str = setting(
        "/ip4/127.0.0.1/tcp/0",
        "Where the node's libp2p host (TCP, Noise, Yamux; peer id from the node's transport key) listens. Port 0 "
        "picks a free one; `node.status` shows the full addresses. Peers fetch payload blocks from it over Bitswap.",
        expect="a multiaddr such as /ip4/0.0.0.0/tcp/4001", valid=_is_multiaddr)
    bootstrap: tuple[str, ...] = setting(
        (),
        "Peers to dial at start, and again whenever the connection is lost: multiaddrs ending in /p2p/<peer id> "
        "(another node's `flair peers` prints its own). Commits and moves are gossiped to connected peers.",
        expect="a list of multiaddrs ending in /p2p/<peer id>", valid=_is_peer_list)
    sync_interval: float = setting(
        30.0,
        "Every this many seconds the node pulls each repository from every connected peer that is a member of it, "
        "so it catches up after being offline or cut off (a pull that finds nothing new costs one small request).",
        range=(0.1, 86400), unit="seconds")
    mdns: bool = setting(
        False,
        "Find peers on the local network by multicast DNS. Off by default: it announces the node on the LAN.")
    dht: str = setting(
        "auto",
        "Find the nodes of your repositories with no address given (`flair clone REPO_ID`): the node publishes "
        "locators only members can compute (and, for a week after each invitation, one the invitee can) in a "
        "Kademlia DHT reached through the bootstrap peers. \"server\" also answers others' DHT queries and stores "
        "their records (for nodes others can dial); \"client\" only asks and publishes (behind NAT); \"auto\": "
        "a server once peers' dial-backs show others can reach this node, a client until then; \"off\": no DHT, "
        "peers only by address.",
        choices=("auto", "server", "client", "off"))
    relay_service: bool = setting(
        False,
        "Serve as a circuit relay: nodes behind NAT reserve a slot here and are dialled through it, end to end "
        "encrypted (the relay sees who talks to whom and how much). For a public node that others can dial, such "
        "as a bootstrap node. Every node reserves slots on relays it is connected to when it learns it cannot be "
        "dialled, and tries to upgrade relayed connections to direct ones by hole punching.")
    relay_reservations: int = setting(
        128, "With relay_service: peers that may hold a slot here at once.", range=(1, 100_000))
    relay_circuit_mb: int = setting(
        1024, "With relay_service: data one relayed connection may carry (both directions together) before the "
              "relay resets it (the peers then dial again).", range=(1, 1 << 20), unit="MB")
    relay_circuit_s: int = setting(
        3600, "With relay_service: how long one relayed connection may last.", range=(10, 7 * 86400),
        unit="seconds")


@dataclass(frozen=True)
class RoundsConfig:
    """Whether this node aggregates the rounds it is elected for."""

    aggregate: bool = setting(
        True,
        "Merge the rounds this node is entitled to as soon as they are ready (K contributions, or the deadline "
        "passed): every member computes the same aggregator for each round, and when it is gone the next one takes "
        "over. Off: this node never aggregates on its own (`flair round merge` still does, when it is this node's "
        "turn); in secure rounds it still masks its own contributions and reveals its shares.")


@dataclass(frozen=True)
class TensorsConfig:
    """How the node works on weights."""

    preload: bool = setting(
        False,
        "Load torch and the merge kernel in the background as the node starts (about 2 s of one core, and 300 MB "
        "of memory held from then on), so that the first merge, diff or round after a start does not wait for "
        "them; `node.status` shows when they are loaded. For a node that merges or aggregates. Off: an idle node "
        "holds about 90 MB, and they are loaded by the first operation that needs them (commits, checkouts and "
        "syncing never do).")


@dataclass(frozen=True)
class IpfsConfig:
    """Pinning payloads on the user's own Kubo (IPFS) node, besides the node's built-in Bitswap."""

    kubo_api: str = setting(
        "",
        "Also pin every payload DAG on your own Kubo node, through its RPC API (a multiaddr such as "
        '"/ip4/127.0.0.1/tcp/5001/http"). Empty: off. Blocks keep their CIDs there; failures are retried with '
        "backoff from a persisted queue and never block a local commit. Payloads are encrypted, so Kubo stores "
        "ciphertext.",
        expect="a multiaddr such as /ip4/127.0.0.1/tcp/5001/http", optional=True, valid=_is_multiaddr)


@dataclass(frozen=True)
class ProofsConfig:
    """EZKL proofs that round merges were computed correctly."""

    srs: str = setting(
        "",
        "The production SRS file (from a ceremony: EZKL publishes one per circuit size, kzg<k>.srs) this node names "
        "when its owner turns proofs on (`flair policy REPO --proof-chunk N`) without --proof-srs. Empty: the node "
        "makes a development SRS with ezkl.gen_srs, whose secret is not destroyed (proofs then convince only who "
        "trusts it).",
        expect="the absolute path of an SRS file", optional=True, valid=lambda path: Path(path).is_absolute())
    prove: bool = setting(
        True,
        "Prove the round merges this node makes, in a worker process, and announce the proofs. Off: this node still "
        "verifies other aggregators' proofs, but leaves its own merges unproven.")
    memory_mb: int = setting(
        8192,
        "The proving worker is stopped (and the proof given up) once its resident memory passes this many MB.",
        range=(256, 1 << 20), unit="MB")


@dataclass(frozen=True)
class ChainConfig:
    """Solana: anchors of round merges, ownership tokens, and the flair_registry program."""

    cluster: str = setting(
        "",
        "The Solana cluster this node anchors its round merges on, mints and moves ownership tokens on, and checks "
        'others\' anchors and handovers on: "local" (`flair-node localnet` on its default port 8899), "devnet", '
        '"testnet", "mainnet-beta", or any RPC URL. Empty: no anchoring, no token (handovers the owner signed are '
        "still taken). The node's identity key is its wallet (`flair whoami` shows the address); anchoring a commit "
        "costs about 0.0069 SOL, almost all of it rent.",
        expect="local, devnet, testnet, mainnet-beta or an RPC URL", optional=True, valid=_is_cluster)
    commitment: str = setting(
        "confirmed",
        'How final an anchor, token or handover transaction must be before it counts: "confirmed" or "finalized".',
        choices=("confirmed", "finalized"))
    registry: str = setting(
        "",
        "The address of the flair_registry program (anchor_program/) on that cluster. Set: the owner's node keeps "
        "each repository's owner, policy hash and members there, and members record each branch's round merges. "
        "Empty: off. Needs chain.cluster.",
        expect="the flair_registry program's address (base58)", optional=True, valid=_is_program_address)


@dataclass(frozen=True)
class NodeConfig:
    """The whole configuration: one field per ``[section]``, in the order of the documented file."""

    api: ApiConfig = field(default_factory=ApiConfig)
    log: LogConfig = field(default_factory=LogConfig)
    p2p: P2PConfig = field(default_factory=P2PConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    tensors: TensorsConfig = field(default_factory=TensorsConfig)
    ipfs: IpfsConfig = field(default_factory=IpfsConfig)
    proofs: ProofsConfig = field(default_factory=ProofsConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)

    @classmethod
    def from_toml(cls, text: str, source: str = "config") -> NodeConfig:
        """The configuration ``text`` sets (defaults elsewhere); ``InvalidInput`` naming ``source`` if it is wrong."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"{source} is not valid TOML: {exc}") from exc
        known = _sections()
        for name, values in data.items():
            if name not in known or not isinstance(values, dict):
                raise InvalidInput(f"{source}: unknown section [{name}] (known: {', '.join(known)})")
            keys = _keys(known[name])
            for key in values:
                if key not in keys:
                    raise InvalidInput(f"{source}: unknown key {name}.{key}")
        config = cls(**{name: section(**{key: _from_toml_value(value, _keys(section)[key][0])
                                         for key, value in data.get(name, {}).items()})
                        for name, section in known.items()})
        config.check(source)
        return config

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        """The configuration in the TOML file at ``path``."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise InvalidInput(f"no config file at {path}") from None
        return cls.from_toml(text, str(path))

    def check(self, source: str = "config") -> None:
        """Raise ``InvalidInput`` (naming ``source``) at the first value that is not allowed.

        Each field is checked against its ``Setting`` first; the checks that involve several fields follow.
        """
        for name, section in _sections().items():
            for key, (kind, spec) in _keys(section).items():
                _check_value(getattr(getattr(self, name), key), kind, spec, f"{name}.{key}", source)
        if self.chain.registry and not self.chain.cluster:
            raise InvalidInput(f"{source}: chain.registry needs chain.cluster")


@functools.cache
def _sections() -> dict[str, type]:
    """Each section's name and dataclass, in the order of ``NodeConfig``'s fields."""
    hints = get_type_hints(NodeConfig)
    return {f.name: hints[f.name] for f in fields(NodeConfig)}


@functools.cache
def _keys(section: type) -> dict[str, tuple[Any, Setting]]:
    """Each key of ``section`` with its type and ``Setting``, in the order of its fields."""
    hints = get_type_hints(section)
    return {f.name: (hints[f.name], f.metadata[_META]) for f in fields(section)}


def _from_toml_value(value: Any, kind: Any) -> Any:
    """``value`` as TOML gave it, turned into the field's type where that is lossless (``check`` does the rest)."""
    if kind == _STRINGS and isinstance(value, list):
        return tuple(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _has_type(value: Any, kind: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if kind == _STRINGS:
        return isinstance(value, tuple) and all(isinstance(item, str) for item in value)
    raise TypeError(f"config fields are bool, int, float, str or tuple[str, ...], not {kind!r}")


def _check_value(value: Any, kind: Any, spec: Setting, name: str, source: str) -> None:
    """Raise ``InvalidInput`` unless ``value`` is allowed for the key ``name``."""
    if not _has_type(value, kind):
        ok = False
    elif spec.optional and value == "":
        ok = True
    else:
        try:
            ok = (spec.range is None or spec.range[0] <= value <= spec.range[1]) \
                and (not spec.choices or value in spec.choices) \
                and (spec.valid is None or spec.valid(value))
        except InvalidInput as exc:  # a ``valid`` that says precisely what is wrong
            raise InvalidInput(f"{source}: {exc}") from None
    if not ok:
        raise InvalidInput(f"{source}: {name} must be {_expectation(kind, spec)}")


def _expectation(kind: Any, spec: Setting) -> str:
    """What a valid value is, in words: "an integer from 0 to 65535", "one of confirmed, finalized"..."""
    if spec.expect:
        return spec.expect
    if kind is bool:
        return "true or false"
    if spec.choices:
        return f"one of {', '.join(spec.choices)}"
    if spec.range is not None:
        if spec.unit:
            noun = f"{'a number' if kind is float else 'a whole number'} of {spec.unit}"
        else:
            noun = "a number" if kind is float else "an integer"
        return f"{noun} from {spec.range[0]} to {spec.range[1]}"
    return {str: "a string", int: "an integer", float: "a number"}.get(kind, "a list of strings")


def _toml_value(value: Any) -> str:
    """``value`` as a TOML literal (a JSON string is a valid TOML basic string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(_toml_value(item) for item in value) + "]"


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, _WIDTH, initial_indent="# ", subsequent_indent="# ",
                         break_long_words=False, break_on_hyphens=False)


def default_toml() -> str:
    """The documented configuration file: every key at its default, each after a comment saying what it does."""
    lines = [f"# {line}" for line in _HEADER]
    for name, section in _sections().items():
        lines += ["", f"[{name}]"]
        for key, (_, spec) in _keys(section).items():
            lines += _comment(spec.doc)
            lines.append(f"{key} = {_toml_value(getattr(section(), key))}")
    return "\n".join(lines) + "\n"


def _markdown_text(text: str) -> str:
    """``text`` for a Markdown table cell: pipes escaped, and angle brackets too outside `code`."""
    parts = text.replace("|", "\\|").split("`")
    return "`".join(part if i % 2 else part.replace("<", "&lt;").replace(">", "&gt;") for i, part in enumerate(parts))


def _type_text(kind: Any, spec: Setting) -> str:
    """The Type column: the TOML type, and what values it takes when the type alone does not say."""
    base = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(kind, "array")
    if kind is bool:
        return base
    if spec.range is not None:
        unit = f" ({spec.unit})" if spec.unit else ""
        return f"{base}{unit}, {spec.range[0]} to {spec.range[1]}"
    if spec.choices:
        return f"{base}, one of " + ", ".join(f'`"{choice}"`' for choice in spec.choices)
    if spec.expect:
        return f"{base}: {spec.expect}" + (", or empty" if spec.optional else "")
    return base


def reference_markdown() -> str:
    """The configuration reference for the documentation: a table per section (key, type, default, meaning)."""
    lines = ["# Configuration reference", "", *_HEADER, "",
             "This page is generated from `flair_node/daemon/config.py` "
             "(`python -m flair_node.daemon.config --markdown`); so is `configs/node.toml`."]
    for name, section in _sections().items():
        lines += ["", f"## [{name}]", "", section.__doc__ or "", "",
                  "| Key | Type | Default | Meaning |", "| --- | --- | --- | --- |"]
        for key, (kind, spec) in _keys(section).items():
            default = _toml_value(getattr(section(), key))
            lines.append(f"| `{name}.{key}` | {_markdown_text(_type_text(kind, spec))} | `{default}` "
                         f"| {_markdown_text(spec.doc)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference_markdown() if sys.argv[1:] == ["--markdown"] else default_toml())
