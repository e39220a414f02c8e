"""What a running process holds in memory, read from ``/proc`` (Linux): for the idle-daemon test and benchmark.

    rss_mb(daemon.pid)          resident set, as ``ps`` shows it
    pss_mb(daemon.pid)          proportional set: shared library pages split between the processes mapping them,
                                so the PSS of 50 daemons adds up to what they take together
    maps_torch(daemon.pid)      whether torch's native library is mapped: the process imported torch
    own_mb("VmHWM")             a ``/proc/self/status`` figure of this process (benchmarks: peak resident)
    reset_peak()                start ``VmHWM`` again from the current resident set
    peak_mb(daemon.pid)         ``VmHWM`` of another process: its peak resident set since it started, or since
    reset_peak(daemon.pid)      reset it (its owner, or root, may)
"""

from __future__ import annotations

from pathlib import Path


def rss_mb(pid: int) -> float:
    """``VmRSS`` of process ``pid``, in MiB."""
    return _kib_field(Path(f"/proc/{pid}/status"), "VmRSS:") / 1024


def pss_mb(pid: int) -> float:
    """``Pss`` of process ``pid`` (from ``smaps_rollup``), in MiB."""
    return _kib_field(Path(f"/proc/{pid}/smaps_rollup"), "Pss:") / 1024


def maps_torch(pid: int) -> bool:
    """Whether process ``pid`` has torch's C++ library (``libtorch*.so``) mapped, as any process does once it has
    imported torch. Read from outside, so it needs nothing from the process itself."""
    with open(f"/proc/{pid}/maps") as maps:
        return any("/libtorch" in line for line in maps)


def own_mb(field: str) -> float:
    """The ``field`` line (``VmRSS``, ``VmHWM``, ...) of this process's ``/proc/self/status``, in MiB."""
    return _kib_field(Path("/proc/self/status"), field + ":") / 1024


def peak_mb(pid: int) -> float:
    """``VmHWM`` of process ``pid``, in MiB: its peak resident set."""
    return _kib_field(Path(f"/proc/{pid}/status"), "VmHWM:") / 1024


def reset_peak(pid: int | None = None) -> bool:
    """Reset the peak resident set (``VmHWM``) of process ``pid`` (default: this one) to its current one; False
    where the kernel refuses."""
    try:
        with open(f"/proc/{pid or 'self'}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _kib_field(path: Path, name: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(name):
            return int(line.split()[1])  # "VmRSS:     94688 kB"
    raise ValueError(f"{path} has no {name} line")
