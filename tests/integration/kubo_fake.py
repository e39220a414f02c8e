"""A loopback stand-in for the few Kubo RPC endpoints Flair uses (no Kubo can be installed here).

It answers as Kubo's RPC reference documents: ``POST /api/v0/block/put`` (multipart file; ``cid-codec``,
``mhtype``) -> ``{"Key", "Size"}``; ``POST /api/v0/pin/add?arg=CID`` -> ``{"Pins": [...]}`` only if the whole
DAG is present; errors as HTTP 500 with ``{"Message", "Code", "Type": "error"}``. Blocks are re-hashed here
too, so a CID mismatch would show.
"""

from __future__ import annotations

import email.parser
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from flair_node.core.cid import DAG_PB, RAW, cid_for, decode_file_node, parse_cid


class FakeKubo:
    def __init__(self) -> None:
        self.blocks: dict[str, bytes] = {}
        self.pins: set[str] = set()
        self.failing = False
        self.requests = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                fake.requests += 1
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                body = self._body()
                if fake.failing:
                    return self._answer(500, {"Message": "fake Kubo is down", "Code": 0, "Type": "error"})
                try:
                    if url.path == "/api/v0/block/put":
                        return self._answer(200, fake.block_put(self.headers["Content-Type"], body, query))
                    if url.path == "/api/v0/pin/add":
                        return self._answer(200, fake.pin_add(query["arg"]))
                    return self._answer(404, {"Message": f"unknown command {url.path}", "Code": 0, "Type": "error"})
                except (KeyError, ValueError) as exc:
                    return self._answer(500, {"Message": str(exc), "Code": 0, "Type": "error"})

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = b""  # the client streams multipart bodies in HTTP/1.1 chunks
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return body
                    body += self.rfile.read(size)
                    self.rfile.readline()

            def _answer(self, status: int, reply: dict) -> None:
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def multiaddr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.server.server_address[1]}/http"

    def __enter__(self) -> FakeKubo:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def block_put(self, content_type: str, body: bytes, query: dict[str, str]) -> dict:
        message = email.parser.BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        parts = message.get_payload()
        if not isinstance(parts, list) or not parts:
            raise ValueError("block/put needs a multipart file")
        block = parts[0].get_payload(decode=True)
        codec = {"raw": RAW, "dag-pb": DAG_PB}[query.get("cid-codec", "raw")]
        if query.get("mhtype", "sha2-256") != "sha2-256":
            raise ValueError("only sha2-256 here")
        cid = cid_for(codec, block)
        self.blocks[cid] = block
        return {"Key": cid, "Size": len(block)}

    def pin_add(self, root: str) -> dict:
        stack = [root]
        while stack:
            cid = stack.pop()
            if cid not in self.blocks:
                raise ValueError(f"block {cid} not found")
            if parse_cid(cid).codec == DAG_PB:
                stack.extend(link.cid for link in decode_file_node(self.blocks[cid]).links)
        self.pins.add(root)
        return {"Pins": [root]}
