"""Repository ownership on Solana, in one process against a localnet server: the owner's node mints the
repository's token and binds the repository to it, hands it over to a member on chain, and takes it back when
the member transfers it from a wallet. Another member's node applies each change only after checking on chain
that the transaction moved the token as the change says; a handover naming a transfer that did not is refused.
Membership changes are written on chain as memos."""

from __future__ import annotations

import socket

import pytest
import trio
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from test_rounds import MEMBERS, OWNER, team

from flair_node.core.errors import Forbidden, IntegrityError, InvalidInput
from flair_node.core.membership import ChainRef, handover
from flair_node.daemon.anchor_service import confirmed, fund
from flair_node.daemon.ownership_service import OwnershipService
from flair_node.protocol.anchoring import handover_transaction, membership_memo
from flair_node.protocol.anchoring.chain import ChainError
from flair_node.storage.repo import now_ms
from flair_node.storage.repos import RepoSet
from flair_node.testing.localnet import running_localnet

ALICE, BOB = MEMBERS[:2]


def node_of(identity, repo, service_dir, url):
    """Another member's node: its own store, the repository's record, and a chain service checking changes."""
    repos = RepoSet.in_memory(identity)
    mine = repos.adopt(repo.record)
    return mine, OwnershipService(repos, identity, service_dir, cluster=url)


async def take(repo, changes):
    for change in changes:  # as sync and gossip do: in a worker thread, which asks the chain from there
        await trio.to_thread.run_sync(repo.ingest.accept_membership, change)


async def test_the_token_is_minted_handed_over_and_claimed_back_and_every_move_checked_on_chain(tmp_path):
    repos, repo = team()
    with running_localnet(tmp_path / "chain") as url:
        owner = OwnershipService(repos, OWNER, tmp_path / "owner", cluster=url)
        alices, alice = node_of(ALICE, repo, tmp_path / "alice", url)
        bobs, bob = node_of(BOB, repo, tmp_path / "bob", url)
        try:
            await owner.mint(repo)
            token = repo.members.current().token
            assert token is not None and await owner.chain().holds(OWNER.public_key, token.mint)
            await owner.mint(repo)  # bound already: nothing more is minted or appended
            assert repo.members.current().token == token

            await take(alices, repo.members.changes())
            assert alices.members.current().token == token and alice.counts["checked"] == 1

            with pytest.raises(InvalidInput, match="not a current member"):
                await owner.hand_over(repo, str(Keypair().pubkey()))
            await owner.hand_over(repo, ALICE.public_key)
            after = repo.members.current()
            assert after.owner == ALICE.public_key and after.role(OWNER.public_key, epoch=0, at_ms=now_ms()) \
                == "maintainer"
            assert await owner.chain().holds(ALICE.public_key, token.mint)
            assert not await owner.chain().holds(OWNER.public_key, token.mint)
            with pytest.raises(Forbidden, match="only the owner"):
                await owner.hand_over(repo, BOB.public_key)

            # Bob's node forges a handover to Bob naming Alice's transfer: the chain says otherwise
            changes = repo.members.changes()
            await take(bobs, changes[:-1])
            moved = changes[-1].chain
            forged = handover(bobs.members.current(), BOB, BOB.public_key, moved, now_ms=now_ms())
            with pytest.raises(IntegrityError, match="does not move the ownership token"):
                await take(bobs, [forged])
            assert bob.counts["refused"] == 1
            wrong_slot = handover(bobs.members.current(), ALICE, ALICE.public_key,
                                  ChainRef(moved.genesis, moved.mint, moved.transaction, moved.slot + 1),
                                  now_ms=now_ms())
            with pytest.raises(IntegrityError, match="landed in slot"):
                await take(bobs, [wrong_slot])
            await take(alices, changes[-1:])  # the true one is taken
            assert alices.members.current().owner == ALICE.public_key

            # Alice sends the token back from a wallet; the owner's old node claims the handover itself
            wallet = Keypair.from_bytes(ALICE.keypair_bytes())
            await fund(owner.chain(), ALICE.public_key)  # an airdrop: Alice's wallet pays the transfer's fee
            tx = handover_transaction(holder=wallet, mint=Pubkey.from_string(token.mint),
                                      to=Pubkey.from_string(OWNER.public_key), repo=repo.id,
                                      blockhash=await owner.chain().latest_blockhash())
            signature = await owner.chain().send(bytes(tx))
            await confirmed(owner.chain(), signature, "confirmed", "the wallet's transfer")
            await owner.claim(repo, signature)
            assert repo.members.current().owner == OWNER.public_key
            await take(alices, repo.members.changes()[-1:])
            assert alices.members.current().owner == OWNER.public_key and alice.counts["checked"] == 3

            # every change the owner's node signed is written on chain as a memo
            for change in owner._due_memos(repo):
                await owner._memo(owner.chain(), repo, change)
            shown = await owner.describe(repo)
            assert shown["owner_holds_token"] is True and len(shown["handovers"]) == 2
            signed = [c for c in repo.members.changes() if c.author == OWNER.public_key]
            assert [m["seq"] for m in shown["memos"]] == [c.seq for c in signed]
            assert all(m["status"] == "anchored" for m in shown["memos"])
            for entry, change in zip(shown["memos"], signed, strict=True):
                assert await owner.chain().memos(entry["signature"]) == [membership_memo(repo.id, change.seq,
                                                                                         change.id)]
            assert owner._due_memos(repo) == []
        finally:
            for service in (owner, alice, bob):
                await service.chain().close()


async def test_without_a_reachable_chain_minting_fails_clearly_and_the_repository_is_intact(tmp_path):
    repos, repo = team()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    service = OwnershipService(repos, OWNER, tmp_path / "owner", cluster=f"http://127.0.0.1:{port}")
    before = repo.members.current()
    try:
        with pytest.raises(ChainError, match="failed"):
            await service.mint(repo)
    finally:
        await service.chain().close()
    assert repo.members.current() == before and repo.members.current().token is None


def test_a_node_without_a_chain_takes_the_owners_handover_but_not_one_the_new_owner_alone_signed():
    repos, repo = team()
    genesis, mint = "EtWTRABZaYq6iMfeYKouRu166VU2xqa1wcaWoxPkrZBG", str(Keypair().pubkey())
    signature = "5VERv8NMvzbJMEkV8xnrLkEaWRtSz9CosKDYjCJjBRnbJLgp8uirBgmQpjKhoR4tjF3ZpRzrFmBV6UjKdiSZkQUW"
    repo.bind_token(OWNER, ChainRef(genesis, mint, signature, 5))
    other = RepoSet.in_memory(ALICE).adopt(repo.record)
    for change in repo.members.changes():
        other.ingest.accept_membership(change)
    claimed = handover(other.members.current(), ALICE, ALICE.public_key, ChainRef(genesis, mint, signature, 6),
                       now_ms=now_ms())
    with pytest.raises(IntegrityError, match="only a node with chain.cluster"):
        other.ingest.accept_membership(claimed)
    given = handover(other.members.current(), OWNER, ALICE.public_key, ChainRef(genesis, mint, signature, 6),
                     now_ms=now_ms())
    assert other.ingest.accept_membership(given) and other.members.current().owner == ALICE.public_key

