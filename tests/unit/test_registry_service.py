"""The registry service against a localnet that serves the flair_registry program: the owner's node creates the
repository's account and mirrors policy and members there; the round's aggregator records its merge; after a
handover the old owner passes the account on and the new owner's node takes over; a repository handed over
before its account existed has it created by its genesis owner's node (the account's address is derived from that
key), while the new owner's node says why it cannot. Each pass reads the chain first, so a repeated pass sends
nothing. Squatting attempts are in tests/adversarial/test_chain_attacks.py."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from solders.pubkey import Pubkey
from test_rounds import MEMBERS, OWNER, READER, as_node, by_key, two_contributions

from flair_node.core.membership import ChainRef
from flair_node.daemon.registry_service import RegistryService, desired_members, policy_hash
from flair_node.protocol import rounds
from flair_node.protocol.anchoring.chain import Chain
from flair_node.storage.repo import now_ms
from flair_node.testing.localnet import running_localnet
from flair_node.testing.program import registry_program

PROGRAM = str(Pubkey(hashlib.sha256(b"flair/test/registry").digest()))
GENESIS, MINT = "EtWTRABZaYq6iMfeYKouRu166VU2xqa1wcaWoxPkrZBG", "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU"
TX = "5VERv8NMvzbJMEkV8xnrLkEaWRtSz9CosKDYjCJjBRnbJLgp8uirBgmQpjKhoR4tjF3ZpRzrFmBV6UjKdiSZkQUW"


async def test_the_registry_follows_membership_merges_and_a_handover(tmp_path):
    memory = rounds.RoundMemory()
    repos, repo, _, _, _ = two_contributions()
    with running_localnet(tmp_path / "chain", programs={PROGRAM: registry_program()}) as url:
        chain = Chain(url)

        def service(identity):
            return RegistryService(repos, identity, cluster=url, program=PROGRAM)

        try:
            owner = service(OWNER)
            await owner.sync(chain, repo)
            assert owner.errors == {}, owner.errors
            shown = await owner.describe(repo)
            assert shown["exists"] and shown["owner"] == OWNER.public_key and shown["owner_matches"]
            assert shown["policy_matches"] and shown["members_match"], (shown, owner.errors)
            assert {m["key"]: m["role"] for m in shown["members"]} == {
                **{m.public_key: "maintainer" for m in MEMBERS}, READER.public_key: "reader"}
            sent = owner.counts["transactions"]
            await owner.sync(chain, repo)  # nothing left to do: nothing sent
            assert owner.counts["transactions"] == sent

            # the round's aggregator records its merge; nobody else has to
            current = rounds.view(repo, "main", memory=memory)
            who = by_key(current.aggregator(current.opened_ms + 1))
            merge = rounds.merge(as_node(repos, repo, who), who, "main", memory=memory)
            aggregator = service(who)
            await aggregator.sync(chain, repo)
            assert aggregator.errors == {} and aggregator.counts["merges_recorded"] == 1, aggregator.errors
            branch = (await owner.describe(repo))["branches"]["main"]
            assert (branch["head"], branch["round"], branch["merges"]) == (merge.id, merge.meta["round"], 1)
            assert branch["last_author"] == who.public_key and branch["known_here"]
            await aggregator.sync(chain, repo)
            assert aggregator.counts["merges_recorded"] == 1  # recorded once

            # the owner changes the policy and removes a member: the registry follows
            repo.set_policy(OWNER, replace(repo.members.current().policy, buffer=5))
            repo.remove(OWNER, READER.public_key)
            await owner.sync(chain, repo)
            shown = await owner.describe(repo)
            assert shown["policy_matches"] and shown["members_match"] and len(shown["members"]) == 3

            # a handover: the old owner's node passes the account on, the new owner's re-adds it as a maintainer
            heir = MEMBERS[0]
            repo.bind_token(OWNER, ChainRef(GENESIS, MINT, TX, 1))
            repo.hand_over(OWNER, heir.public_key, ChainRef(GENESIS, MINT, TX[:-1] + "A", 2))
            await owner.sync(chain, repo)
            assert (await owner.describe(repo))["owner"] == heir.public_key
            new_owner = service(heir)
            await new_owner.sync(chain, repo)
            shown = await new_owner.describe(repo)
            assert shown["owner_matches"] and shown["members_match"], shown
            assert {m["key"]: m["role"] for m in shown["members"]}[OWNER.public_key] == "maintainer"
            membership = repo.members.current()
            assert desired_members(membership, at_ms=now_ms()) == {m["key"]: 2 for m in shown["members"]}
            assert shown["policy_matches"] and policy_hash(membership) != policy_hash(
                replace(membership, policy=replace(membership.policy, buffer=6)))
        finally:
            await chain.close()


async def test_without_the_program_the_failure_is_kept_and_commits_are_untouched(tmp_path):
    repos, repo, _, _, _ = two_contributions()
    heads = repo.branches()
    with running_localnet(tmp_path / "chain") as url:  # no program at that address
        chain = Chain(url)
        try:
            owner = RegistryService(repos, OWNER, cluster=url, program=PROGRAM)
            await owner.sync(chain, repo)
            assert repo.id in owner.errors and owner.counts["failures"] == 1
            assert repo.branches() == heads
        finally:
            await chain.close()


async def test_a_repository_handed_over_before_its_account_existed(tmp_path):
    repos, repo, _, _, _ = two_contributions()
    heir = MEMBERS[0]
    repo.bind_token(OWNER, ChainRef(GENESIS, MINT, TX, 1))
    repo.hand_over(OWNER, heir.public_key, ChainRef(GENESIS, MINT, TX[:-1] + "A", 2))
    with running_localnet(tmp_path / "chain", programs={PROGRAM: registry_program()}) as url:
        chain = Chain(url)
        try:
            new_owner = RegistryService(repos, heir, cluster=url, program=PROGRAM)
            await new_owner.sync(chain, repo)  # only the genesis owner's key can create the account
            assert "only the owner its genesis record names" in new_owner.errors[repo.id]
            assert new_owner.counts["transactions"] == 0 and not (await new_owner.describe(repo))["exists"]

            genesis = RegistryService(repos, OWNER, cluster=url, program=PROGRAM)
            await genesis.sync(chain, repo)  # creates it and passes it on at once
            assert genesis.errors == {}, genesis.errors
            shown = await genesis.describe(repo)
            assert shown["exists"] and shown["owner"] == heir.public_key and shown["owner_matches"]
            assert shown["genesis_owner"] == OWNER.public_key

            await new_owner.sync(chain, repo)  # the new owner's node takes over from there
            shown = await new_owner.describe(repo)
            assert new_owner.errors == {}, new_owner.errors
            assert shown["policy_matches"] and shown["members_match"], shown
            assert {m["key"]: m["role"] for m in shown["members"]}[OWNER.public_key] == "maintainer"
        finally:
            await chain.close()
