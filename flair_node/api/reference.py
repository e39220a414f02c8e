"""The JSON-RPC API reference in Markdown, generated from the methods' own declarations so it never drifts.

``reference_markdown()`` renders the OpenRPC document ``rpc.discover`` answers -- every method of every namespace,
the daemon's services' included -- from a registry bound to no node, so it is built without starting a daemon
(``python -m flair_node.api.reference > api.md``). The docs site includes its text; ``tests/unit/test_api_reference.py``
checks that it lists every method.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .. import __version__
from .dispatch import openrpc_document
from .methods import build_registry

_TITLE = "flair-node"


def reference_markdown() -> str:
    """Every API method, grouped by namespace: its description, a table of its params, and its result."""
    document = openrpc_document(build_registry(None), _TITLE, __version__)
    namespaces: dict[str, list[dict[str, Any]]] = {}
    for method in document["methods"]:
        namespaces.setdefault(method["name"].split(".", 1)[0], []).append(method)
    out = [
        "# JSON-RPC API reference",
        "",
        "Generated from the daemon's method declarations (`flair_node.api.reference_markdown()`): it is the "
        f"OpenRPC {document['openrpc']} document `rpc.discover` answers, as a page.",
        "",
        "The daemon answers JSON-RPC 2.0 on `POST /` of the URL in `HOME/api.json`, to requests carrying "
        "`Authorization: Bearer TOKEN` (the token is in the same file). Params go by name (an object) or by "
        "position (an array, in the order listed); an optional param left out, or sent as `null`, takes its "
        "default. Invalid params are refused before the method runs, with code -32602 and the param's name.",
    ]
    for namespace, methods in namespaces.items():
        out += ["", f"## `{namespace}`"]
        for method in methods:
            out += ["", f"### `{method['name']}`", "", _text(method["summary"]), ""]
            if method["params"]:
                out += ["| param | type | required | default | description |", "| --- | --- | --- | --- | --- |"]
                out += [_param_row(p) for p in method["params"]]
            else:
                out.append("No params.")
            result = method["result"]["schema"]
            described = f": {_text(result['description'])}" if "description" in result else ""
            out += ["", f"Result: {_type(result)}{described}."]
    return "\n".join(out) + "\n"


def _param_row(param: dict[str, Any]) -> str:
    schema = param["schema"]
    default = f"`{json.dumps(schema['default'])}`" if "default" in schema else ""
    required = "yes" if param["required"] else "no"
    return f"| `{param['name']}` | {_type(schema)} | {required} | {_cell(default)} | {_text(param['description'])} |"


def _type(schema: dict[str, Any]) -> str:
    """What a value may be, in words: ```string`, at most 200 characters``, ``one of `"kzg"`, `"poseidon"```."""
    if "enum" in schema:
        return "one of " + ", ".join(_cell(f"`{json.dumps(v)}`") for v in schema["enum"])
    kind = f"`{schema['type']}`" if "type" in schema else "any JSON value"
    if "items" in schema:
        kind += f" of {_nested(schema['items'])}"
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        kind += f", each value {_nested(extra)}"
    elif extra is False:
        kind = "empty " + kind
    words = {"minLength": "at least {} characters", "maxLength": "at most {} characters", "minimum": "≥ {}",
             "maximum": "≤ {}", "minItems": "at least {} items", "maxItems": "at most {} items"}
    return ", ".join([kind, *(text.format(schema[key]) for key, text in words.items() if key in schema)])


def _nested(schema: dict[str, Any]) -> str:
    text = _type(schema)
    return f"({text})" if "," in text else text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _text(text: str) -> str:
    """Prose for Markdown: pipes escaped (tables), angle brackets too outside `code` (``/p2p/<peer id>``)."""
    parts = _cell(text).split("`")
    return "`".join(part if i % 2 else part.replace("<", "&lt;").replace(">", "&gt;") for i, part in enumerate(parts))


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
