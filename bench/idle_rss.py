#!/usr/bin/env python
"""Memory of idle daemons: N real ``flair-node run`` processes on 127.0.0.1, next to a bare Python interpreter.

Each daemon gets its own home in a temporary folder and is started with ``flair_node.testing.daemon.running_daemon``
(ready once its API answers ``node.whoami``). Once all are ready they idle ``--idle`` seconds; then each one's
VmRSS and PSS are read from /proc. PSS splits shared library pages between the processes that map them, so N
daemons together take about N x ``pss_mb_mean``. In the same run, a bare ``python -c 'import time;
time.sleep(5)'`` gives the interpreter's own RSS as a baseline. ``torch_loaded`` is whether any daemon has torch's
library mapped (it should not: idle daemons do no tensor work). The last line of stdout is one JSON object.

    .venv/bin/python bench/idle_rss.py              # 5 daemons
    .venv/bin/python bench/idle_rss.py --nodes 50   # issue 4's target: 50 nodes on one machine
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flair_node.testing.daemon import running_daemon
from flair_node.testing.memory import maps_torch, pss_mb, rss_mb

BASELINE_SECONDS = 5


def measure(nodes: int, idle: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="flair-idle-") as tmp, contextlib.ExitStack() as stack:
        # Leaving the stack stops every daemon (SIGTERM to its own Popen's PID), newest first.
        daemons = [stack.enter_context(running_daemon(Path(tmp) / f"node{i}", timeout=60)) for i in range(nodes)]
        baseline = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({BASELINE_SECONDS})"])
        try:
            time.sleep(min(1.0, idle))  # the interpreter is up well within a second
            baseline_mb = rss_mb(baseline.pid)
            time.sleep(max(0.0, idle - 1.0))
            rss = [rss_mb(d.pid) for d in daemons]
            pss = [pss_mb(d.pid) for d in daemons]
            torch_loaded = any(maps_torch(d.pid) for d in daemons)
        finally:
            if baseline.poll() is None:
                baseline.terminate()  # its own PID, through its Popen
            baseline.wait()
    mean = statistics.fmean(rss)
    return {"nodes": nodes, "idle_s": idle, "rss_mb_mean": round(mean, 1), "rss_mb_max": round(max(rss), 1),
            "pss_mb_mean": round(statistics.fmean(pss), 1), "torch_loaded": torch_loaded,
            "baseline_python_mb": round(baseline_mb, 1), "rss_vs_baseline": round(mean / baseline_mb, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5, help="daemons to start")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds all daemons idle before they are measured")
    args = parser.parse_args()
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    print(json.dumps(measure(args.nodes, args.idle)))


if __name__ == "__main__":
    main()
