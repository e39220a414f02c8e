#!/usr/bin/env python
"""What it costs to anchor a merged commit on Solana: time and lamports per commit NFT, next to a memo-only anchor.

The bench starts ``flair-node localnet --port 0`` (LiteSVM behind Solana JSON-RPC) in a fresh temporary folder,
funds an aggregator key with an airdrop, and anchors ``--n`` merged commits through Flair's chain client
(``protocol.anchoring.chain.Chain``, solana-py on trio) exactly as a node does: derive the commit's mint
(``commit_mint``), check the mint account is absent (``getAccountInfo``), fetch a blockhash, build the transaction
(``commit_nft_transaction``, the mint's rent from ``getMinimumBalanceForRentExemption``, cached per size), send
it, poll ``getSignatureStatuses`` until confirmed or finalized, read the mint back and ``verify_commit_nft`` it.
The records are realistic: one random repository id, random commit ids, a random branch tag, rounds 1, 2, 3, ... and a
proof CID each; the URI names the CID of the commit's metadata JSON (``commit_nft_metadata``, three contributors),
all made before the clock starts (a node has them from its merge).

    anchors_per_s             one aggregator anchoring its merges in order, one at a time (wall time of all N)
    anchors_per_s_concurrent  N other commits with ``--in-flight`` anchors at once (a trio nursery and semaphore)
    lamports_per_commit       the aggregator's balance before the sequential anchors minus after, over N
    rent_lamports             the lamports held by each anchor's mint and associated token account, read back
                              from the chain (``mint_rent_lamports`` + ``token_account_rent_lamports``)
    fee_lamports              lamports_per_commit - rent_lamports: what the cluster charged as fees

The baseline, in the same run: the same N memos sent as plain SPL Memo transactions (the memo signed by the
aggregator, no NFT): blockhash, build, send, poll status. That is what anchoring costs without the NFT (and
without the mint check and read-back, which a memo has no account for): ``memo_only_per_s`` (and
``memo_only_per_s_concurrent``), ``memo_only_lamports``, and the ratios ``anchor_vs_memo_time`` (seconds per
anchor over seconds per memo) and ``anchor_vs_memo_lamports``. One warm-up anchor and memo run first, untimed.

The rent is a deposit, not a fee, but it is locked for good: the mint has no close authority, and closing the
token account would mean burning the commit's one token. LiteSVM charges mainnet's rent and its base fee of 5000
lamports per signature (the anchor has two, payer and mint), so the lamport figures carry over to mainnet,
except priority fees, which localnet does not charge and a congested mainnet needs. The times do not carry
over: localnet lands one transaction per slot, finalized at once, over 127.0.0.1; a cluster's slot time and
confirmation latency are not in them. They measure Flair's client, solana-py and the RPC round trips.

Price context, inputs and not measurements: ``sol_usd`` is ``--sol-usd`` (default 150, an assumption: replace it
with the day's price), ``usd_per_commit`` is lamports_per_commit at that price. For comparison, cited and not
measured (``reference`` in the JSON): Metaplex's Bubblegum overview (https://developers.metaplex.com/bubblegum)
puts a compressed NFT at 0.000005312 SOL per cNFT for a 1,000,000-leaf tree (0.3122 SOL of tree storage plus
5 SOL of transaction fees, total 5.3122 SOL) and 0.000027222 SOL per cNFT for a 10,000-leaf tree; Bubblegum v2
adds a protocol fee of 0.00009 SOL per mint (https://developers.metaplex.com/protocol-fees). A cNFT keeps its
data off-chain (indexed by a DAS RPC provider), which Flair's anchor does not need.

Lamports are means over the N commits: the mint's rent grows with its metadata, and the name holds the round,
so a round with one more digit costs one more byte of rent.

The same run also measures, from the payer's balance: ``lamports_per_contribution_nft`` (the mean of three
contribution NFTs, each minted into a new contributor's token account, which the aggregator funds),
``lamports_repo_token`` (one repository ownership token, ``flair init --chain``) and ``lamports_handover`` (moving
it to a new key, whose token account the old holder funds); and ``usd_per_contribution_nft``. A membership memo
costs what ``memo_only_lamports`` says.

Last line of stdout: one JSON object with ``n``, ``cluster`` ("localnet"), ``caveat``, the figures above,
``anchor_ms_p50`` and ``memo_only_ms_p50`` (sequential latency), ``sol_usd``, ``usd_per_commit`` and
``reference``. Timings are wall clock and noisy on a busy machine; lamports are exact.

    .venv/bin/python bench/anchor.py              # 200 anchors each way: about 20 s on 2 cores
    .venv/bin/python bench/anchor.py --quick      # 20: a smoke test
"""

from __future__ import annotations

import argparse
import json
import random
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.transaction import Transaction

from flair_node.core.cid import RAW, cid_for
from flair_node.core.ids import BranchName, CommitId, RepoId
from flair_node.protocol.anchoring import (
    AnchorRecord,
    anchor_memo,
    associated_token_address,
    commit_mint,
    commit_nft_metadata,
    commit_nft_mint_size,
    commit_nft_transaction,
    contribution_mint,
    contribution_nft_transaction,
    handover_transaction,
    memo_instruction,
    metadata_json,
    repo_token_mint,
    repo_token_transaction,
    verify_commit_nft,
)
from flair_node.protocol.anchoring.chain import Chain
from flair_node.protocol.anchoring.contribution import contribution_nft_mint_size
from flair_node.protocol.anchoring.ownership import repo_token_mint_size

AIRDROP_LAMPORTS = 1000 * 10**9
STARTUP_TIMEOUT = 120.0  # seconds for the localnet to print its URL (imports LiteSVM; the machine may be busy)
CONFIRM_TIMEOUT = 30.0
POLL_S = 0.02
CONTRIBUTORS = 3
CAVEAT = ("localnet (LiteSVM): one transaction per slot, finalized at once, on 127.0.0.1; 5000 lamports per "
          "signature, no priority fees; times are client and RPC round trips, not a cluster's confirmation latency")
REFERENCE = {
    "cited_not_measured": True,
    "what": "Metaplex Bubblegum compressed NFT (cNFT), cost per cNFT from Metaplex's own table",
    "source": "https://developers.metaplex.com/bubblegum",
    "sol_per_cnft_1m_tree": 0.000005312,  # 0.3122 SOL storage + 5 SOL transactions, over 1,000,000 cNFTs
    "sol_per_cnft_10k_tree": 0.000027222,  # 0.2222 SOL storage + 0.05 SOL transactions, over 10,000 cNFTs
    "bubblegum_v2_protocol_fee_sol": 0.00009,  # per create (mint), on top
    "protocol_fee_source": "https://developers.metaplex.com/protocol-fees",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the localnet process


def start_localnet(state_dir: Path, log_file: Any) -> tuple[subprocess.Popen[str], str]:
    """``flair-node localnet --port 0`` on ``state_dir``; the process and the URL it prints once serving."""
    proc = subprocess.Popen([sys.executable, "-m", "flair_node", "localnet", "--port", "0",
                             "--dir", str(state_dir)], stdout=subprocess.PIPE, stderr=log_file, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], STARTUP_TIMEOUT)
        line = proc.stdout.readline() if ready else ""
        prefix = "localnet serving "
        if not line.startswith(prefix):
            raise RuntimeError(f"flair-node localnet did not start within {STARTUP_TIMEOUT:.0f} s (exit code "
                               f"{proc.poll()}, first line {line!r}): see its log above")
        return proc, line[len(prefix):].strip()
    except BaseException:
        stop_localnet(proc)
        raise


def stop_localnet(proc: subprocess.Popen[str]) -> None:
    """SIGTERM (the localnet finishes writing its ledger and exits), then SIGKILL if it has not within 30 s, or if
    waiting was interrupted."""
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# -- the records a node would anchor


def make_records(rng: random.Random, repo: RepoId, first_round: int, n: int) -> list[tuple[AnchorRecord, str]]:
    """``n`` merged commits of ``repo`` in rounds from ``first_round``, each with a proof CID, and the IPFS URI
    of its metadata JSON."""
    out = []
    for round_ in range(first_round, first_round + n):
        record = AnchorRecord(repo=repo, branch=BranchName(rng.randbytes(16).hex()), round=round_,  # a branch tag
                              commit=CommitId(rng.randbytes(32).hex()), proof=cid_for(RAW, rng.randbytes(64)))
        document = commit_nft_metadata(record, contributors=CONTRIBUTORS)
        out.append((record, "ipfs://" + cid_for(RAW, metadata_json(document))))
    return out


# -- anchoring through the chain client


class Aggregator:
    """One aggregator key anchoring commits (or sending bare memos) through ``chain``, as a node does."""

    def __init__(self, chain: Chain, payer: Keypair, seed_secret: bytes) -> None:
        self.chain, self.payer, self.seed_secret = chain, payer, seed_secret
        self.rents: dict[int, int] = {}
        self.mint_lamports: dict[str, int] = {}  # mint address -> lamports it holds once anchored

    async def rent(self, size: int) -> int:
        if size not in self.rents:
            self.rents[size] = await self.chain.rent(size)
        return self.rents[size]

    async def anchor(self, record: AnchorRecord, uri: str) -> None:
        mint = commit_mint(self.seed_secret, record.commit)
        address = str(mint.pubkey())
        if await self.chain.account(address) is not None:
            raise RuntimeError(f"commit {record.commit} is already anchored at {address}: the bench makes new ids")
        await self.rent(commit_nft_mint_size(record, uri))
        blockhash = await self.chain.latest_blockhash()
        tx = commit_nft_transaction(payer=self.payer, mint=mint, record=record, uri=uri,
                                    rent=self.rents.__getitem__, blockhash=blockhash)
        await self.confirmed(await self.chain.send(bytes(tx)))
        landed = await self.chain.account(address)
        if landed is None:
            raise RuntimeError(f"the anchor of commit {record.commit} was confirmed but its mint {address} is absent")
        verify_commit_nft(mint=mint.pubkey(), owner=Pubkey.from_string(landed.owner), data=landed.data,
                          record=record, aggregator=self.payer.pubkey())
        self.mint_lamports[address] = landed.lamports

    async def memo_only(self, record: AnchorRecord, uri: str) -> None:
        blockhash = await self.chain.latest_blockhash()
        tx = Transaction.new_signed_with_payer([memo_instruction(anchor_memo(record), self.payer.pubkey())],
                                               self.payer.pubkey(), [self.payer], blockhash)
        await self.confirmed(await self.chain.send(bytes(tx)))

    async def confirmed(self, signature: str) -> None:
        with trio.fail_after(CONFIRM_TIMEOUT):
            while True:
                status = await self.chain.status(signature)
                if status is not None and status.confirmation in ("confirmed", "finalized"):
                    if status.error is not None:
                        raise RuntimeError(f"transaction {signature} landed but failed: {status.error}")
                    return
                await trio.sleep(POLL_S)


Step = Callable[[AnchorRecord, str], Awaitable[None]]


async def in_order(step: Step, items: Sequence[tuple[AnchorRecord, str]]) -> tuple[float, list[float]]:
    """Wall seconds for all of ``items`` one after another, and each one's seconds."""
    latencies = []
    start = time.perf_counter()
    for record, uri in items:
        began = time.perf_counter()
        await step(record, uri)
        latencies.append(time.perf_counter() - began)
    return time.perf_counter() - start, latencies


async def at_once(step: Step, items: Sequence[tuple[AnchorRecord, str]], in_flight: int) -> float:
    """Wall seconds for all of ``items`` with at most ``in_flight`` under way at a time."""
    limit = trio.Semaphore(in_flight)

    async def one(record: AnchorRecord, uri: str) -> None:
        async with limit:
            await step(record, uri)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for record, uri in items:
            nursery.start_soon(one, record, uri)
    return time.perf_counter() - start


async def ownership_costs(aggregator: Aggregator, rng: random.Random, repo: RepoId,
                          merged: Sequence[tuple[AnchorRecord, str]]) -> dict[str, float]:
    """Lamports, from the payer's balance before and after, of: one contribution NFT per merged commit in
    ``merged`` (each to a new contributor key, a new contribution id), the repository's ownership token, and one
    handover of it to a new key (which pays for the recipient's token account)."""
    chain, payer = aggregator.chain, aggregator.payer
    me = str(payer.pubkey())

    async def spent(build: Callable[[Any], Awaitable[Transaction]]) -> int:
        before = await chain.balance(me)
        tx = await build(await chain.latest_blockhash())
        await aggregator.confirmed(await chain.send(bytes(tx)))
        return before - await chain.balance(me)

    contributions = 0
    for record, uri in merged:
        contribution = CommitId(rng.randbytes(32).hex())
        await aggregator.rent(contribution_nft_mint_size(record, contribution, uri))

        async def contribution_nft(blockhash: Any, record: AnchorRecord = record, uri: str = uri,
                                   contribution: CommitId = contribution) -> Transaction:
            return contribution_nft_transaction(
                payer=payer, mint=contribution_mint(aggregator.seed_secret, record.commit, contribution),
                record=record, contributor=Keypair.from_seed(rng.randbytes(32)).pubkey(), contribution=contribution,
                uri=uri, rent=aggregator.rents.__getitem__, blockhash=blockhash)
        contributions += await spent(contribution_nft)
    mint, uri = repo_token_mint(aggregator.seed_secret, repo), merged[0][1]
    await aggregator.rent(repo_token_mint_size(repo, "bench", uri))

    async def token(blockhash: Any) -> Transaction:
        return repo_token_transaction(payer=payer, mint=mint, repo=repo, name="bench", uri=uri,
                                      rent=aggregator.rents.__getitem__, blockhash=blockhash)

    async def handover(blockhash: Any) -> Transaction:
        return handover_transaction(holder=payer, mint=mint.pubkey(), to=Keypair.from_seed(rng.randbytes(32)).pubkey(),
                                    repo=repo, blockhash=blockhash)

    return {"lamports_per_contribution_nft": round(contributions / len(merged), 1),
            "lamports_repo_token": float(await spent(token)), "lamports_handover": float(await spent(handover))}


async def bench(url: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    payer = Keypair.from_seed(rng.randbytes(32))
    me = str(payer.pubkey())
    repo = RepoId(rng.randbytes(32).hex())
    warmup, sequential, concurrent = (make_records(rng, repo, first, count)
                                      for first, count in ((1, 1), (2, args.n), (2 + args.n, args.n)))
    chain = Chain(url)
    try:
        aggregator = Aggregator(chain, payer, rng.randbytes(32))
        await aggregator.confirmed(await chain.airdrop(me, AIRDROP_LAMPORTS))
        log(f"aggregator {me} funded with {AIRDROP_LAMPORTS / 1e9:.0f} SOL; warming up")
        await aggregator.anchor(*warmup[0])
        await aggregator.memo_only(*warmup[0])

        log(f"anchoring {args.n} commits in order")
        before = await chain.balance(me)
        anchor_s, anchor_latencies = await in_order(aggregator.anchor, sequential)
        anchored = before - await chain.balance(me)
        log(f"  {anchor_s:.2f} s; memo-only in order")
        before = await chain.balance(me)
        memo_s, memo_latencies = await in_order(aggregator.memo_only, sequential)
        memo_paid = before - await chain.balance(me)
        log(f"  {memo_s:.2f} s; anchoring {args.n} more, {args.in_flight} in flight")
        anchor_concurrent_s = await at_once(aggregator.anchor, concurrent, args.in_flight)
        log(f"  {anchor_concurrent_s:.2f} s; memo-only, {args.in_flight} in flight")
        memo_concurrent_s = await at_once(aggregator.memo_only, concurrent, args.in_flight)
        log(f"  {memo_concurrent_s:.2f} s; reading the rent back")

        extras = await ownership_costs(aggregator, rng, repo, sequential[:CONTRIBUTORS])

        mint_rent = token_account_rent = 0
        for record, _ in sequential:  # what the sequential anchors left on chain: the mint and the token account
            mint = commit_mint(aggregator.seed_secret, record.commit).pubkey()
            token_account = await chain.account(str(associated_token_address(payer.pubkey(), mint)))
            assert token_account is not None, f"no token account for commit {record.commit}"
            mint_rent += aggregator.mint_lamports[str(mint)]
            token_account_rent += token_account.lamports
    finally:
        await chain.close()

    n = args.n
    lamports_per_commit = anchored / n
    rent = (mint_rent + token_account_rent) / n
    memo_lamports = memo_paid / n
    return {
        "n": n,
        "cluster": "localnet",
        "caveat": CAVEAT,
        "anchors_per_s": round(n / anchor_s, 2),
        "anchors_per_s_concurrent": round(n / anchor_concurrent_s, 2),
        "in_flight": args.in_flight,
        "anchor_ms_p50": round(1000 * statistics.median(anchor_latencies), 2),
        "lamports_per_commit": round(lamports_per_commit, 1),
        "fee_lamports": round(lamports_per_commit - rent, 1),
        "rent_lamports": round(rent, 1),
        "mint_rent_lamports": round(mint_rent / n, 1),
        "token_account_rent_lamports": round(token_account_rent / n, 1),
        "memo_only_per_s": round(n / memo_s, 2),
        "memo_only_per_s_concurrent": round(n / memo_concurrent_s, 2),
        "memo_only_ms_p50": round(1000 * statistics.median(memo_latencies), 2),
        "memo_only_lamports": round(memo_lamports, 1),
        "anchor_vs_memo_time": round(anchor_s / memo_s, 3),
        "anchor_vs_memo_time_concurrent": round(anchor_concurrent_s / memo_concurrent_s, 3),
        "anchor_vs_memo_lamports": round(lamports_per_commit / memo_lamports, 1),
        **extras,
        "sol_usd": args.sol_usd,
        "usd_per_commit": round(lamports_per_commit / 1e9 * args.sol_usd, 6),
        "usd_per_contribution_nft": round(extras["lamports_per_contribution_nft"] / 1e9 * args.sol_usd, 6),
        "usd_per_memo_only": round(memo_lamports / 1e9 * args.sol_usd, 6),
        "reference": {**REFERENCE, "usd_per_cnft_1m_tree": round(REFERENCE["sol_per_cnft_1m_tree"] * args.sol_usd, 6)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="commits anchored each way (default: 200)")
    parser.add_argument("--quick", action="store_true", help="20 commits: a smoke test")
    parser.add_argument("--in-flight", type=int, default=8, help="anchors under way at once in the concurrent run")
    parser.add_argument("--sol-usd", type=float, default=150.0,
                        help="assumed SOL price in USD, an input for usd_per_commit (default: 150; use the day's)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.quick:
        args.n = 20
    if args.n < 1 or args.in_flight < 1:
        parser.error("--n and --in-flight must be at least 1")
    with tempfile.TemporaryDirectory(prefix="flair-bench-anchor-") as tmp:
        log_path = Path(tmp) / "localnet.log"
        with open(log_path, "w") as log_file:
            log("starting flair-node localnet")
            try:
                proc, url = start_localnet(Path(tmp) / "chain", log_file)
            except RuntimeError:
                log(log_path.read_text()[-4000:])
                raise
            try:
                log(f"localnet serving {url} (pid {proc.pid})")
                result = trio.run(bench, url, args)
            finally:
                stop_localnet(proc)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
