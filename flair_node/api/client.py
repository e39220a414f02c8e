"""A small synchronous JSON-RPC client on the standard library, so the CLI starts fast."""

from __future__ import annotations

import http.client
import itertools
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..core.errors import FlairError, Unauthorized, error_for_code


class ApiClient:
    def __init__(self, url: str, token: str, *, timeout: float = 600.0, home: Path | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise FlairError(f"API url {url!r} is not http://HOST:PORT/")
        self.url = url
        self._host, self._port = parts.hostname, parts.port
        self._token = token
        self._timeout = timeout
        self._home = home
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"ApiClient({self.url!r})"  # never the token

    @classmethod
    def from_home(cls, home: Path, *, timeout: float = 600.0) -> ApiClient:
        path = Path(home) / "api.json"
        try:
            info = json.loads(path.read_text())
            return cls(info["url"], info["token"], timeout=timeout, home=Path(home))
        except FileNotFoundError:
            raise FlairError(f"no daemon API at {home}: start one with `flair-node run --home {home}`",
                             home=str(home)) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise FlairError(f"{path} is damaged ({exc}): restart the daemon", home=str(home)) from None

    def call(self, method: str, /, **params: Any) -> Any:
        req_id = next(self._ids)
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": req_id}).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self._token}"}
        conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            conn.request("POST", "/", body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            where = f" --home {self._home}" if self._home else ""
            raise FlairError(f"flair-node is not running at {self.url} (start it with `flair-node run{where}`)",
                             url=self.url) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise FlairError(f"talking to flair-node at {self.url} failed during {method}: {exc}",
                             url=self.url) from exc
        finally:
            conn.close()
        if response.status == 401:
            raise Unauthorized("the daemon refused the API token: it was restarted or api.json is stale")
        if response.status == 204:
            return None
        try:
            reply = json.loads(data)
        except ValueError as exc:
            raise FlairError(f"flair-node answered HTTP {response.status} without JSON") from exc
        if "error" in reply:
            error = reply["error"]
            cls = error_for_code(int(error.get("code", -32000)))
            exc = cls(str(error.get("message", "error")), **{k: str(v) for k, v in (error.get("data") or {}).items()})
            exc.code = int(error.get("code", -32000))
            raise exc
        return reply.get("result")


__all__ = ["ApiClient"]
