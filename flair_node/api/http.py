"""HTTP/1.1 on trio and h11 for Flair's servers on this machine: the daemon's API (``api.server``) and the
development Solana RPC (``daemon.localnet``). Each brings its ``answer`` to a complete request; this module
listens, reads requests, bounds them and writes the answers.

Each connection is served in its own task that catches its own errors, so one misbehaving client never takes
the server down. A connection waits at most ``idle_timeout`` for its next request, which must then arrive in
full within ``request_timeout``; the answer must be taken within ``request_timeout`` too. A request over
``max_body`` bytes, one too slow or a malformed one is answered with an HTTP error whose body ``refusal`` makes
(a JSON error object, so a client always has a message to show), and the connection is closed after.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import h11
import trio

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 30.0
REQUEST_TIMEOUT = 30.0
LINGER_TIMEOUT = 2.0  # after refusing a request, how long to read (and drop) the rest of its body
MAX_HEADER_BYTES = 16 * 1024
RECEIVE_SIZE = 64 * 1024

#: HTTP status, body (None: no body) and headers answering one complete request (a content type among them
#: when it is not ``HttpServer.content_type``).
Answer = Callable[[h11.Request, bytes], Awaitable[tuple[int, bytes | None, list[tuple[str, str]]]]]


class HttpServer:
    """Serves ``answer`` over HTTP/1.1 on ``host``:``port`` until cancelled; ``name`` goes into its log lines."""

    def __init__(self, answer: Answer, refusal: Callable[[str], bytes], *, name: str, host: str, port: int,
                 max_body: int, idle_timeout: float = IDLE_TIMEOUT, request_timeout: float = REQUEST_TIMEOUT,
                 url_path: str = "", content_type: str = "application/json") -> None:
        self.answer, self.refusal, self.name = answer, refusal, name
        self.host, self.port, self.max_body = host, port, max_body
        self.idle_timeout, self.request_timeout = idle_timeout, request_timeout
        self.url_path, self.content_type = url_path, content_type
        #: ``http://HOST:PORT`` and ``url_path`` once ``run`` is listening.
        self.url: str | None = None

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, report the URL through ``task_status.started``, and serve until cancelled."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        try:
            address, port = listeners[0].socket.getsockname()[:2]
            base = f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"
            self.url = base + self.url_path
            log.info("%s listening on %s", self.name, self.url)
            task_status.started(self.url)
            await trio.serve_listeners(self._serve_connection, listeners)
        finally:
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        try:
            await _Connection(self, stream).serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
            log.debug("%s connection dropped: %r", self.name, exc)
        except Exception:  # one connection's failure must not end the server
            log.exception("%s connection failed", self.name)
        finally:
            await trio.aclose_forcefully(stream)


def header(request: h11.Request, name: bytes) -> bytes | None:
    """The value of header ``name`` (lower case) of ``request``, or None."""
    for key, value in request.headers:  # h11 lower-cases header names
        if key == name:
            return bytes(value)
    return None


class _Refused(Exception):
    """A request answered with an HTTP error before it was read in full; the connection is closed after."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Connection:
    """One HTTP/1.1 connection: requests one after another (keep-alive) until the client or a timeout ends it."""

    def __init__(self, server: HttpServer, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)

    async def serve(self) -> None:
        while await self._wait_for_request():
            try:
                with trio.fail_after(self.server.request_timeout):
                    request, body = await self._read_request()
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
            status, payload, headers = await self.server.answer(request, body)
            with trio.fail_after(self.server.request_timeout):
                await self._send(status, payload, headers)
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return  # the client asked to close, or spoke HTTP/1.0
            self.conn.start_next_cycle()

    async def _wait_for_request(self) -> bool:
        """Wait up to the idle timeout for the next request to start; False when the connection should close."""
        if self.conn.trailing_data[0]:  # the client already sent (part of) it
            return True
        with trio.move_on_after(self.server.idle_timeout):
            data = await self.stream.receive_some(RECEIVE_SIZE)
            self.conn.receive_data(data)
            return bool(data)
        log.debug("closing a %s connection idle for %g s", self.server.name, self.server.idle_timeout)
        return False

    async def _read_request(self) -> tuple[h11.Request, bytes]:
        request = await self._next_event()
        if not isinstance(request, h11.Request):
            raise EOFError
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
                return request, bytes(body)
            else:
                raise EOFError

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
        """Answer ``status`` if HTTP still allows an answer, then read and drop what the client still sends.

        Closing a socket with unread data makes the kernel reset the connection, and the client would see
        the reset instead of the answer; so the rest of the request is drained for a moment first.
        """
        log.debug("refusing a %s request with HTTP %d: %s", self.server.name, status, message)
        try:
            with trio.fail_after(self.server.request_timeout):
                await self._send(status, self.server.refusal(message), [], close=True)
        except h11.LocalProtocolError:  # too early in the request for an HTTP answer
            return
        with trio.move_on_after(LINGER_TIMEOUT):
            await self.stream.send_eof()
            while await self.stream.receive_some(RECEIVE_SIZE):
                pass


__all__ = ["Answer", "HttpServer", "IDLE_TIMEOUT", "REQUEST_TIMEOUT", "header"]
