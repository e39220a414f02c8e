"""JSON-RPC 2.0 over HTTP/1.1, on trio and h11, for clients on this machine that hold the API token.

    server = ApiServer(registry, token)            # listens on 127.0.0.1, a port of its own choosing
    url = await nursery.start(server.run)          # "http://127.0.0.1:PORT/"

The API answers ``POST /`` only, with ``Content-Type: application/json``, a JSON body of at most ``max_body``
bytes nesting at most ``http.MAX_JSON_DEPTH`` deep, and ``Authorization: Bearer TOKEN``. Path, method, content
type and token are checked on the request's head, before its body is read: a client without the token never
gets the server to read a body. Every JSON-RPC answer -- a result or an error -- is HTTP 200; HTTP errors (401,
404, 405, 413, 415, ...) carry a JSON-RPC error object too, so a client always has a message to show.
``rpc.discover`` is built in.

HTTP itself (connections and their cap, timeouts, bounded bodies, refusals) is ``api.http``'s, shared with the
localnet. A failing method never takes the daemon down: a ``FlairError`` is answered with its code and message,
an ``OSError`` saying the disk is full or no descriptor is left with ``ResourceExhausted``, anything else with
``InternalError`` (the traceback goes to the log, never to the client). Handlers run without a deadline (a merge
of large models takes what it takes).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
from typing import Any

import h11
import trio

from .. import __version__
from ..core.errors import FlairError, InvalidInput, ResourceExhausted
from .dispatch import DISCOVER, Method, Registry, discover_method, json_type, validate_params
from .errors import InternalError, InvalidRequest, ParseError
from .http import IDLE_TIMEOUT, REQUEST_TIMEOUT, HttpServer, Reply, header, load_json

log = logging.getLogger(__name__)

MAX_BATCH = 1000
REFUSAL_LOG_INTERVAL = 60.0
TOKEN_HINT = "missing or wrong API token: read it from HOME/api.json"
UNAUTHORIZED_CODE = -32001  # core.errors.Unauthorized.code


class ApiServer:
    """Serves ``registry`` as JSON-RPC 2.0 on a loopback address until cancelled."""

    def __init__(self, registry: Registry, token: str, *, host: str = "127.0.0.1", port: int = 0,
                 max_body: int = 1 << 20, title: str = "flair-node", version: str = __version__,
                 idle_timeout: float = IDLE_TIMEOUT, request_timeout: float = REQUEST_TIMEOUT,
                 max_connections: int | None = None) -> None:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            raise InvalidInput(f"API host {host!r} is not an IP address: use a loopback address such as 127.0.0.1",
                               host=host) from None
        if not loopback:
            raise InvalidInput(f"API host {host} is not a loopback address: the API listens only on 127.0.0.1 "
                               "or ::1, so that only this machine can reach it", host=host)
        if not token:
            raise InvalidInput("the API token is empty: generate one, e.g. with secrets.token_urlsafe(32)")
        if max_body < 1:
            raise InvalidInput(f"max_body must be at least 1 byte, got {max_body}")
        self.registry = registry
        self.host = host
        self._http = HttpServer(self.answer, lambda message: _error_body(InvalidRequest(message)), name="API",
                                host=host, port=port, max_body=max_body, admit=self.admit, idle_timeout=idle_timeout,
                                request_timeout=request_timeout, max_connections=max_connections, url_path="/")
        #: Requests refused for a missing or wrong token (logged at most once a minute).
        self.refused_requests = 0
        self._token = token.encode()
        self._discover = discover_method(registry, title, version)
        self._last_refusal_log = -math.inf

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, report the URL through ``task_status.started``, and serve until cancelled."""
        await self._http.run(task_status=task_status)

    @property
    def url(self) -> str | None:
        """``http://127.0.0.1:PORT/`` once ``run`` is listening."""
        return self._http.url

    def status(self) -> dict[str, int]:
        """Connections open and their cap, connections closed or refused by the cap, requests without the token."""
        return {**self._http.status(), "refused_requests": self.refused_requests}

    def admit(self, request: h11.Request) -> Reply | None:
        """The HTTP error refusing a request by its head (path, method, token), or None to read and answer it."""
        if request.target != b"/":
            path = request.target.decode("ascii", "replace")
            return 404, _error_body(InvalidRequest(f"nothing at {path}: POST JSON-RPC 2.0 requests to /")), []
        if request.method != b"POST":
            method = request.method.decode("ascii", "replace")
            return 405, _error_body(InvalidRequest(f"{method} is not supported: POST JSON-RPC 2.0 requests to /")), \
                [("allow", "POST")]
        if not self._authorized(header(request, b"authorization")):
            self._note_refusal()
            error = {"code": UNAUTHORIZED_CODE, "message": TOKEN_HINT}
            return 401, json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode(), \
                [("www-authenticate", 'Bearer realm="flair-node"')]
        return None

    async def answer(self, request: h11.Request, body: bytes) -> Reply:
        """HTTP status, body and extra headers answering one complete request that ``admit`` let through."""
        reply = await self.dispatch(body)
        return (204, None, []) if reply is None else (200, reply, [])

    async def dispatch(self, body: bytes) -> bytes | None:
        """The encoded JSON-RPC answer to a request body; None when it held only notifications."""
        try:
            message = load_json(body)
        except ParseError as exc:
            return _error_body(exc)
        if not isinstance(message, list):
            reply = await self._call(message)
            return None if reply is None else reply.encode()
        if not message or len(message) > MAX_BATCH:
            return _error_body(InvalidRequest(f"a batch must hold 1 to {MAX_BATCH} requests, got {len(message)}"))
        replies = [r for r in [await self._call(m) for m in message] if r is not None]
        return ("[" + ",".join(replies) + "]").encode() if replies else None

    async def _call(self, message: Any) -> str | None:
        """The encoded answer to one request object; None for a notification."""
        if not isinstance(message, dict):
            return _error_reply(None, InvalidRequest(f"a request must be an object, got {json_type(message)}"))
        req_id = message.get("id")
        if req_id is not None and json_type(req_id) not in ("string", "integer", "number"):
            return _error_reply(None, InvalidRequest(f"id must be a string, a number or null, got "
                                                     f"{json_type(req_id)}"))
        if message.get("jsonrpc") != "2.0":
            return _error_reply(req_id, InvalidRequest('not a JSON-RPC 2.0 request: set "jsonrpc": "2.0"'))
        name = message.get("method")
        if not isinstance(name, str):
            return _error_reply(req_id, InvalidRequest(f"method must be a string, got {json_type(name)}"))
        notification = "id" not in message
        try:
            method: Method = self._discover if name == DISCOVER else self.registry.lookup(name)
            result = await method.handler(**validate_params(method, message.get("params")))
            if notification:
                return None
            return json.dumps({"jsonrpc": "2.0", "id": req_id, "result": result}, allow_nan=False)
        except Exception as exc:  # per request: a handler's failure is that request's answer, never the server's end
            error = _lone_flair_error(exc) or _resource_error(exc)
            if isinstance(error, ResourceExhausted):  # the operator must hear of a full disk
                log.warning("%s failed: %s", name, error)
            elif error is not None:
                log.debug("%s failed: %s", name, error)
            else:
                log.exception("internal error in %s (request id %r)", name, req_id)
                error = InternalError(f"internal error in {name}: the daemon's log has the details", method=name)
            return None if notification else _error_reply(req_id, error)

    def _authorized(self, header: bytes | None) -> bool:
        if header is None:
            return False
        scheme, _, credentials = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self._token)

    def _note_refusal(self) -> None:
        self.refused_requests += 1
        now = trio.current_time()
        if now - self._last_refusal_log >= REFUSAL_LOG_INTERVAL:
            self._last_refusal_log = now
            log.warning("refused an API request with a missing or wrong token (%d so far); clients read the "
                        "token from HOME/api.json", self.refused_requests)


def _error_reply(req_id: Any, error: FlairError) -> str:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.data:
        body["data"] = error.data
    return json.dumps({"jsonrpc": "2.0", "id": req_id, "error": body}, default=str)


def _error_body(error: FlairError) -> bytes:
    return _error_reply(None, error).encode()


def _lone_flair_error(exc: Exception) -> FlairError | None:
    """``exc`` if it is a FlairError, or the single FlairError a handler's nursery wrapped in a group."""
    inner: BaseException = exc
    while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
        inner = inner.exceptions[0]
    return inner if isinstance(inner, FlairError) else None


def _resource_error(exc: Exception) -> ResourceExhausted | None:
    """The ``ResourceExhausted`` for an ``OSError`` (alone or in a group of one) that says the disk is full or no
    file descriptor is left, else None."""
    inner: BaseException = exc
    while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
        inner = inner.exceptions[0]
    return ResourceExhausted.from_os_error(inner) if isinstance(inner, OSError) else None


__all__ = ["ApiServer", "IDLE_TIMEOUT", "REQUEST_TIMEOUT"]
