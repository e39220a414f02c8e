"""The real daemon, driven through the real CLI, on 127.0.0.1 with a port it picks itself."""

import json
import os
import stat
import subprocess
import sys
import threading
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from flair_node.core.errors import FlairError, RefConflict
from flair_node.testing.daemon import ensure_home, running_daemon

pytestmark = pytest.mark.integration


def flair(home, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", "flair_node.cli.main", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"flair {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def model(seed, path):
    g = torch.Generator().manual_seed(seed)
    save_file({"fc.weight": torch.randn(8, 4, generator=g), "fc.bias": torch.randn(8, generator=g)}, str(path))
    return path


def test_cli_tour(tmp_path):
    home = tmp_path / "home"
    with running_daemon(home) as daemon:
        api = json.loads((home / "api.json").read_text())
        assert api["url"].startswith("http://127.0.0.1:")
        assert stat.S_IMODE(os.stat(home / "api.json").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(home / "identity.json").st_mode) == 0o600

        me = flair(home, "whoami").stdout.strip()
        assert me == daemon.client.call("node.whoami")["public_key"]
        repo = flair(home, "init", "tour", "--model", str(model(0, tmp_path / "m0.safetensors"))).stdout.strip()
        assert len(repo) == 64

        flair(home, "branch", "tour", "alice")
        c1 = flair(home, "commit", "tour", "--weights", str(model(1, tmp_path / "m1.safetensors")), "-m",
                   "alice trains", "--branch", "alice", "--examples", "30", "--metric", "acc=0.75").stdout.strip()
        flair(home, "branch", repo[:8], "bob", "--at", "main")
        flair(home, "commit", "tour", "--weights", str(model(2, tmp_path / "m2.safetensors")), "-m",
              "bob trains", "--branch", "bob", "--examples", "10")
        merged = json.loads(flair(home, "merge", "tour", "alice", "bob", "--into", "main", "--json").stdout)
        assert merged["kind"] == "merge" and len(merged["parents"]) == 3

        graph = flair(home, "log", "tour", "--graph").stdout
        assert "*" in graph and "alice trains" in graph and "\\" in graph
        log = json.loads(flair(home, "log", "tour", "--json").stdout)
        assert [c["kind"] for c in log["commits"]][0] == "merge" and len(log["commits"]) == 4

        shown = json.loads(flair(home, "show", "tour", c1[:10], "--json").stdout)
        assert shown["metrics"] == {"acc": 0.75} and shown["meta"]["examples"] == 30
        assert {t["name"] for t in shown["changes"]} == {"fc.weight", "fc.bias"}
        diff = flair(home, "diff", "tour", "main", "alice").stdout
        assert "fc.weight" in diff and "total L2" in diff
        assert "branches:" in flair(home, "status", "tour").stdout

        out = tmp_path / "alice.safetensors"
        flair(home, "checkout", "tour", "alice", "-o", str(out))
        original = load_file(str(tmp_path / "m1.safetensors"))
        assert all(torch.equal(original[k], v) for k, v in load_file(str(out)).items())
        assert "exists" in flair(home, "checkout", "tour", "alice", "-o", str(out), check=False).stderr

        reverted = flair(home, "revert", "tour", c1, "--branch", "alice").stdout.strip()
        flair(home, "checkout", "tour", reverted, "-o", str(out), "--force")
        assert all(torch.equal(load_file(str(tmp_path / "m0.safetensors"))[k], v)
                   for k, v in load_file(str(out)).items())
        assert "no damage" in flair(home, "fsck", "tour").stdout
        gc = json.loads(flair(home, "gc", "--json").stdout)
        # one payload block for each weights of 5 commits: the revert's are m0's again, the same block
        assert gc["blocks_removed"] == 0 and gc["blocks_kept"] == 4
        assert json.loads(flair(home, "show", "tour", "main", "--json").stdout)["payload"]["cid"].startswith("bafk")

        methods = {m["name"] for m in daemon.client.call("rpc.discover")["methods"]}
        assert {"repo.commit", "repo.merge", "repo.fsck", "rpc.discover"} <= methods


def test_cli_errors_are_clear(tmp_path):
    home = tmp_path / "home"
    with running_daemon(home):
        flair(home, "init", "r", "--model", str(model(0, tmp_path / "m.safetensors")))
        pt = tmp_path / "model.pt"
        torch.save({"w": torch.zeros(2)}, pt)
        proc = flair(home, "commit", "r", "--weights", str(pt), "-m", "x", check=False)
        assert proc.returncode == 1 and "not a safetensors file" in proc.stderr
        wrong = tmp_path / "wrong.safetensors"
        save_file({"fc.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(8)}, str(wrong))
        # a delta must hold its parent's tensors (a plain commit may change them: tests/unit/test_layouts.py)
        proc = flair(home, "commit", "r", "--weights", str(wrong), "-m", "x", "--codec", "int8", check=False)
        assert "fc.weight" in proc.stderr and "shape" in proc.stderr
        proc = flair(home, "log", "nope", "--json", check=False)
        assert json.loads(proc.stdout)["error"]["code"] == -32005
        proc = flair(home, "show", "r", "deadbeef", check=False)
        assert "no branch or commit" in proc.stderr

        api = json.loads((home / "api.json").read_text())
        (home / "api.json").write_text(json.dumps({**api, "token": "wrong"}))
        proc = flair(home, "whoami", check=False)
        assert proc.returncode == 1 and "token" in proc.stderr
        (home / "api.json").write_text(json.dumps(api))
    proc = flair(home, "whoami", check=False)
    assert proc.returncode == 1 and "flair-node run" in proc.stderr


def test_kill_9_never_loses_an_acknowledged_commit(tmp_path):
    home = tmp_path / "home"
    weights = [model(i, tmp_path / f"w{i}.safetensors") for i in range(4)]
    acknowledged: list[str] = []
    with running_daemon(home) as daemon:
        daemon.client.call("repo.init", name="crash", model_path=str(weights[0]))
    for attempt, delay in enumerate([0.3, 0.7, 1.1]):
        with running_daemon(home) as daemon:
            stop, committing = threading.Event(), threading.Event()

            def hammer(client=daemon.client, stop=stop, committing=committing, attempt=attempt):
                i = 0
                while not stop.is_set():
                    i += 1
                    try:
                        r = client.call("repo.commit", repo="crash", weights_path=str(weights[i % 4]),
                                        message=f"attempt {attempt} commit {i}")
                    except RefConflict:
                        continue
                    except (FlairError, OSError):
                        return  # the daemon died mid-call: this commit was never acknowledged
                    acknowledged.append(r["id"])
                    committing.set()

            workers = [threading.Thread(target=hammer) for _ in range(2)]
            for w in workers:
                w.start()
            # Counted from the first acknowledged commit: a fresh daemon imports torch on its first one (issue 4).
            assert committing.wait(timeout=60), "no commit was acknowledged within 60 s"
            time.sleep(delay)
            daemon.kill_hard()
            stop.set()
            for w in workers:
                w.join(timeout=30)
        with running_daemon(home) as daemon:
            history = {c["id"] for c in daemon.client.call("repo.log", repo="crash")["commits"]}
            missing = [c for c in acknowledged if c not in history]
            assert not missing, f"acknowledged commits lost after kill -9: {missing}"
            fsck = daemon.client.call("repo.fsck", repo="crash")
            assert fsck["ok"], fsck["problems"]
            assert not list(home.rglob(".*.tmp")), "temp files of interrupted writes are swept at start"
    assert len(acknowledged) >= 3


def test_one_daemon_per_home_and_clean_stop(tmp_path):
    home = tmp_path / "home"
    with running_daemon(home):
        second = subprocess.run([sys.executable, "-m", "flair_node", "run", "--home", str(home)],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert "already running" in second.stderr and "Traceback" not in second.stderr
        assert (home / "api.json").exists()  # the first daemon's file is untouched
    assert not (home / "api.json").exists()


def test_membership_through_the_cli(tmp_path):
    from flair_node.core.identity import Identity

    home, alice, bob = tmp_path / "home", Identity.generate().public_key, Identity.generate().public_key
    with running_daemon(home):
        flair(home, "init", "team", "--model", str(model(0, tmp_path / "m0.safetensors")))
        flair(home, "invite", "team", alice, "--role", "maintainer", "--expires-days", "30")
        text = flair(home, "invite", "team", bob, "--role", "reader").stdout
        assert f"{alice}  maintainer" in text and f"{bob}  reader" in text and "until 20" in text
        members = json.loads(flair(home, "members", "team", "--json").stdout)
        assert [m["role"] for m in members["members"]] == ["owner", "maintainer", "reader"]
        assert (members["epoch"], members["changes"], members["protected_branches"]) == (0, 2, ["main"])

        removed = json.loads(flair(home, "remove", "team", alice, "--json").stdout)
        assert removed["epoch"] == 1 and removed["removed"] == [alice]
        commit = json.loads(flair(home, "commit", "team", "--weights", str(model(1, tmp_path / "m1.safetensors")),
                                  "-m", "after the removal", "--json").stdout)
        assert commit["payload"]["key_epoch"] == 1

        shown = flair(home, "show", "team").stdout
        assert "strategy       mean" in shown and "merge when     3 contributions wait" in shown
        assert "privacy        plain: members read each contribution" in shown
        private = flair(home, "policy", "team", "--privacy", "secure", "--secure-threshold", "0.75").stdout
        assert "privacy        secure: " in private and "more than 0.75 of their holders" in private
        assert "refused beyond 0" in private  # switching to secure: only contributions trained from the head
        refused = flair(home, "policy", "team", "--strategy", "median", check=False)
        assert refused.returncode == 1 and "secure rounds merge by the mean: median needs" in refused.stderr
        public = json.loads(flair(home, "policy", "team", "--privacy", "plain", "--max-staleness", "4",
                                  "--json").stdout)
        assert (public["privacy"], public["secure_threshold"], public["max_staleness"]) == ("plain", "0.5", 4)
        policy = json.loads(flair(home, "policy", "team", "--strategy", "trimmed_mean", "--param",
                                  "fraction=0.2", "--buffer", "4", "--alpha", "1", "--json").stdout)
        assert (policy["strategy"], policy["strategy_params"], policy["buffer"], policy["alpha"]) == \
            ("trimmed_mean", {"fraction": "0.2"}, 4, "1")
        assert policy["timeout_s"] == 60  # what was not given keeps its value
        assert "staleness      weight = examples x (1 + staleness)^-1" in flair(home, "show", "team").stdout
        unknown = flair(home, "policy", "team", "--strategy", "vote", check=False)
        assert unknown.returncode == 1 and "unknown aggregation strategy" in unknown.stderr
        assert json.loads(flair(home, "members", "team", "--json").stdout)["policy"] == policy

        again = flair(home, "remove", "team", alice, check=False)
        assert again.returncode == 1 and "is not a member" in again.stderr
        bad = flair(home, "invite", "team", "not-a-key", check=False)
        assert bad.returncode == 1 and "public key" in bad.stderr
        assert flair(home, "fsck", "team").returncode == 0


def test_differential_privacy_through_the_cli(tmp_path):
    """The owner sets the policy; each contribution is clipped, noised and numbered by the node, which refuses
    one past the member's budget; ``flair members`` shows what each member spent."""
    from flair_node.core import dp

    home = tmp_path / "home"
    ensure_home(home)
    (home / "config.toml").write_text("[rounds]\naggregate = false\n")
    with running_daemon(home):
        flair(home, "init", "team", "--model", str(model(0, tmp_path / "m0.safetensors")))
        shown = flair(home, "policy", "team", "--buffer", "1", "--dp-clip", "0.5", "--dp-noise", "2",
                      "--dp-delta", "1e-5", "--dp-epsilon", "3.5").stdout
        assert "each contribution clipped to L2 norm 0.5, plus Gaussian noise of 2 x that; each member may spend " \
               "epsilon 3.5 at delta 1e-5" in shown
        partial = flair(home, "policy", "team", "--no-dp", "--dp-clip", "1", check=False)
        assert partial.returncode == 1 and "takes no --dp-* value" in partial.stderr
        weights = str(model(1, tmp_path / "m1.safetensors"))
        spent = [json.loads(flair(home, "contribute", "team", "--weights", weights, "--examples", "10",
                                  "--json").stdout) for _ in range(2)]
        assert [c["dp"]["count"] for c in spent] == [1, 2] and [c["meta"]["dp"]["count"] for c in spent] == [1, 2]
        assert spent[1]["dp"]["epsilon"] == dp.text(dp.epsilon("2", 2, "1e-5"))
        assert float(spent[0]["dp"]["update_norm"]) > 0.5  # the model moved further than the clip: clipped
        over = flair(home, "contribute", "team", "--weights", weights, "--examples", "10", check=False)
        assert over.returncode == 1 and "past the repository's budget of 3.5" in over.stderr
        members = flair(home, "members", "team").stdout
        assert f"epsilon {spent[1]['dp']['epsilon']} of 3.5 spent (2 contributions)" in members
        status = flair(home, "round", "status", "team").stdout
        assert "privacy spent:  of a budget of epsilon 3.5 per member at delta 1e-5" in status
        assert f"epsilon {spent[1]['dp']['epsilon']} (2 contributions)" in status
        assert json.loads(flair(home, "policy", "team", "--no-dp", "--json").stdout)["dp_clip"] == ""
        assert "diff. privacy  off" in flair(home, "show", "team").stdout
        # a norm bound without differential privacy: the node clips to it, every member checks it
        bounded = flair(home, "policy", "team", "--norm-bound", "0.25").stdout
        assert "norm bound     each contribution clipped to L2 norm 0.25, checked by every member" in bounded
        clipped = json.loads(flair(home, "contribute", "team", "--weights", weights, "--examples", "10",
                                   "--json").stdout)
        assert clipped["id"][:12] in flair(home, "round", "status", "team").stdout  # counted: within the bound
        assert "norm bound     off" in flair(home, "policy", "team", "--no-norm-bound").stdout


def test_a_member_clones_from_another_daemon_and_the_owner_pulls_back(tmp_path):
    with running_daemon(tmp_path / "owner") as owner, running_daemon(tmp_path / "alice") as alice:
        repo = flair(owner.home, "init", "team", "--model", str(model(0, tmp_path / "m0.safetensors"))).stdout.strip()
        alice_key = flair(alice.home, "whoami").stdout.strip()
        owner_addr = owner.client.call("node.status")["p2p"]["addrs"][0]
        refused = flair(alice.home, "clone", repo, "--peer", owner_addr, check=False)
        assert refused.returncode == 1 and "members only" in refused.stderr

        flair(owner.home, "invite", "team", alice_key, "--role", "contributor")
        text = flair(alice.home, "clone", repo, "--peer", owner_addr).stdout
        assert "1 commits, 1 membership changes; moved main" in text
        flair(alice.home, "branch", repo, "alice")
        mine = flair(alice.home, "commit", repo, "--weights", str(model(1, tmp_path / "m1.safetensors")), "-m",
                     "site A", "--branch", "alice", "--examples", "5").stdout.strip()
        main = flair(alice.home, "commit", repo, "--weights", str(model(2, tmp_path / "m2.safetensors")), "-m",
                     "to main", check=False)
        assert main.returncode == 1 and "needs the role maintainer" in main.stderr

        alice_addr = alice.client.call("node.status")["p2p"]["addrs"][0]
        back = json.loads(flair(owner.home, "pull", "team", "--peer", alice_addr, "--json").stdout)
        assert back["refused"] == {}  # the commit may have come already, announced by gossip
        out = tmp_path / "alice.safetensors"
        flair(owner.home, "checkout", "team", "alice", "-o", str(out))
        assert torch.equal(load_file(str(out))["fc.weight"], load_file(str(tmp_path / "m1.safetensors"))["fc.weight"])
        assert json.loads(flair(owner.home, "log", "team", "--json").stdout)["commits"][0]["id"] == mine


def test_peers_and_network_status_through_the_cli(tmp_path):
    with running_daemon(tmp_path / "a") as a, running_daemon(tmp_path / "b") as b:
        a_addr = a.client.call("node.status")["p2p"]["addrs"][0]
        assert f"this node: {a_addr}" in flair(a.home, "peers").stdout
        b.client.call("block.has", cid="bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku")
        flair(b.home, "repos")
        with pytest.raises(FlairError):
            b.client.call("repo.pull", repo="ab" * 32, peer=a_addr)  # connects, then: no such repository
        peers = json.loads(flair(b.home, "peers", "--json").stdout)["p2p"]["peers"]
        assert [p["key"] for p in peers] == [None]  # a shares no repository with b: its member key is its own
        assert "member key unknown" in flair(b.home, "peers").stdout
        status = flair(b.home, "status", "--peers").stdout
        assert "1 peers" in status and "refused: 0 blocks, 0 announcements" in status


def test_a_round_through_the_cli_and_the_sdk(tmp_path):
    from flair_node.sdk import Repo

    home = tmp_path / "home"
    ensure_home(home)
    (home / "config.toml").write_text("[rounds]\naggregate = false\n")  # this test merges by hand
    with running_daemon(home):
        flair(home, "init", "team", "--model", str(model(0, tmp_path / "m0.safetensors")))
        flair(home, "policy", "team", "--buffer", "1")
        first = flair(home, "contribute", "team", "--weights", str(model(1, tmp_path / "m1.safetensors")),
                      "--examples", "30").stdout.strip()
        status = json.loads(flair(home, "round", "status", "team", "--json").stdout)
        assert (status["round"], status["ready"], [c["commit"] for c in status["pending"]]) == (1, True, [first])
        assert status["aggregator"] == status["ranked"][0]  # the owner is the only one who may move main
        sdk = Repo.connect(home, "team")
        second = sdk.contribute(load_file(str(model(2, tmp_path / "m2.safetensors"))), examples=10)
        assert [c["commit"] for c in sdk.round_status()["pending"]] == [second]  # a member's latest replaces
        assert "pending:        1 of 1 contributions; ready to merge" in flair(home, "round", "status", "team").stdout

        merged = json.loads(flair(home, "round", "merge", "team", "--json").stdout)
        assert merged["kind"] == "round" and merged["parents"][1:] == [second]
        assert merged["meta"]["contributions"] == [[second, 10, 0, 1 << 16]]
        assert sdk.round_status()["round"] == 2 and sdk.round_status()["pending"] == []
        again = flair(home, "round", "merge", "team", check=False)
        assert again.returncode == 1 and "not ready" in again.stderr
        flair(home, "policy", "team", "--max-staleness", "0")  # only weights trained from the head count now
        stale = flair(home, "contribute", "team", "--weights", str(model(3, tmp_path / "m3.safetensors")),
                      "--examples", "5", "--base", merged["parents"][0], check=False)
        assert stale.returncode == 1 and "a round would not take weights trained from it" in stale.stderr
        assert sdk.round_status()["pending"] == []

        # proven merges: contributions publish the commitments of their delta's chunks (40 values: 2 of 32)
        shown_policy = flair(home, "policy", "team", "--proof-chunk", "32").stdout
        assert "kzg commitments to chunks of 32 values" in shown_policy and "a development SRS" in shown_policy
        srs = tmp_path / "ceremony.srs"
        srs.write_bytes(b"stands in for an SRS file")
        refused = flair(home, "policy", "team", "--proof-srs", str(srs), check=False)
        assert refused.returncode == 1 and "is not an SRS file" in refused.stderr
        committed = sdk.contribute(load_file(str(model(4, tmp_path / "m4.safetensors"))), examples=7)
        shown = json.loads(flair(home, "show", "team", committed, "--json").stdout)
        assert len(shown["meta"]["commitments"]) == 2 and [c["commit"] for c in sdk.round_status()["pending"]] == [
            committed]
        lossy = flair(home, "contribute", "team", "--weights", str(model(5, tmp_path / "m5.safetensors")),
                      "--examples", "5", "--codec", "int8", check=False)
        assert lossy.returncode == 1 and "stored exactly" in lossy.stderr
        assert flair(home, "fsck", "team").returncode == 0


TRAIN_SCRIPT = '''
import torch

def train(weights):
    # stands in for local training on private data: every weight moves by 0.5
    return {name: t + 0.5 for name, t in weights.items()}, 42

def broken(weights):
    return "not weights"
'''


def test_flair_train_runs_the_script_here_and_contributes_the_result(tmp_path):
    home = tmp_path / "home"
    ensure_home(home)
    (home / "config.toml").write_text("[rounds]\naggregate = false\n")
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    with running_daemon(home):
        flair(home, "init", "team", "--model", str(model(0, tmp_path / "m0.safetensors")))
        head = json.loads(flair(home, "status", "team", "--json").stdout)["heads"]["main"]["id"]
        made = json.loads(flair(home, "train", "team", "--script", str(script), "--json").stdout)
        assert (made["base"], made["examples"], made["branch"]) == (head, 42, "main")
        pending = json.loads(flair(home, "round", "status", "team", "--json").stdout)["pending"]
        assert [(c["commit"], c["base"], c["examples"]) for c in pending] == [(made["id"], head, 42)]
        out = tmp_path / "trained.safetensors"
        flair(home, "checkout", "team", made["id"], "-o", str(out))
        start = load_file(str(tmp_path / "m0.safetensors"))
        for name, tensor in load_file(str(out)).items():
            assert torch.equal(tensor, start[name] + 0.5)

        bad = flair(home, "train", "team", "--script", str(script), "--function", "broken", check=False)
        assert bad.returncode == 1 and "must return (weights" in bad.stderr
        missing = flair(home, "train", "team", "--script", str(tmp_path / "nope.py"), check=False)
        assert missing.returncode == 1 and "no training script" in missing.stderr
