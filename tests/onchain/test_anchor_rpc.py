"""The anchor through Flair's own chain client (``protocol.anchoring.chain``: solana-py's async RPC client, on
trio) against ``flair-node localnet``'s JSON-RPC server: the code path a node uses against devnet."""

from __future__ import annotations

import pytest
import trio
from solders.pubkey import Pubkey

from flair_node.core.errors import InvalidInput
from flair_node.devchain.server import LocalChain, LocalnetServer
from flair_node.protocol.anchoring import commit_mint, commit_nft_transaction, verify_commit_nft
from flair_node.protocol.anchoring.chain import Chain, ChainError, cluster_url, explorer_url
from flair_node.protocol.anchoring.token2022 import TOKEN_2022_PROGRAM_ID

from .conftest import NODE_SECRET


async def test_an_anchor_sent_through_the_chain_client_lands_and_checks_out(tmp_path, payer, record):
    chain_dir = LocalChain(tmp_path / "chain")
    async with trio.open_nursery() as nursery:
        url = await nursery.start(LocalnetServer(chain_dir).run)
        chain = Chain(url)
        try:
            me = str(payer.pubkey())
            await chain.airdrop(me, 10**9)
            assert await chain.balance(me) == 10**9
            mint = commit_mint(NODE_SECRET, record.commit)
            assert await chain.account(str(mint.pubkey())) is None  # not anchored yet: send

            async def transaction() -> bytes:
                blockhash = await chain.latest_blockhash()
                return bytes(commit_nft_transaction(payer=payer, mint=mint, record=record, uri="ipfs://x",
                                                    rent=lambda size: rent[size], blockhash=blockhash))

            rent = _Rent(chain)
            await rent.prefetch()
            signature = await chain.send(await transaction())
            status = await chain.status(signature)
            assert status is not None and status.error is None and status.confirmation == "finalized"
            landed = await chain.account(str(mint.pubkey()))
            assert landed is not None and landed.owner == str(TOKEN_2022_PROGRAM_ID)
            verify_commit_nft(mint=mint.pubkey(), owner=Pubkey.from_string(landed.owner), data=landed.data,
                              record=record, aggregator=payer.pubkey())

            with pytest.raises(ChainError, match="sendTransaction"):  # a retry never mints twice
                await chain.send(await transaction())
            assert (await chain.account(str(mint.pubkey()))).data == landed.data
            assert await chain.status(str(payer.sign_message(b"never sent"))) is None
        finally:
            await chain.close()
            nursery.cancel_scope.cancel()
    chain_dir.close()


async def test_an_unreachable_cluster_is_a_clear_error():
    chain = Chain("http://127.0.0.1:9")  # nothing listens on the discard port
    try:
        with pytest.raises(ChainError, match="getBalance at http://127.0.0.1:9 failed"):
            await chain.balance("11111111111111111111111111111111")
        with pytest.raises(InvalidInput, match="not a Solana address"):
            await chain.balance("not-an-address")
    finally:
        await chain.close()
    with pytest.raises(InvalidInput, match="airdrops are for local chains and devnet"):
        await Chain("mainnet-beta").airdrop("11111111111111111111111111111111", 1)


def test_clusters_and_explorer_links():
    assert cluster_url("local") == "http://127.0.0.1:8899" and cluster_url("https://rpc.example") == "https://rpc.example"
    with pytest.raises(InvalidInput, match="chain.cluster"):
        cluster_url("ftp://x")
    assert explorer_url("devnet", tx="5x") == "https://explorer.solana.com/tx/5x?cluster=devnet"
    assert explorer_url("mainnet-beta", address="Ab") == "https://explorer.solana.com/address/Ab"
    assert explorer_url("local", tx="5x").endswith("?cluster=custom&customUrl=http%3A%2F%2F127.0.0.1%3A8899")


class _Rent:
    """The rent of every size the anchor asks for, fetched from the cluster beforehand (the builders are pure)."""

    def __init__(self, chain: Chain) -> None:
        self.chain, self.sizes = chain, {}

    async def prefetch(self) -> None:
        for size in range(0, 2048):
            if size in (165, 170) or 500 <= size <= 900:
                self.sizes[size] = await self.chain.rent(size)

    def __getitem__(self, size: int) -> int:
        return self.sizes[size]
