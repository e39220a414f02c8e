"""Pinning to a user's Kubo node through its RPC API, behind Flair's own types.

``ipfshttpclient`` is the client (unmaintained since 2021): it is constructed directly, ``Client(addr)``, because
its ``connect()`` refuses every Kubo release after 0.8, and its errors become ``RemoteError`` here. Blocks are
put one by one with the codec their CID names, so Kubo holds the very same CIDs, then the root is pinned.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from typing import Any

from ..core.cid import DAG_PB, ParsedCid
from ..core.errors import RemoteError
from ..core.ids import Cid

# ipfshttpclient passes urllib3 a parameter urllib3 2 deprecates, once per request: accepted, and kept quiet.
warnings.filterwarnings("ignore", message="The 'strict' parameter is no longer needed", category=FutureWarning)


class KuboPinner:
    def __init__(self, api_multiaddr: str, *, timeout: float = 60.0) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the unmaintained client warns about its own age on import
            import ipfshttpclient

        self._errors: tuple[type[BaseException], ...] = (ipfshttpclient.exceptions.Error,)
        try:
            self._client: Any = ipfshttpclient.Client(api_multiaddr, timeout=timeout)
        except self._errors as exc:
            raise RemoteError(f"Kubo API address {api_multiaddr!r} is not usable: {exc}") from None
        self.address = api_multiaddr

    def pin_dag(self, root: Cid, blocks: Iterable[tuple[ParsedCid, bytes]]) -> None:
        """Put every block of the DAG under ``root`` into Kubo, then pin ``root`` there."""
        try:
            for cid, block in blocks:
                codec = "dag-pb" if cid.codec == DAG_PB else "raw"
                reply = self._client.block.put(io.BytesIO(block), opts={"cid-codec": codec, "mhtype": "sha2-256"})
                if reply.get("Key") != cid.text:
                    raise RemoteError(f"Kubo at {self.address} stored block {cid.text} as {reply.get('Key')}",
                                      cid=cid.text)
            self._client.pin.add(root)
        except self._errors as exc:
            raise RemoteError(f"Kubo at {self.address} failed: {exc}", cid=root) from None

    def close(self) -> None:
        self._client.close()
