"""Mirror every pinned payload DAG to the user's Kubo node, never blocking or losing a local commit.

The queue is persisted as the difference between what the node pins (every payload a local commit reaches) and
the markers ``HOME/kubo/pinned/<cid>`` written after Kubo confirmed a pin: whatever is committed, even just
before a crash, is found again and retried, with exponential backoff while Kubo fails.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import trio

from ..core.errors import FlairError
from ..core.ids import Cid
from ..network.kubo import KuboPinner
from ..storage import unixfs
from ..storage.atomic import atomic_write
from ..storage.repos import RepoSet

log = logging.getLogger(__name__)


class KuboPinService:
    def __init__(self, repos: RepoSet, pinner: KuboPinner, state_dir: Path, *, retry_min: float = 1.0,
                 retry_max: float = 300.0, rescan: float = 30.0) -> None:
        self.repos = repos
        self.pinner = pinner
        self.done_dir = state_dir / "pinned"
        self.done_dir.mkdir(parents=True, exist_ok=True)
        self.retry_min, self.retry_max, self.rescan = retry_min, retry_max, rescan
        self._wake = trio.Event()
        self.pinned = 0
        self.failures = 0
        self.last_error: str | None = None
        self.pending: list[tuple[Cid, int]] = []

    def status(self) -> dict[str, Any]:
        return {"kubo_api": self.pinner.address, "pending": len(self.pending), "pinned": self.pinned,
                "failures": self.failures, "last_error": self.last_error}

    def wake(self) -> None:
        """Look for new pins now (call from the trio thread)."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        delay = self.retry_min
        last_logged = 0.0
        while True:
            self.pending = await trio.to_thread.run_sync(self._pending)
            failed = False
            for root, size in list(self.pending):
                try:
                    await trio.to_thread.run_sync(self._push, root, size)
                except FlairError as exc:
                    failed = True
                    self.failures += 1
                    self.last_error = str(exc)
                    if time.monotonic() - last_logged > 60:  # once a minute, however often it fails
                        log.warning("pinning to Kubo failed (%d failures so far, retrying): %s", self.failures, exc)
                        last_logged = time.monotonic()
                    break
                self.pending.remove((root, size))
                self.pinned += 1
            if failed:
                wait, delay = delay, min(self.retry_max, delay * 2)
            else:
                wait, delay = self.rescan, self.retry_min
            with trio.move_on_after(wait):
                await self._wake.wait()
            self._wake = trio.Event()

    def _pending(self) -> list[tuple[Cid, int]]:
        """Payload roots (with their sizes) that local commits reach and Kubo has not confirmed yet."""
        done = set(os.listdir(self.done_dir))
        roots: dict[Cid, int] = {}
        for repo in self.repos.all():
            for commit in repo.commits():
                roots.setdefault(commit.payload.cid, commit.payload.size)
        return [(cid, size) for cid, size in roots.items() if cid not in done]

    def _push(self, root: Cid, size: int) -> None:
        blocks = unixfs.walk(self.repos.blocks, root, max_size=size)
        self.pinner.pin_dag(root, blocks)
        atomic_write(self.done_dir / root, b"")
        log.info("pinned %s on Kubo at %s", root, self.pinner.address)
