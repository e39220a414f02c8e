"""Counting what came of each fuzz input (``Tally``, ``Campaign``: refused, accepted, forged, crashes by kind,
hangs) and the helpers a campaign reports with."""

from __future__ import annotations

import hashlib
import json
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ...core.errors import FlairError
from ...core.protobuf import read_varint

# -- counting what came of each input -------------------------------------------------------------------------------

#: An input still running after this many seconds is abandoned (and counted as a hang).
HARD_S = 60.0


@dataclass
class Tally:
    """What came of one target's inputs."""

    inputs: int = 0
    refused: int = 0
    accepted: int = 0
    crashes: int = 0
    hangs: int = 0
    accepted_forged: int = 0
    accepted_noncanonical: int = 0  # genuine records accepted in other bytes than their canonical encoding
    sent: int = 0  # sent to the daemon without an answer to judge (gossip, Bitswap): the daemon's state is judged
    slowest_ms: float = 0.0
    slowest: str = ""
    seconds: float = 0.0
    refusals: dict[str, int] = field(default_factory=dict)  # by refusal, shortened: how deep inputs got


@dataclass
class Campaign:
    """Runs inputs through handlers and counts outcomes per target; each distinct crash (target, exception, the
    innermost frame of Flair's code) is kept once with an example, and printed on stderr. A handler returns
    ``"accepted"``, ``"forged"`` (accepted though not validly signed by an entitled member), ``"noncanonical"``
    (a genuine record accepted in other bytes than its own), ``"refused"`` or ``"sent"`` (no answer to judge);
    a ``FlairError`` is a refusal, any other exception a crash, and taking over ``hang_s`` seconds a hang
    (``HARD_S`` abandons the input)."""

    hang_s: float
    save: Path | None = None
    tallies: dict[str, Tally] = field(default_factory=dict)
    crash_kinds: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)

    def tally(self, target: str) -> Tally:
        return self.tallies.setdefault(target, Tally())

    async def one(self, target: str, data: Any, handle: Callable[[Any], Awaitable[str]], *,
                  hang_s: float | None = None) -> str:
        """Run ``handle(data)`` and count what came of it: refused, accepted, forged, crash, hang."""
        tally = self.tally(target)
        tally.inputs += 1
        start = time.perf_counter()
        outcome = "crash"
        try:
            with trio.fail_after(HARD_S):
                outcome = await handle(data)
        except trio.TooSlowError:
            outcome = "hang"
        except FlairError as exc:
            outcome = "refused"
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split()[:4])[:48]}"
            if reason in tally.refusals or len(tally.refusals) < 200:
                tally.refusals[reason] = tally.refusals.get(reason, 0) + 1
        except Exception as exc:  # what the campaign looks for: recorded, never raised
            self.crash(target, exc, data)
        elapsed = time.perf_counter() - start
        tally.seconds += elapsed
        if 1000 * elapsed > tally.slowest_ms:
            tally.slowest_ms, tally.slowest = round(1000 * elapsed, 1), _describe(data)[:120]
        if outcome == "hang" or elapsed > (self.hang_s if hang_s is None else hang_s):
            tally.hangs += 1
            print(f"fuzz: {target}: an input took {elapsed:.1f} s ({_describe(data)})", file=sys.stderr)
        if outcome == "refused":
            tally.refused += 1
        elif outcome == "accepted":
            tally.accepted += 1
        elif outcome == "sent":
            tally.sent += 1
        elif outcome == "noncanonical":
            tally.accepted += 1
            tally.accepted_noncanonical += 1
            if tally.accepted_noncanonical == 1:
                print(f"fuzz: {target}: a genuine record accepted in non-canonical bytes ({_describe(data)})",
                      file=sys.stderr)
        elif outcome == "forged":
            tally.accepted += 1
            tally.accepted_forged += 1
            print(f"fuzz: {target}: FORGED input accepted ({_describe(data)})", file=sys.stderr)
            self._save(target, "forged", data)
        return outcome

    async def run(self, target: str, n: int, make: Callable[[], Any], handle: Callable[[Any], Awaitable[str]]) -> None:
        """``n`` inputs from ``make`` through ``handle``, with progress on stderr."""
        for i in range(n):
            await self.one(target, make(), handle)
            progress(target, i, n)

    def crash(self, target: str, exc: BaseException, data: Any) -> None:
        self.tally(target).crashes += 1
        where = _where(exc)
        kind = (target, type(exc).__name__, where)
        seen = self.crash_kinds.get(kind)
        if seen is None:
            seen = self.crash_kinds[kind] = {"target": target, "exception": type(exc).__name__, "where": where,
                                             "message": str(exc)[:200], "example": _describe(data), "count": 0}
            print(f"fuzz: {target}: CRASH {type(exc).__name__} at {where}: {str(exc)[:200]} ({_describe(data)})",
                  file=sys.stderr)
        seen["count"] += 1
        self._save(target, "crash", data)

    def _save(self, target: str, what: str, data: Any) -> None:
        if self.save is None:
            return
        self.save.mkdir(parents=True, exist_ok=True)
        n = self.tally(target).inputs
        raw = data if isinstance(data, bytes) else json.dumps(data, default=repr).encode()
        (self.save / f"{target}-{n}-{what}.bin").write_bytes(raw)


def _where(exc: BaseException) -> str:
    """The innermost frame of Flair's own code the exception passed (else the innermost of all), or what the
    exception says of itself (``where``)."""
    if isinstance(getattr(exc, "where", None), str):
        return str(exc.where)  # type: ignore[attr-defined]
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if "flair_node" in f.filename] or frames
    if not own:
        return "?"
    frame = own[-1]
    return f"{frame.filename.split('flair_node/')[-1]}:{frame.lineno} {frame.name}"


def _describe(data: Any) -> str:
    if isinstance(data, bytes | bytearray):
        return f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}, starting {bytes(data[:48])!r}"
    return repr(data)[:160]


_last_progress = [0.0]


def progress(target: str, i: int, n: int) -> None:
    """``target: i/n`` on stderr, at most every 5 seconds and at the end."""
    now = time.monotonic()
    if i + 1 == n or now - _last_progress[0] > 5:
        _last_progress[0] = now
        print(f"fuzz: {target}: {i + 1}/{n}", file=sys.stderr)


def unframe(framed: bytes) -> bytes:
    """A length-prefixed message's bytes without the varint length in front (as a Bitswap stream frames them)."""
    _, start = read_varint(framed, 0)
    return framed[start:]


async def off_loop(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a worker thread the campaign abandons if it runs past ``HARD_S`` (a decoder that never
    returns is a hang to count, not the end of the campaign)."""
    return await trio.to_thread.run_sync(partial(fn, *args), abandon_on_cancel=True)
