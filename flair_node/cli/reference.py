"""The ``flair`` command reference in Markdown, generated from the parser so it never drifts from the CLI.

The docs site includes ``reference_markdown()``'s text; ``tests/unit/test_cli_reference.py`` checks that it names
every verb. Nothing here is written by hand: a verb's description, usage and options are the ones ``flair VERB
--help`` prints.
"""

from __future__ import annotations

import argparse
from typing import Any

from .parser import build_parser

_COMMON = ("--home", "--json")  # documented once, at the top: every verb accepts them, before or after it


class _OneLineUsage(argparse.HelpFormatter):
    """Help laid out as if the terminal were endless: each usage on one line, whatever ``$COLUMNS`` says."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=100_000)


def reference_markdown() -> str:
    """Every ``flair`` verb with its description, usage line and options (name, help, default), as Markdown."""
    parser = build_parser(formatter_class=_OneLineUsage)
    top = [a for a in _actions(parser) if not isinstance(a, argparse._SubParsersAction)]
    out = [
        "# `flair` command reference",
        "",
        "Generated from the CLI's own parser (`flair_node.cli.reference_markdown()`): each section says what "
        "`flair VERB --help` says.",
        "",
        f"{parser.description}",
        "",
        "```",
        _usage(parser),
        "```",
        "",
        "Options every verb accepts, before or after the verb:",
        "",
        *_table(top),
    ]
    for name, sub in _verbs(parser).items():
        out += ["", f"## `flair {name}`", "", f"{sub.description}", "", "```", _usage(sub), "```"]
        own = [a for a in _actions(sub) if not set(a.option_strings) & set(_COMMON)]
        if own:
            out += ["", *_table(own)]
    return "\n".join(out) + "\n"


def _verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The verbs' subparsers by name, in the order of the help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    # argparse has no public list of a parser's arguments; ``_actions`` is what its own help formatter walks.
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def _usage(parser: argparse.ArgumentParser) -> str:
    return parser.format_usage().strip().removeprefix("usage: ")


def _table(actions: list[argparse.Action]) -> list[str]:
    rows = ["| argument | what it is | default |", "| --- | --- | --- |"]
    rows += [f"| `{_name(a)}` | {_cell(a.help or '')} | {_cell(_default(a))} |" for a in actions]
    return rows


def _name(action: argparse.Action) -> str:
    """How the argument is written: ``-m, --message MESSAGE``, ``--codec {exact,...}``, ``SRC``."""
    if not action.option_strings:
        return str(action.metavar or action.dest)
    if action.nargs == 0:  # a flag
        return ", ".join(action.option_strings)
    if action.metavar is not None:
        value = str(action.metavar)
    elif action.choices is not None:
        value = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        value = action.dest.upper()
    return ", ".join(action.option_strings) + " " + value


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if not action.option_strings:
        return {"?": "optional", "*": "any number", "+": "one or more"}.get(str(action.nargs), "")
    default: Any = action.default
    if action.nargs == 0:
        return "off" if default in (False, argparse.SUPPRESS) else str(default)
    if default is None or default is argparse.SUPPRESS or default == []:
        return ""
    return f"`{default}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
