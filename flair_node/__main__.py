"""``flair-node`` (also ``python -m flair_node``): run the daemon, create a home, run the demo, or serve a development
Solana chain. It sits on top of every layer, so the daemon itself never imports the demos or the development chain."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import trio

from . import __version__
from .core.errors import FlairError
from .tensors import heap


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flair-node", description="Flair's peer-to-peer node daemon.")
    parser.add_argument("--version", action="version", version=f"flair-node {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon until SIGINT/SIGTERM")
    run.add_argument("--home", type=Path, default=_default_home(), help="node home (default: $FLAIR_HOME)")
    run.add_argument("--config", type=Path, help="config TOML (default: HOME/config.toml, else built-in defaults)")
    run.add_argument("--port", type=int, help="API port, overriding the config (0 = pick one)")

    init = sub.add_parser("init-home", help="create a node home with a new identity")
    init.add_argument("home", type=Path, nargs="?", default=_default_home())

    demo = sub.add_parser("demo", help="train a small model with three contributors, merge, and show the log; "
                                       "with --nodes N, N daemons train it in rounds with a rotating aggregator")
    demo.add_argument("--keep", type=Path, help="use (and keep) this folder for the home(s), not a temporary one")
    demo.add_argument("--nodes", type=int, default=1,
                      help="daemons to run: 1 (default) for the single-node demo, 2 to 8 for rounds between nodes")
    demo.add_argument("--rounds", type=int, help="rounds to train (default: 2 on one node, 5 between nodes)")
    demo.add_argument("--plot", type=Path, help="where the network demo plots accuracy per round "
                                                "(default: ./flair-demo-rounds.png)")

    localnet = sub.add_parser("localnet", help="serve a development Solana chain (LiteSVM) as JSON-RPC on "
                                               "127.0.0.1 until SIGINT/SIGTERM")
    localnet.add_argument("--port", type=int, default=8899, help="port to listen on (default: 8899, 0 = pick one)")
    localnet.add_argument("--dir", type=Path, help="state folder (default: $FLAIR_HOME/localnet, else "
                                                   "~/.flair-localnet)")
    localnet.add_argument("--program", action="append", default=[], metavar="PROGRAM_ID=PATH",
                          help="serve the SBF program in PATH (a .so of at most 10 MiB) at PROGRAM_ID (base-58) "
                               "from the start, as if deployed with the upgradeable loader, without upgrade "
                               "authority; repeatable. Programs are not transactions, so they are not in the "
                               "ledger: give them again on every start")
    return parser


def _default_home() -> Path | None:
    env = os.environ.get("FLAIR_HOME")
    return Path(env) if env else None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "init-home":
            return _init_home(args.home)
        if args.command == "run":
            return _run(args)
        if args.command == "localnet":
            from .devchain.server import run_localnet

            os.umask(0o077)  # the faucet's key and the ledger are the localnet's alone
            return run_localnet(port=args.port, state_dir=args.dir, programs=args.program)
        try:
            from .demo.network import run_network_demo
            from .demo.single import run_demo
        except ModuleNotFoundError as exc:
            print(f"flair-node: the demo needs {exc.name}, which the demo extra installs: "
                  "pip install 'flair-node[demo]' (./scripts/demo does it for you)", file=sys.stderr)
            return 1
        if args.nodes != 1:
            return run_network_demo(args.nodes, rounds=args.rounds, plot=args.plot, keep=args.keep)
        return run_demo(keep=args.keep, rounds=args.rounds)
    except FlairError as exc:
        print(f"flair-node: {exc}", file=sys.stderr)
        return 1


def _init_home(path: Path | None) -> int:
    from .daemon.home import Home

    if path is None:
        print("flair-node: name the home folder (or set FLAIR_HOME)", file=sys.stderr)
        return 2
    identity = Home(path).init()
    print(identity.public_key)
    return 0


def _run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .daemon.home import Home
    from .daemon.node import Node, run_until_signalled
    from .network.host import apply_process_defaults

    if args.home is None:
        print("flair-node: pass --home DIR (or set FLAIR_HOME)", file=sys.stderr)
        return 2
    home = Home(args.home)
    config = home.config(args.config)
    if args.port is not None:
        config = replace(config, api=replace(config.api, port=args.port))
        config.check("--port")
    logging.basicConfig(level=config.log.level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ezkl").setLevel(max(logging.WARNING, logging.getLogger().level))  # a line per proof step
    os.umask(0o077)  # the home is private: so is every file the daemon, EZKL and the proving worker make in it
    apply_process_defaults()  # py-libp2p's tuning, read from the environment
    heap.map_large_buffers()
    node = Node(home, config)
    try:
        trio.run(run_until_signalled, node)
    finally:
        node.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
