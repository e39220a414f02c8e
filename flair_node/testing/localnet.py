"""``flair-node localnet`` as a real process, for tests and demos: started on 127.0.0.1, always stopped by its
PID."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

STOP_TIMEOUT_S = 20.0


@contextlib.contextmanager
def running_localnet(folder: Path, port: int = 0, programs: Mapping[str, Path] | None = None) -> Iterator[str]:
    """A localnet keeping its chain in ``folder``, serving on ``port`` (0: any free one) and the SBF ``programs``
    (program id in base 58 -> .so file, given as ``--program``); yields its URL. It is stopped on leaving, and must
    then exit with status 0 (a clean stop)."""
    program_arguments = [f"--program={program_id}={path}" for program_id, path in (programs or {}).items()]
    proc = subprocess.Popen([sys.executable, "-m", "flair_node", "localnet", "--port", str(port),
                             "--dir", str(folder), *program_arguments],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        if not line.startswith("localnet serving http://127.0.0.1:"):
            raise RuntimeError(f"flair-node localnet did not start: {line!r}\n{proc.stderr.read()[-3000:]}")
        yield line.split()[-1]
    finally:
        status = stop(proc)
    if status != 0:
        raise RuntimeError(f"flair-node localnet exited with status {status} when stopped")


def stop(proc: subprocess.Popen[str]) -> int:
    """SIGTERM ``proc`` (by its own Popen, never by name), SIGKILL it if it does not stop in time."""
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=STOP_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
