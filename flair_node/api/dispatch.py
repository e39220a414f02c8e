"""A declarative registry of JSON-RPC methods: one description both checks a call's params and documents it.

    registry = Registry()

    @registry.method("repo.show", "One commit, with its changes against its first parent.",
                     params=(Param("repo", {"type": "string", "maxLength": 200}, "repository id or name"),
                             Param("limit", {"type": "integer", "minimum": 1}, "most commits", required=False,
                                   default=100)),
                     result={"type": "object"})
    async def repo_show(repo: str, limit: int) -> dict[str, Any]:
        ...

Param schemas use a small subset of JSON Schema -- ``type`` (string, integer, number, boolean, object, array),
``enum``, ``minLength``/``maxLength``, ``minimum``/``maximum``, ``items``/``minItems``/``maxItems`` and
``additionalProperties`` -- and a schema using anything else is refused when the method is registered, so a
misspelt keyword cannot silently stop checking. Handlers get every param as a keyword argument, an omitted
optional param (or one sent as ``null``) as its default.

Nothing here does I/O, so the CLI can import it without starting trio.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import json
import keyword
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..core.errors import InvalidInput
from .errors import MethodNotFound

OPENRPC_VERSION = "1.2.6"
DISCOVER = "rpc.discover"
RESERVED_PREFIX = "rpc."

H = TypeVar("H", bound=Callable[..., Awaitable[Any]])

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


@dataclass(frozen=True)
class Param:
    """One named parameter of a method, with the JSON Schema its value must satisfy."""

    name: str
    schema: dict[str, Any]
    description: str
    required: bool = True
    default: Any = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or keyword.iskeyword(self.name):
            raise ValueError(f"param name {self.name!r} is not a Python identifier; handlers take params as keywords")
        _check_schema(self.schema, f"schema of param {self.name!r}")
        if self.required and self.default is not None:
            raise ValueError(f"param {self.name!r} is required, so its default {self.default!r} would never be used")
        if self.default is not None:
            try:
                _check_value(self.default, self.schema, f"the default of param {self.name!r}")
            except InvalidInput as exc:
                raise ValueError(exc.message) from None


@dataclass(frozen=True)
class Method:
    """A JSON-RPC method: its name, one-line summary, params in positional order, result schema and handler."""

    name: str
    summary: str
    params: tuple[Param, ...]
    result: dict[str, Any]
    handler: Callable[..., Awaitable[Any]]

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"method name must be a non-empty string, got {self.name!r}")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"method {self.name} has duplicate param names: {names}")
        try:
            signature = inspect.signature(self.handler)
        except (TypeError, ValueError):  # some callables have no signature to check
            return
        try:
            signature.bind(**dict.fromkeys(names))
        except TypeError as exc:
            raise TypeError(f"the handler of {self.name} cannot be called with its params {names}: {exc}") from None

    def describe(self) -> dict[str, Any]:
        """This method as an OpenRPC Method object."""
        params = []
        for p in self.params:
            schema = dict(p.schema)
            if not p.required and p.default is not None:
                schema["default"] = p.default
            params.append({"name": p.name, "description": p.description, "required": p.required, "schema": schema})
        return {"name": self.name, "summary": self.summary, "paramStructure": "either", "params": params,
                "result": {"name": "result", "schema": dict(self.result)}}


class Registry:
    """The methods an API server answers, in the order they were added."""

    def __init__(self, methods: Sequence[Method] = ()) -> None:
        self._methods: dict[str, Method] = {}
        for m in methods:
            self.add(m)

    def add(self, method: Method) -> Method:
        if method.name.startswith(RESERVED_PREFIX):
            raise ValueError(f"method names starting with {RESERVED_PREFIX!r} are reserved by JSON-RPC: "
                             f"{method.name!r}")
        if method.name in self._methods:
            raise ValueError(f"method {method.name!r} is already registered")
        self._methods[method.name] = method
        return method

    def method(self, name: str, summary: str, params: Sequence[Param] = (),
               result: dict[str, Any] | None = None) -> Callable[[H], H]:
        """Decorator registering an async function as the handler of ``name``; returns the function unchanged."""

        def register(handler: H) -> H:
            function: Any = handler  # (a TypeGuard would narrow ``handler`` away from H)
            if not inspect.iscoroutinefunction(function):
                raise TypeError(f"the handler of {name} must be an async function, got {handler!r}")
            self.add(Method(name, summary, tuple(params), dict(result) if result is not None else {}, handler))
            return handler

        return register

    def get(self, name: str) -> Method | None:
        return self._methods.get(name)

    def lookup(self, name: str) -> Method:
        """The method called ``name``; ``MethodNotFound`` naming it, with the nearest names, if there is none."""
        try:
            return self._methods[name]
        except KeyError:
            pass
        close = difflib.get_close_matches(name, [*self._methods, DISCOVER], n=3)
        hint = f": did you mean {' or '.join(close)}?" if close else ""
        raise MethodNotFound(f"no method {name!r}{hint} ({DISCOVER} lists every method)", method=name)

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    def __iter__(self) -> Iterator[Method]:
        return iter(self._methods.values())

    def __len__(self) -> int:
        return len(self._methods)

    def validate(self, method: Method | str, params: Any) -> dict[str, Any]:
        """Check ``params`` (an object by name, an array by position, or None) against ``method``.

        Returns the keyword arguments for the handler, defaults filled in. Raises ``InvalidInput`` naming the
        offending param, or ``MethodNotFound`` for an unknown method name.
        """
        m = self.lookup(method) if isinstance(method, str) else method
        return validate_params(m, params)


def validate_params(method: Method, params: Any) -> dict[str, Any]:
    """``Registry.validate`` for a method in hand."""
    accepted = [p.name for p in method.params]
    takes = ", ".join(accepted) if accepted else "no params"
    if params is None:
        given: dict[str, Any] = {}
    elif isinstance(params, list):
        if len(params) > len(method.params):
            raise InvalidInput(f"{method.name} takes at most {len(method.params)} params ({takes}), "
                               f"got {len(params)}", method=method.name)
        given = {p.name: v for p, v in zip(method.params, params, strict=False)}
    elif isinstance(params, dict):
        for name in params:
            if name not in accepted:
                close = difflib.get_close_matches(name, accepted, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise InvalidInput(f"unknown param {name!r} for {method.name}{hint}: it takes {takes}",
                                   method=method.name, param=str(name))
        given = params
    else:
        raise InvalidInput(f"params of {method.name} must be an object or an array, got {json_type(params)}",
                           method=method.name)
    kwargs: dict[str, Any] = {}
    for p in method.params:
        value = given.get(p.name)
        if p.name not in given and p.required:
            raise InvalidInput(f"missing required param {p.name!r} for {method.name} ({p.description})",
                               method=method.name, param=p.name)
        if value is None and not p.required:
            kwargs[p.name] = copy.deepcopy(p.default)
            continue
        try:
            _check_value(value, p.schema, f"param {p.name!r}")
        except InvalidInput as exc:
            raise InvalidInput(exc.message, method=method.name, param=p.name) from None
        kwargs[p.name] = value
    return kwargs


def discover_method(registry: Registry, title: str, version: str) -> Method:
    """The built-in ``rpc.discover`` method, answering the OpenRPC document of ``registry``."""

    async def discover() -> dict[str, Any]:
        return openrpc_document(registry, title, version)

    return Method(DISCOVER, "This API's OpenRPC document: every method, its params and its result.", (),
                  {"type": "object", "description": f"an OpenRPC {OPENRPC_VERSION} document"}, discover)


def openrpc_document(registry: Registry, title: str, version: str) -> dict[str, Any]:
    """An OpenRPC 1.2.6 document describing every method of ``registry``, and ``rpc.discover`` itself."""
    methods = [*registry, discover_method(registry, title, version)]
    return {"openrpc": OPENRPC_VERSION, "info": {"title": title, "version": version},
            "methods": [m.describe() for m in methods]}


def _check_schema(schema: Any, where: str) -> None:
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
        _check_schema(schema["items"], f"{where} items")
    extra = schema.get("additionalProperties")
    if extra is not None and not isinstance(extra, bool):
        _check_schema(extra, f"{where} additionalProperties")


def _check_value(value: Any, schema: dict[str, Any], where: str) -> None:
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
                _check_value(item, schema["items"], f"{where} item {i}")
    elif got == "object":
        extra = schema.get("additionalProperties", True)
        if extra is False and value:
            raise InvalidInput(f"{where} must be an empty object, got key {_show(next(iter(value)))}")
        if isinstance(extra, dict):
            for key, item in value.items():
                _check_value(item, extra, f"{where} key {_show(key)}")


def _show(value: Any, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = ["DISCOVER", "Method", "OPENRPC_VERSION", "Param", "Registry", "discover_method", "json_type",
           "openrpc_document", "validate_params"]
