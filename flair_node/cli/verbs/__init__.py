"""Every ``flair`` verb, one ``Verb`` object each, grouped in one module per area; ``VERBS`` orders the help.

- ``node``: whoami, status, peers, gc
- ``repos``: repos, init, fsck, clone, pull
- ``history``: commit, log, show, diff, checkout
- ``branches``: branch, reset, merge, revert
- ``members``: members, invite, remove, policy
- ``rounds``: contribute, train, round
- ``chain``: owner, registry, handover, verify, provenance
"""

from __future__ import annotations

from . import branches, chain, history, members, node, repos, rounds
from ._base import Verb as Verb

# In the order ``flair --help`` lists them: roughly the order a newcomer meets them.
VERBS: tuple[Verb, ...] = (
    node.WHOAMI,
    repos.REPOS,
    repos.INIT,
    chain.OWNER,
    chain.REGISTRY,
    chain.HANDOVER,
    history.COMMIT,
    rounds.CONTRIBUTE,
    rounds.TRAIN,
    rounds.ROUND,
    chain.VERIFY,
    chain.PROVENANCE,
    history.LOG,
    history.SHOW,
    history.DIFF,
    node.STATUS,
    node.PEERS,
    branches.BRANCH,
    branches.RESET,
    history.CHECKOUT,
    branches.MERGE,
    branches.REVERT,
    repos.FSCK,
    node.GC,
    repos.CLONE,
    repos.PULL,
    members.MEMBERS,
    members.INVITE,
    members.REMOVE,
    members.POLICY,
)
