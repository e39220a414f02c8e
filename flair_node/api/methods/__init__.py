"""The daemon's JSON-RPC methods, one module per namespace, each a ``MethodTable`` of module-level handlers.

    node       node.*   the node itself: identity, status, gc, gossip arrivals
    block      block.*  IPFS blocks: fetch a DAG from a peer, check one is stored
    repo       repo.*   repositories and new work: list, init, commit, contribute, pull, status, fsck
    history    repo.*   reading history: log, show, diff, checkout
    refs       repo.*   moving branches: branch, merge, revert, reset
    members    repo.*   members, invite, remove, round policy
    round      round.*  a branch's round: status, merge now
    proof      repo.*   verify a round merge's proofs
    chain      repo.*   Solana: provenance, registry, owner, handover

Every handler takes an ``ApiContext`` (``api.context``) as first argument; ``build_registry`` binds them all to
one. Params are checked by the registry before a handler runs (their shared schemas are ``api.params``), and
blocking work (hashing, tensor arithmetic, fsync) goes to a worker thread so the daemon keeps answering.
"""

from __future__ import annotations

from ..context import ApiContext
from ..dispatch import MethodTable, Registry
from . import block, chain, history, members, node, proof, refs, repo
from . import round as round_

#: Every method table, in the order ``rpc.discover`` lists them.
TABLES: tuple[MethodTable, ...] = (node.methods, block.methods, repo.methods, history.methods, refs.methods,
                                   members.methods, round_.methods, proof.methods, chain.methods)


def build_registry(context: ApiContext | None) -> Registry:
    """A registry of every method, bound to ``context``; with ``None``, one that only documents them."""
    registry = Registry()
    for table in TABLES:
        registry.bind(table, context)
    return registry


__all__ = ["TABLES", "build_registry"]
