"""Declarative JSON-RPC methods: one description validates params and generates the OpenRPC document."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import InvalidInput

Handler = Callable[..., Awaitable[Any]]
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,), "object": (dict,),
    "array": (list,), "null": (type(None),),
}


@dataclass(frozen=True)
class Param:
    name: str
    schema: Mapping[str, Any]
    description: str
    required: bool = True
    default: Any = None


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    params: tuple[Param, ...]
    result: Mapping[str, Any]
    handler: Handler = field(repr=False)


def check_value(value: Any, schema: Mapping[str, Any], where: str) -> None:
    """Raise ``InvalidInput`` naming ``where`` unless ``value`` fits the (small subset of) JSON Schema."""
    kind = schema.get("type")
    if kind is not None:
        allowed = _TYPES[kind]
        if isinstance(value, bool) and kind in ("integer", "number"):
            ok = False
        else:
            ok = isinstance(value, allowed)
        if not ok:
            raise InvalidInput(f"{where} must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}, got {_json_type(value)}",
                               param=where)
    if "enum" in schema and value not in schema["enum"]:
        raise InvalidInput(f"{where} must be one of {', '.join(map(str, schema['enum']))}, got {value!r}", param=where)
    if isinstance(value, str) and len(value) > schema.get("maxLength", 1 << 20):
        raise InvalidInput(f"{where} is longer than {schema['maxLength']} characters", param=where)
    if isinstance(value, int | float) and not isinstance(value, bool) and value < schema.get("minimum", value):
        raise InvalidInput(f"{where} must be >= {schema['minimum']}, got {value}", param=where)
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", 10_000):
            raise InvalidInput(f"{where} has more than {schema['maxItems']} items", param=where)
        for i, item in enumerate(value):
            check_value(item, schema.get("items", {}), f"{where}[{i}]")
    if isinstance(value, dict):
        if len(value) > schema.get("maxProperties", 1_000):
            raise InvalidInput(f"{where} has too many entries", param=where)
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if isinstance(extra, Mapping):
                check_value(item, extra, f"{where}.{key}")


def _json_type(value: Any) -> str:
    for name, types in _TYPES.items():
        if isinstance(value, bool) and name != "boolean":
            continue
        if isinstance(value, types):
            return name
    return type(value).__name__


class Registry:
    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}

    def add(self, method: Method) -> None:
        if method.name in self._methods:
            raise ValueError(f"method {method.name} registered twice")
        self._methods[method.name] = method

    def method(self, name: str, summary: str, *, params: Sequence[Param] = (),
               result: Mapping[str, Any] | None = None) -> Callable[[Handler], Handler]:
        """Decorator: register an async function as method ``name``; it is called with keyword arguments."""
        def register(handler: Handler) -> Handler:
            self.add(Method(name, summary, tuple(params), result or {}, handler))
            return handler
        return register

    def get(self, name: str) -> Method | None:
        return self._methods.get(name)

    def __iter__(self) -> Iterator[Method]:
        return iter(sorted(self._methods.values(), key=lambda m: m.name))

    def validate(self, method: Method, params: Any) -> dict[str, Any]:
        """Keyword arguments for ``method``'s handler from JSON-RPC ``params`` (object, array or absent)."""
        if params is None:
            given: dict[str, Any] = {}
        elif isinstance(params, list):
            if len(params) > len(method.params):
                raise InvalidInput(f"{method.name} takes at most {len(method.params)} params, got {len(params)}")
            given = {p.name: v for p, v in zip(method.params, params, strict=False)}
        elif isinstance(params, dict):
            given = dict(params)
        else:
            raise InvalidInput("params must be an object or an array")
        known = {p.name for p in method.params}
        unknown = sorted(set(given) - known)
        if unknown:
            takes = ", ".join(sorted(known)) or "none"
            raise InvalidInput(f"{method.name} has no param {unknown[0]!r} (it takes: {takes})", param=unknown[0])
        kwargs = {}
        for p in method.params:
            if p.name not in given or (given[p.name] is None and not p.required):
                if p.required:
                    raise InvalidInput(f"{method.name} needs param {p.name!r}: {p.description}", param=p.name)
                kwargs[p.name] = p.default
                continue
            check_value(given[p.name], p.schema, f"param {p.name!r}")
            kwargs[p.name] = given[p.name]
        return kwargs


def openrpc_document(registry: Registry, title: str, version: str) -> dict[str, Any]:
    methods = [{
        "name": "rpc.discover",
        "summary": "This document: every method with its params and result.",
        "params": [],
        "result": {"name": "OpenRPC document", "schema": {"type": "object"}},
    }]
    for m in registry:
        methods.append({
            "name": m.name,
            "summary": m.summary,
            "paramStructure": "either",
            "params": [{"name": p.name, "description": p.description, "required": p.required,
                        "schema": dict(p.schema)} for p in m.params],
            "result": {"name": "result", "schema": dict(m.result)},
        })
    return {"openrpc": "1.2.6", "info": {"title": title, "version": version}, "methods": methods}
