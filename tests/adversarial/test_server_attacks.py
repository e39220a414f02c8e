"""Attacks on the two HTTP servers of a machine (the daemon's JSON-RPC API and the localnet) by a local user
without the API token: connection floods, slow requests, deep JSON, browser-style POSTs, and handlers that fail.

Each test performs the attack, then checks that the server still answers an authorized request, that nothing
was accepted, and that the server counted what it refused. The flood is also run against a real daemon started
with a 256-descriptor limit, the setting in which 276 idle connections used to make it exit (issue 16, finding 6).
"""

import contextlib
import errno
import http.client
import json
import os
import resource
import socket
import time
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trio
from solders.keypair import Keypair

from flair_node.api import ApiClient, ApiServer, InternalError, Param, Registry
from flair_node.api.http import HttpServer
from flair_node.core.errors import ResourceExhausted
from flair_node.devchain.server import LocalChain, LocalnetServer
from flair_node.testing.daemon import running_daemon

TOKEN = "adversarial-token-7c1e"
LIMIT = 20  # seconds any in-process test may take


def make_registry(state: dict) -> Registry:
    registry = Registry()

    @registry.method("echo", "Echo.", params=(Param("text", {"type": "string"}, "text"),), result={"type": "string"})
    async def echo(text):
        return text

    @registry.method("wait", "Wait until released.")
    async def wait():
        state["waiting"] += 1
        if state["waiting"] == 2:
            state["both_waiting"].set()
        await state["release"].wait()

    @registry.method("full", "A write that finds the disk full.")
    async def full():
        raise OSError(errno.ENOSPC, "No space left on device", "/home/x/blocks/ab/cdef")

    @registry.method("bug", "A bug.")
    async def bug():
        raise KeyError("internal detail")

    return registry


async def start_api(nursery, **kwargs):
    state = {"waiting": 0, "both_waiting": trio.Event(), "release": trio.Event()}
    server = ApiServer(make_registry(state), TOKEN, **kwargs)
    url = await nursery.start(server.run)
    return server, url, state


async def call(url, method, **params):
    return await trio.to_thread.run_sync(partial(ApiClient(url, TOKEN, timeout=10).call, method, **params))


def post(url, body, headers=None, method="POST"):
    """Status and body of one raw request (http.client, so headers are exactly those given)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, parts.path or "/", body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


async def apost(url, body, headers=None):
    return await trio.to_thread.run_sync(post, url, body, headers)


async def read_all(stream, limit=5.0):
    data = b""
    with trio.fail_after(limit):
        while chunk := await stream.receive_some():
            data += chunk
    return data


async def test_an_idle_connection_flood_is_capped_and_authorized_calls_go_through(nursery):
    with trio.fail_after(LIMIT):
        server, url, _ = await start_api(nursery, max_connections=8)
        port = urlsplit(url).port
        streams = []
        for _ in range(200):
            streams.append(await trio.open_tcp_stream("127.0.0.1", port))
        answered = await call(url, "echo", text="during")  # while all 200 are still open on the client's side
        await trio.sleep(0.2)
        status = server.status()
        assert answered == "during"
        assert status["connections"] <= 8 and status["max_connections"] == 8
        assert status["evicted_connections"] >= 200 - 8
        assert await read_all(streams[0]) == b""  # the oldest idle one was closed without a word
        for stream in streams:
            await stream.aclose()
        assert await call(url, "echo", text="after") == "after"


async def test_slow_heads_are_evicted_for_new_connections(nursery):
    with trio.fail_after(LIMIT):
        server, url, _ = await start_api(nursery, max_connections=4)
        port = urlsplit(url).port
        slow = []
        for _ in range(4):  # slowloris: a head that never ends, from a client without the token
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nX-Padding: ")
            slow.append(stream)
        await trio.sleep(0.1)
        assert await call(url, "echo", text="ok") == "ok"
        assert server.status()["evicted_connections"] >= 1
        for stream in slow:
            await stream.aclose()


async def test_when_every_connection_is_busy_a_new_one_is_refused_at_once(nursery):
    with trio.fail_after(LIMIT):
        server, url, state = await start_api(nursery, max_connections=2)
        results = []

        async def wait_call():
            results.append(await call(url, "wait"))

        async with trio.open_nursery() as calls:
            calls.start_soon(wait_call)
            calls.start_soon(wait_call)
            await state["both_waiting"].wait()
            async with await trio.open_tcp_stream("127.0.0.1", urlsplit(url).port) as third:
                assert await read_all(third) == b""  # closed at once, not left hanging
            assert server.status()["refused_connections"] == 1
            state["release"].set()
        assert results == [None, None]
        assert await call(url, "echo", text="free again") == "free again"


async def test_a_client_without_the_token_never_gets_a_body_read(nursery):
    with trio.fail_after(LIMIT):
        server, url, _ = await start_api(nursery)
        async with await trio.open_tcp_stream("127.0.0.1", urlsplit(url).port) as stream:
            # promises a megabyte it will never send: refused on the head, not after 30 s of waiting
            await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: 1000000\r\n\r\n{")
            started = trio.current_time()
            answer = await read_all(stream)
        assert answer.startswith(b"HTTP/1.1 401 ") and trio.current_time() - started < 5
        assert server.status()["refused_requests"] == 1
        assert await call(url, "echo", text="ok") == "ok"


def nested(depth):
    return "[" * depth + "]" * depth


def raw_call(method, params_text):
    """A JSON-RPC request as text, with ``params_text`` spliced in as it is."""
    return '{"jsonrpc": "2.0", "id": 1, "method": "' + method + '", "params": ' + params_text + "}"


async def test_deeply_nested_json_is_a_parse_error_and_the_api_goes_on(nursery):
    with trio.fail_after(LIMIT):
        _, url, _ = await start_api(nursery, max_body=1 << 20)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
        for body in ("[" * 100_000,  # past the interpreter's recursion limit
                     raw_call("echo", '{"text": ' + nested(40) + "}"),
                     json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"text": "a"}}])[:-1]
                     + "," + nested(500) + "]"):
            status, reply = await apost(url, body.encode(), headers)
            error = json.loads(reply)["error"]
            assert status == 200 and error["code"] == -32700, body[:40]
        status, reply = await apost(url, raw_call("echo", '{"text": ' + nested(40) + "}").encode(), headers)
        assert "deep" in json.loads(reply)["error"]["message"]
        assert await call(url, "echo", text="still up") == "still up"


async def test_a_browser_post_is_refused_by_the_api(nursery):
    with trio.fail_after(LIMIT):
        _, url, _ = await start_api(nursery)
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"text": "x"}}).encode()
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=a",
                             None):
            headers = {"Authorization": f"Bearer {TOKEN}"}
            if content_type:
                headers["Content-Type"] = content_type
            status, reply = await apost(url, body, headers)
            assert status == 415 and "application/json" in json.loads(reply)["error"]["message"]


async def test_failing_handlers_become_error_replies_and_the_server_goes_on(nursery):
    with trio.fail_after(LIMIT):
        _, url, _ = await start_api(nursery)
        with pytest.raises(ResourceExhausted, match="no space left") as full:
            await call(url, "full")
        assert full.value.code == -32017 and "/home/x/blocks/ab/cdef" in full.value.message
        with pytest.raises(InternalError) as bug:
            await call(url, "bug")
        assert "internal detail" not in bug.value.message
        assert await call(url, "echo", text="ok") == "ok"


async def test_an_answer_that_raises_is_a_500_and_not_a_dead_server(nursery):
    with trio.fail_after(LIMIT):
        calls = []

        async def answer(request, body):
            calls.append(body)
            if body == b"boom":
                raise RuntimeError("a bug in the answer")
            return 200, b'"fine"', []

        server = HttpServer(answer, lambda message: json.dumps({"error": message}).encode(), name="test",
                            host="127.0.0.1", port=0, max_body=1024)
        url = await nursery.start(server.run)
        status, reply = await apost(url, b"boom", {"Content-Type": "application/json"})
        assert status == 500 and b"log" in reply
        assert await apost(url, b"ok", {"Content-Type": "application/json"}) == (200, b'"fine"')
        assert calls == [b"boom", b"ok"]


@pytest.fixture
async def localnet(nursery, tmp_path):
    chain = LocalChain(tmp_path / "chain")
    server = LocalnetServer(chain)
    url = await nursery.start(server.run)
    yield server, url
    chain.close()


def rpc_body(method, *params):
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()


async def test_the_localnet_answers_only_json_posts(localnet):
    with trio.fail_after(LIMIT):
        _, url = localnet
        victim = str(Keypair().pubkey())
        airdrop = rpc_body("requestAirdrop", victim, 10**9)
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            status, _ = await apost(url, airdrop, {"Content-Type": content_type} if content_type else {})
            assert status == 415, content_type
        json_headers = {"Content-Type": "application/json"}
        status, reply = await apost(url, rpc_body("getBalance", victim), json_headers)
        assert status == 200 and json.loads(reply)["result"]["value"] == 0  # no airdrop landed
        status, reply = await apost(url, rpc_body("getSlot"), json_headers)
        assert json.loads(reply)["result"] == 0


async def test_the_localnet_refuses_deep_nesting_and_floods(nursery, tmp_path):
    with trio.fail_after(LIMIT):
        chain = LocalChain(tmp_path / "chain")
        server = LocalnetServer(chain, max_connections=8)
        url = await nursery.start(server.run)
        headers = {"Content-Type": "application/json"}
        for body in ("[" * 100_000, raw_call("getBalance", nested(60))):
            status, reply = await apost(url, body.encode(), headers)
            assert status == 200 and json.loads(reply)["error"]["code"] == -32700
        port = urlsplit(url).port
        streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(100)]
        status, reply = await apost(url, rpc_body("getSlot"), headers)
        assert (status, json.loads(reply)["result"]) == (200, 0)
        assert server.status()["connections"] <= 8 and server.status()["evicted_connections"] > 0
        for stream in streams:
            await stream.aclose()
        chain.close()


@contextlib.contextmanager
def descriptor_limit(soft):
    """This process's soft RLIMIT_NOFILE set to ``soft`` inside the block (a daemon started there inherits it)."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (before, hard))


def open_descriptors(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.integration
def test_a_daemon_at_256_descriptors_survives_thousands_of_idle_connections(tmp_path):
    flood = 3000
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < flood + 200:
        pytest.skip("this test process may not open enough descriptors for the flood")
    with contextlib.ExitStack() as stack:
        with descriptor_limit(256):
            daemon = stack.enter_context(running_daemon(tmp_path / "home"))
        limits = Path(f"/proc/{daemon.pid}/limits").read_text()
        assert [line.split()[3] for line in limits.splitlines() if line.startswith("Max open files")] == ["256"]
        api = daemon.client.call("node.status")["api"]
        assert api["max_connections"] == 64  # a quarter of 256: the rest stays for the daemon's own files
        port = urlsplit(daemon.url).port
        attackers = []
        try:
            for _ in range(flood):
                attackers.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            client = ApiClient.from_home(daemon.home, timeout=30)
            assert client.call("node.whoami")["public_key"]  # while every attacker's connection is still open
            time.sleep(2)  # the services (rounds, p2p, proofs) run their loops meanwhile
            assert daemon.process.poll() is None
            assert open_descriptors(daemon.pid) < 256
            status = daemon.client.call("node.status")["api"]
            assert status["connections"] <= 64
            assert status["evicted_connections"] >= flood - 64
        finally:
            for sock in attackers:
                sock.close()
        assert daemon.client.call("node.whoami")["public_key"]
        assert daemon.process.poll() is None  # and leaving the block checks it stops cleanly
