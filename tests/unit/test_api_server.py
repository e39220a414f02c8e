"""The JSON-RPC server on 127.0.0.1, driven by ApiClient and by raw http.client / trio streams for HTTP edge cases."""

import http.client
import json
import logging
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import urlsplit

import pytest
import trio

from flair_node.api import ApiClient, ApiServer, InternalError, MethodNotFound, Param, Registry
from flair_node.core.errors import BranchNotFound, FlairError, InvalidInput, Unauthorized

TOKEN = "test-token-4f1d0c9a2b7e"
LIMIT = 10  # seconds any one test may take
MAX_BODY = 4096


@dataclass
class Api:
    server: ApiServer
    url: str
    client: ApiClient
    notes: list[str] = field(default_factory=list)

    async def call(self, method, **params):
        return await trio.to_thread.run_sync(partial(self.client.call, method, **params))

    async def raw(self, body=b"", **kwargs):
        return await trio.to_thread.run_sync(partial(raw_request, self.url, body, **kwargs))

    async def rpc(self, payload, **kwargs):
        status, headers, body = await self.raw(json.dumps(payload).encode(), **kwargs)
        return status, json.loads(body) if body else None


def make_registry(notes: list[str]) -> Registry:
    registry = Registry()

    @registry.method("echo", "Echo text, repeated.",
                     params=(Param("text", {"type": "string", "maxLength": 20}, "text to echo"),
                             Param("times", {"type": "integer", "minimum": 1}, "repeats", required=False,
                                   default=1)),
                     result={"type": "string"})
    async def echo(text, times):
        return text * times

    @registry.method("fail", "Raise BranchNotFound.", params=(Param("branch", {"type": "string"}, "branch"),))
    async def fail(branch):
        raise BranchNotFound(f"no branch {branch!r} in repository r", branch=branch, repo="r")

    @registry.method("crash", "A bug.")
    async def crash():
        raise RuntimeError("secret internals")

    @registry.method("note", "Remember a note.", params=(Param("text", {"type": "string"}, "note"),))
    async def note(text):
        notes.append(text)

    @registry.method("grouped", "A FlairError raised inside a nursery.")
    async def grouped():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail, "inner")

    @registry.method("nan", "A result that is not JSON.")
    async def nan():
        return float("nan")

    @registry.method("hang", "Never returns.")
    async def hang():
        await trio.sleep_forever()

    return registry


def raw_request(url, body=b"", *, method="POST", path="/", token=TOKEN, headers=None, chunks=None):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        all_headers = {"Content-Type": "application/json"}
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        all_headers.update(headers or {})
        if chunks is not None:
            conn.request(method, path, body=iter(chunks), headers=all_headers, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


async def start(nursery, **kwargs) -> Api:
    notes: list[str] = []
    server = ApiServer(make_registry(notes), TOKEN, **{"max_body": MAX_BODY, "version": "9.9", **kwargs})
    url = await nursery.start(server.run)
    return Api(server, url, ApiClient(url, TOKEN, timeout=5), notes)


@pytest.fixture
async def api(nursery):
    return await start(nursery)


def request(method, params=None, req_id=1):
    message = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    if req_id is not None:
        message["id"] = req_id
    return message


async def test_call(api):
    with trio.fail_after(LIMIT):
        assert api.url.startswith("http://127.0.0.1:") and api.url.endswith("/")
        assert api.server.url == api.url
        assert await api.call("echo", text="ab", times=2) == "abab"
        assert await api.call("echo", text="ab") == "ab"
        assert await api.call("note", text="x") is None and api.notes == ["x"]
        status, reply = await api.rpc(request("echo", ["cd", 3], req_id="s"))
        assert (status, reply) == (200, {"jsonrpc": "2.0", "id": "s", "result": "cdcdcd"})


async def test_discover_lists_every_method(api):
    with trio.fail_after(LIMIT):
        doc = await api.call("rpc.discover")
        assert doc["openrpc"] == "1.2.6" and doc["info"] == {"title": "flair-node", "version": "9.9"}
        methods = {m["name"]: m for m in doc["methods"]}
        assert set(methods) == {"echo", "fail", "crash", "note", "grouped", "nan", "hang", "rpc.discover"}
        assert methods["echo"]["params"] == [
            {"name": "text", "description": "text to echo", "required": True,
             "schema": {"type": "string", "maxLength": 20}},
            {"name": "times", "description": "repeats", "required": False,
             "schema": {"type": "integer", "minimum": 1, "default": 1}},
        ]
        assert methods["echo"]["result"] == {"name": "result", "schema": {"type": "string"}}


@pytest.mark.parametrize("token", [None, "wrong", ""])
async def test_wrong_or_missing_token(api, token, caplog):
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(LIMIT):
        status, headers, body = await api.raw(json.dumps(request("echo", {"text": "a"})).encode(), token=token)
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        assert json.loads(body)["error"] == {"code": -32001,
                                             "message": "missing or wrong API token: read it from HOME/api.json"}
        status, _, _ = await api.raw(b"{}", headers={"Authorization": f"Basic {TOKEN}"})
        assert status == 401
        with pytest.raises(Unauthorized, match="api.json") as info:
            await trio.to_thread.run_sync(partial(ApiClient(api.url, "not-the-token").call, "echo", text="a"))
        assert info.value.code == -32001
        assert api.server.refused_requests == 3
        refusals = [r for r in caplog.records if "missing or wrong token" in r.getMessage()]
        assert len(refusals) == 1  # logged once a minute, not once a request
        assert TOKEN not in caplog.text


async def test_malformed_json(api, nursery):
    with trio.fail_after(LIMIT):
        for body in (b'{"jsonrpc": "2.0", "method": "echo"', b"\xff\xfe\x00", b"", b'[NaN]'):
            status, _, reply = await api.raw(body, headers={"Content-Type": "application/json"})
            error = json.loads(reply)["error"]
            assert status == 200 and error["code"] == -32700, body[:20]
            assert json.loads(reply)["id"] is None
        roomy = await start(nursery, max_body=1 << 20)
        status, _, reply = await roomy.raw(b"[" * 200_000)  # a RecursionError in json: a parse error too
        assert json.loads(reply)["error"]["code"] == -32700


async def test_invalid_requests(api):
    with trio.fail_after(LIMIT):
        cases = [
            ({"jsonrpc": "1.0", "method": "echo", "id": 1}, 1, '"jsonrpc": "2.0"'),
            ({"jsonrpc": "2.0", "method": 5, "id": 2}, 2, "method must be a string"),
            ({"jsonrpc": "2.0", "method": "echo", "id": True}, None, "id must be"),
            ([], None, "batch"),
            (7, None, "must be an object"),
        ]
        for payload, req_id, message in cases:
            status, reply = await api.rpc(payload)
            assert reply["error"]["code"] == -32600 and message in reply["error"]["message"], payload
            assert reply["id"] == req_id


async def test_unknown_method(api):
    with trio.fail_after(LIMIT):
        with pytest.raises(MethodNotFound, match="no method 'ecko': did you mean echo") as info:
            await api.call("ecko", text="a")
        assert "rpc.discover" in info.value.message and info.value.code == -32601
        assert info.value.data == {"method": "ecko"}


@pytest.mark.parametrize("params, message", [
    ({"text": 5}, "param 'text' must be a string, got integer"),
    ({"text": "a", "times": True}, "param 'times' must be an integer, got boolean"),
    ({"text": "a" * 21}, "param 'text' is 21 characters long"),
    ({"text": "a", "tims": 2}, "unknown param 'tims' for echo"),
    ({}, "missing required param 'text' for echo"),
])
async def test_invalid_params_name_the_param(api, params, message):
    with trio.fail_after(LIMIT):
        with pytest.raises(InvalidInput, match=message) as info:
            await api.call("echo", **params)
        assert info.value.code == -32602 and info.value.data["method"] == "echo"


async def test_flair_errors_round_trip(api):
    with trio.fail_after(LIMIT):
        for method in ("fail", "grouped"):
            with pytest.raises(BranchNotFound) as info:
                await api.call(method, **({"branch": "inner"} if method == "fail" else {}))
            assert info.value.code == -32007
            assert info.value.message == "no branch 'inner' in repository r"
            assert info.value.data == {"branch": "inner", "repo": "r"}


async def test_batch_and_notifications(api):
    with trio.fail_after(LIMIT):
        status, reply = await api.rpc([
            request("echo", {"text": "a"}, req_id=1),
            request("note", {"text": "first"}, req_id=None),
            request("fail", {"branch": "b"}, req_id="two"),
            request("nope", req_id=None),  # an unknown method, as a notification: no answer either
            42,
            request("echo", {"text": 1}, req_id=3),
        ])
        assert status == 200
        assert [r["id"] for r in reply] == [1, "two", None, 3]
        assert reply[0]["result"] == "a"
        assert [r.get("error", {}).get("code") for r in reply] == [None, -32007, -32600, -32602]
        assert api.notes == ["first"]

        status, headers, body = await api.raw(json.dumps([request("note", {"text": "second"}, req_id=None),
                                                          request("crash", req_id=None)]).encode())
        assert (status, body) == (204, b"") and "content-length" not in headers
        status, _, body = await api.raw(json.dumps(request("note", {"text": "third"}, req_id=None)).encode())
        assert (status, body) == (204, b"")
        assert api.notes == ["first", "second", "third"]


@pytest.mark.parametrize("chunked", [False, True])
async def test_oversized_body(api, chunked):
    with trio.fail_after(LIMIT):
        body = json.dumps(request("echo", {"text": "a" * (1 << 20)})).encode()
        chunks = [body[i:i + 8192] for i in range(0, len(body), 8192)] if chunked else None
        status, headers, reply = await api.raw(body, chunks=chunks)
        assert status == 413 and headers["connection"] == "close"
        assert str(MAX_BODY) in json.loads(reply)["error"]["message"]
        assert await api.call("echo", text="still here") == "still here"


async def test_http_errors(api):
    with trio.fail_after(LIMIT):
        status, headers, body = await api.raw(method="GET")
        assert status == 405 and headers["allow"] == "POST" and "POST" in json.loads(body)["error"]["message"]
        status, _, body = await api.raw(b"{}", path="/rpc")
        assert status == 404 and "/rpc" in json.loads(body)["error"]["message"]
        status, _, _ = await api.raw(b"{}", headers={"Content-Type": "text/plain"})
        assert status == 415
        status, _, _ = await api.raw(b'{"jsonrpc": "2.0", "method": "echo", "params": ["a"], "id": 1}',
                                     headers={"Content-Type": "application/json; charset=utf-8"})
        assert status == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com", "localhost"])
def test_non_loopback_host_refused(host):
    with pytest.raises(InvalidInput, match="loopback"):
        ApiServer(Registry(), TOKEN, host=host)


def test_server_needs_a_token():
    with pytest.raises(InvalidInput, match="token"):
        ApiServer(Registry(), "")
    assert ApiServer(Registry(), TOKEN, host="::1").host == "::1"


async def test_server_keeps_serving_after_a_handler_bug(api, caplog):
    with trio.fail_after(LIMIT):
        with pytest.raises(InternalError) as info:
            await api.call("crash")
        assert info.value.code == -32603 and "secret internals" not in info.value.message
        assert "crash" in info.value.message
        logged = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
        assert "RuntimeError: secret internals" in caplog.text and logged
        with pytest.raises(InternalError):
            await api.call("nan")  # not JSON: refused rather than sent
        assert await api.call("echo", text="ok") == "ok"


async def test_keep_alive(api):
    with trio.fail_after(LIMIT):
        def two_requests_on_one_connection():
            parts = urlsplit(api.url)
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
            try:
                results = []
                for text in ("a", "b"):
                    conn.request("POST", "/", json.dumps(request("echo", {"text": text})),
                                 {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
                    response = conn.getresponse()
                    results.append(json.loads(response.read())["result"])
                    assert not response.will_close
                return results
            finally:
                conn.close()

        assert await trio.to_thread.run_sync(two_requests_on_one_connection) == ["a", "b"]


async def _read_all(stream):
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


async def test_idle_and_slow_connections_are_closed(nursery):
    with trio.fail_after(LIMIT):
        api = await start(nursery, idle_timeout=0.2, request_timeout=0.3)
        port = urlsplit(api.url).port
        async with await trio.open_tcp_stream("127.0.0.1", port) as idle:
            assert await _read_all(idle) == b""  # closed by the server without a word
        async with await trio.open_tcp_stream("127.0.0.1", port) as slow:
            await slow.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 100\r\n\r\n{")
            assert (await _read_all(slow)).startswith(b"HTTP/1.1 408 ")
        async with await trio.open_tcp_stream("127.0.0.1", port) as bad:
            await bad.send_all(b"NONSENSE\r\n\r\n")
            assert (await _read_all(bad)).startswith(b"HTTP/1.1 400 ")
        assert await api.call("echo", text="fine") == "fine"


async def test_expect_100_continue(api):
    with trio.fail_after(LIMIT):
        body = json.dumps(request("echo", {"text": "c"})).encode()
        async with await trio.open_tcp_stream("127.0.0.1", urlsplit(api.url).port) as stream:
            await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\n"
                                  b"Content-Type: application/json\r\n"
                                  b"Authorization: Bearer " + TOKEN.encode() +
                                  b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
            assert (await stream.receive_some()).startswith(b"HTTP/1.1 100 ")
            await stream.send_all(body)
            answer = await _read_all(stream)
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'"result": "c"}')


async def test_cancelling_the_server_ends_calls_in_flight():
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            api = await start(nursery)

            async def call_hang():
                with pytest.raises(FlairError, match="lost the connection"):
                    await api.call("hang")

            async with trio.open_nursery() as calls:
                calls.start_soon(call_hang)
                await trio.sleep(0.2)  # the call is in the handler now
                nursery.cancel_scope.cancel()
        with pytest.raises(FlairError, match="is not running"):
            await api.call("echo", text="a")
