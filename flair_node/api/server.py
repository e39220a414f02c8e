"""JSON-RPC 2.0 over HTTP/1.1 on trio + h11, for loopback clients holding the API token.

Each connection is served in its own task that catches its own errors, so one bad client or one failing
request never takes the daemon down. Requests are bounded in size and time.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from typing import Any

import h11
import trio

from .. import __version__
from ..core.errors import FlairError, InvalidInput
from .registry import Registry, openrpc_document

log = logging.getLogger(__name__)

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INTERNAL_ERROR = -32700, -32600, -32601, -32603
UNAUTHORIZED = -32001
IDLE_TIMEOUT = 30.0
READ_TIMEOUT = 30.0
MAX_BATCH = 100


def _error(code: int, message: str, req_id: Any = None, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data:
        error["data"] = data
    return {"jsonrpc": "2.0", "error": error, "id": req_id}


class ApiServer:
    def __init__(self, registry: Registry, token: str, *, host: str = "127.0.0.1", port: int = 0,
                 max_body: int = 1 << 20, title: str = "flair-node", version: str = __version__) -> None:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise InvalidInput(f"the API only listens on loopback addresses, not {host!r}", host=host)
        self.registry = registry
        self._token = token.encode()
        self.host, self.port, self.max_body = host, port, max_body
        self._discover = openrpc_document(registry, title, version)

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        port = listeners[0].socket.getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        async with trio.open_nursery() as nursery:
            task_status.started(f"http://{host}:{port}/")
            await trio.serve_listeners(self._serve_connection, listeners, handler_nursery=nursery)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        try:
            while True:
                with trio.move_on_after(IDLE_TIMEOUT) as idle:
                    event = await self._next_event(conn, stream)
                if idle.cancelled_caught or event is None or isinstance(event, h11.ConnectionClosed):
                    return
                if not isinstance(event, h11.Request):
                    return
                with trio.move_on_after(READ_TIMEOUT) as reading:
                    status, body = await self._handle(conn, stream, event)
                if reading.cancelled_caught:
                    return
                await self._respond(conn, stream, status, body)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.ProtocolError:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
            log.debug("API connection dropped: %s", exc)
        except Exception:
            log.exception("API connection failed")
        finally:
            await stream.aclose()

    async def _next_event(self, conn: h11.Connection, stream: trio.SocketStream) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await stream.receive_some(65536)
            conn.receive_data(data)

    async def _handle(self, conn: h11.Connection, stream: trio.SocketStream,
                      request: h11.Request) -> tuple[int, bytes | None]:
        headers = {k.lower(): v for k, v in request.headers}
        length = int(headers.get(b"content-length", b"0") or 0)
        if length > self.max_body:
            return 413, json.dumps(_error(INVALID_REQUEST, f"request body over {self.max_body} bytes")).encode()
        body = bytearray()
        while True:
            event = await self._next_event(conn, stream)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.max_body:
                    return 413, json.dumps(_error(INVALID_REQUEST, f"request body over {self.max_body} bytes")).encode()
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return 400, None
        if request.target.split(b"?")[0] != b"/":
            return 404, json.dumps(_error(INVALID_REQUEST, "not found: POST JSON-RPC to /")).encode()
        if request.method != b"POST":
            return 405, json.dumps(_error(INVALID_REQUEST, "use POST for JSON-RPC")).encode()
        auth = headers.get(b"authorization", b"")
        if not (auth.startswith(b"Bearer ") and hmac.compare_digest(auth[7:].strip(), self._token)):
            refusal = _error(UNAUTHORIZED, "missing or wrong API token: read it from HOME/api.json")
            return 401, json.dumps(refusal).encode()
        reply = await self.dispatch(bytes(body))
        return (200, json.dumps(reply).encode()) if reply is not None else (204, None)

    async def _respond(self, conn: h11.Connection, stream: trio.SocketStream, status: int, body: bytes | None) -> None:
        headers = [("content-type", "application/json"), ("content-length", str(len(body or b"")))]
        if status in (400, 413):
            headers.append(("connection", "close"))
        for event in (h11.Response(status_code=status, headers=headers), h11.Data(data=body or b""),
                      h11.EndOfMessage()):
            if isinstance(event, h11.Data) and not event.data:
                continue
            await stream.send_all(conn.send(event) or b"")

    async def dispatch(self, body: bytes) -> Any:
        """The JSON-RPC reply to ``body`` (None when it holds only notifications)."""
        try:
            message = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(PARSE_ERROR, f"request is not valid JSON: {exc}")
        if isinstance(message, list):
            if not message or len(message) > MAX_BATCH:
                return _error(INVALID_REQUEST, f"a batch holds 1 to {MAX_BATCH} requests")
            replies = [r for r in [await self._call(m) for m in message] if r is not None]
            return replies or None
        return await self._call(message)

    async def _call(self, message: Any) -> dict[str, Any] | None:
        if not (isinstance(message, dict) and message.get("jsonrpc") == "2.0"
                and isinstance(message.get("method"), str)):
            req_id = message.get("id") if isinstance(message, dict) else None
            return _error(INVALID_REQUEST, "not a JSON-RPC 2.0 request (needs jsonrpc: \"2.0\" and a method)", req_id)
        req_id = message.get("id")
        notification = "id" not in message
        if not (req_id is None or isinstance(req_id, str | int)) or isinstance(req_id, bool):
            return _error(INVALID_REQUEST, "id must be a string, a number or null")
        name = message["method"]
        try:
            if name == "rpc.discover":
                result: Any = self._discover
            else:
                method = self.registry.get(name)
                if method is None:
                    reply = _error(METHOD_NOT_FOUND, f"no method {name!r}: rpc.discover lists them", req_id)
                    return None if notification else reply
                kwargs = self.registry.validate(method, message.get("params"))
                result = await method.handler(**kwargs)
        except FlairError as exc:
            reply = _error(exc.code, exc.message, req_id, exc.data)
        except Exception:
            log.exception("method %s failed", name)
            reply = _error(INTERNAL_ERROR, f"internal error in {name}: see the daemon's log", req_id)
        else:
            reply = {"jsonrpc": "2.0", "result": result, "id": req_id}
        return None if notification else reply
