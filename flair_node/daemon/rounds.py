"""The daemon's round service: merge each round this node is entitled to, as soon as it is ready.

Every ``every`` seconds it looks at each branch that has contributions (``contrib/<branch>/...`` branches) in
each repository and asks ``protocol.rounds`` who may merge now; if it is this node and the round is ready (K
contributions, or the deadline passed with one), it merges, in a worker thread, and the announcer gossips the
merged commit and the branch move. Nobody coordinates: every member computes the same aggregator, and when the
entitled one is gone its window lapses and the next one's begins. A merge is not started in the last
``MARGIN_MS`` of this node's window, so its signed time still falls inside it.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import trio

from ..api.registry import Param
from ..core.errors import FlairError
from ..core.identity import Identity
from ..core.ids import short
from ..protocol import rounds
from ..storage.repo import CONTRIBUTION_PREFIX, Repo, now_ms
from ..storage.repos import RepoSet

log = logging.getLogger(__name__)

MARGIN_MS = 2_000  # no merge started this close to the end of this node's window
RECENT = 100  # merges remembered for status()


class RoundService:
    def __init__(self, repos: RepoSet, identity: Identity, *, on_change: Callable[[], None],
                 every: float = 1.0) -> None:
        self.repos, self.identity, self.on_change, self.every = repos, identity, on_change, every
        self.counts: Counter[str] = Counter()  # merged, failed
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.every)
            for repo in await trio.to_thread.run_sync(self.repos.all):
                for branch in await trio.to_thread.run_sync(round_branches, repo):  # reads refs: off the loop
                    try:
                        merged = await trio.to_thread.run_sync(self._merge_if_due, repo, branch)
                    except FlairError as exc:
                        self.counts["failed"] += 1
                        log.warning("round of %s in %s not merged: %s", branch, short(repo.id), exc)
                        continue
                    if merged is not None:
                        self.counts["merged"] += 1
                        self.recent.append({"repo": repo.id, "branch": branch, "commit": merged.id,
                                            "round": merged.meta["round"], "contributions": len(merged.parents) - 1})
                        log.info("merged round %s of %s in %s: %s", merged.meta["round"], branch, short(repo.id),
                                 short(merged.id))
                        self.on_change()

    def status(self) -> dict[str, Any]:
        return {**self.counts, "recent": list(self.recent)}

    def _merge_if_due(self, repo: Repo, branch: str) -> Any:
        current = rounds.view(repo, branch)
        at = now_ms()
        if current.aggregator(at) != self.identity.public_key or not current.ready(at):
            return None
        if current.turn_ends(at) - at < MARGIN_MS:
            return None  # the next one's turn is about to begin
        return rounds.merge(repo, self.identity, branch, at_ms=at)


#: The parameters of API methods about one round merge (``repo.verify``, ``repo.provenance``).
MERGE_PARAMS = (Param("repo", {"type": "string", "maxLength": 128}, "repository id, id prefix or name"),
                Param("commit", {"type": "string", "maxLength": 128}, "the round merge (id, prefix or branch)"))


def round_branches(repo: Repo) -> list[str]:
    """The branches some member contributed to: ``contrib/<branch>/<key>`` names them."""
    found = {name[len(CONTRIBUTION_PREFIX):].rsplit("/", 1)[0] for name in repo.branches()
             if name.startswith(CONTRIBUTION_PREFIX)}
    return sorted(b for b in found if b and b in repo.branches())
