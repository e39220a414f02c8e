"""``flair``: the git-like command line. It talks to the daemon only through the JSON-RPC API.

Each verb is one ``Verb`` object (``cli/verbs/``): its arguments, its API call and its text. This module only
parses the command line, finds the verb, calls it and prints the answer, as text or, with ``--json``, as the API
returned it. Errors from the daemon exit 1 with the error's message (a JSON error object with ``--json``); a
command line that does not parse exits 2 with its usage, or with ``--json`` anywhere on it, a JSON error object
(code ``InvalidInput``'s, the usage in its data).
"""

from __future__ import annotations

import json
import sys

from ..api.client import ApiClient
from ..core.errors import FlairError, InvalidInput
from .parser import UsageError, build_parser
from .verbs import VERBS
from .verbs._base import node_home


def main(argv: list[str] | None = None) -> int:
    """Run ``flair`` with ``argv`` (default: the process's arguments); the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        if "--json" in argv:
            print(json.dumps({"error": {"code": InvalidInput.code, "message": exc.message,
                                        "data": {"usage": exc.usage.strip()}}}))
        else:
            print(f"{exc.usage}flair: error: {exc.message}", file=sys.stderr)
        return 2
    args.home = getattr(args, "home", None)
    args.json = getattr(args, "json", False)
    verb = next(v for v in VERBS if v.name == args.verb)
    try:
        client = ApiClient.from_home(node_home(args.home))
        result = verb.call(client, args)
        text = verb.text(result, args)
    except FlairError as exc:
        if args.json:
            print(json.dumps({"error": {"code": exc.code, "message": exc.message, "data": exc.data}}))
        else:
            print(f"flair: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    elif text:
        print(text)
    return 0 if verb.ok(result) else 1


if __name__ == "__main__":
    sys.exit(main())
