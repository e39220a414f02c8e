"""Run a real ``flair-node`` daemon in a subprocess, for integration tests and the demo.

    with running_daemon(tmp_path / "home") as daemon:
        daemon.client.call("node.whoami")
        ...
        daemon.kill_hard()        # optional: crash it (kill -9) to test recovery
        daemon.stop()             # optional: stop it before the block ends (SIGTERM)

The daemon gets its own home (created with ``flair-node init-home`` if it has no identity yet), binds a port
of its own choosing on 127.0.0.1 and logs to ``HOME/daemon.log``. Leaving the block stops it with SIGTERM
(SIGKILL if it is still running 10 s later), always through the ``Popen`` of the process started here, so
only that PID is ever signalled.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..api.client import API_FILE, ApiClient
from ..core.errors import FlairError
from ..daemon.home import IDENTITY_FILE
from .wan import in_namespace

LOG_FILE = "daemon.log"
STOP_TIMEOUT = 10.0
_POLL_SECONDS = 0.05
_LOG_TAIL_LINES = 30


class DaemonFailed(FlairError):
    """The daemon did not start, or did not stop cleanly. The message ends with the tail of its log."""


@dataclass
class DaemonProcess:
    """A daemon started by ``running_daemon``: its home, API URL, an API client, and its ``Popen``."""

    home: Path
    process: subprocess.Popen[bytes]
    url: str
    client: ApiClient
    log_start: int = 0  # offset in daemon.log where this daemon's output begins
    killed: bool = field(default=False, repr=False)  # ended inside its block: kill_hard() or stop()

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill_hard(self) -> None:
        """SIGKILL the daemon, as a crash would, and reap it. Its api.json stays behind, as after a crash."""
        self.killed = True
        _kill(self.process)

    def stop(self) -> None:
        """Stop the daemon now, as leaving its block would (SIGTERM, then SIGKILL after ``STOP_TIMEOUT``);
        ``DaemonFailed`` if it did not stop cleanly."""
        self.killed = True
        status = _stop(self.process)
        if status not in (0, -signal.SIGTERM):
            raise _failure(self.home, self.process, self.log_start,
                           f"was killed: it did not stop within {STOP_TIMEOUT:g} s of SIGTERM" if status is None
                           else f"exited with status {status} when asked to stop")

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines this daemon wrote to ``HOME/daemon.log``."""
        return _log_tail(self.home, self.log_start, lines)


def ensure_home(home: Path) -> None:
    """Create ``home`` with a new identity via ``flair-node init-home``, unless it already has one."""
    if (home / IDENTITY_FILE).exists():
        return
    proc = subprocess.run([sys.executable, "-m", "flair_node", "init-home", str(home)],
                          capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise DaemonFailed(f"`flair-node init-home {home}` failed with status {proc.returncode}: "
                           f"{proc.stderr.strip() or proc.stdout.strip()}", home=str(home))


class NamespacedClient(ApiClient):
    """An ``ApiClient`` whose requests leave from inside a network namespace (``testing.wan``): a daemon there
    serves its API on the namespace's own 127.0.0.1."""

    executor: ThreadPoolExecutor  # set right after construction (``from_home`` builds the client)

    def _post(self, method: str, body: bytes) -> tuple[int, bytes]:
        return self.executor.submit(ApiClient._post, self, method, body).result()


@contextlib.contextmanager
def running_daemon(home: Path, *, timeout: float = 30.0, namespace: str | None = None) -> Iterator[DaemonProcess]:
    """Start ``flair-node run --home HOME``, yield it once its API answers ``node.whoami``, stop it on exit;
    ``namespace``: inside that network namespace (``testing.wan``), its API reached from there.

    Raises ``DaemonFailed``, with the tail of ``HOME/daemon.log``, if the daemon exits or does not answer
    within ``timeout`` seconds, dies during the block, or does not stop cleanly on SIGTERM. A daemon ended
    with ``kill_hard()`` or ``stop()`` inside the block is not an error.
    """
    home = Path(home).resolve()
    ensure_home(home)
    # A daemon killed with -9 leaves its api.json behind: only a different file is the new daemon's.
    stale = _read(home / API_FILE)
    with open(home / LOG_FILE, "ab") as log:
        log_start = log.tell()
        # ``ip netns exec`` execs the daemon in place, so the PID signalled is the daemon's own
        inside = ["ip", "netns", "exec", namespace] if namespace else []
        process = subprocess.Popen([*inside, sys.executable, "-m", "flair_node", "run", "--home", str(home)],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    executor = in_namespace(namespace) if namespace else None
    try:
        url, client = _wait_until_ready(home, process, log_start, stale, timeout, executor)
    except BaseException:
        _stop(process)
        if executor is not None:
            executor.shutdown()
        raise
    daemon = DaemonProcess(home=home, process=process, url=url, client=client, log_start=log_start)
    problem = None
    try:
        yield daemon
    finally:
        if not daemon.killed:
            if process.poll() is not None:
                problem = f"exited on its own with status {process.returncode}"
            else:
                status = _stop(process)
                if status is None:
                    problem = f"did not stop within {STOP_TIMEOUT:g} s of SIGTERM and was killed"
                elif status not in (0, -signal.SIGTERM):
                    problem = f"exited with status {status} when asked to stop"
        if executor is not None:
            executor.shutdown()
    if problem:  # only reached when the block itself did not raise
        raise _failure(home, process, log_start, problem)


def _wait_until_ready(home: Path, process: subprocess.Popen[bytes], log_start: int, stale: str | None,
                      timeout: float, executor: ThreadPoolExecutor | None) -> tuple[str, ApiClient]:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        if process.poll() is not None:
            raise _failure(home, process, log_start, f"exited with status {process.returncode} before its API was up")
        if time.monotonic() > deadline:
            reason = f" (last attempt: {last_error})" if last_error else ""
            raise _failure(home, process, log_start, f"did not answer node.whoami within {timeout:g} s{reason}")
        text = _read(home / API_FILE)
        if text is not None and text != stale:
            try:  # a short-lived probe, so a daemon that accepts but never answers cannot outlast the deadline
                _client(home, executor, timeout=max(0.1, deadline - time.monotonic())).call("node.whoami")
            except (FlairError, OSError) as exc:  # not answering yet
                last_error = exc
            else:
                return str(json.loads(text)["url"]), _client(home, executor)
        time.sleep(_POLL_SECONDS)


def _client(home: Path, executor: ThreadPoolExecutor | None, **options: float) -> ApiClient:
    if executor is None:
        return ApiClient.from_home(home, **options)
    client = NamespacedClient.from_home(home, **options)
    assert isinstance(client, NamespacedClient)
    client.executor = executor
    return client


def _stop(process: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, wait, SIGKILL after ``STOP_TIMEOUT``; the exit status, or None if it had to be killed."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)  # Popen signals its own child's PID, and never one already reaped
    try:
        return process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill(process)
        return None


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait()


def _failure(home: Path, process: subprocess.Popen[bytes], log_start: int, what: str) -> DaemonFailed:
    return DaemonFailed(f"flair-node daemon (pid {process.pid}, home {home}) {what}; last lines of "
                        f"{home / LOG_FILE}:\n{_log_tail(home, log_start, _LOG_TAIL_LINES)}", home=str(home))


def _log_tail(home: Path, start: int, lines: int) -> str:
    path = home / LOG_FILE
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(nothing logged)"


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
