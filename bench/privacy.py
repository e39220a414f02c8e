#!/usr/bin/env python
"""What a curious member can reconstruct of another member's training images from what it sees (issue 19).

A gradient-inversion attack ("Inverting Gradients", Geiping et al., NeurIPS 2020: cosine distance between the
gradient of dummy images and the observed one, a total-variation prior, Adam; written here against torch) on
the 8x8 digits MLP of ``flair_node.testing.models``, through Flair's own repositories (in memory):

- **plain**: the victim contributes one step of SGD on a batch of ``--batch`` digits; the attacker, another
  member, reads the victim's contribution with its own node and inverts the delta;
- **DP at ε = 8 and ε = 1**: the same, with the repository's differential privacy on (``protocol.dp``): the
  contribution is clipped to C (the median update norm of the round's members, so clipping alone takes nothing
  away) and noised by the victim's node; the noise multiplier is the one the accountant gives that ε for one
  contribution at δ = 1e-5;
- **secure**: what a member reads in a secure repository, the round's merge of ``--members`` contributions (a
  secure merge is the plain merge of the same contributions bit for bit, so the bench takes the plain round's
  merge), its change from the head inverted as if it were one update.

**Utility** (``--utility-rounds``, 0 to skip): the 5-member non-IID digits task of ``bench/fl_accuracy.py``
(``partition(..., skew=0.5)``, the 64-32-10 MLP from ``make_mlp(0)``, Adam at lr 0.01, batches of 32, 2 local
epochs a round), run in process through Flair's repositories: every member trains from the head, contributes,
and the round's aggregator merges (the mean), ``--utility-rounds`` times. Non-private, then with the
repository's differential privacy at ε = 1, 4 and 8 for all of a member's contributions (the noise multiplier
the accountant gives that ε for ``--utility-rounds`` contributions at δ = 1e-5, and C = ``UTILITY_CLIP``, fixed
in advance as DP needs: about the median update norm the non-private run shows), twice: in a plain repository,
where each contribution carries all the noise (``accuracy_local_eps1``, 4, 8: what local noise costs), and in a
secure one, where each contributor adds its share in the masked ring and the merge carries it once
(``accuracy_eps1``, 4, 8; every member's ``secure_node`` passes run in process until the merge). A secure round
admits a contributor only if its budget would hold were just 3 of the 5 taken, so the budget is set with room
for that; ``utility_epsilon_spent`` is what the last merge records the members spent. The final merge's test
accuracy is ``accuracy_nonprivate`` for the non-private run.

The labels are inferred from the last layer's bias change (the most negative entries), as the attack would.
Each reconstruction is matched to the victim's images (Hungarian matching on SSIM) and scored by SSIM
(``pytorch_msssim``, 3x3 Gaussian window: the images are 8x8) and by the accuracy of a digits classifier trained
on the training split (about 0.96 on the test split). ``baseline`` scores uniform noise images the same way.
The figures are medians over ``--trials`` victims.

    .venv/bin/python bench/privacy.py                # 5 trials, batches of 4, 5 members
    .venv/bin/python bench/privacy.py --quick        # 2 trials, fewer attack steps

Last line of stdout, one JSON object: ``attack_ssim_plain``, ``attack_ssim_eps8``, ``attack_ssim_eps1``,
``attack_ssim_secure``, ``attack_ssim_baseline``, the same with ``attack_accuracy_`` (the classifier's accuracy
on the reconstructions), ``noise_multiplier_eps8`` and ``noise_multiplier_eps1``; ``accuracy_nonprivate``,
``accuracy_eps1``, ``accuracy_eps4``, ``accuracy_eps8``, the same with ``accuracy_local_``, with
``utility_noise_multipliers``, ``utility_epsilon_spent`` and the median update norm of the non-private run
(``utility_update_norm``).

**Cost** (``--norm-groups``, 0 to skip): the norm proof (``protocol.proofs.norms``: L2 norm at most C = 1) of a
1M-parameter update in chunks of ``NORM_CHUNK``, next to the merge proof of ``--members`` such updates, both
with development SRSs and KZG commitments. ``norms.prove`` runs on the whole update with ``--norm-groups`` of its
groups proven (so the pairs of every group, the sums of squares and the bound proof are all measured), and
``norms.check`` on that bundle; the rest of the groups are projected from the measured seconds per group: all
245, as a secure round's contributor proves them (``norm_proof_prove_s``, ``norm_proof_verify_s``), and the
sample that catches a lie about 1 % of them with probability 0.99 (``norms.groups_to_prove``, 192 of 245:
``norm_proof_sampled_prove_s``, ``norm_proof_sampled_verify_s``). The merge proof is measured on one chunk
(``weighted_sum.prove`` and ``weighted_sum.check``) and projected to the chunks Flair proves of a 1M merge
(``merges.chunks_to_prove``, 423 of 3,907: ``merge_proof_prove_s``, ``merge_proof_verify_s``). Setup (circuits
and keys, once per shape) is timed apart. ``norm_proof`` holds the measured parts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_msssim import ssim
from scipy.optimize import linear_sum_assignment
from torch import nn

from flair_node.core import dp
from flair_node.core.identity import Identity
from flair_node.core.round_rules import RoundPolicy
from flair_node.protocol import dp as protocol_dp
from flair_node.protocol import rounds, secure_node
from flair_node.protocol.proofs import ezkl_backend, merges, norms, weighted_sum
from flair_node.protocol.proofs.ezkl_backend import Shape
from flair_node.storage.repo import Repository
from flair_node.storage.repos import RepoSet
from flair_node.storage.secure_pending import PendingContributions
from flair_node.tensors.dp_noise import update_norm
from flair_node.tensors.fixedpoint import normalize_weights
from flair_node.testing.models import accuracy, load_digits_split, make_mlp, partition, train_local

LR = 0.1  # the victim's one step of SGD
DELTA = "1e-5"
NORM_CHUNK = 256  # values per chunk in the cost runs
PROJECTED_PARAMS = 1_000_000
UTILITY_CLIP = "2"  # C for the utility runs, fixed before them (the non-private run's median update norm is ~2)


def noise_for(epsilon: float, contributions: int = 1) -> str:
    """The noise multiplier whose ``contributions`` spend ``epsilon`` at δ (bisection on the accountant)."""
    low, high = 0.05, 1000.0
    for _ in range(60):
        mid = (low + high) / 2
        if dp.epsilon(f"{mid:.6f}", contributions, DELTA) > epsilon:
            low = mid
        else:
            high = mid
    return f"{high:.6f}"


def as_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def one_step(base: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The weights after one SGD step of ``LR`` on ``(x, y)`` from ``base``."""
    model = make_mlp(0)
    model.load_state_dict(base)
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    names = [n for n, _ in model.named_parameters()]
    return {n: base[n] - LR * g for n, g in zip(names, grads, strict=True)}


def invert(base: dict[str, torch.Tensor], change: dict[str, torch.Tensor], batch: int, steps: int,
           seed: int) -> torch.Tensor:
    """``batch`` images whose one SGD step from ``base`` best matches ``change`` in direction."""
    model = make_mlp(0)
    model.load_state_dict(base)
    names = [n for n, _ in model.named_parameters()]
    target = [-change[n] for n in names]  # the gradient's direction
    labels = torch.argsort(target[-1])[:batch]  # the classes whose bias went up most: in the batch
    g = torch.Generator().manual_seed(seed)
    dummy = torch.rand(batch, 64, generator=g).requires_grad_(True)
    optimizer = torch.optim.Adam([dummy], lr=0.05)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [steps // 2, 3 * steps // 4], 0.1)
    target_norm = torch.sqrt(sum((t ** 2).sum() for t in target))
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(dummy), labels)
        grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
        dot = sum((a * b).sum() for a, b in zip(grads, target, strict=True))
        norm = torch.sqrt(sum((a ** 2).sum() for a in grads))
        images = dummy.view(batch, 1, 8, 8)
        tv = (images[..., 1:, :] - images[..., :-1, :]).abs().mean() + (images[..., 1:] - images[..., :-1]).abs().mean()
        (1 - dot / (norm * target_norm + 1e-12) + 1e-3 * tv).backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            dummy.clamp_(0, 1)
    return dummy.detach()


def score(found: torch.Tensor, truth: torch.Tensor, labels: torch.Tensor, judge: nn.Module) -> tuple[float, float]:
    """Mean SSIM and the classifier's accuracy over ``truth``'s images, each matched to one of ``found``."""
    pairs = np.zeros((len(truth), len(found)))
    for i, t in enumerate(truth):
        for j, f in enumerate(found):
            pairs[i, j] = float(ssim(t.view(1, 1, 8, 8), f.view(1, 1, 8, 8), data_range=1.0, win_size=3))
    rows, cols = linear_sum_assignment(-pairs)
    matched = found[torch.as_tensor(cols)]
    return float(pairs[rows, cols].mean()), accuracy(judge, matched, labels[torch.as_tensor(rows)])


def trial(seed: int, args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor, judge: nn.Module,
          noise: dict[str, str]) -> dict[str, tuple[float, float]]:
    owner, members = Identity.generate(), [Identity.generate() for _ in range(args.members)]
    g = torch.Generator().manual_seed(seed)
    base_model = make_mlp(seed)
    train_local(base_model, x[:200], y[:200], epochs=3, lr=0.01, batch_size=32, seed=seed)  # a model in training
    base = as_state(base_model)
    batches = []
    for _ in members:  # each member's batch: distinct digits, so the labels say how many images to find
        classes = torch.randperm(10, generator=g)[:args.batch]
        picks = [int(torch.nonzero(y == c).flatten()[torch.randint(int((y == c).sum()), (1,), generator=g)])
                 for c in classes]
        batches.append((x[picks], y[picks]))
    trained = [one_step(base, bx, by) for bx, by in batches]
    norms = [float(torch.sqrt(sum(((t[n] - base[n]) ** 2).sum() for n in base))) for t in trained]
    clip = f"{statistics.median(norms):.6g}"
    victim, attacker = members[0], members[1]
    results: dict[str, tuple[float, float]] = {}

    def repository(policy: RoundPolicy) -> tuple[RepoSet, Repository]:
        repos = RepoSet.in_memory(owner)
        repo = repos.create("digits", base)
        for member in members:
            repo.invite(owner, member.public_key, "maintainer")
        repo.set_policy(owner, policy)
        return repos, repo

    def read_as(repos: RepoSet, repo: Repository, commit: str) -> dict[str, torch.Tensor]:
        node = Repository.open(repo.id, repos.objects, repos.blocks, repo.refs, reader=attacker)
        state = node.materialize(commit)
        return {n: state[n] - base[n] for n in base}

    for case, policy in (("plain", RoundPolicy(buffer=args.members)),
                         *((f"eps{e}", RoundPolicy(buffer=args.members, dp_clip=clip, dp_noise=noise[f"eps{e}"],
                                                   dp_delta=DELTA, dp_epsilon=str(e))) for e in (8, 1))):
        repos, repo = repository(policy)
        node = Repository.open(repo.id, repos.objects, repos.blocks, repo.refs, reader=victim)
        weights = trained[0]
        spent = None
        if policy.dp:
            weights, spent, _ = protocol_dp.prepare(node, victim.public_key, "main", node.head("main"), weights,
                                                    memory=rounds.RoundMemory())
        commit = node.contribute(victim, weights, examples=args.batch, dp=spent)
        found = invert(base, read_as(repos, repo, commit.id), args.batch, args.steps, seed)
        results[case] = score(found, *batches[0], judge)

    repos, repo = repository(RoundPolicy(buffer=args.members))
    for member, weights in zip(members, trained, strict=True):
        Repository.open(repo.id, repos.objects, repos.blocks, repo.refs, reader=member).contribute(
            member, weights, examples=args.batch)
    memory = rounds.RoundMemory()
    current = rounds.view(repo, "main", memory=memory)
    aggregator = next(i for i in [owner, *members] if i.public_key == current.aggregator(current.opened_ms))
    merged = rounds.merge(Repository.open(repo.id, repos.objects, repos.blocks, repo.refs, reader=aggregator),
                          aggregator, "main", memory=memory)
    found = invert(base, read_as(repos, repo, merged.id), args.batch, args.steps, seed)
    results["secure"] = score(found, *batches[0], judge)
    results["baseline"] = score(torch.rand(args.batch, 64, generator=g), *batches[0], judge)
    print(f"trial {seed}: " + ", ".join(f"{k} SSIM {v[0]:.3f} acc {v[1]:.2f}" for k, v in results.items()),
          file=sys.stderr)
    return results


def utility(policy: RoundPolicy, rounds_to_run: int, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor,
            y_test: torch.Tensor) -> tuple[float, list[float], dict[str, Any]]:
    """The test accuracy of the last merge of ``rounds_to_run`` rounds of 5 members on non-IID slices under
    ``policy`` (secure rounds driven through each member's ``secure_node`` passes if it says so), the members'
    update norms (before clipping), and the last merge's ``meta``."""
    owner, members = Identity.generate(), [Identity.generate() for _ in range(4)]
    everyone = [owner, *members]
    slices = partition(x, y, len(everyone), seed=0, skew=0.5)
    repos = RepoSet.in_memory(owner)
    repo = repos.create("digits", as_state(make_mlp(0)))
    for member in members:
        repo.invite(owner, member.public_key, "contributor" if policy.privacy == "secure" else "maintainer")
    repo.set_policy(owner, policy)
    memory, norms = rounds.RoundMemory(), []
    pending = {m.public_key: PendingContributions(None) for m in everyone}

    def node_of(member: Identity) -> Repository:
        return Repository.open(repo.id, repos.objects, repos.blocks, repo.refs, reader=member)

    for n in range(rounds_to_run):
        start = repo.head("main")
        for i, (member, (mx, my)) in enumerate(zip(everyone, slices, strict=True)):
            node = node_of(member)
            model = make_mlp(0)
            model.load_state_dict(node.materialize(start))
            train_local(model, mx, my, epochs=2, lr=0.01, batch_size=32, seed=100 * n + i)
            weights, spent = as_state(model), None
            norms.append(update_norm(node.materialize(start), weights))
            if policy.privacy == "secure":  # clipped, masked and noised by the member's node
                secure_node.contribute(node, member, pending[member.public_key], "main", weights, len(my))
                continue
            if policy.dp:
                weights, spent, _ = protocol_dp.prepare(node, member.public_key, "main", start, weights, memory=memory)
            node.contribute(member, weights, examples=len(my), dp=spent)
        if policy.privacy == "secure":
            while repo.head("main") == start:  # each node does what is due, as its round service would
                for member in everyone:
                    secure_node.step(node_of(member), member, pending[member.public_key], "main", memory=memory)
                time.sleep(0.05)
            continue
        current = rounds.view(repo, "main", memory=memory)
        aggregator = next(i for i in everyone if i.public_key == current.aggregator(current.opened_ms))
        rounds.merge(node_of(aggregator), aggregator, "main", memory=memory)
    final = make_mlp(0)
    final.load_state_dict(repo.materialize(repo.head("main")))
    return accuracy(final, x_test, y_test), norms, dict(repo.commit(repo.head("main")).meta)


def proof_cost(groups: int, members: int) -> dict[str, Any]:
    """The norm proof of a 1M-parameter update and the merge proof of ``members`` of them (see the docstring)."""
    cache = Path(tempfile.mkdtemp(prefix="flair-privacy-bench-"))
    try:
        srs = ezkl_backend.development_srs(cache, Shape(1, NORM_CHUNK).logrows)
        started = time.perf_counter()
        circuits = norms.build(cache, NORM_CHUNK, srs, norms.squared_bound(1.0))
        merge_circuit = ezkl_backend.build(cache, Shape(members, NORM_CHUNK), srs)
        setup_s = time.perf_counter() - started
        g = torch.Generator().manual_seed(7)
        updates = [torch.randn(PROJECTED_PARAMS, generator=g, dtype=torch.float64) for _ in range(members)]
        deltas = [(u / u.norm() * 0.9 * (1 << norms.FRACTION_BITS)).round().to(torch.int64) for u in updates]
        chunks = -(-PROJECTED_PARAMS // NORM_CHUNK)
        total = norms.group_count(chunks)
        proven = list(range(groups))
        started = time.perf_counter()
        bundle = norms.prove(circuits, deltas[0], norms.squared_bound(1.0), proven)
        prove_s = time.perf_counter() - started
        # the check reads the published commitments of the proven groups only: the others stay unread
        published = [circuits.zero_chunk] * chunks
        head = weighted_sum.commitments(deltas[0][:groups * norms.GROUP * NORM_CHUNK], NORM_CHUNK, circuits.squares)
        published[:len(head)] = head
        started = time.perf_counter()
        norms.check(circuits, bundle, published, norms.squared_bound(1.0), proven)
        verify_s = time.perf_counter() - started
        per_group_prove, per_group_verify = group_seconds(circuits, deltas[0], bundle, published)
        sampled = len(norms.groups_to_prove("a merge id", total))
        weights = normalize_weights([1] * members)
        first = [d[:NORM_CHUNK] for d in deltas]
        started = time.perf_counter()
        merge_proof = weighted_sum.prove(merge_circuit, weights, first, [0])[0]
        merge_prove_s = time.perf_counter() - started
        contributions = [weighted_sum.commitments(d, NORM_CHUNK, merge_circuit)[0] for d in first]
        sums = weighted_sum.commitments(weighted_sum.weighted_sums(weights, first), NORM_CHUNK, merge_circuit)[0]
        started = time.perf_counter()
        weighted_sum.check(merge_circuit, merge_proof, weights=weights, contributions=contributions, sums=sums)
        merge_verify_s = time.perf_counter() - started
        merged_chunks = len(merges.chunks_to_prove("a merge id", chunks))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    def projected(proven: int) -> tuple[float, float]:
        return prove_s + (proven - groups) * per_group_prove, verify_s + (proven - groups) * per_group_verify

    (norm_prove, norm_verify), (sampled_prove, sampled_verify) = projected(total), projected(sampled)
    merge_prove, merge_verify = merged_chunks * merge_prove_s, merged_chunks * merge_verify_s
    print(f"norm proof of 1M parameters: {norm_prove:.0f} s to prove, {norm_verify:.1f} s to verify (all {total} "
          f"groups; {sampled_prove:.0f} s and {sampled_verify:.1f} s for a sample of {sampled}); merge proof: "
          f"{merge_prove:.0f} s, {merge_verify:.1f} s", file=sys.stderr)
    return {"norm_proof_prove_s": round(norm_prove, 1), "norm_proof_verify_s": round(norm_verify, 2),
            "norm_proof_sampled_prove_s": round(sampled_prove, 1),
            "norm_proof_sampled_verify_s": round(sampled_verify, 2),
            "merge_proof_prove_s": round(merge_prove, 1), "merge_proof_verify_s": round(merge_verify, 2),
            "norm_proof": {"params": PROJECTED_PARAMS, "chunk": NORM_CHUNK, "groups": total, "sampled_groups": sampled,
                           "measured_groups": groups, "measured_prove_s": round(prove_s, 2),
                           "measured_verify_s": round(verify_s, 3), "group_prove_s": round(per_group_prove, 3),
                           "group_verify_s": round(per_group_verify, 4), "setup_s": round(setup_s, 1),
                           "bundle_bytes_measured": len(json.dumps(bundle)), "merge_chunks": merged_chunks,
                           "merge_chunk_prove_s": round(merge_prove_s, 3),
                           "merge_chunk_verify_s": round(merge_verify_s, 4)}}


def group_seconds(circuits: norms.NormCircuits, delta: torch.Tensor, bundle: dict[str, Any],
                  published: list[str]) -> tuple[float, float]:
    """Seconds to prove and to check one more group's squares (group 0, again), as ``norms`` does it."""
    cut = weighted_sum.chunks(delta[:norms.GROUP * NORM_CHUNK], NORM_CHUNK)
    started = time.perf_counter()
    proof = ezkl_backend.prove_squares(circuits.squares, 1, cut)
    prove_s = time.perf_counter() - started
    started = time.perf_counter()
    carried = ezkl_backend.verify(circuits.squares, proof)
    if carried[1:-1] != published[:norms.GROUP]:
        raise SystemExit("the squares proof is about other chunks than were published")
    return prove_s, time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4, help="images in the victim's batch (at most 10)")
    parser.add_argument("--members", type=int, default=5, help="contributions in the secure round's merge")
    parser.add_argument("--steps", type=int, default=2000, help="attack steps (Adam)")
    parser.add_argument("--utility-rounds", type=int, default=10, help="rounds of the utility runs (0: none)")
    parser.add_argument("--norm-groups", type=int, default=2, help="groups of the norm proof proven (0: no cost)")
    parser.add_argument("--quick", action="store_true", help="2 trials of 500 steps, 3 utility rounds, 1 group")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.steps, args.utility_rounds, args.norm_groups = 2, 500, 3, min(args.norm_groups, 1)
    torch.manual_seed(0)
    x, y, x_test, y_test = load_digits_split(seed=0)
    judge = make_mlp(1, hidden=64)
    train_local(judge, x, y, epochs=60, lr=0.01, batch_size=32, seed=1)
    print(f"classifier accuracy on the test split: {accuracy(judge, x_test, y_test):.3f}", file=sys.stderr)
    noise = {"eps8": noise_for(8.0), "eps1": noise_for(1.0)}
    runs = [trial(seed, args, x, y, judge, noise) for seed in range(args.trials)]
    out: dict[str, Any] = {"trials": args.trials, "batch": args.batch, "members": args.members, "steps": args.steps,
                           "classifier_accuracy": accuracy(judge, x_test, y_test),
                           "noise_multiplier_eps8": float(noise["eps8"]), "noise_multiplier_eps1": float(noise["eps1"])}
    for case in ("plain", "eps8", "eps1", "secure", "baseline"):
        out[f"attack_ssim_{case}"] = round(statistics.median(r[case][0] for r in runs), 4)
        out[f"attack_accuracy_{case}"] = round(statistics.median(r[case][1] for r in runs), 4)
    if args.utility_rounds:
        found, norms, _ = utility(RoundPolicy(buffer=5), args.utility_rounds, x, y, x_test, y_test)
        out["accuracy_nonprivate"], out["utility_update_norm"] = round(found, 4), round(statistics.median(norms), 4)
        out["utility_noise_multipliers"], out["utility_epsilon_spent"] = {}, {}
        secure = {"privacy": "secure", "max_staleness": 0, "deadline_s": 600}
        for epsilon in (1, 4, 8):
            z = noise_for(float(epsilon), args.utility_rounds)
            out["utility_noise_multipliers"][f"eps{epsilon}"] = float(z)
            dp_fields = {"dp_clip": UTILITY_CLIP, "dp_noise": z, "dp_delta": DELTA}
            local = RoundPolicy(buffer=5, dp_epsilon=str(epsilon + 0.001), **dp_fields)  # z spends ε to 6 digits
            out[f"accuracy_local_eps{epsilon}"] = round(utility(local, args.utility_rounds, x, y, x_test, y_test)[0], 4)
            # a secure round admits a contributor only if its budget would hold were just 3 of the 5 taken: the
            # budget leaves room for that in the last round; what the rounds spend is the merges' record
            rho = dp.round_rho(z, 5, 5)
            room = dp.secure_epsilon([rho] * (args.utility_rounds - 1) + [dp.round_rho(z, 3, 5)], DELTA)
            shared = RoundPolicy(buffer=5, dp_epsilon=f"{room + 0.001:.3f}", **dp_fields, **secure)
            found, _, meta = utility(shared, args.utility_rounds, x, y, x_test, y_test)
            out[f"accuracy_eps{epsilon}"] = round(found, 4)
            out["utility_epsilon_spent"][f"eps{epsilon}"] = max(float(e) for e in meta["dp"]["spent"].values())
            print(f"epsilon {epsilon} (z = {z}): local noise {out[f'accuracy_local_eps{epsilon}']}, shared out in "
                  f"secure rounds {out[f'accuracy_eps{epsilon}']}", file=sys.stderr)
        print(f"non-private accuracy {out['accuracy_nonprivate']:.4f}", file=sys.stderr)
    if args.norm_groups:
        out.update(proof_cost(args.norm_groups, args.members))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
