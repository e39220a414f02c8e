"""Rounds on real training: five members train an MLP on their own non-IID slices of scikit-learn's digits and
contribute each round; the entitled aggregator merges with the repository's strategy and every member re-derives
the merge. With one Byzantine member (its update scaled x100, or sign-flipped), trimmed mean and Krum keep the
final test accuracy within 2 points of the same rounds without it, where the plain mean does not."""

from __future__ import annotations

import pytest
import torch

from flair_node.core.identity import Identity
from flair_node.core.round_rules import RoundPolicy
from flair_node.protocol import rounds
from flair_node.storage.repo import Repository
from flair_node.storage.repos import RepoSet
from flair_node.testing.cluster import running_cluster
from flair_node.testing.models import accuracy, load_digits_split, make_mlp, partition, train_local

ROUNDS, MEMBERS, EPOCHS = 3, 5, 3
OWNER = Identity.generate()
PEOPLE = [Identity.generate() for _ in range(MEMBERS)]


def attack(kind: str, base: dict[str, torch.Tensor], trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    scale = {"scaled": 100.0, "flipped": -1.0}[kind]
    return {k: base[k] + scale * (trained[k] - base[k]) for k in base}


def contributions(base: dict[str, torch.Tensor], slices: list[tuple[torch.Tensor, torch.Tensor]], n: int,
                  byzantine: str | None) -> list[tuple[dict[str, torch.Tensor], int]]:
    """Each member's trained weights and examples in round ``n`` (from 0), trained from ``base``; member 0's
    update is attacked if ``byzantine`` names an attack."""
    made = []
    for i, (xs, ys) in enumerate(slices):
        local = make_mlp(seed=0)
        local.load_state_dict(base)
        train_local(local, xs, ys, epochs=EPOCHS, lr=0.01, batch_size=32, seed=100 * n + i)
        trained = {k: v.detach().clone() for k, v in local.state_dict().items()}
        if i == 0 and byzantine:
            trained = attack(byzantine, base, trained)
        made.append((trained, len(ys)))
    return made


def data() -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, torch.Tensor]:
    """The members' slices (non-IID: each class leans to one member) and the test set."""
    x, y, x_test, y_test = load_digits_split(seed=0)
    return partition(x, y, MEMBERS, seed=0, skew=0.5), x_test, y_test


def score(state: dict[str, torch.Tensor], x_test: torch.Tensor, y_test: torch.Tensor) -> float:
    final = make_mlp(seed=0)
    final.load_state_dict(state)
    return accuracy(final, x_test, y_test)


def run(policy: RoundPolicy, byzantine: str | None) -> float:
    """Test accuracy of main after ROUNDS rounds; member 0 is Byzantine if ``byzantine`` names an attack."""
    memory = rounds.RoundMemory()
    slices, x_test, y_test = data()
    repos = RepoSet.in_memory(OWNER)
    model = make_mlp(seed=0)
    repo = repos.create("digits", {k: v.detach().clone() for k, v in model.state_dict().items()})
    for person in PEOPLE:
        repo.invite(OWNER, person.public_key, "maintainer")
    repo.set_policy(OWNER, policy)
    nodes = {p.public_key: Repository.open(repo.id, repos.objects, repos.blocks, repo.refs, reader=p) for p in PEOPLE}
    nodes[OWNER.public_key] = repo
    for n in range(ROUNDS):
        base = repo.materialize(repo.head("main"))
        for person, (trained, examples) in zip(PEOPLE, contributions(base, slices, n, byzantine), strict=True):
            nodes[person.public_key].contribute(person, trained, examples=examples)
        current = rounds.view(repo, "main", memory=memory)
        who = current.aggregator(current.opened_ms + 1)
        aggregator = next(i for i in [OWNER, *PEOPLE] if i.public_key == who)
        merged = rounds.merge(nodes[who], aggregator, "main", memory=memory)
        rounds.verify(nodes[PEOPLE[1].public_key], merged, memory=memory)  # another member re-derives it
    return score(repo.materialize(repo.head("main")), x_test, y_test)


@pytest.mark.slow
@pytest.mark.parametrize("strategy, params", [("trimmed_mean", {"fraction": "0.2"}), ("krum", {"byzantine": 1})],
                         ids=["trimmed-mean", "krum"])
@pytest.mark.parametrize("byzantine", ["scaled", "flipped"])
def test_a_byzantine_member_barely_moves_a_robust_round(strategy, params, byzantine):
    policy = RoundPolicy(strategy=strategy, strategy_params=params, buffer=MEMBERS)
    clean, attacked = run(policy, None), run(policy, byzantine)
    assert clean > 0.8, f"the clean run itself should learn (test accuracy {clean:.3f})"
    assert attacked >= clean - 0.02, f"{strategy} against a {byzantine} update: {attacked:.3f} vs {clean:.3f}"


@pytest.mark.slow
def test_the_plain_mean_is_not_robust_to_a_scaled_update():
    policy = RoundPolicy(buffer=MEMBERS)
    assert run(policy, "scaled") < run(policy, None) - 0.2  # what the robust rules are for


@pytest.mark.slow
@pytest.mark.integration
def test_across_real_daemons_the_attacked_robust_rounds_are_byte_for_byte_the_in_process_ones(tmp_path):
    """The attacked rounds above on five real flair-node processes, one repository per case, the aggregator
    elected and every merge re-derived by every node: each final model scores exactly what the in-process rounds
    give (same inputs, same bytes), so it stays within 2 points of the clean rounds."""
    cases = {("trimmed_mean", "scaled"): {"fraction": "0.2"}, ("krum", "flipped"): {"byzantine": 1}}
    slices, x_test, y_test = data()
    with running_cluster(tmp_path, [f"n{i}" for i in range(MEMBERS)]) as net:
        repos = {case: net.create_repo(f"{case[0]}-{case[1]}", make_mlp(seed=0).state_dict(),
                                       policy={"strategy": case[0], "strategy_params": params, "buffer": MEMBERS,
                                               "deadline_s": 600, "timeout_s": 10})  # K decides
                 for case, params in cases.items()}
        aggregators = set()
        for n in range(ROUNDS):
            heads = {case: net.owner.head(repo) for case, repo in repos.items()}
            for case, repo in repos.items():
                base = net.owner.repo(repo).pull(heads[case])
                for node, (trained, examples) in zip(net.nodes, contributions(base, slices, n, case[1]), strict=True):
                    node.repo(repo).contribute(trained, examples=examples, base=heads[case])
            for case, repo in repos.items():
                merged = net.wait_for_merge(repo, heads[case], timeout=90)
                assert merged["kind"] == "round" and merged["meta"]["round"] == n + 1
                assert len(merged["parents"]) == 1 + MEMBERS
                aggregators.add(merged["author"])
        final = {case: score(net.owner.repo(repo).pull(), x_test, y_test) for case, repo in repos.items()}
    assert len(aggregators) >= ROUNDS  # the role went round
    for (strategy, attack_kind), acc in final.items():
        policy = RoundPolicy(strategy=strategy, strategy_params=cases[(strategy, attack_kind)], buffer=MEMBERS)
        assert acc == run(policy, attack_kind), f"{strategy}, {attack_kind}: the daemons and the library disagree"
        assert acc >= run(policy, None) - 0.02, f"{strategy} against a {attack_kind} update"
