"""The daemon's proof service: prove the round merges this node made, verify everyone's proofs.

Every ``every`` seconds it looks at the latest round merges of each branch with rounds (``RECENT`` commits back
from its head) in repositories whose merges are proven (policy ``proof_chunk``):

- a merge this node made and nobody proved yet is proven in a worker process with a memory cap
  (``protocol.proofs.merges.prove_merge``), from a thread, so the daemon keeps serving; the proof record is then
  announced like any record, and peers fetch the proofs by CID. One proof at a time; a merge whose proving
  failed is not retried until the daemon restarts (the log says why).
- a merge with a proof record (its own or a peer's, arrived by gossip or pull) is verified, and the result
  (verified, with what was proven, or failed, with why) written to ``<state>/<repo>/<merge>.json``:
  ``flair verify REPO COMMIT`` shows it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from ..core.errors import FlairError, IntegrityError, InvalidInput
from ..core.identity import Identity
from ..core.ids import CommitId, short
from ..protocol.proofs.circuits import Circuits
from ..storage.atomic import atomic_write
from ..storage.repo import Repository, now_ms
from ..storage.repos import RepoSet
from .round_service import recent_round_merges

log = logging.getLogger(__name__)

RECENT = 8  # commits back from each branch head that are proven and verified


class ProofService:
    def __init__(self, repos: RepoSet, identity: Identity, state_dir: Path, *, circuits: Circuits, prove: bool = True,
                 memory_mb: int = 8192, on_change: Any = lambda: None, every: float = 1.0) -> None:
        self.repos, self.identity, self.state_dir, self.circuits = repos, identity, state_dir, circuits
        self.prove, self.memory_mb, self.on_change, self.every = prove, memory_mb, on_change, every
        self.counts: Counter[str] = Counter()  # proven, prove_failed, verified, failed
        self._gave_up: set[str] = set()  # merges whose proving failed
        self._results: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.every)
            for repo in await trio.to_thread.run_sync(self.repos.all):
                todo = await trio.to_thread.run_sync(self._todo, repo)
                for merge, mine in todo:
                    if mine:
                        await self._prove(repo, merge)
                    else:
                        await trio.to_thread.run_sync(self.verify, repo, merge)

    def status(self) -> dict[str, Any]:
        return {"prove": self.prove, **self.counts}

    def result(self, repo: Repository, merge: CommitId) -> dict[str, Any] | None:
        """What this node found of the proofs of ``merge``, if it checked them."""
        with self._lock:
            if merge in self._results:
                return self._results[merge]
        path = self.state_dir / repo.id / f"{merge}.json"
        try:
            found: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        with self._lock:
            self._results[merge] = found
        return found

    def verify(self, repo: Repository, merge: CommitId) -> dict[str, Any]:
        """Check the proofs of round merge ``merge`` now and record the result (blocking: call off the loop)."""
        record = repo.merges.proof(merge)
        if record is None:
            raise InvalidInput(f"no proof of {short(merge)} has arrived here")
        outcome: dict[str, Any] = {"commit": merge, "proof": record.id, "proofs": record.proofs, "vk": record.vk,
                                   "author": record.author, "checked_ms": now_ms()}
        from ..protocol.proofs import merges  # loads torch: not while the daemon idles

        try:
            outcome.update(status="verified", **merges.check_merge(repo, record, circuits=self.circuits))
            self.counts["verified"] += 1
        except IntegrityError as exc:
            outcome.update(status="failed", reason=str(exc))
            self.counts["failed"] += 1
            log.warning("the proofs of %s in %s by %s do not hold: %s", short(merge), short(repo.id),
                        short(record.author), exc)
        except FlairError as exc:  # the SRS has not arrived, a circuit could not be built: not a verdict
            log.info("cannot check the proofs of %s in %s yet: %s", short(merge), short(repo.id), exc)
            return {"commit": merge, "status": "unchecked", "reason": str(exc)}
        path = self.state_dir / repo.id / f"{merge}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(outcome).encode())
        with self._lock:
            self._results[merge] = outcome
        return outcome

    def _todo(self, repo: Repository) -> list[tuple[CommitId, bool]]:
        """The recent proven round merges to prove (``True``: this node's, unproven) or to verify."""
        if not repo.members.current().policy.proof_chunk:
            return []
        todo = []
        for commit in recent_round_merges(repo, RECENT):
            if "sums" not in commit.meta:
                continue
            if repo.merges.proof(commit.id) is None:
                if commit.author == self.identity.public_key and self.prove and commit.id not in self._gave_up:
                    todo.append((commit.id, True))
            elif self.result(repo, commit.id) is None:
                todo.append((commit.id, False))
        return todo

    async def _prove(self, repo: Repository, merge: CommitId) -> None:
        from ..protocol.proofs import merges

        stop = threading.Event()
        started = trio.current_time()
        try:
            record = await trio.to_thread.run_sync(
                lambda: merges.prove_merge(repo, self.identity, merge, circuits=self.circuits,
                                           memory_mb=self.memory_mb, stop=stop),
                abandon_on_cancel=True)
        except FlairError as exc:
            self._gave_up.add(merge)
            self.counts["prove_failed"] += 1
            log.warning("could not prove round merge %s in %s: %s", short(merge), short(repo.id), exc)
            return
        finally:
            stop.set()  # on cancellation (the daemon stopping) the worker process ends at once
        self.counts["proven"] += 1
        log.info("proved %d chunks of round merge %s in %s in %.1f s: %s", len(record.chunks), short(merge),
                 short(repo.id), trio.current_time() - started, record.proofs)
        self.on_change()
