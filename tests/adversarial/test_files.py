"""Files under attack or accident: a full disk, no descriptors left, a permissive umask, a daemon or proving worker
killed with -9, a restart while the SDK or a localnet writes in the node home, a localnet that crashes or finds
its disk full (issue 16, findings 5 and 14).

Each test performs the event, then checks what must hold: the one operation fails with ``ResourceExhausted``
naming the path, nothing acknowledged is lost, the daemon still answers, the home stays private, and the
start-up sweep touches the daemon's own stores only.
"""

import errno
import http.client
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
import trio
from safetensors.torch import save_file
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from flair_node.core.errors import ResourceExhausted
from flair_node.devchain.server import LocalChain, LocalnetServer
from flair_node.protocol.proofs import worker
from flair_node.storage import atomic
from flair_node.storage.atomic import atomic_write
from flair_node.storage.stores import DiskObjectStore, DiskRefStore
from flair_node.tensors.safetensors_io import save_bytes
from flair_node.testing.daemon import ensure_home, running_daemon

A, B = "a" * 64, "b" * 64


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def temp_files(root):
    return [p for p in Path(root).rglob(".*.tmp")]


def failing(err, real, when=lambda *args: True):
    """A stand-in for ``real`` that raises ``OSError(err)`` while ``when(*args)`` holds."""
    def call(*args, **kwargs):
        if when(*args):
            raise OSError(err, os.strerror(err))
        return real(*args, **kwargs)
    return call


# -- finding 5: resource errors fail the one write, with a clear error, and lose nothing


@pytest.mark.parametrize("err, says", [(errno.ENOSPC, "no space left"), (errno.EDQUOT, "quota"),
                                       (errno.EMFILE, "no file descriptor left")])
def test_a_write_that_runs_out_fails_alone_and_keeps_the_old_file(tmp_path, monkeypatch, err, says):
    path = tmp_path / "state.json"
    atomic_write(path, b"old")
    where = "fsync" if err != errno.EMFILE else "open"
    real = getattr(os, where)
    monkeypatch.setattr(os, where, failing(err, real, lambda target, *rest: where == "fsync"
                                           or str(target).endswith(".tmp")))
    with pytest.raises(ResourceExhausted, match=says) as info:
        atomic_write(path, b"new")
    monkeypatch.undo()
    assert str(path) in info.value.message and info.value.data == {"path": str(path)}
    assert info.value.code == -32017
    assert path.read_bytes() == b"old" and not temp_files(tmp_path)


def test_stores_fail_one_call_on_a_full_disk_and_keep_what_they_had(tmp_path, monkeypatch):
    objects, refs = DiskObjectStore(tmp_path / "objects"), DiskRefStore(tmp_path / "refs")
    objects.put(A, b"kept")
    refs.compare_and_swap("main", None, A)
    monkeypatch.setattr(os, "fsync", failing(errno.ENOSPC, os.fsync))
    with pytest.raises(ResourceExhausted, match="no space left"):
        objects.put(B, b"lost")
    with pytest.raises(ResourceExhausted, match="no space left"):
        refs.compare_and_swap("main", A, B)
    monkeypatch.setattr(os, "listdir", failing(errno.EMFILE, os.listdir))
    with pytest.raises(ResourceExhausted, match="descriptor"):
        list(objects.keys())
    with pytest.raises(ResourceExhausted, match="descriptor"):
        refs.all()
    monkeypatch.undo()
    assert not objects.has(B) and objects.get(A) == b"kept" and list(objects.keys()) == [A]
    assert refs.get("main") == A and not temp_files(tmp_path)


def test_new_folders_are_fsynced_and_everything_is_private_whatever_the_umask(tmp_path, monkeypatch):
    synced = []
    real = atomic.fsync_dir
    monkeypatch.setattr(atomic, "fsync_dir", lambda path: (synced.append(Path(path)), real(path)))
    old = os.umask(0)
    try:
        atomic_write(tmp_path / "x" / "y" / "z" / "file", b"data")
        store = DiskObjectStore(tmp_path / "objects")
        store.put(A, b"object")
    finally:
        os.umask(old)
    # the parent of every folder made, then the file's own folder after the rename
    assert synced[:4] == [tmp_path, tmp_path / "x", tmp_path / "x" / "y", tmp_path / "x" / "y" / "z"]
    assert tmp_path / "objects" in synced and tmp_path / "objects" / "aa" in synced
    for path in (tmp_path / "x", tmp_path / "x" / "y", tmp_path / "x" / "y" / "z", tmp_path / "objects",
                 tmp_path / "objects" / "aa"):
        assert mode(path) == 0o700, path
    assert mode(tmp_path / "x" / "y" / "z" / "file") == 0o600
    assert mode(tmp_path / "objects" / "aa" / ("a" * 62)) == 0o600


def model_file(path, seed):
    save_file({"w": torch.randn(64, generator=torch.Generator().manual_seed(seed))}, str(path))
    return str(path)


def fill(folder):
    """Write a filler file in ``folder`` until its file system is full; the file's path."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.mark.integration
def test_a_full_disk_fails_a_commit_and_the_daemon_goes_on(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    home = tmp_path / "home"
    ensure_home(home)
    blocks = home / "blocks"
    blocks.mkdir(mode=0o700)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(blocks)],
                             capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        with running_daemon(home) as daemon:
            call = daemon.client.call
            repo = call("repo.init", name="full", model_path=model_file(tmp_path / "m0.safetensors", 0))["repo"]
            head = call("repo.log", repo=repo)["commits"][0]["id"]
            filler = fill(blocks)
            with pytest.raises(ResourceExhausted, match="no space left") as info:
                call("repo.commit", repo=repo, weights_path=model_file(tmp_path / "m1.safetensors", 1),
                     message="does not fit")
            assert str(blocks) in info.value.message and info.value.code == -32017
            assert call("node.whoami")["public_key"]
            assert call("repo.log", repo=repo)["commits"][0]["id"] == head  # nothing moved
            assert not temp_files(blocks)
            filler.unlink()
            made = call("repo.commit", repo=repo, weights_path=model_file(tmp_path / "m2.safetensors", 2),
                        message="fits")["id"]
            assert call("repo.log", repo=repo)["commits"][0]["id"] == made
            assert call("repo.fsck", repo=repo)["ok"]
            assert "Traceback" not in daemon.log_tail(200)
    finally:
        if subprocess.run(["umount", str(blocks)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(blocks)], capture_output=True, timeout=30)


# -- finding 14: the home is private, the start-up sweep keeps to the daemon's stores, scratch does not outlive


@pytest.mark.integration
def test_the_home_is_private_whatever_the_umask(tmp_path):
    home = tmp_path / "home"
    old = os.umask(0)  # the most permissive umask: init-home and the daemon inherit it
    try:
        with running_daemon(home) as daemon:
            call = daemon.client.call
            repo = call("repo.init", name="private", model_path=model_file(tmp_path / "m0.safetensors", 0))["repo"]
            call("repo.commit", repo=repo, weights_path=model_file(tmp_path / "m1.safetensors", 1), message="one")
            call("repo.branch", repo=repo, name="side")
    finally:
        os.umask(old)
    assert mode(home) == 0o700
    checked = 0
    for folder, folders, files in os.walk(home):
        for name in folders:
            assert mode(Path(folder) / name) == 0o700, Path(folder) / name
        for name in files:
            path = Path(folder) / name
            if path == home / "daemon.log":
                continue  # the test harness's own log file, not the daemon's
            assert mode(path) == 0o600, path
            checked += 1
    assert checked >= 10 and (home / "objects").is_dir() and (home / "blocks").is_dir()


@pytest.mark.integration
def test_start_up_sweeps_only_the_daemons_own_stores(tmp_path):
    home = tmp_path / "home"
    ensure_home(home)
    spared = {  # in-flight files of other processes: the SDK's scratch, a localnet kept in the home
        home / "tmp" / ".sdk-0f1e.safetensors.4242.cafe0001.tmp": b"weights being written",
        home / "localnet" / "ledger" / ".000000000007-5Sig.json.4343.cafe0002.tmp": b"a landing transaction",
        home / "localnet" / ".faucet.json.4343.cafe0003.tmp": b"[1, 2, 3]",
    }
    swept = [  # the daemon's own leftovers from a run killed with -9
        home / ".api.json.4141.dead0001.tmp",
        home / "objects" / "ab" / (".cd" + "0" * 60 + ".4141.dead0002.tmp"),
        home / "anchoring" / ("1" * 64) / ".state.json.4141.dead0003.tmp",
    ]
    scratch = [  # a killed proof's scratch: the worker's job with plaintext deltas, EZKL steps' folders
        home / "proofs" / "circuits" / ".job-k1ll3d",
        home / "proofs" / "circuits" / ".tmp-w1tn355",
        home / "proofs" / "development-srs" / ".tmp-5r5",
    ]
    for path, data in spared.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for path in swept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    for folder in scratch:
        folder.mkdir(parents=True)
        (folder / "deltas.safetensors").write_bytes(save_bytes({"d0": torch.ones(4)}))
    kept = home / "proofs" / "circuits" / ("c" * 32)
    kept.mkdir()
    (kept / "vk.key").write_bytes(b"a built circuit")
    with running_daemon(home) as daemon:
        assert daemon.client.call("node.whoami")["public_key"]
        for path, data in spared.items():
            assert path.read_bytes() == data, path
        for path in swept + scratch:
            assert not path.exists(), path
        assert (kept / "vk.key").read_bytes() == b"a built circuit"
        assert "removed 3 temp files" in daemon.log_tail(200)
        assert "removed 3 proof scratch folders" in daemon.log_tail(200)


def test_the_proving_worker_deletes_the_plaintext_deltas_once_read(tmp_path, monkeypatch):
    job = tmp_path / ".job-1"
    job.mkdir(mode=0o700)
    (job / "deltas.safetensors").write_bytes(save_bytes({"d0": torch.ones(4), "d1": torch.zeros(4)}))
    (job / "job.json").write_text(json.dumps({
        "folder": str(tmp_path / "circuit"), "srs": str(tmp_path / "srs"), "inputs": 2, "size": 4, "scheme": "kzg",
        "logrows": 12, "vk_sha256": "0" * 64, "srs_sha256": "0" * 64, "weights": [1, 2], "indices": [0]}))
    seen = []

    def prove(circuit, weights, deltas, indices):
        seen.append((job / "deltas.safetensors").exists())
        assert [d.tolist() for d in deltas] == [[1.0] * 4, [0.0] * 4]
        return {0: b"proof"}

    monkeypatch.setattr(worker.weighted_sum, "prove", prove)
    monkeypatch.setattr(worker.os, "nice", lambda increment: 0)
    assert worker._main(job) == 0
    assert seen == [False]  # proving runs with the deltas in memory only
    assert (job / "proof-0.json").read_bytes() == b"proof" and mode(job / "proof-0.json") == 0o600


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_a_proving_worker_ends_when_its_daemon_is_killed(tmp_path):
    script = tmp_path / "daemon_stand_in.py"
    script.write_text(textwrap.dedent("""
        import os, subprocess, sys, time
        code = ("import sys, time; from flair_node.protocol.proofs.worker import exit_with_parent; "
                "exit_with_parent(int(sys.argv[1]), every=0.05); print('watching', flush=True); time.sleep(120)")
        child = subprocess.Popen([sys.executable, "-c", code, str(os.getpid())])
        print(child.pid, flush=True)
        time.sleep(120)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    child = None
    try:
        child = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "watching"  # it imported the worker and watches its parent
        parent.kill()  # kill -9, as a crashed daemon
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child), "the worker outlived its daemon"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        parent.stdout.close()
        if child is not None and alive(child):
            os.kill(child, 9)  # started (through the stand-in) by this test


# -- finding 14: the localnet persists before it publishes, and a full disk costs one transaction


def test_the_localnet_writes_a_transaction_down_before_anyone_sees_it(tmp_path):
    with LocalChain(tmp_path / "chain") as chain:
        seen_at_persist = []
        real = chain.persist

        def persist(record):
            signature = record["signature"]
            seen_at_persist.append((chain.status(signature, search_history=True), chain.slot))
            real(record)

        chain.persist = persist
        to = Keypair().pubkey()
        tx = chain.airdrop_transaction(to, 5)
        assert chain.land(tx, preflight=True)
        assert seen_at_persist == [(None, 0)]  # not published while its record was being written
        assert chain.status(str(tx.signatures[0]), search_history=True).slot == 1
        assert chain.read_record(str(tx.signatures[0]))["slot"] == 1


async def test_a_full_disk_fails_one_transaction_and_the_localnet_goes_on(tmp_path, nursery, monkeypatch):
    with trio.fail_after(60):
        chain = LocalChain(tmp_path / "chain")
        server = LocalnetServer(chain)
        url = await nursery.start(server.run)

        async def rpc(method, *params):
            body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
            return await trio.to_thread.run_sync(_post, url, body)

        victim = str(Keypair().pubkey())
        monkeypatch.setattr(os, "fsync", failing(errno.ENOSPC, os.fsync))
        refused = await rpc("requestAirdrop", victim, 7)
        monkeypatch.undo()
        assert refused["error"]["code"] == -32017 and "no space left" in refused["error"]["message"]
        assert (await rpc("getBalance", victim))["result"]["value"] == 0  # back at what the ledger says
        assert (await rpc("getSlot"))["result"] == 0 and not temp_files(tmp_path / "chain")
        landed = (await rpc("requestAirdrop", victim, 9))["result"]
        assert (await rpc("getBalance", victim))["result"]["value"] == 9
        assert (await rpc("getSignatureStatuses", [landed]))["result"]["value"][0]["slot"] == 1
        chain.close()
    with LocalChain(tmp_path / "chain") as reopened:  # a restart agrees with what was answered
        assert reopened.slot == 1 and reopened.status(landed, search_history=True).slot == 1
        assert reopened.account(Pubkey.from_string(victim)).lamports == 9


def _post(url, body):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    try:
        conn.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()
