"""``flair-node demo --nodes N``: N real daemons on this machine train one model in rounds, with no server.

Each node belongs to one participant with their own slice of scikit-learn's digits, skewed so that every
participant sees mostly a few of the ten classes (non-IID). The first node owns the repository; the others are
invited as maintainers and clone it. Each round, every participant pulls the head of main from their own node,
trains a few epochs on their own slice and contributes the result through their node. The aggregator every node
computes for that round (the role goes round: who merged longest ago comes first) merges the contributions
once all N have arrived; every other node re-derives the merge from the same inputs and follows it only if the
bytes match. Merges are proven: each contribution publishes KZG commitments to its delta, the aggregator
proves with EZKL (in a worker process, after publishing the merge) that the merge is the weighted sum of exactly
those, and every node verifies the proof. Each aggregator also anchors its merge on a local Solana chain
(``flair-node localnet``, started first): a memo naming the merge and a one-of-one NFT. The demo ends by showing
what each node found of each proof, and each anchor. Test accuracy is printed per round and plotted to a PNG.

One process plays all N participants here, so the training data never reaches any daemon: each daemon receives
only trained weights, as a contributor's own machine would send them.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..testing.cluster import Cluster, ClusterNode, running_cluster, wait_until
from ..testing.localnet import running_localnet
from ..testing.models import CLASSES, accuracy, load_digits_split, make_mlp, partition, train_local
from .single import BATCH_SIZE, LEARNING_RATE, REPO_NAME, SEED, _exit_status, _home, _pct

NAMES = ("ana", "ben", "cy", "dee", "eli", "fay", "gus", "hal")
MAX_NODES = len(NAMES)
#: Where the demo's local chain serves flair_registry: sha256("flair/registry/localnet"), any address does there.
REGISTRY_PROGRAM = "DM5FVdNu9RUuNfUuZ8D8iny77Qn9pbMGax3LrxJXaUji"
ROUNDS = 5
EPOCHS = 3
SKEW = 0.6  # each class leans this much towards one participant (partition's skew)
DEADLINE_S = 120  # the round merges once every node contributed; this is only the fallback
TIMEOUT_S = 10  # each aggregator's window after the first one's
MERGE_WAIT_S = DEADLINE_S + 3 * TIMEOUT_S
PROOF_CHUNK = 256  # values per proven chunk: the 2,410 parameters make 10 chunks
PROOF_WAIT_S = 180  # for every node to have verified every round's proofs, after the last round


@dataclass
class NetworkRound:
    number: int
    merge_id: str
    aggregator: str
    seconds: float  # from the last contribution until every node followed the merge
    test_acc: float
    local_test_acc: dict[str, float] = field(default_factory=dict)  # each participant's own model, before merging
    weights: dict[str, float] = field(default_factory=dict)  # share of the merge, by participant


def run_network_demo(nodes: int, rounds: int | None = None, plot: Path | None = None,
                     keep: Path | None = None) -> int:
    """Run the demo with ``nodes`` daemons for ``rounds`` rounds; returns the exit status."""
    rounds = ROUNDS if rounds is None else rounds
    if not 2 <= nodes <= MAX_NODES:
        print(f"flair-node: --nodes takes 2 to {MAX_NODES} for the network demo (1 runs the single-node demo)",
              file=sys.stderr)
        return 2
    if rounds < 1:
        print("flair-node: --rounds must be at least 1", file=sys.stderr)
        return 2
    plot = (plot or Path("flair-demo-rounds.png")).resolve()
    started = time.perf_counter()
    names = NAMES[:nodes]
    with _home(keep) as root:
        print(f"Flair demo: {nodes} nodes on this machine train a digits classifier in rounds, with no server. "
              "Each round an elected node merges everyone's contribution; every other node re-derives the merge "
              "before following it.")
        print(f"homes:   {root}/<node>" + ("" if keep else "  (temporary; pass --keep DIR to keep them)"))
        x_train, y_train, x_test, y_test = load_digits_split(seed=SEED)
        slices = dict(zip(names, partition(x_train, y_train, nodes, seed=SEED, skew=SKEW), strict=True))
        print(f"data:    {len(y_train)} training examples, each node's slice leaning to a few classes (non-IID); "
              f"{len(y_test)} held out for testing")
        for name, (_, y) in slices.items():
            print(f"  {name:<4} {len(y):>4} examples, {_label_mix(y)}")

        print(f"\nstarting a local Solana chain (flair-node localnet, LiteSVM) and {nodes} flair-node daemons on "
              "127.0.0.1, each dialing the ones before it")
        program, registry_note = _registry_program()
        programs = {REGISTRY_PROGRAM: program} if program is not None else {}
        registry = REGISTRY_PROGRAM if program is not None else ""
        with running_localnet(root / "chain", programs=programs) as chain, \
                running_cluster(root, names, chain=chain, registry=registry, on_start=_started) as net:
            print(f"  chain {chain}: every aggregator anchors its merges there (memo + NFT)")
            print(f"  {registry_note}")
            if any(r["name"] == REPO_NAME for r in net.owner.daemon.client.call("repo.list")):
                print(f"flair-node: {root} already holds a {REPO_NAME} repository from an earlier demo; "
                      "pass a new --keep folder", file=sys.stderr)
                return 1
            model = make_mlp(SEED)
            policy = {"strategy": "mean", "buffer": nodes, "deadline_s": DEADLINE_S, "timeout_s": TIMEOUT_S,
                      "proof_chunk": PROOF_CHUNK, "contribution_nfts": True}
            repo = net.create_repo(REPO_NAME, model.state_dict(), policy=policy)
            owned = net.owner.daemon.client.call("repo.owner", repo=repo, mint=True)
            initial = accuracy(model, x_test, y_test)
            print(f"\nrepository {REPO_NAME} ({repo[:10]}) on {net.owner.name}, cloned by every other node; "
                  f"round policy: weighted mean by examples, merge when all {nodes} contributed (K={nodes})")
            print(f"proofs:  contributions commit to chunks of {PROOF_CHUNK} values (KZG); the SRS is a development "
                  f"one {net.owner.name} made (ezkl.gen_srs), which every node fetched")
            print(f"owner:   {net.owner.name} holds the repository's ownership token {owned['token']['mint']} "
                  "(flair owner REPO); whoever holds it owns the repository")
            print(f"commit 0: an untrained 64-32-10 MLP, test accuracy {_pct(initial)}")
            results = [_round(net, repo, n, slices, x_test, y_test) for n in range(1, rounds + 1)]
            print(f"\nwaiting for every node to verify the proofs of the {rounds} merges, and for the anchors ...")
            proofs = _proofs(net, repo, results)
            anchors = _anchors(net, repo, results)
            on_chain = _registry(net, repo, results) if registry else registry_note

        print("\nround  aggregator  test accuracy  EZKL proof of the merge")
        print(f"{0:>5}  {'-':<10}  {_pct(initial):>13}")
        for r in results:
            print(f"{r.number:>5}  {r.aggregator:<10}  {_pct(r.test_acc):>13}  {proofs[r.merge_id]}")
        print("\nround  anchored on the local chain by its aggregator (flair provenance REPO COMMIT)")
        for r in results:
            print(f"{r.number:>5}  {anchors[r.merge_id]}")
        print(f"\nthe flair_registry program (flair registry REPO): {on_chain}")
        aggregators = [r.aggregator for r in results]
        print(f"aggregators, round by round: {' -> '.join(aggregators)} "
              f"({len(set(aggregators))} different nodes in {len(results)} rounds)")
        _plot(plot, initial, results, nodes)
        print(f"plot:    {plot}")
        print(f"\ndone in {time.perf_counter() - started:.1f} s; the daemons have stopped"
              + (f", their homes are kept in {root}" if keep else ""))
    return _exit_status(initial, results[-1].test_acc)


def _round(net: Cluster, repo: str, n: int, slices: dict[str, tuple[torch.Tensor, torch.Tensor]],
           x_test: torch.Tensor, y_test: torch.Tensor) -> NetworkRound:
    status = net.owner.repo(repo).round_status()
    head, ranked = status["head"], [net.node(key).name for key in status["ranked"]]
    print(f"\nround {n}: the head is {head[:10]}; every node ranks the aggregators {' > '.join(ranked)}")
    local: dict[str, float] = {}
    for i, (node, (x, y)) in enumerate(zip(net.nodes, slices.values(), strict=True)):
        model = make_mlp(SEED)
        model.load_state_dict(node.repo(repo).pull(head))
        batches = EPOCHS * math.ceil(len(y) / BATCH_SIZE)
        with tqdm(total=batches, desc=f"  {node.name:<4} training", unit="batch", file=sys.stderr, leave=False,
                  dynamic_ncols=True) as bar:
            train_local(model, x, y, EPOCHS, LEARNING_RATE, BATCH_SIZE, bar, seed=SEED + 100 * n + i)
        contribution = node.repo(repo).contribute(model, examples=len(y), base=head,
                                                  message=f"{node.name}: {EPOCHS} epochs on {len(y)} examples")
        local[node.name] = accuracy(model, x_test, y_test)
        print(f"  {node.name:<4} contributed {contribution[:10]}: {EPOCHS} epochs on its {len(y)} examples, "
              f"its own model scores test {_pct(local[node.name])}")
    waiting = time.perf_counter()
    merged = net.wait_for_merge(repo, head, timeout=MERGE_WAIT_S)
    seconds = time.perf_counter() - waiting
    if merged["kind"] != "round":
        raise RuntimeError(f"main moved to {merged['id'][:10]}, a {merged['kind']} commit, not a round merge")
    aggregator = net.node(merged["author"]).name
    entries = merged["meta"]["contributions"]  # [commit, examples, staleness, weight], as the merge records them
    total = sum(weight for *_, weight in entries)
    shares = {net.node(net.owner.daemon.client.call("repo.show", repo=repo, commit=commit)["author"]).name:
              weight / total for commit, *_, weight in entries}
    weights = {node.name: shares[node.name] for node in net.nodes if node.name in shares}
    model = make_mlp(SEED)
    model.load_state_dict(net.owner.repo(repo).pull(merged["id"]))
    test_acc = accuracy(model, x_test, y_test)
    print(f"  {aggregator} merged {merged['id'][:10]} ({len(weights)} contributions, weights "
          + ", ".join(f"{name} {share:.2f}" for name, share in weights.items())
          + f"); all {len(net.nodes)} nodes re-derived and followed it {seconds:.1f} s after the last contribution")
    print(f"  test accuracy of main after round {n}: {_pct(test_acc)}")
    return NetworkRound(n, merged["id"], aggregator, seconds, test_acc, local, weights)


def _proofs(net: Cluster, repo: str, results: list[NetworkRound]) -> dict[str, str]:
    """Wait (at most ``PROOF_WAIT_S``) until every node has checked the proofs of every merge; what they found."""
    found: dict[str, dict[str, dict[str, Any]]] = {}

    def checked() -> bool:
        for r in results:
            for node in net.nodes:
                seen = found.setdefault(r.merge_id, {}).get(node.name)
                if seen is None or seen["status"] not in ("verified", "failed"):
                    found[r.merge_id][node.name] = node.daemon.client.call("repo.verify", repo=repo,
                                                                           commit=r.merge_id)
        return all(f["status"] in ("verified", "failed") for by_node in found.values() for f in by_node.values())

    with contextlib.suppress(TimeoutError):
        wait_until(checked, "every merge's proofs checked on every node", PROOF_WAIT_S, every=0.5)
    lines = {}
    for merge, by_node in found.items():
        verified = [f for f in by_node.values() if f["status"] == "verified"]
        if len(verified) == len(by_node):
            lines[merge] = f"{verified[0]['chunks']} chunks proven, verified by all {len(by_node)} nodes"
        else:
            lines[merge] = f"verified by {len(verified)} of {len(by_node)} nodes; " + "; ".join(
                f"{name}: {f['status']} ({f.get('reason', '')})" for name, f in by_node.items()
                if f["status"] != "verified")
    return lines


def _anchors(net: Cluster, repo: str, results: list[NetworkRound]) -> dict[str, str]:
    """Wait (at most ``PROOF_WAIT_S``) until each merge's aggregator has anchored it and every other node has
    checked the anchor on chain; what they report."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    done = ("anchored", "verified", "failed")

    def settled() -> bool:
        for r in results:
            for node in net.nodes:
                seen = found.setdefault(r.merge_id, {}).get(node.name)
                if seen is None or seen["status"] not in done:
                    found[r.merge_id][node.name] = node.daemon.client.call("repo.provenance", repo=repo,
                                                                           commit=r.merge_id)
        return all(f["status"] in done for by_node in found.values() for f in by_node.values())

    with contextlib.suppress(TimeoutError):
        wait_until(settled, "every merge anchored and checked", PROOF_WAIT_S, every=0.5)
    lines = {}
    for merge, by_node in found.items():
        made = next((f for f in by_node.values() if f["status"] == "anchored"), None)
        checked = sum(f["status"] == "verified" for f in by_node.values())
        lines[merge] = (f"NFT {made['mint']}, transaction {made['signature'][:16]}..., checked on chain by "
                        f"{checked} of {len(by_node) - 1} other nodes; {len(made.get('contributions', {}))} "
                        "contribution NFTs, one to each contributor" if made is not None else
                        "not anchored: " + "; ".join(f"{name}: {f['status']} ({f.get('error') or f.get('reason', '')})"
                                                     for name, f in by_node.items()))
    return lines


def _registry_program() -> tuple[Path | None, str]:
    """flair_registry built for the local chain, and what to say of it; None (the demo runs without it) when
    clang-19 is missing."""
    from ..testing.program import anchor_build

    build = anchor_build()
    try:
        path: Path = build.build()
    except build.BuildError as exc:
        return None, f"registry: off, the flair_registry program did not build ({exc})"
    return path, (f"registry: flair_registry ({path.stat().st_size:,} bytes, built here) at {REGISTRY_PROGRAM}; the "
                  "owner's node keeps owner, policy and members there, each aggregator records its merge")


def _registry(net: Cluster, repo: str, results: list[NetworkRound]) -> str:
    """Wait (at most ``PROOF_WAIT_S``) until the registry records the last merge; what it holds then."""
    found: dict[str, Any] = {}

    def recorded() -> bool:
        found.update(net.owner.daemon.client.call("repo.registry", repo=repo))
        main = found.get("branches", {}).get("main", {})
        return bool(found.get("members_match")) and main.get("head") == results[-1].merge_id

    with contextlib.suppress(TimeoutError):
        wait_until(recorded, "the last merge in the registry", PROOF_WAIT_S, every=0.5)
    if not found.get("exists"):
        return f"no account for the repository ({found.get('error') or 'not created'})"
    main = found.get("branches", {}).get("main")
    members = f"{len(found['members'])} members, " + ("as in Flair" if found["members_match"] else "NOT as in Flair")
    if main is None:
        return f"{members}; no merge recorded ({found.get('error') or 'none yet'})"
    last = "the last merge" if main["head"] == results[-1].merge_id else f"NOT the last merge ({found.get('error')})"
    return (f"owner {net.node(found['owner']).name}, {members}; main's head {main['head'][:10]} at round "
            f"{main['round']} ({last}), {main['merges']} merges recorded")


def _started(node: ClusterNode) -> None:
    print(f"  {node.name:<4} pid {node.daemon.pid:<7} {node.address}")


def _label_mix(y: torch.Tensor) -> str:
    counts = torch.bincount(y, minlength=CLASSES)
    top = torch.argsort(counts, descending=True)[:3].tolist()
    share = float(counts[top].sum()) / len(y)
    return f"{share:.0%} of them {', '.join(str(c) for c in top[:-1])} or {top[-1]}"


def _plot(path: Path, initial: float, results: list[NetworkRound], nodes: int) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    from matplotlib import pyplot as plt

    rounds = [0, *(r.number for r in results)]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    names = list(results[0].local_test_acc)
    for name in names:
        ax.plot([r.number for r in results], [100 * r.local_test_acc[name] for r in results], marker=".",
                linewidth=0.8, alpha=0.5, label=f"{name}'s own model, before the merge")
    ax.plot(rounds, [100 * initial, *(100 * r.test_acc for r in results)], marker="o", color="black", linewidth=2,
            label="main after the round's merge")
    for r in results:
        ax.annotate(r.aggregator, (r.number, 100 * r.test_acc), textcoords="offset points", xytext=(0, 8),
                    ha="center", fontsize=8)
    ax.set_xlabel("round (label: the node that merged it)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(rounds)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(f"Flair: {nodes} nodes, non-IID digits, a different aggregator each round", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
