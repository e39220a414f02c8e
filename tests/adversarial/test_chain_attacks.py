"""Attacks on the chain side of a node (issue 16, finding 9: registry squatting).

flair_registry used to keep a repository's account at the PDA of its id alone, so whoever called
``create_repository`` first owned it on chain and the owner's node then skipped it forever. The account is now the
PDA of the id and the owner the repository's genesis record names, which only that key can create. Here a squatter
acts first, against a real localnet serving the program and a real daemon, and the owner's node still registers;
and an account squatted at the earlier address (which only the earlier program could make) is named by the node
and ignored. The program's own refusals are in contracts_tests/test_registry.py.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest
import trio
from solders.account import Account as SvmAccount
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction
from solders.transaction_metadata import FailedTransactionMetadata

from flair_node.core.identity import Identity
from flair_node.daemon.registry_service import RegistryService
from flair_node.protocol.anchoring import registry
from flair_node.protocol.anchoring.chain import Account, Chain, ChainError, Status
from flair_node.storage.repos import RepoSet
from flair_node.tensors.safetensors_io import save_bytes
from flair_node.testing.cluster import configure, public_key, wait_until
from flair_node.testing.commit_graph import tiny_state
from flair_node.testing.daemon import running_daemon
from flair_node.testing.localnet import running_localnet
from flair_node.testing.program import registry_program

PROGRAM = Pubkey(hashlib.sha256(b"flair/test/registry-squatting").digest())
REGISTERED_WITHIN_S = 40.0


def on_chain(url: str, work: Any) -> Any:
    """Run ``work(chain)`` against the localnet at ``url`` with a client closed afterwards."""
    async def main() -> Any:
        chain = Chain(url)
        try:
            with trio.fail_after(60):
                return await work(chain)
        finally:
            await chain.close()
    return trio.run(main)


async def send(chain: Chain, payer: Keypair, *instructions: Any) -> str:
    tx = Transaction.new_signed_with_payer(list(instructions), payer.pubkey(), [payer], await chain.latest_blockhash())
    signature = await chain.send(bytes(tx))
    for _ in range(100):
        status = await chain.status(signature)
        if status is not None and status.confirmation in ("confirmed", "finalized"):
            assert status.error is None, status
            return signature
        await trio.sleep(0.1)
    raise AssertionError(f"{signature} did not land")


@pytest.mark.integration
def test_a_squatter_who_creates_first_does_not_stop_the_owners_node_from_registering(tmp_path: Path) -> None:
    home, member = tmp_path / "ana", Identity.generate().public_key
    with running_localnet(tmp_path / "chain", programs={str(PROGRAM): registry_program()}) as url:
        # The owner makes a repository on a node that does not use the registry yet.
        configure(home)
        model = home / "tmp" / "initial.safetensors"
        model.parent.mkdir(mode=0o700, exist_ok=True)
        model.write_bytes(save_bytes(tiny_state(0)))
        with running_daemon(home) as daemon:
            repo = str(daemon.client.call("repo.init", name="digits", model_path=str(model))["repo"])
            owner = public_key(daemon)
            daemon.client.call("repo.invite", repo=repo, member=member, role="contributor")
        repo_id, owner_key = bytes.fromhex(repo), Pubkey.from_string(owner)
        owners_address = registry.repository_address(PROGRAM, repo_id, owner_key)[0]

        # A squatter who learned the id moves first, every way it can.
        squatter = Keypair()

        async def squat(chain: Chain) -> tuple[str, Any, Any]:
            await chain.airdrop(str(squatter.pubkey()), 10**10)
            for _ in range(100):
                if await chain.balance(str(squatter.pubkey())) > 0:
                    break
                await trio.sleep(0.1)
            # with its own key: an account at the address of (id, squatter), which no node derives
            await send(chain, squatter, registry.create_repository(PROGRAM, owner=squatter.pubkey(), repo_id=repo_id,
                                                                   policy_hash=bytes(32)))
            # at the owner's address, signing itself: refused by the program's seeds check (2006 = 0x7d6)
            ix = registry.create_repository(PROGRAM, owner=squatter.pubkey(), repo_id=repo_id, policy_hash=bytes(32))
            metas = [AccountMeta(owners_address, False, True), *ix.accounts[1:]]
            with pytest.raises(ChainError) as refused:
                await send(chain, squatter, Instruction(PROGRAM, ix.data, metas))
            # lamports sent ahead to the owner's address, hoping to block its creation
            await send(chain, squatter, transfer(TransferParams(from_pubkey=squatter.pubkey(),
                                                                to_pubkey=owners_address, lamports=5_000)))
            squatted = await chain.account(str(registry.repository_address(PROGRAM, repo_id, squatter.pubkey())[0]))
            return str(refused.value), squatted, await chain.account(str(owners_address))

        refusal, squatted, before = on_chain(url, squat)
        assert "0x7d6" in refusal, refusal
        assert squatted is not None and registry.decode_repository(squatted.data).owner == str(squatter.pubkey())
        assert before is not None and before.owner != str(PROGRAM)  # only lamports: a System account

        # The owner's node, now with the registry, registers the repository all the same.
        configure(home, chain=url, registry=str(PROGRAM))
        with running_daemon(home) as daemon:
            shown: dict[str, Any] = {}

            def registered() -> bool:
                shown.update(daemon.client.call("repo.registry", repo=repo))
                return bool(shown.get("exists") and shown.get("owner_matches") and shown.get("members_match")
                            and shown.get("policy_matches"))

            wait_until(registered, "the owner's node registers its repository", REGISTERED_WITHIN_S)
            assert shown["address"] == str(owners_address) and shown["owner"] == owner == shown["genesis_owner"]
            assert shown["error"] is None and shown["notice"] is None
            assert shown["members"] == [{"key": member, "role": "contributor"}]
            status = daemon.client.call("node.status")  # the daemon answers, and its registry service is well
            assert status["chain"]["registry"]["failing"] == 0, status["chain"]
            assert status["chain"]["registry"]["transactions"] >= 1

        async def after(chain: Chain) -> Any:
            return await chain.account(str(registry.repository_address(PROGRAM, repo_id, squatter.pubkey())[0]))

        # The squatter's own account is still there, its own and nobody's concern.
        assert on_chain(url, after) == squatted


# -- an account at the earlier derivation's address ------------------------------------------------------------

class SvmChain:
    """The calls the registry service makes of ``protocol.anchoring.chain.Chain``, answered by an in-process
    LiteSVM running the real program; an account can be put where only the earlier program could have made one."""

    cluster = url = "http://127.0.0.1:1"  # a local chain: the service airdrops to itself

    def __init__(self, svm: LiteSVM) -> None:
        self.svm = svm
        self.statuses: dict[str, Status] = {}

    async def account(self, address: str) -> Account | None:
        found = self.svm.get_account(Pubkey.from_string(address))
        if found is None or (found.lamports == 0 and not found.data):
            return None
        return Account(found.lamports, str(found.owner), bytes(found.data), found.executable)

    async def balance(self, address: str) -> int:
        return self.svm.get_balance(Pubkey.from_string(address)) or 0

    async def airdrop(self, address: str, lamports: int) -> str:
        self.svm.airdrop(Pubkey.from_string(address), lamports)
        return "airdrop"

    async def latest_blockhash(self) -> Any:
        return self.svm.latest_blockhash()

    async def send(self, transaction: bytes) -> str:
        tx = Transaction.from_bytes(transaction)
        result = self.svm.send_transaction(tx)
        self.svm.expire_blockhash()
        if isinstance(result, FailedTransactionMetadata):
            raise ChainError(f"refused: {result.err()} {result.meta().logs()}")
        signature = str(tx.signatures[0])
        self.statuses[signature] = Status(1, "finalized", None)
        return signature

    async def status(self, signature: str) -> Status | None:
        return self.statuses.get(signature)

    async def close(self) -> None:
        pass


async def test_an_account_squatted_at_the_earlier_address_is_named_and_ignored(caplog) -> None:
    owner, member, squatter = Identity.generate(), Identity.generate(), Keypair()
    repos = RepoSet.in_memory(owner)
    repo = repos.create("digits", tiny_state(0))
    repo.invite(owner, member.public_key, "maintainer")
    repo_id = bytes.fromhex(repo.id)
    svm = LiteSVM()
    svm.add_program(PROGRAM, registry_program().read_bytes())
    # What the earlier program left when a squatter created the repository's account first: the id alone as seed.
    legacy = registry.legacy_repository_address(PROGRAM, repo_id)
    _, bump = Pubkey.find_program_address([b"repository", repo_id], PROGRAM)
    data = (registry.account_discriminator("Repository") + repo_id + bytes(squatter.pubkey()) + bytes(32)
            + bytes([bump, 0]) + bytes(33 * 32))
    assert len(data) == registry.LEGACY_REPOSITORY_SIZE
    svm.set_account(legacy, SvmAccount(svm.minimum_balance_for_rent_exemption(len(data)), data, PROGRAM))
    chain = SvmChain(svm)

    service = RegistryService(repos, owner, cluster=chain.url, program=str(PROGRAM))
    with caplog.at_level(logging.WARNING, logger="flair_node.daemon.registry_service"):
        await service.sync(chain, repo)
        await service.sync(chain, repo)
    # the owner's account is created and mirrored; nothing was read from or written to the squatted one
    assert service.errors == {}, service.errors
    shown = await service.describe(repo, chain)
    assert shown["exists"] and shown["owner"] == owner.public_key and shown["members_match"], shown
    assert shown["address"] == str(registry.repository_address(PROGRAM, repo_id,
                                                               Pubkey.from_string(owner.public_key))[0])
    assert shown["legacy"] == {"address": str(legacy), "owner": str(squatter.pubkey()), "ours": False}
    assert str(squatter.pubkey()) in shown["notice"] and "ignored" in shown["notice"]
    left = svm.get_account(legacy)
    assert left is not None and bytes(left.data) == data
    # said once in the log, and counted in status, not each pass
    warned = [r for r in caplog.records if str(squatter.pubkey()) in r.getMessage()]
    assert len(warned) == 1 and service.status()["notices"] == 1
