"""The ``flair`` argument parser, built from the verbs: one subparser per ``Verb``, in ``VERBS`` order."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from .verbs import VERBS, Verb


def build_parser(
    verbs: tuple[Verb, ...] = VERBS, *, formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter
) -> argparse.ArgumentParser:
    """The parser for ``flair [--home HOME] [--json] VERB ...``; the chosen verb's name lands in ``verb``.

    ``formatter_class`` is for the generated reference, which wants help laid out independently of the terminal.
    """
    # --home and --json may come before or after the verb: every subparser gets them from this parent too. Their
    # default is SUPPRESS so that, after the verb, they do not reset what came before it; ``main`` fills them in.
    common = _Parser(add_help=False)
    common.add_argument("--home", type=Path, default=argparse.SUPPRESS,
                        help="node home of the daemon to talk to (default: $FLAIR_HOME)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print machine-readable JSON")

    parser = _Parser(prog="flair", description="Version control for models trained together.", parents=[common],
                     formatter_class=formatter_class)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in verbs:
        verb.arguments(sub.add_parser(verb.name, help=verb.help, description=verb.help, parents=[common],
                                      formatter_class=formatter_class))
    return parser


class UsageError(Exception):
    """A command line ``flair`` cannot parse: ``message`` says why, ``usage`` how the command is used."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.message, self.usage = message, usage


class _Parser(argparse.ArgumentParser):
    """Raises ``UsageError`` instead of printing and exiting, so that ``main`` answers in the format asked for
    (``--json`` too). Its subparsers are of this class as well."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())
