"""Pinning to a user's Kubo node through its RPC API, behind Flair's own types.

``ipfshttpclient`` is the client (unmaintained since 2021): it is constructed directly, ``Client(addr)``, because
its ``connect()`` refuses every Kubo release after 0.8. Every call into it runs inside ``map_kubo_errors``, where
its errors become ``RemoteError`` and the warnings it makes urllib3 give are kept quiet. Blocks are put one by one
with the codec their CID names, so Kubo holds the very same CIDs, then the root is pinned.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ..core.cid import DAG_PB, ParsedCid
from ..core.errors import RemoteError
from ..core.ids import Cid


def _client_module() -> Any:
    """``ipfshttpclient``, imported on first use (only a node that pins to Kubo needs it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unmaintained client warns about its own age on import
        import ipfshttpclient

    return ipfshttpclient


@contextmanager
def map_kubo_errors(message: str, **data: str) -> Iterator[None]:
    """Run a call into ipfshttpclient: its errors become ``RemoteError`` ("<message>: <its error>", with
    ``data``). The client hands urllib3 2 a parameter it deprecates, once per request: accepted, and kept quiet
    here (only around these calls, not for the whole process)."""
    errors = _client_module().exceptions.Error
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The 'strict' parameter is no longer needed", category=FutureWarning)
        try:
            yield
        except errors as exc:
            raise RemoteError(f"{message}: {exc}", **data) from None


class KuboPinner:
    def __init__(self, api_multiaddr: str, *, timeout: float = 60.0) -> None:
        with map_kubo_errors(f"Kubo API address {api_multiaddr!r} is not usable"):
            self._client: Any = _client_module().Client(api_multiaddr, timeout=timeout)
        self.address = api_multiaddr

    def pin_dag(self, root: Cid, blocks: Iterable[tuple[ParsedCid, bytes]]) -> None:
        """Put every block of the DAG under ``root`` into Kubo, then pin ``root`` there."""
        with map_kubo_errors(f"Kubo at {self.address} failed", cid=root):
            for cid, block in blocks:
                codec = "dag-pb" if cid.codec == DAG_PB else "raw"
                reply = self._client.block.put(io.BytesIO(block), opts={"cid-codec": codec, "mhtype": "sha2-256"})
                if reply.get("Key") != cid.text:
                    raise RemoteError(f"Kubo at {self.address} stored block {cid.text} as {reply.get('Key')}",
                                      cid=cid.text)
            self._client.pin.add(root)

    def close(self) -> None:
        self._client.close()
