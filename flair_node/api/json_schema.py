"""The subset of JSON Schema the API's params use, and the checks of a schema and of a value against one.

``type`` (string, integer, number, boolean, object, array), ``enum``, ``minLength``/``maxLength``,
``minimum``/``maximum``, ``items``/``minItems``/``maxItems`` and ``additionalProperties``: a schema using anything
else is refused (``check_schema``), so a misspelt keyword cannot silently stop checking. A value that does not
satisfy its schema is ``InvalidInput`` saying where and why (``check_value``).
"""

from __future__ import annotations

import json
from typing import Any

from ..core.errors import InvalidInput

_TYPES = ("string", "integer", "number", "boolean", "object", "array")
_COMMON_KEYWORDS = frozenset({"type", "description", "title", "enum"})
_TYPE_KEYWORDS: dict[str | None, frozenset[str]] = {
    None: frozenset(),
    "string": frozenset({"minLength", "maxLength"}),
    "integer": frozenset({"minimum", "maximum"}),
    "number": frozenset({"minimum", "maximum"}),
    "boolean": frozenset(),
    "object": frozenset({"additionalProperties"}),
    "array": frozenset({"items", "minItems", "maxItems"}),
}
_ARTICLES = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "a boolean",
             "object": "an object", "array": "an array"}


def json_type(value: Any) -> str:
    """The JSON type name of a decoded JSON value: ``json_type(True) == "boolean"``, ``json_type(1) == "integer"``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def check_schema(schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        raise ValueError(f"{where} must be a JSON Schema object, got {schema!r}")
    kind = schema.get("type")
    if kind is not None and kind not in _TYPES:
        raise ValueError(f"{where}: type {kind!r} is not one of {', '.join(_TYPES)}")
    allowed = _COMMON_KEYWORDS | _TYPE_KEYWORDS[kind]
    unknown = sorted(set(schema) - allowed)
    if unknown:
        raise ValueError(f"{where}: keyword(s) {', '.join(unknown)} not supported for type {kind}; "
                         f"use {', '.join(sorted(allowed))}")
    if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
        raise ValueError(f"{where}: enum must be a non-empty list")
    for key in ("minLength", "maxLength", "minItems", "maxItems"):
        if key in schema and (json_type(schema[key]) != "integer" or schema[key] < 0):
            raise ValueError(f"{where}: {key} must be a non-negative integer")
    for key in ("minimum", "maximum"):
        if key in schema and json_type(schema[key]) not in ("integer", "number"):
            raise ValueError(f"{where}: {key} must be a number")
    if "items" in schema:
        check_schema(schema["items"], f"{where} items")
    extra = schema.get("additionalProperties")
    if extra is not None and not isinstance(extra, bool):
        check_schema(extra, f"{where} additionalProperties")


def check_value(value: Any, schema: dict[str, Any], where: str) -> None:
    kind = schema.get("type")
    got = json_type(value)
    if kind is not None and not (got == kind or (kind == "number" and got == "integer")):
        raise InvalidInput(f"{where} must be {_ARTICLES[kind]}, got {got}")
    if "enum" in schema and not any(json_type(v) == got and v == value for v in schema["enum"]):
        choices = ", ".join(_show(v) for v in schema["enum"])
        raise InvalidInput(f"{where} must be one of {choices}, got {_show(value)}")
    if got == "string":
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise InvalidInput(f"{where} is {len(value)} characters long, the most allowed is {schema['maxLength']}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            raise InvalidInput(f"{where} is {len(value)} characters long, the fewest allowed is "
                               f"{schema['minLength']}")
    elif got in ("integer", "number"):
        if "minimum" in schema and value < schema["minimum"]:
            raise InvalidInput(f"{where} must be at least {schema['minimum']}, got {value}")
        if "maximum" in schema and value > schema["maximum"]:
            raise InvalidInput(f"{where} must be at most {schema['maximum']}, got {value}")
    elif got == "array":
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise InvalidInput(f"{where} has {len(value)} items, the most allowed is {schema['maxItems']}")
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise InvalidInput(f"{where} has {len(value)} items, the fewest allowed is {schema['minItems']}")
        if "items" in schema:
            for i, item in enumerate(value):
                check_value(item, schema["items"], f"{where} item {i}")
    elif got == "object":
        extra = schema.get("additionalProperties", True)
        if extra is False and value:
            raise InvalidInput(f"{where} must be an empty object, got key {_show(next(iter(value)))}")
        if isinstance(extra, dict):
            for key, item in value.items():
                check_value(item, extra, f"{where} key {_show(key)}")


def _show(value: Any, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = ["check_schema", "check_value", "json_type"]
