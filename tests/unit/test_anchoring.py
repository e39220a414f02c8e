"""The anchoring service's two sides, in one process against a localnet server: the aggregator anchors its
round merge and signs an anchor record; another member checks that record on chain. A record naming another
mint or another cluster is recorded as failed, with the reason; one naming a transaction the cluster does not
hold is retried (it may still land)."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

from test_rounds import MEMBERS, OWNER, as_node, by_key, two_contributions

from flair_node.core.identity import Identity, wallet
from flair_node.core.ids import BranchName, RecordId
from flair_node.daemon.anchor_service import AnchorService, contributor_wallet
from flair_node.protocol import rounds
from flair_node.protocol.anchoring.chain import Chain
from flair_node.storage import unixfs
from flair_node.storage.repo import ANCHOR_REF
from flair_node.testing.localnet import running_localnet


def forge(repo, claim, who, **changes):
    """Put a claim about the same merge, signed by its author but saying otherwise, in place of ``claim``."""
    forged = replace(claim, **changes).signed(who)
    repo.objects.put(forged.id, forged.encode())
    ref = BranchName(ANCHOR_REF + claim.commit)
    repo.refs.compare_and_swap(ref, repo.refs.get(ref), RecordId(forged.id))
    return forged


async def test_a_member_checks_an_anchor_on_chain_and_refuses_false_claims(tmp_path):
    memory = rounds.RoundMemory()
    repos, repo, current, _, _ = two_contributions()
    who = by_key(current.aggregator(current.opened_ms + 1))
    merge = rounds.merge(as_node(repos, repo, who), who, "main", memory=memory).id
    other = next(m for m in MEMBERS if m != who)
    # a localnet process of its own: running Solana programs (LiteSVM) in this process would change its
    # floating-point control state (measured: numpy's long double ldexp then fails) for every later test
    with running_localnet(tmp_path / "chain") as url:
        chain = Chain(url)
        try:
            aggregator = AnchorService(repos, who, tmp_path / "who", cluster=url)
            await aggregator._attempt(chain, as_node(repos, repo, who), merge, True)
            made = aggregator.provenance(repo, merge)
            assert made["status"] == "anchored" and repo.merges.anchor(merge).transaction == made["signature"]
            # signed, paid and held by the aggregator's wallet in the repository: its member key is not on chain
            landed = await chain.transaction(made["signature"])
            assert made["wallet"] == repo.merges.anchor(merge).wallet == wallet(who, repo.id).public_key
            assert landed is not None and landed.signers[0] == made["wallet"] != who.public_key
            assert who.public_key not in landed.signers

            def checked(name):
                return AnchorService(repos, other, tmp_path / name, cluster=url)

            checker = checked("other")
            await checker._attempt(chain, repo, merge, False)
            found = checker.provenance(repo, merge)
            assert found["status"] == "verified" and found["memo"] == made["memo"], found

            claim = repo.merges.anchor(merge)
            for name, changes, reason in (
                    ("mint", {"mint": Identity.generate().public_key}, "does not exist"),
                    ("cluster", {"genesis": "11111111111111111111111111111111"}, "another cluster"),
                    ("transaction", {"transaction": made["signature"][:-4] + "1111"}, "not confirmed"),
                    ("wallet", {"wallet": wallet(other, repo.id).public_key}, "not paid for by the wallet"),
                    ("no wallet", {"wallet": ""}, "not paid for by the wallet")):
                forge(repo, claim, who, **changes)
                checker = checked(name)
                await checker._attempt(chain, repo, merge, False)
                found = checker.provenance(repo, merge)
                assert found["status"] in ("failed", "retrying") and reason in found["error"], (name, found)
        finally:
            await chain.close()


async def test_with_contribution_nfts_each_contributor_receives_one_and_members_check_them(tmp_path):
    memory = rounds.RoundMemory()
    repos, repo, _, _, _ = two_contributions()
    repo.set_policy(OWNER, replace(repo.members.current().policy, contribution_nfts=True))
    current = rounds.view(repo, "main", memory=memory)
    who = by_key(current.aggregator(current.opened_ms + 1))
    merge = rounds.merge(as_node(repos, repo, who), who, "main", memory=memory).id
    contributions = repo.commit(merge).parents[1:]
    other = next(m for m in MEMBERS if m != who)
    with running_localnet(tmp_path / "chain") as url:
        chain = Chain(url)
        try:
            aggregator = AnchorService(repos, who, tmp_path / "who", cluster=url)
            await aggregator._attempt(chain, as_node(repos, repo, who), merge, True)
            claim = repo.merges.anchor(merge)
            assert [c for c, _, _ in claim.contributions] == list(contributions)
            for contribution, mint, _ in claim.contributions:  # held by the contributor's wallet, which signed nothing
                author = repo.commit(contribution).author
                contributor = next(m for m in MEMBERS if m.public_key == author)
                assert contributor_wallet(repo.commit(contribution)) == wallet(contributor, repo.id).public_key
                assert await chain.holds(wallet(contributor, repo.id).public_key, mint)
                assert not await chain.holds(author, mint)
            again = await aggregator._contribution_nfts(chain, repo, merge, *aggregator._record(repo, merge)[:2],
                                                        aggregator._load(repo, merge))
            assert again == list(claim.contributions)  # a retry mints nothing twice

            checker = AnchorService(repos, other, tmp_path / "other", cluster=url)
            await checker._attempt(chain, repo, merge, False)
            found = checker.provenance(repo, merge)
            assert found["status"] == "verified" and set(found["contributions"]) == set(contributions)

            (c1, m1, t1), (c2, m2, t2) = claim.contributions
            forge(repo, claim, who, contributions=((c1, m2, t2), (c2, m1, t1)))  # each other's NFT
            checker = AnchorService(repos, other, tmp_path / "swapped", cluster=url)
            await checker._attempt(chain, repo, merge, False)
            found = checker.provenance(repo, merge)
            assert found["status"] == "failed" and "does not mint NFT" in found["error"], found
        finally:
            await chain.close()


async def test_a_contribution_naming_no_address_gets_no_nft_and_stops_nothing(tmp_path, monkeypatch):
    """A contributor whose contribution names garbage as its wallet hurts only itself: the merge is anchored, the
    other contributor's NFT minted, and members check the anchor as usual."""
    import flair_node.storage.repo as storage_repo

    liar = MEMBERS[1]
    honest_wallet = storage_repo.wallet
    monkeypatch.setattr(storage_repo, "wallet", lambda who, repo: SimpleNamespace(public_key="not an address")
                        if who == liar else honest_wallet(who, repo))
    memory = rounds.RoundMemory()
    repos, repo, _, _, _ = two_contributions()
    monkeypatch.setattr(storage_repo, "wallet", honest_wallet)
    repo.set_policy(OWNER, replace(repo.members.current().policy, contribution_nfts=True))
    current = rounds.view(repo, "main", memory=memory)
    who = by_key(current.aggregator(current.opened_ms + 1))
    merge = rounds.merge(as_node(repos, repo, who), who, "main", memory=memory).id
    lying = next(c for c in repo.commit(merge).parents[1:] if repo.commit(c).author == liar.public_key)
    assert contributor_wallet(repo.commit(lying)) is None
    other = next(m for m in MEMBERS if m != who)
    with running_localnet(tmp_path / "chain") as url:
        chain = Chain(url)
        try:
            await AnchorService(repos, who, tmp_path / "who", cluster=url)._attempt(
                chain, as_node(repos, repo, who), merge, True)
            claim = repo.merges.anchor(merge)
            assert [c for c, _, _ in claim.contributions] == [c for c in repo.commit(merge).parents[1:]
                                                              if c != lying]
            checker = AnchorService(repos, other, tmp_path / "other", cluster=url)
            await checker._attempt(chain, repo, merge, False)
            assert checker.provenance(repo, merge)["status"] == "verified"
        finally:
            await chain.close()


def test_a_secure_merge_is_anchored_with_its_count_of_contributions_and_no_name(tmp_path):
    """A secure merge lists its contributions under ``meta["secure"]``, not as parents: its anchor record and NFT
    metadata are made from those (they failed on a plain merge's fields once)."""
    import test_secure_rounds as secure

    repo = secure.team()
    r, _, unmask = secure.full_round(repo)
    merged = r.merge(unmask)
    service = AnchorService(secure.NODES[repo.id], secure.OWNER, tmp_path / "anchoring", cluster="http://127.0.0.1:1")
    record, uri, cid = service._record(repo, merged.id)
    assert record.branch not in ("main", "") and len(record.branch) == 32 and uri == f"ipfs://{cid}"
    document = json.loads(unixfs.cat(repo.blocks, cid, max_size=1 << 16))
    assert {a["trait_type"]: a["value"] for a in document["attributes"]}["contributors"] == len(secure.EVERYONE)


async def test_a_secure_rounds_contributors_each_receive_an_nft_in_their_wallet_and_members_check_them(tmp_path):
    """With contribution NFTs on, a secure merge's NFTs are one per masked update it took, held by the wallet
    each contributor named in its advert; a member checks them as it checks a plain merge's."""
    import test_secure_rounds as secure

    repo = secure.team(replace(secure.SECURE, contribution_nfts=True))
    r, _, unmask = secure.full_round(repo)
    merged = r.merge(unmask)
    who, repos = r.aggregator(), secure.NODES[repo.id]
    other = next(m for m in secure.EVERYONE if m != who)
    taken = {entry[0]: entry[1] for entry in merged.meta["secure"]["contributions"]}  # masked update -> author
    with running_localnet(tmp_path / "chain") as url:
        chain = Chain(url)
        try:
            await AnchorService(repos, who, tmp_path / "who", cluster=url)._attempt(
                chain, secure.as_node(repo, who), merged.id, True)
            claim = repo.merges.anchor(merged.id)
            assert {c for c, _, _ in claim.contributions} == set(taken)
            for masked, mint, _ in claim.contributions:
                author = next(m for m in secure.EVERYONE if m.public_key == taken[masked])
                assert await chain.holds(wallet(author, repo.id).public_key, mint)
                assert not await chain.holds(author.public_key, mint)
            checker = AnchorService(repos, other, tmp_path / "other", cluster=url)
            await checker._attempt(chain, secure.as_node(repo, other), merged.id, False)
            found = checker.provenance(repo, merged.id)
            assert found["status"] == "verified" and set(found["contributions"]) == set(taken), found

            (c1, m1, t1), (c2, m2, t2), *rest = claim.contributions
            forge(repo, claim, who, contributions=((c1, m2, t2), (c2, m1, t1), *rest))  # each other's NFT
            checker = AnchorService(repos, other, tmp_path / "swapped", cluster=url)
            await checker._attempt(chain, secure.as_node(repo, other), merged.id, False)
            found = checker.provenance(repo, merged.id)
            assert found["status"] == "failed" and "does not mint NFT" in found["error"], found
        finally:
            await chain.close()

