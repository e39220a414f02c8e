"""The demo end to end (a real daemon), and the tiny model and data helpers it is built from."""

import math
import os
import re
import subprocess
import sys
import time

import pytest
import torch

from flair_node.demo.network import run_network_demo
from flair_node.demo.single import CONTRIBUTORS, REPO_NAME, run_demo
from flair_node.sdk import Repo
from flair_node.testing.daemon import running_daemon
from flair_node.testing.models import accuracy, load_digits_split, make_mlp, partition, train_local


def _ids(n: int) -> torch.Tensor:
    """Examples whose only feature is their own index, so slices can be checked for overlap."""
    return torch.arange(n, dtype=torch.float32).unsqueeze(1)


def _collected_ids(slices: list[tuple[torch.Tensor, torch.Tensor]]) -> list[int]:
    return sorted(int(v) for x, _ in slices for v in x.flatten().tolist())


def test_iid_partition_is_disjoint_covers_everything_and_is_balanced():
    y = torch.randint(0, 10, (1000,), generator=torch.Generator().manual_seed(1))
    slices = partition(_ids(1000), y, 3, seed=7)
    assert _collected_ids(slices) == list(range(1000))
    assert sorted(len(s[1]) for s in slices) == [333, 333, 334]
    for x, labels in slices:
        assert torch.equal(labels, y[x.flatten().long()])  # labels travel with their examples
    again = partition(_ids(1000), y, 3, seed=7)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(slices, again, strict=True))
    assert not torch.equal(partition(_ids(1000), y, 3, seed=8)[0][0], slices[0][0])


def test_skewed_partition_favours_one_slice_per_class_and_still_covers_everything():
    _, y, _, _ = load_digits_split(seed=0)
    slices = partition(_ids(len(y)), y, 3, seed=0, skew=0.8)
    assert _collected_ids(slices) == list(range(len(y)))
    for p, (_, labels) in enumerate(slices):
        favoured = float((labels % 3 == p).to(torch.float64).mean())
        assert favoured > 0.75, f"slice {p}: only {favoured:.0%} of its labels are its favoured classes"
    iid = partition(_ids(len(y)), y, 3, seed=0)
    assert max(float((labels % 3 == p).to(torch.float64).mean()) for p, (_, labels) in enumerate(iid)) < 0.5

    extreme = partition(_ids(len(y)), y, 3, seed=0, skew=1.0)
    assert _collected_ids(extreme) == list(range(len(y)))
    for p, (_, labels) in enumerate(extreme):
        assert set(labels.tolist()) == {c for c in range(10) if c % 3 == p}


@pytest.mark.parametrize(("parts", "skew"), [(0, 0.0), (11, 0.0), (2, -0.1), (2, 1.5)])
def test_partition_rejects_impossible_requests(parts, skew):
    with pytest.raises(ValueError):
        partition(_ids(10), torch.zeros(10, dtype=torch.int64), parts, seed=0, skew=skew)


def test_digits_split_is_normalised_and_disjoint():
    x_train, y_train, x_test, y_test = load_digits_split(seed=0)
    assert x_train.dtype == x_test.dtype == torch.float32 and x_train.shape[1] == 64
    assert float(x_train.min()) == 0.0 and float(x_train.max()) == 1.0
    assert len(y_train) + len(y_test) == 1797 and set(y_test.tolist()) == set(range(10))


class _CountingProgress:
    def __init__(self) -> None:
        self.steps = 0
        self.postfix: dict[str, object] = {}

    def update(self, n: float | None = 1) -> None:
        self.steps += int(n or 0)

    def set_postfix(self, ordered_dict: object = None, refresh: bool | None = True, **kwargs: object) -> None:
        self.postfix = kwargs


def test_train_local_learns_is_deterministic_and_reports_progress():
    x, y, x_test, y_test = load_digits_split(seed=0)
    x, y = x[:300], y[:300]
    assert all(torch.equal(a, b) for a, b in zip(make_mlp(3).state_dict().values(),
                                                   make_mlp(3).state_dict().values(), strict=True))
    models, progress = [make_mlp(0), make_mlp(0)], _CountingProgress()
    before = accuracy(models[0], x_test, y_test)
    train_local(models[0], x, y, epochs=4, lr=0.01, batch_size=32, progress=progress, seed=5)
    train_local(models[1], x, y, epochs=4, lr=0.01, batch_size=32, progress=None, seed=5)
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert progress.steps == 4 * math.ceil(300 / 32) and "loss" in progress.postfix
    assert accuracy(models[0], x_test, y_test) > max(0.7, before + 0.5)


@pytest.mark.integration
def test_demo_trains_merges_and_stops_its_daemon(tmp_path, capsys):
    home = tmp_path / "home"
    started = time.monotonic()
    assert run_demo(keep=home) == 0
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out

    def printed(label: str) -> float:
        match = re.search(rf"^\s*{label}\s+([\d.]+) %$", out, re.MULTILINE)
        assert match, f"no {label!r} line in the demo's output:\n{out}"
        return float(match.group(1))

    initial, final = printed("initial model"), printed("after round 2")
    assert final > initial and final > 85.0, out
    assert elapsed < 120, f"the demo took {elapsed:.0f} s"

    pid = int(re.search(r"pid (\d+)", out).group(1))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not (home / "api.json").exists()

    with running_daemon(home):
        log = Repo.connect(home, REPO_NAME).log("main")
    commits, branches = log["commits"], log["branches"]
    merges = [c for c in commits if c["kind"] == "merge"]
    assert len(merges) == 2
    assert branches["main"] == merges[0]["id"]  # newest first
    roots = [c["id"] for c in commits if not c["parents"]]
    assert len(roots) == 1
    by_id = {c["id"]: c for c in commits}
    for n, merge, previous in [(2, merges[0], merges[1]["id"]), (1, merges[1], roots[0])]:
        contributors = [branches[f"r{n}/{name}"] for name in CONTRIBUTORS]
        assert merge["parents"] == [previous, *contributors]
        for head in contributors:
            assert by_id[head]["parents"] == [previous]
            assert 0.0 < by_id[head]["metrics"]["local_acc"] <= 1.0
        assert sum(by_id[head]["meta"]["examples"] for head in contributors) == 1797 - 449


@pytest.mark.integration
@pytest.mark.slow
def test_network_demo_rotates_the_aggregator_and_plots_accuracy(tmp_path):
    plot = tmp_path / "rounds.png"
    proc = subprocess.run([sys.executable, "-m", "flair_node", "demo", "--nodes", "3", "--rounds", "3",
                           "--plot", str(plot), "--keep", str(tmp_path / "homes")],
                          capture_output=True, text=True, timeout=300, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    table = re.findall(r"^\s+(\d)\s+(\w+|-)\s+([\d.]+) %(.*)$", out, re.MULTILINE)
    assert [int(n) for n, *_ in table] == [0, 1, 2, 3], out
    aggregators = [name for _, name, *_ in table[1:]]
    assert len(set(aggregators)) == 3, out  # each of the three nodes merged one round
    accuracies = [float(acc) for _, _, acc, _ in table]
    assert accuracies[-1] > accuracies[0] + 50, out
    # every merge proven by its aggregator and verified by every node: 2,410 parameters in chunks of 256
    assert [proof.strip() for *_, proof in table[1:]] == ["10 chunks proven, verified by all 3 nodes"] * 3, out
    # and anchored by its aggregator on the demo's local Solana chain
    anchors = (r"^\s+\d\s+NFT \w{32,44}, transaction \w{16}\.\.\., checked on chain by 2 of 2 other nodes; "
               r"3 contribution NFTs, one to each contributor$")
    assert len(re.findall(anchors, out, re.MULTILINE)) == 3, out
    assert re.search(r"^owner:   \w+ holds the repository's ownership token \w{32,44} ", out, re.MULTILINE), out
    # and the flair_registry program holds the owner, the members and main's last merge
    assert re.search(r"^the flair_registry program \(flair registry REPO\): owner \w+, 2 members, as in Flair; "
                     r"main's head \w{10} at round 3 \(the last merge\), \d merges recorded$", out, re.MULTILINE), out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    pids = [int(p) for p in re.findall(r"^\s+\w+\s+pid (\d+)", out, re.MULTILINE)]
    assert len(pids) == 3
    for pid in pids:  # every daemon it started has stopped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for name in aggregators:
        assert not (tmp_path / "homes" / name / "api.json").exists()


def test_network_demo_refuses_impossible_sizes(capsys):
    assert run_network_demo(1) == 2 and run_network_demo(9) == 2 and run_network_demo(3, rounds=0) == 2
    assert "--nodes takes 2 to 8" in capsys.readouterr().err
