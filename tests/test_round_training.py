"""Rounds on real training: five members train an MLP on their own non-IID slices of scikit-learn's digits and
contribute each round; the entitled aggregator merges with the repository's strategy and every member re-derives
the merge. With one Byzantine member (its update scaled x100, or sign-flipped), trimmed mean and Krum keep the
final test accuracy within 2 points of the same rounds without it, where the plain mean does not."""

from __future__ import annotations

import pytest
import torch

from flair_node.core.identity import Identity
from flair_node.core.rounds import RoundPolicy
from flair_node.protocol import rounds
from flair_node.storage.repo import Repo
from flair_node.storage.repos import RepoSet
from flair_node.testing.models import accuracy, load_digits_split, make_mlp, partition, train_local

ROUNDS, MEMBERS, EPOCHS = 3, 5, 3
OWNER = Identity.generate()
PEOPLE = [Identity.generate() for _ in range(MEMBERS)]


def attack(kind: str, base: dict[str, torch.Tensor], trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    scale = {"scaled": 100.0, "flipped": -1.0}[kind]
    return {k: base[k] + scale * (trained[k] - base[k]) for k in base}


def run(policy: RoundPolicy, byzantine: str | None) -> float:
    """Test accuracy of main after ROUNDS rounds; member 0 is Byzantine if ``byzantine`` names an attack."""
    x, y, x_test, y_test = load_digits_split(seed=0)
    slices = partition(x, y, MEMBERS, seed=0, skew=0.5)  # non-IID: each class leans to one member
    repos = RepoSet.in_memory(OWNER)
    model = make_mlp(seed=0)
    repo = repos.create("digits", {k: v.detach().clone() for k, v in model.state_dict().items()})
    for person in PEOPLE:
        repo.invite(OWNER, person.public_key, "maintainer")
    repo.set_policy(OWNER, policy)
    nodes = {p.public_key: Repo.open(repo.id, repos.objects, repos.blocks, repo.refs, reader=p) for p in PEOPLE}
    nodes[OWNER.public_key] = repo
    for n in range(ROUNDS):
        head = repo.head("main")
        base = repo.materialize(head)
        for i, (person, (xs, ys)) in enumerate(zip(PEOPLE, slices, strict=True)):
            local = make_mlp(seed=0)
            local.load_state_dict(base)
            train_local(local, xs, ys, epochs=EPOCHS, lr=0.01, batch_size=32, seed=100 * n + i)
            trained = {k: v.detach().clone() for k, v in local.state_dict().items()}
            if i == 0 and byzantine:
                trained = attack(byzantine, base, trained)
            nodes[person.public_key].contribute(person, trained, examples=len(ys))
        current = rounds.view(repo, "main")
        who = current.aggregator(current.opened_ms + 1)
        aggregator = next(i for i in [OWNER, *PEOPLE] if i.public_key == who)
        merged = rounds.merge(nodes[who], aggregator, "main")
        rounds.verify(nodes[PEOPLE[1].public_key], merged)  # another member re-derives it
    final = make_mlp(seed=0)
    final.load_state_dict(repo.materialize(repo.head("main")))
    return accuracy(final, x_test, y_test)


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
