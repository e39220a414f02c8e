"""The daemon's round service: merge each round this node is entitled to, as soon as it is ready, and take this
node's part in each secure round.

Every ``every`` seconds it looks at each branch that has contributions (``contrib/<branch>/...`` branches) in
each repository and asks ``protocol.rounds`` who may merge now; if it is this node and the round is ready (K
contributions, or the deadline passed with one), it merges, in a worker thread, and the announcer gossips the
merged commit and the branch move. Nobody coordinates: every member computes the same aggregator, and when the
entitled one is gone its window lapses and the next one's begins. A merge is not started in the last
``MARGIN_MS`` of this node's window, so its signed time still falls inside it, nor while a peer's merge of the
same round is being checked (``rounds.note_merge``: counted as ``held``).

Contributions are members' input: one that does not decode or holds non-finite values is excluded by the merge
(``protocol.rounds``), counted per author in ``excluded_by_author``. Each (repository, branch) is one item: any
error while judging or merging it (a ``FlairError``, or anything else bad input or a full disk raises) is
counted (``failed``, and by exception type in ``errors``), logged at most once per item per ``LOG_EVERY``
seconds, and the service goes on with the next item; listing repositories or branches failing (out of file
descriptors, say) skips that pass only.

In a repository with secure rounds, each pass also runs ``protocol.secure_node.step`` for each branch whose
current round has messages (one item each, isolated the same way): this node masks its own contribution, reveals
its shares, and, when entitled and ``aggregate`` is on, signs the roster and the unmask and merges. Contributions
whose round is over are forgotten first (``secure_node.tidy``). With ``aggregate`` off the node never merges or
signs for a round, but still takes its part as a contributor and a holder. While a secure round is going on,
passes come every ``SECURE_EVERY`` seconds instead of ``every``.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import trio

from ..core.errors import FlairError
from ..core.identity import Identity
from ..core.ids import CommitId, short
from ..core.objects import Commit
from ..protocol import rounds, secure_node
from ..storage.repo import CONTRIBUTION_PREFIX, Repository, now_ms
from ..storage.repos import RepoSet

log = logging.getLogger(__name__)

MARGIN_MS = 2_000  # no merge started this close to the end of this node's window
#: Seconds between passes while a secure round is going on: each of its five phases waits for a pass of some
#: node, so the round takes about five of them more than a plain one.
SECURE_EVERY = 0.2
SLOW_STEP_S = 1.0  # a secure pass taking longer is logged, with what each role took
RECENT = 100  # merges remembered for status()
LOG_EVERY = 60.0  # s between two log lines about the same failing item
MAX_COUNTED = 1024  # authors (of excluded contributions) and error types counted; the least counted forgotten


class RoundService:
    def __init__(self, repos: RepoSet, identity: Identity, *, memory: rounds.RoundMemory,
                 on_change: Callable[[], None], every: float = 1.0, aggregate: bool = True) -> None:
        self.repos, self.identity, self.on_change, self.every = repos, identity, on_change, every
        #: Whether this node merges (and, in secure rounds, signs rosters and unmasks) when it is entitled; it
        #: masks its own secure contributions and reveals its shares either way.
        self.aggregate = aggregate
        self.memory = memory  # the node's: merges its peer-to-peer side notes hold this service's own
        self.counts: Counter[str] = Counter()  # merged, failed, held, excluded, skipped_passes
        self.errors: Counter[str] = Counter()  # exception type -> items that failed with it
        self.excluded_by_author: Counter[str] = Counter()  # member key -> its contributions excluded by merges here
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._live = False  # a secure round was going on at the last pass: the next one comes sooner
        self._logged: OrderedDict[str, float] = OrderedDict()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(SECURE_EVERY if self._live else self.every)
            await self.run_once()

    async def run_once(self) -> None:
        """One pass over every repository and branch with rounds; never raises but for cancellation."""
        try:
            repos = await trio.to_thread.run_sync(self.repos.all)
        except Exception as exc:  # EMFILE, ENOSPC, a damaged record: try again next pass
            self._failed("repositories", exc, what="listing repositories")
            self.counts["skipped_passes"] += 1
            return
        self._live = False
        for repo in repos:
            try:
                branches = await trio.to_thread.run_sync(round_branches, repo)  # reads refs: off the loop
                for advert in await trio.to_thread.run_sync(secure_node.tidy, repo, self.repos.pending):
                    log.info("secure contribution %s in %s: its round is over", short(advert), short(repo.id))
                secure = await trio.to_thread.run_sync(secure_branches, repo)
                self._live = self._live or bool(secure)
            except Exception as exc:  # one repository's trouble (a damaged ref) never ends the service
                self._failed(repo.id, exc, what=f"listing the branches of {short(repo.id)}")
                continue
            for branch in secure:
                try:
                    step = await trio.to_thread.run_sync(partial(
                        secure_node.step, repo, self.identity, self.repos.pending, branch, memory=self.memory,
                        aggregate=self.aggregate))
                except Exception as exc:  # one bad item (a hostile message, a full disk) never ends the service
                    self._failed(f"{repo.id}/{branch}", exc, what=f"secure round of {branch} in {short(repo.id)}")
                    continue
                self._stepped(repo, branch, step)
            for branch in branches if self.aggregate else ():
                try:
                    done = await trio.to_thread.run_sync(self._merge_if_due, repo, branch)
                except Exception as exc:  # one bad item (a hostile contribution, a full disk) never ends the service
                    self._failed(f"{repo.id}/{branch}", exc, what=f"round of {branch} in {short(repo.id)} not merged")
                    continue
                if done is not None:
                    self._merged(repo, branch, *done)

    def status(self) -> dict[str, Any]:
        return {"aggregate": self.aggregate, **self.counts, "errors": dict(self.errors),
                "excluded_by_author": dict(self.excluded_by_author), "recent": list(self.recent)}

    def _merge_if_due(self, repo: Repository, branch: str) -> tuple[Commit, list[dict[str, str]]] | None:
        """The round merge this node made of ``branch`` now, if it was due, and what it excluded (with authors)."""
        at = now_ms()
        current = rounds.view(repo, branch, memory=self.memory, at_ms=at)
        if current.aggregator(at) != self.identity.public_key or not current.ready(at):
            return None
        if current.turn_ends(at) - at < MARGIN_MS:
            return None  # the next one's turn is about to begin
        if rounds.held_by(repo, current.branch, current.head, at, memory=self.memory) is not None:
            self.counts["held"] += 1  # a peer's merge of this round is being checked: it may well be the one
            return None
        merged = rounds.merge(repo, self.identity, branch, memory=self.memory, at_ms=at)
        return merged, [{"commit": c, "reason": why, "author": repo.commit(c).author}
                        for c, why in merged.meta.get("excluded", [])]

    def _stepped(self, repo: Repository, branch: str, step: secure_node.Step) -> None:
        if sum(step.took.values()) > SLOW_STEP_S:
            log.info("secure round of %s in %s: a slow pass (%s; %s)", branch, short(repo.id),
                     ", ".join(f"{role} {s:.2f} s" for role, s in step.took.items()),
                     ", ".join(p.split()[0] for p in step.published) or ("merged" if step.merged else "nothing done"))
        for done in step.published:
            self.counts[f"secure_{done.split()[0]}"] += 1
        self.counts["secure_refused"] += len(step.refused)
        for why in step.refused:
            log.warning("secure round of %s in %s: %s", branch, short(repo.id), why[:300])
        if step.merged is not None:
            self.counts["merged"] += 1
            secure = step.merged.meta["secure"]
            self.recent.append({"repo": repo.id, "branch": branch, "commit": step.merged.id,
                                "round": step.merged.meta["round"], "contributions": len(secure["contributions"]),
                                "dropped": len(secure["dropped"]), "secure": True})
            log.info("merged secure round %s of %s in %s: %s", step.merged.meta["round"], branch, short(repo.id),
                     short(step.merged.id))
        if step.published or step.merged is not None:
            self.on_change()

    def _merged(self, repo: Repository, branch: str, merged: Commit, excluded: list[dict[str, str]]) -> None:
        for entry in excluded:
            _count(self.excluded_by_author, entry["author"])
        self.counts["merged"] += 1
        self.counts["excluded"] += len(excluded)
        self.recent.append({"repo": repo.id, "branch": branch, "commit": merged.id, "round": merged.meta["round"],
                            "contributions": len(merged.meta["contributions"]), "excluded": excluded})
        log.info("merged round %s of %s in %s: %s (%d excluded)", merged.meta["round"], branch, short(repo.id),
                 short(merged.id), len(excluded))
        self.on_change()

    def _failed(self, item: str, exc: Exception, *, what: str) -> None:
        self.counts["failed"] += 1
        _count(self.errors, type(exc).__name__)
        now = trio.current_time()
        if now - self._logged.get(item, -math.inf) < LOG_EVERY:
            return
        self._logged[item] = now
        self._logged.move_to_end(item)
        while len(self._logged) > MAX_COUNTED:
            self._logged.popitem(last=False)
        detail = str(exc)[:300] or repr(exc)[:300]
        if isinstance(exc, FlairError):
            log.warning("%s: %s (muted for %.0f s)", what, detail, LOG_EVERY)
        else:  # not an error Flair raises on purpose: where it was raised (not the whole trace: it may be deep)
            frames = traceback.extract_tb(exc.__traceback__)
            where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
            log.warning("%s: %s at %s: %s (muted for %.0f s)", what, type(exc).__name__, where, detail, LOG_EVERY)


def _count(counter: Counter[str], key: str) -> None:
    if key not in counter and len(counter) >= MAX_COUNTED:
        del counter[min(counter, key=counter.__getitem__)]
    counter[key] += 1


def round_branches(repo: Repository) -> list[str]:
    """The branches some member contributed to: ``contrib/<branch>/<key>`` names them."""
    found = {name[len(CONTRIBUTION_PREFIX):].rsplit("/", 1)[0] for name in repo.branches()
             if name.startswith(CONTRIBUTION_PREFIX)}
    return sorted(b for b in found if b and b in repo.branches())


def secure_branches(repo: Repository) -> list[str]:
    """The branches with a secure round going on: messages in the round their head opened (none unless the
    repository runs secure rounds)."""
    if repo.members.current().policy.privacy != "secure":
        return []
    return sorted(branch for branch, head in repo.branches().items()
                  if not branch.startswith(CONTRIBUTION_PREFIX) and repo.secure.ids(branch, head))


def recent_round_merges(repo: Repository, depth: int) -> Iterator[Commit]:
    """The round merges among the latest ``depth`` first-parent commits of each branch with rounds, newest first:
    what the proof and anchor services look at on each pass."""
    for branch in round_branches(repo):
        cursor: CommitId | None = repo.head(branch)
        for _ in range(depth):
            if cursor is None:
                break
            commit = repo.commit(cursor)
            cursor = commit.parents[0] if commit.parents else None
            if commit.kind == "round":
                yield commit
