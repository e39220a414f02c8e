"""A small synchronous JSON-RPC client for the daemon's API, on the standard library so the CLI starts fast.

    client = ApiClient.from_home(Path("~/.flair").expanduser())
    client.call("repo.log", repo="mnist", limit=10)

Errors come back as the ``FlairError`` subclass of their JSON-RPC code (``core.errors.error_for_code``), with
the server's message and ``data``: ``except BranchNotFound`` works across the API as it does in-process.

Each call opens its own connection and closes it after the answer. On loopback that costs a fraction of a
millisecond, and it keeps the client safe to share between threads with no pool to go stale: a request is
never silently re-sent, which matters because most methods are not idempotent.
"""

from __future__ import annotations

import http.client
import itertools
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..core.errors import FlairError, InvalidInput, Unauthorized, error_for_code
from . import errors as _protocol_errors  # noqa: F401 - registers the JSON-RPC codes with error_for_code

API_FILE = "api.json"
DEFAULT_TIMEOUT = 600.0


class ApiClient:
    """Calls the JSON-RPC API at ``url`` with ``token``; thread-safe.

    ``timeout`` bounds each network operation (connect, send, each wait for the answer), in seconds. ``home``
    only makes error messages name the right ``flair-node run --home HOME`` command.
    """

    def __init__(self, url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT, home: Path | None = None) -> None:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "http" or not parts.hostname or port is None:
            raise FlairError(f"API URL {url!r} is not of the form http://HOST:PORT/", url=url)
        if not token or "\r" in token or "\n" in token:
            raise FlairError("the API token is empty or spans lines: read it from HOME/api.json", url=url)
        self.url = url
        self.timeout = timeout
        self.home = home
        self._host = parts.hostname
        self._port = port
        self._path = parts.path or "/"
        self._headers = {"Content-Type": "application/json", "Accept": "application/json",
                         "Authorization": f"Bearer {token}", "Connection": "close"}
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"ApiClient({self.url!r})"  # never the token

    @classmethod
    def from_home(cls, home: Path, *, timeout: float = DEFAULT_TIMEOUT) -> ApiClient:
        """A client for the daemon running with ``home``, from the ``HOME/api.json`` it wrote when it started."""
        home = Path(home)
        path = home / API_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FlairError(f"no daemon API at {home}: start one with `flair-node run --home {home}`",
                             home=str(home)) from None
        except OSError as exc:
            raise FlairError(f"cannot read {path}: {exc.strerror}", home=str(home)) from None
        try:
            info = json.loads(text)
            url, token = info["url"], info["token"]
            if not isinstance(url, str) or not isinstance(token, str):
                raise TypeError("url and token must be strings")
        except (ValueError, KeyError, TypeError) as exc:
            raise FlairError(f"{path} is not a flair-node API file ({exc}): restart the daemon with "
                             f"`flair-node run --home {home}`", home=str(home)) from None
        return cls(url, token, timeout=timeout, home=home)

    def call(self, method: str, /, **params: Any) -> Any:
        """Call ``method`` with ``params`` by name; its result, or the matching ``FlairError`` subclass."""
        req_id = next(self._ids)
        try:
            body = json.dumps({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params},
                              allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"the params of {method} cannot be sent as JSON: {exc}", method=method) from None
        status, data = self._post(method, body)
        return self._result(method, req_id, status, data)

    def _post(self, method: str, body: bytes) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            conn.request("POST", self._path, body=body, headers=self._headers)
            response = conn.getresponse()
            return response.status, response.read()
        except ConnectionRefusedError:
            home = self.home if self.home is not None else "HOME"
            raise FlairError(f"flair-node is not running at {self.url} (start it with "
                             f"`flair-node run --home {home}`)", url=self.url) from None
        except TimeoutError:
            raise FlairError(f"flair-node at {self.url} did not answer {method} within {self.timeout:g} s",
                             url=self.url, method=method) from None
        except (OSError, http.client.HTTPException) as exc:
            raise FlairError(f"lost the connection to flair-node at {self.url} during {method}: {exc!r}",
                             url=self.url, method=method) from exc
        finally:
            conn.close()

    def _result(self, method: str, req_id: int, status: int, data: bytes) -> Any:
        try:
            reply = json.loads(data)
        except ValueError:
            reply = None
        error = reply.get("error") if isinstance(reply, dict) else None
        if status == 401:
            exc = self._error(error if isinstance(error, dict) else {}, default_code=Unauthorized.code)
            if self.home is not None:
                exc.message = f"{exc.message} (this client's token came from {self.home / API_FILE})"
            raise exc
        if isinstance(error, dict):
            raise self._error(error)
        if status != 200 or not isinstance(reply, dict) or "result" not in reply:
            snippet = data[:200].decode("utf-8", "replace")
            raise FlairError(f"flair-node at {self.url} answered {method} with HTTP {status} and no JSON-RPC "
                             f"result: {snippet!r}", url=self.url, method=method)
        if reply.get("id") != req_id:
            raise FlairError(f"flair-node at {self.url} answered {method} with id {reply.get('id')!r} instead of "
                             f"{req_id}", url=self.url, method=method)
        return reply["result"]

    def _error(self, error: dict[str, Any], *, default_code: int = FlairError.code) -> FlairError:
        """The ``FlairError`` subclass for a JSON-RPC error object, keeping its exact code, message and data."""
        code = error.get("code")
        if not isinstance(code, int) or isinstance(code, bool):
            code = default_code
        message = error.get("message")
        if not isinstance(message, str) or not message:
            message = f"flair-node at {self.url} answered with error {code} and no message"
        exc = error_for_code(code)(message)
        data = error.get("data")
        if isinstance(data, dict):
            exc.data = data
        if exc.code != code:
            exc.code = code  # a code this client does not know (a newer daemon): keep it for the caller
        return exc


__all__ = ["API_FILE", "ApiClient"]
