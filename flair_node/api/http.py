"""HTTP/1.1 on trio and h11 for Flair's servers on this machine: the daemon's API (``api.server``) and the
development Solana RPC (``devchain.server``). Each brings its ``answer`` to a complete request, and may bring an
``admit`` check of a request's head; this module listens, reads requests, bounds them and writes the answers.

Each connection is served in its own task that catches its own errors, so one misbehaving client never takes
the server down; an ``answer`` that raises is answered with HTTP 500 (the details go to the log). A request over
``max_body`` bytes, one too slow or a malformed one is answered with an HTTP error whose body ``refusal`` makes
(a JSON error object, so a client always has a message to show), and the connection is closed after. A POST
whose ``Content-Type`` is not ``application/json`` is refused with 415 before its body is read, so a web page
cannot drive a server with a form or a "simple" cross-origin request; ``admit`` refuses others the same way
(the API: no token, no body read).

Limits, so that no client -- not even one without the API token -- can hold the server or the process down:

- **Timeouts.** A new connection must start its request within ``first_request_timeout`` (10 s), a kept-alive
  one its next request within ``idle_timeout`` (30 s); a started request must arrive in full within
  ``request_timeout``, and its answer be taken within ``request_timeout`` too.
- **Connections.** At most ``max_connections`` are open at once. By default that is a quarter of the process's
  file-descriptor limit (``RLIMIT_NOFILE``'s soft value, read when the server starts), at least 4 and at most
  1024: the other three quarters stay for the process's own files, peers and child processes, so a flood of
  connections can never make the daemon's own ``open``/``listdir`` fail. When the cap is reached, a new
  connection takes the place of the one that has waited longest for its next request without sending it (it is
  closed); when every connection is busy with a request, the new one is closed at once. If ``accept`` itself
  finds no descriptor left, the server frees one the same way and retries after ``ACCEPT_RETRY`` s. Refused and
  evicted connections are counted (``status``) and logged at most once a minute.

``load_json`` parses a request body for both servers: NaN and Infinity refused, nesting bounded by
``MAX_JSON_DEPTH`` (a deeper document is a ``ParseError``, whatever the interpreter's recursion limit).
"""

from __future__ import annotations

import errno
import logging
import math
import resource
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import h11
import trio

from ..core.encoding import loads_json
from ..core.errors import IntegrityError
from .errors import ParseError

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 30.0
FIRST_REQUEST_TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0
LINGER_TIMEOUT = 2.0  # after refusing a request, how long to read (and drop) the rest of its body
MAX_HEADER_BYTES = 16 * 1024
RECEIVE_SIZE = 64 * 1024
MIN_CONNECTIONS, MAX_CONNECTIONS = 4, 1024
DESCRIPTOR_SHARE = 4  # a server takes at most 1/4 of the process's file descriptors
ACCEPT_RETRY = 0.1
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
LOG_INTERVAL = 60.0
MAX_JSON_DEPTH = 32
JSON_TYPE = b"application/json"

#: HTTP status, body (None: no body) and headers answering a request (a content type among them when it is not
#: ``HttpServer.content_type``).
Reply = tuple[int, bytes | None, list[tuple[str, str]]]
#: The answer to one complete request.
Answer = Callable[[h11.Request, bytes], Awaitable[Reply]]
#: A check of a request's head before its body is read: None admits it, a reply refuses it (then the connection
#: closes).
Admit = Callable[[h11.Request], Reply | None]


def connection_cap() -> int:
    """How many connections a server of this process keeps open at once: a quarter of the soft ``RLIMIT_NOFILE``,
    from 4 to 1024."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, soft // DESCRIPTOR_SHARE))


class HttpServer:
    """Serves ``answer`` over HTTP/1.1 on ``host``:``port`` until cancelled; ``name`` goes into its log lines."""

    def __init__(self, answer: Answer, refusal: Callable[[str], bytes], *, name: str, host: str, port: int,
                 max_body: int, admit: Admit | None = None, idle_timeout: float = IDLE_TIMEOUT,
                 first_request_timeout: float = FIRST_REQUEST_TIMEOUT, request_timeout: float = REQUEST_TIMEOUT,
                 max_connections: int | None = None, url_path: str = "",
                 content_type: str = "application/json") -> None:
        self.answer, self.refusal, self.admit, self.name = answer, refusal, admit, name
        self.host, self.port, self.max_body = host, port, max_body
        self.idle_timeout, self.request_timeout = idle_timeout, request_timeout
        self.first_request_timeout = min(first_request_timeout, idle_timeout)
        self.max_connections = max_connections if max_connections is not None else connection_cap()
        self.url_path, self.content_type = url_path, content_type
        #: ``http://HOST:PORT`` and ``url_path`` once ``run`` is listening.
        self.url: str | None = None
        #: Connections closed to make room for a new one (they had sent no request), refused because every
        #: connection was busy, and ``accept`` calls that found no file descriptor left.
        self.evicted_connections = self.refused_connections = self.accept_failures = 0
        self._open: set[_Connection] = set()
        self._waiting: dict[_Connection, trio.CancelScope] = {}  # evictable, the longest waiting first
        self._last_warning = -math.inf

    def status(self) -> dict[str, int]:
        return {"connections": len(self._open), "max_connections": self.max_connections,
                "evicted_connections": self.evicted_connections, "refused_connections": self.refused_connections,
                "accept_failures": self.accept_failures}

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, report the URL through ``task_status.started``, and serve until cancelled."""
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {self.max_connections}")
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        try:
            address, port = listeners[0].socket.getsockname()[:2]
            base = f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"
            self.url = base + self.url_path
            log.info("%s listening on %s (at most %d connections)", self.name, self.url, self.max_connections)
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, listener, nursery)
                task_status.started(self.url)
        finally:
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                self.accept_failures += 1
                self._warn("%s cannot accept a connection (%s): closing the longest idle one and retrying",
                           self.name, errno.errorcode.get(exc.errno or 0, exc))
                self._evict_one()
                await trio.sleep(ACCEPT_RETRY)
                continue
            if len(self._open) >= self.max_connections and not self._evict_one():
                self.refused_connections += 1
                self._warn("%s has %d connections open, all busy: refused a new one (%d refused so far)",
                           self.name, len(self._open), self.refused_connections)
                await trio.aclose_forcefully(stream)
                continue
            connection = _Connection(self, stream)
            self._open.add(connection)
            nursery.start_soon(self._serve_connection, connection)

    def _evict_one(self) -> bool:
        """Close the connection that has waited longest without sending a request; False if there is none."""
        for connection, scope in self._waiting.items():
            del self._waiting[connection]
            self._open.discard(connection)  # its descriptor goes as soon as its task runs
            scope.cancel()
            self.evicted_connections += 1
            self._warn("%s is at its cap of %d connections: closing those that send no request to make room "
                       "(%d closed so far)", self.name, self.max_connections, self.evicted_connections)
            return True
        return False

    def _warn(self, message: str, *args: object) -> None:
        now = trio.current_time()
        if now - self._last_warning >= LOG_INTERVAL:
            self._last_warning = now
            log.warning(message, *args)

    async def _serve_connection(self, connection: _Connection) -> None:
        try:
            await connection.serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
            log.debug("%s connection dropped: %r", self.name, exc)
        except Exception:  # one connection's failure must not end the server
            log.exception("%s connection failed", self.name)
        finally:
            self._open.discard(connection)
            self._waiting.pop(connection, None)
            await trio.aclose_forcefully(connection.stream)


def header(request: h11.Request, name: bytes) -> bytes | None:
    """The value of header ``name`` (lower case) of ``request``, or None."""
    for key, value in request.headers:  # h11 lower-cases header names
        if key == name:
            return bytes(value)
    return None


def is_json(request: h11.Request) -> bool:
    """Whether ``request`` says its body is JSON (``Content-Type: application/json``, parameters allowed)."""
    content_type = header(request, b"content-type")
    return content_type is not None and content_type.split(b";")[0].strip().lower() == JSON_TYPE


def load_json(body: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``body`` parsed as JSON; ``ParseError`` if it is not JSON, holds NaN or Infinity, or nests arrays and
    objects more than ``max_depth`` deep (measured before parsing: ``core.encoding.loads_json``)."""
    try:
        return loads_json(body, max_depth=max_depth, what="request body")
    except IntegrityError as exc:
        raise ParseError(str(exc)) from None


class _Refused(Exception):
    """A request answered with an HTTP error before it was read in full; the connection is closed after."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Connection:
    """One HTTP/1.1 connection: requests one after another (keep-alive) until the client, a timeout or the
    connection cap ends it."""

    def __init__(self, server: HttpServer, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.served = 0
        self.deadline = math.inf  # by when the request being read must be in

    async def serve(self) -> None:
        while True:
            request = await self._receive_head()
            if request is None:
                return
            refused = self._check(request)
            if refused is not None:
                await self._refuse_with(*refused)
                return
            try:
                with trio.fail_at(self.deadline):
                    body = await self._read_body(request)
            except EOFError:
                return
            except trio.TooSlowError:
                await self._refuse(408, f"request not received in full within {self.server.request_timeout:g} s")
                return
            except _Refused as exc:
                await self._refuse(exc.status, str(exc))
                return
            except h11.RemoteProtocolError as exc:
                await self._refuse(exc.error_status_hint, f"malformed HTTP request: {exc}")
                return
            status, payload, headers = await self._answer(request, body)
            with trio.fail_after(self.server.request_timeout):
                await self._send(status, payload, headers)
            self.served += 1
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return  # the client asked to close, or spoke HTTP/1.0
            self.conn.start_next_cycle()

    async def _receive_head(self) -> h11.Request | None:
        """The head of the next request; None when the connection should close (the client closed it, sent
        nothing in time, sent a malformed or too slow head, or was evicted for a newer connection meanwhile)."""
        scope = trio.CancelScope()
        self.server._waiting[self] = scope
        request = None
        try:
            with scope:
                request = await self._read_head()
        finally:
            self.server._waiting.pop(self, None)
        if scope.cancelled_caught:
            log.debug("closed a %s connection that sent no request, to make room for a new one", self.server.name)
        return request

    async def _read_head(self) -> h11.Request | None:
        if not self.conn.trailing_data[0]:  # else the client already sent (part of) it
            timeout = self.server.idle_timeout if self.served else self.server.first_request_timeout
            with trio.move_on_after(timeout) as idle:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            if idle.cancelled_caught:
                log.debug("closing a %s connection idle for %g s", self.server.name, timeout)
                return None
            if not data:
                return None
            self.conn.receive_data(data)
        self.deadline = trio.current_time() + self.server.request_timeout
        try:
            with trio.fail_at(self.deadline):
                event = await self._next_event()
        except trio.TooSlowError:
            await self._refuse(408, f"request not received in full within {self.server.request_timeout:g} s")
            return None
        except h11.RemoteProtocolError as exc:
            await self._refuse(exc.error_status_hint, f"malformed HTTP request: {exc}")
            return None
        return event if isinstance(event, h11.Request) else None

    def _check(self, request: h11.Request) -> tuple[int, bytes | None, list[tuple[str, str]]] | None:
        """The refusal of a request whose head alone disqualifies it, or None."""
        if request.method == b"POST" and not is_json(request):
            shown = (header(request, b"content-type") or b"none").decode("ascii", "replace")[:100]
            return 415, self.server.refusal(f"content type {shown} is not supported: send Content-Type "
                                            "application/json"), []
        return self.server.admit(request) if self.server.admit is not None else None

    async def _read_body(self, request: h11.Request) -> bytes:
        length = header(request, b"content-length")
        if length is not None and int(length) > self.server.max_body:
            raise _Refused(413, f"request body of {int(length)} bytes is over the limit of "
                                f"{self.server.max_body} bytes")
        if self.conn.client_is_waiting_for_100_continue:
            await self.stream.send_all(self.conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        body = bytearray()
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.server.max_body:
                    raise _Refused(413, f"request body is over the limit of {self.server.max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                raise EOFError

    async def _answer(self, request: h11.Request, body: bytes) -> tuple[int, bytes | None, list[tuple[str, str]]]:
        try:
            return await self.server.answer(request, body)
        except Exception:  # a bug in the answer: this request fails, the connection and the server go on
            log.exception("%s failed to answer a request", self.server.name)
            return 500, self.server.refusal("internal error: the server's log has the details"), []

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.stream.receive_some(RECEIVE_SIZE))

    async def _send(self, status: int, body: bytes | None, headers: list[tuple[str, str]], *,
                    close: bool = False) -> None:
        all_headers = [("cache-control", "no-store"), *headers]
        if body is not None:
            if not any(name == "content-type" for name, _ in headers):
                all_headers.append(("content-type", self.server.content_type))
            all_headers.append(("content-length", str(len(body))))
        if close:
            all_headers.append(("connection", "close"))
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        out = self.conn.send(h11.Response(status_code=status, headers=all_headers, reason=reason)) or b""
        if body:
            out += self.conn.send(h11.Data(data=body)) or b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(out)

    async def _refuse(self, status: int, message: str) -> None:
        log.debug("refusing a %s request with HTTP %d: %s", self.server.name, status, message)
        await self._refuse_with(status, self.server.refusal(message), [])

    async def _refuse_with(self, status: int, body: bytes | None, headers: list[tuple[str, str]]) -> None:
        """Answer ``status`` if HTTP still allows an answer, then read and drop what the client still sends.

        Closing a socket with unread data makes the kernel reset the connection, and the client would see
        the reset instead of the answer; so the rest of the request is drained for a moment first.
        """
        try:
            with trio.fail_after(self.server.request_timeout):
                await self._send(status, body, headers, close=True)
        except h11.LocalProtocolError:  # too early in the request for an HTTP answer
            return
        with trio.move_on_after(LINGER_TIMEOUT):
            await self.stream.send_eof()
            while await self.stream.receive_some(RECEIVE_SIZE):
                pass


__all__ = ["Admit", "Answer", "FIRST_REQUEST_TIMEOUT", "HttpServer", "IDLE_TIMEOUT", "MAX_JSON_DEPTH",
           "REQUEST_TIMEOUT", "Reply", "connection_cap", "header", "is_json", "load_json"]
