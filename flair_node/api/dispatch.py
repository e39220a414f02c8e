"""A declarative registry of JSON-RPC methods: one description both checks a call's params and documents it.

    registry = Registry()

    @registry.method("repo.show", "One commit, with its changes against its first parent.",
                     params=(Param("repo", {"type": "string", "maxLength": 200}, "repository id or name"),
                             Param("limit", {"type": "integer", "minimum": 1}, "most commits", required=False,
                                   default=100)),
                     result={"type": "object"})
    async def repo_show(repo: str, limit: int) -> dict[str, Any]:
        ...

The daemon's methods are declared once, at module level, in a ``MethodTable`` (``api.methods``): their handlers
take the node's context as first argument, and ``Registry.bind(table, context)`` adds them with it bound:

    methods = MethodTable()

    @methods.method("repo.show", "One commit, with its changes against its first parent.", params=(REPO, COMMIT))
    async def repo_show(ctx: ApiContext, repo: str, commit: str) -> dict[str, Any]:
        ...

    registry.bind(methods, context)

Param schemas use a small subset of JSON Schema (``api.json_schema``), and a schema using anything else is refused when
the method is registered, so a misspelt keyword cannot silently stop checking. Handlers get every param as a
keyword argument, an omitted optional param (or one sent as ``null``) as its default.

Nothing here does I/O, so the CLI can import it without starting trio.
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import keyword
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..core.errors import FlairError, InvalidInput
from .errors import MethodNotFound
from .json_schema import check_schema, check_value
from .json_schema import json_type as json_type

OPENRPC_VERSION = "1.2.6"
DISCOVER = "rpc.discover"
RESERVED_PREFIX = "rpc."

H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


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
        check_schema(self.schema, f"schema of param {self.name!r}")
        if self.required and self.default is not None:
            raise ValueError(f"param {self.name!r} is required, so its default {self.default!r} would never be used")
        if self.default is not None:
            try:
                check_value(self.default, self.schema, f"the default of param {self.name!r}")
            except InvalidInput as exc:
                raise ValueError(exc.message) from None


def _check_handler(name: str, handler: Callable[..., Any], params: list[str], *, with_context: bool = False) -> None:
    """Refuse, when a method is declared, a handler that cannot take its params (and first its context)."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # some callables have no signature to check
        return
    try:
        signature.bind(*([None] if with_context else []), **dict.fromkeys(params))
    except TypeError as exc:
        what = "a context and its params" if with_context else "its params"
        raise TypeError(f"the handler of {name} cannot be called with {what} {params}: {exc}") from None


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
        _check_handler(self.name, self.handler, names)

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


@dataclass(frozen=True)
class Declared:
    """A method declared in a ``MethodTable``: a ``Method`` whose handler still waits for its context."""

    name: str
    summary: str
    params: tuple[Param, ...]
    result: dict[str, Any]
    handler: Callable[..., Awaitable[Any]]  # async (context, **params)

    def bind(self, context: Any) -> Method:
        """This method with ``context`` as its handler's first argument. With ``None``, a method that only
        documents: calling it says no node is bound (``reference_markdown`` builds such a registry)."""
        if context is None:
            name = self.name

            async def unbound(**params: Any) -> Any:
                raise FlairError(f"{name} is not bound to a node: this registry only documents the API")

            handler: Callable[..., Awaitable[Any]] = unbound
        else:
            handler = functools.partial(self.handler, context)
        return Method(self.name, self.summary, self.params, self.result, handler)


class MethodTable:
    """Methods declared at module level, each an async function of (context, params...), in declaration order.

    Nothing is bound or served here: ``Registry.bind(table, context)`` gives every handler its context.
    """

    def __init__(self) -> None:
        self._declared: list[Declared] = []

    def method(self, name: str, summary: str, params: Sequence[Param] = (),
               result: dict[str, Any] | None = None) -> Callable[[H], H]:
        """Decorator declaring an async function of (context, params...) as method ``name``; returns it unchanged.

        The handler's signature is checked now, so a param it cannot take fails at import, not on first call.
        """

        def declare(handler: H) -> H:
            function: Any = handler  # (a TypeGuard would narrow ``handler`` away from H)
            if not inspect.iscoroutinefunction(function):
                raise TypeError(f"the handler of {name} must be an async function, got {handler!r}")
            _check_handler(name, function, [p.name for p in params], with_context=True)
            self._declared.append(Declared(name, summary, tuple(params),
                                           dict(result) if result is not None else {}, handler))
            return handler

        return declare

    def __iter__(self) -> Iterator[Declared]:
        return iter(self._declared)

    def __len__(self) -> int:
        return len(self._declared)


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

    def bind(self, table: MethodTable, context: Any) -> None:
        """Add every method of ``table``, its handler given ``context`` first (``None``: documentation only)."""
        for declared in table:
            self.add(declared.bind(context))

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
            check_value(value, p.schema, f"param {p.name!r}")
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


__all__ = ["DISCOVER", "Declared", "Method", "MethodTable", "OPENRPC_VERSION", "Param", "Registry",
           "discover_method", "json_type", "openrpc_document", "validate_params"]
