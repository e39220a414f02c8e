"""A daemon that is not training or merging does not import torch, and stays small (issue 4: 50 nodes on a machine).

torch (and what only tensor work needs) is imported by the methods that do tensor work (``storage.repo``,
``api.methods``), never on the way to a running node. The bound below is on memory, not time; ``bench/idle_rss.py``
reports the figure next to a bare interpreter's.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from flair_node.testing.daemon import running_daemon
from flair_node.testing.memory import maps_torch, rss_mb

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench"
RSS_LIMIT_MB = 150
IDLE_SECONDS = 3.0
#: Imported only for tensor work: torch itself, and what only the merge kernel, the demo and the tests use.
TENSOR_ONLY = ("torch", "safetensors", "numba", "sklearn", "flwr")

# Everything `flair-node run` does up to serving: entry point, home, identity, stores, the node with its libp2p
# host, Bitswap, sync, gossip and API server started (then cancelled). Prints which of argv[2:] got imported.
START_PATH = """
import json, sys
from pathlib import Path

import trio

import flair_node.__main__
from flair_node.daemon.home import Home
from flair_node.daemon.node import Node


async def start_and_stop(node):
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        nursery.cancel_scope.cancel()


home = Home(Path(sys.argv[1]))
home.init()
node = Node(home, home.config())
try:
    trio.run(start_and_stop, node)
finally:
    node.close()
print(json.dumps({name: name in sys.modules for name in sys.argv[2:]}))
"""


def test_starting_a_node_imports_no_tensor_library(tmp_path):
    proc = subprocess.run([sys.executable, "-c", START_PATH, str(tmp_path / "home"), *TENSOR_ONLY],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    imported = json.loads(proc.stdout.strip().splitlines()[-1])
    assert imported == dict.fromkeys(TENSOR_ONLY, False)


def test_idle_daemon_stays_small_until_tensor_work_loads_torch(tmp_path):
    with running_daemon(tmp_path / "home") as daemon:
        time.sleep(IDLE_SECONDS)
        rss = rss_mb(daemon.pid)
        print(f"idle daemon: VmRSS {rss:.1f} MiB")  # shown with -s; bench/idle_rss.py reports it too
        assert not maps_torch(daemon.pid)
        assert rss < RSS_LIMIT_MB, f"an idle daemon holds {rss:.1f} MiB (limit {RSS_LIMIT_MB} MiB)"

        # Weights stream through a commit as bytes (storage.pieces): the first request that computes on tensors
        # loads torch, and the daemon serves it as before.
        model = tmp_path / "m0.safetensors"
        save_file({"fc.weight": torch.ones(4, 2), "fc.bias": torch.zeros(4)}, str(model))
        created = daemon.client.call("repo.init", name="idle", model_path=str(model))
        assert created["tensors"] == 2 and not maps_torch(daemon.pid)
        save_file({"fc.weight": torch.zeros(4, 2), "fc.bias": torch.zeros(4)}, str(model))
        daemon.client.call("repo.commit", repo="idle", weights_path=str(model), message="zeros", branch="main")
        assert daemon.client.call("repo.diff", repo="idle", a="main~1", b="main")["tensors"][1]["changed"] == 8
        assert maps_torch(daemon.pid)


@pytest.mark.slow
def test_idle_rss_bench_reports_its_figures():
    proc = subprocess.run([sys.executable, str(BENCH / "idle_rss.py"), "--nodes", "2"], capture_output=True, text=True,
                          timeout=180, check=True)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["nodes"] == 2 and report["torch_loaded"] is False
    assert 0 < report["baseline_python_mb"] < report["rss_mb_mean"] <= report["rss_mb_max"]
