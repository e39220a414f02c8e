"""The daemon's anchoring service: the round merges this node made are anchored on Solana (``chain.cluster``),
and the anchors other members claim for theirs are checked on chain.

Every ``every`` seconds it looks at the latest round merges (``RECENT`` commits back from the head of each
branch with rounds). It anchors each one this node made that is not anchored yet, one at a time:

1. With proofs on, it waits for the merge's proof record (at most ``PROOF_WAIT_MS``), so the anchor names it.
2. It stores the NFT's metadata JSON as an unencrypted UnixFS file (``ipfs://<cid>``; the ids, the branch's
   tag and the count of contributions: what the chain shows, never a key, a name or a metric) and derives the
   mint from this node's wallet in the repository and the commit (``commit_mint``). That wallet
   (``core.identity.wallet``), not the member key, signs, pays and holds the NFT's authority: the chain never
   shows a member key.
3. If the mint exists, an earlier attempt landed: it checks the NFT (``verify_commit_nft``) and is done.
   Otherwise it builds the transaction (memo + NFT), writes the transaction's signature to its state file
   *before* sending it, sends it, and waits until the cluster reports it ``chain.commitment`` or better; then
   it reads the mint back and checks it.
4. With the policy's ``contribution_nfts``, it mints one NFT per merged contribution into the token account
   of the wallet the contribution names (``meta["wallet"]``, the contributor's in the repository) the same
   way (a mint derived from its wallet, the merge and the contribution; the signature saved before sending;
   the mint checked).
5. It signs an anchor record (cluster genesis hash, transaction, mint, its wallet, and the contribution NFTs)
   and announces it like any record: members learn there which wallet is the aggregator's.

For a merge another member made, once its anchor record arrives (gossip or pull), the node checks the claim
itself: the same cluster (genesis hash), the transaction landed without error at ``chain.commitment``, its memo
names exactly this merge (repository, the branch's tag, round, commit, and the proofs this node holds, if any),
and the mint is the commit's NFT by the wallet the record names (``verify_commit_nft``), and each contribution NFT
the record lists is one of a contribution the merge merged, minted by its transaction to the wallet that
contribution names (``verify_contribution_nft``). The verdict is recorded like the node's own anchors; an RPC
failure is retried, a claim that does not hold is recorded as failed with the reason.

State lives in ``<home>/anchoring/<repo>/<merge>.json``, written atomically at each step, so a restart resumes
where it stopped. A failure (RPC error, timeout, a cluster out of reach, too few lamports) is recorded with its
reason and retried with exponential backoff, up to ``MAX_BACKOFF_S``: anchoring never blocks or loses a commit.
On a local chain or devnet it asks for an airdrop when the balance is low; elsewhere it says which address
to fund. ``provenance`` (API ``repo.provenance``, ``flair provenance``) reports it with explorer links.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from ..core.errors import FlairError, IntegrityError, InvalidInput
from ..core.identity import Identity
from ..core.ids import BranchName, CommitId, short
from ..core.objects import Commit
from ..protocol.round_merges import meta_parents
from ..storage import unixfs
from ..storage.atomic import atomic_write
from ..storage.repo import Repository, now_ms
from ..storage.repos import RepoSet
from .round_service import recent_round_merges

if TYPE_CHECKING:
    from ..protocol.anchoring.chain import Account, Chain, Landed
    from ..protocol.anchoring.memo import AnchorRecord
    from ..protocol.anchoring.wallet import Wallet

log = logging.getLogger(__name__)

RECENT = 8  # commits back from each branch head that are anchored
PROOF_WAIT_MS = 10 * 60_000  # how long an anchor waits for the merge's proof record
MAX_BACKOFF_S = 600
CONFIRM_TIMEOUT_S = 60.0
LOW_BALANCE = 50_000_000  # lamports: below this, ask local chains and devnet for an airdrop
AIRDROP = 1_000_000_000
ACCEPTED = {"confirmed": ("confirmed", "finalized"), "finalized": ("finalized",)}
MAX_METADATA_BYTES = 64 * 1024


class AnchorService:
    def __init__(self, repos: RepoSet, identity: Identity, state_dir: Path, *, cluster: str,
                 commitment: str = "confirmed", every: float = 1.0, on_change: Any = lambda: None) -> None:
        if commitment not in ACCEPTED:
            raise InvalidInput(f"chain.commitment is confirmed or finalized, not {commitment!r}")
        self.repos, self.identity, self.state_dir = repos, identity, state_dir
        self.cluster, self.commitment, self.every, self.on_change = cluster, commitment, every, on_change
        self.counts: Counter[str] = Counter()  # anchored, verified, refuted, failed_attempts
        repos.pins.append(self._metadata_roots)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await each_pass(self.repos, self.cluster, self.every, self._pass, task_status=task_status)

    async def _pass(self, chain: Chain, repo: Repository) -> None:
        for merge, mine in await trio.to_thread.run_sync(self._due, repo):
            await self._attempt(chain, repo, merge, mine)

    def status(self) -> dict[str, Any]:
        return {"cluster": self.cluster, **self.counts}

    def provenance(self, repo: Repository, merge: CommitId) -> dict[str, Any] | None:
        """What this node knows of the anchor of ``merge``, with explorer links; None if it never tried."""
        from ..protocol.anchoring.chain import explorer_url

        state = self._load(repo, merge)
        if state is None:
            return None
        shown = {k: v for k, v in state.items() if k != "next_try_ms"}
        shown["cluster"] = self.cluster
        links = {}
        if state.get("signature"):
            links["transaction"] = explorer_url(self.cluster, tx=state["signature"])
        if state.get("mint"):
            links["mint"] = explorer_url(self.cluster, address=state["mint"])
        for entry in shown.get("contributions", {}).values():
            entry["explorer"] = explorer_url(self.cluster, address=entry["mint"])
        return {**shown, "explorer": links}

    # -- the work ------------------------------------------------------------------------------------------

    def _due(self, repo: Repository) -> list[tuple[CommitId, bool]]:
        """Recent round merges whose next attempt is due: this node's own that are not anchored (True), and
        others' whose anchor record arrived and is not checked yet (False)."""
        due, now = [], now_ms()
        for commit in recent_round_merges(repo, RECENT):
            state = self._load(repo, commit.id) or {}
            if state.get("status") in ("anchored", "verified", "failed") or state.get("next_try_ms", 0) > now:
                continue
            if commit.author == self.identity.public_key:
                if "sums" not in commit.meta or repo.merges.proof(commit.id) is not None \
                        or now - commit.timestamp_ms >= PROOF_WAIT_MS:  # with proofs on, after them
                    due.append((commit.id, True))
            elif repo.merges.anchor(commit.id) is not None:
                due.append((commit.id, False))
        return due

    async def _attempt(self, chain: Chain, repo: Repository, merge: CommitId, mine: bool) -> None:
        state = await trio.to_thread.run_sync(self._load, repo, merge) or {"commit": merge, "attempts": 0}
        try:
            if mine:
                await self._anchor(chain, repo, merge, state)
            else:
                await self._check(chain, repo, merge, state)
        except IntegrityError as exc:  # a claim that does not hold: final
            state.update(status="failed", error=str(exc))
            self.counts["refuted"] += 1
            log.warning("the anchor of round merge %s of %s does not hold: %s", short(merge), short(repo.id), exc)
        except FlairError as exc:
            state["attempts"] = state.get("attempts", 0) + 1
            backoff = min(MAX_BACKOFF_S, 2 ** state["attempts"])
            state.update(status="retrying", error=str(exc), next_try_ms=now_ms() + backoff * 1000)
            self.counts["failed_attempts"] += 1
            log.warning("anchoring round merge %s of %s failed (attempt %d, next in %d s): %s", short(merge),
                        short(repo.id), state["attempts"], backoff, exc)
        await trio.to_thread.run_sync(self._save, repo, merge, state)

    async def _anchor(self, chain: Chain, repo: Repository, merge: CommitId, state: dict[str, Any]) -> None:
        from ..protocol.anchoring.checks import check_commit_nft

        record, uri, metadata = await trio.to_thread.run_sync(self._record, repo, merge)
        wallet = repo_wallet(self.identity, repo.id)
        mint = wallet.commit_mint(merge)
        state.update(mint=mint, metadata=metadata, memo=_memo_text(record), wallet=wallet.address)
        landed = await chain.account(mint)
        if landed is None and await sent_and_landed(chain, state.get("signature")):
            landed = await self._confirmed(chain, state["signature"], mint)
        if landed is None:
            await fund(chain, wallet.address)
            tx = await wallet.commit_nft(chain, record, uri)
            state.update(signature=tx.signature, status="sent")
            await trio.to_thread.run_sync(self._save, repo, merge, state)  # before sending: a crash knows it
            await chain.send(tx.raw)
            landed = await self._confirmed(chain, state["signature"], mint)
        check_commit_nft(landed, mint=mint, record=record, aggregator=wallet.address)
        policy = await trio.to_thread.run_sync(lambda: repo.members.current().policy)
        contributions = await self._contribution_nfts(chain, repo, merge, record, uri, state) \
            if policy.contribution_nfts else []
        state.update(status="anchored", anchored_ms=now_ms(), error=None, next_try_ms=0)
        self.counts["anchored"] += 1
        log.info("anchored round merge %s of %s on %s: mint %s, transaction %s", short(merge), short(repo.id),
                 self.cluster, state["mint"], state.get("signature"))
        if state.get("signature") and repo.merges.anchor(merge) is None:
            genesis = await chain.genesis_hash()
            await trio.to_thread.run_sync(lambda: repo.merges.write_anchor(
                self.identity, merge, genesis=genesis, transaction=state["signature"], mint=state["mint"],
                wallet=wallet.address, contributions=contributions))
            self.on_change()  # announce it

    async def _contribution_nfts(self, chain: Chain, repo: Repository, merge: CommitId, record: AnchorRecord,
                                 uri: str, state: dict[str, Any]) -> list[tuple[CommitId, str, str]]:
        """Mint each contribution ``merge`` merged an NFT held by its contributor's wallet, idempotently like
        the commit's own (a mint derived from this node's wallet, the merge and the contribution); (contribution,
        mint, transaction) of each."""
        from ..protocol.anchoring.checks import check_contribution_nft

        wallet = repo_wallet(self.identity, repo.id)
        made = state.setdefault("contributions", {})
        minted = []
        for contribution, contributor in await trio.to_thread.run_sync(merged_contributions, repo, merge):
            if contributor is None:  # its author's own doing: the others' NFTs, and the anchor, go on
                log.warning("contribution %s of %s names a wallet that is no Solana address: it gets no NFT",
                            short(contribution), short(repo.id))
                continue
            minted.append(contribution)
            mint = wallet.contribution_mint(merge, contribution)
            entry = made.setdefault(contribution, {"contributor": contributor, "mint": mint})
            landed = await chain.account(entry["mint"])
            if landed is None and not await sent_and_landed(chain, entry.get("signature")):
                await fund(chain, wallet.address)
                tx = await wallet.contribution_nft(chain, record, contribution, contributor, uri)
                entry["signature"] = tx.signature
                await trio.to_thread.run_sync(self._save, repo, merge, state)  # before sending: a crash knows it
                await chain.send(tx.raw)
            if not entry.get("signature"):
                raise IntegrityError(f"contribution NFT {entry['mint']} exists, but the transaction that made it "
                                     "is not in this node's state")
            landed = await self._confirmed(chain, entry["signature"], entry["mint"])
            check_contribution_nft(landed, mint=mint, record=record, contribution=contribution)
        return [(c, made[c]["mint"], made[c]["signature"]) for c in minted]

    async def _check(self, chain: Chain, repo: Repository, merge: CommitId, state: dict[str, Any]) -> None:
        """Check the anchor another member claims for its merge ``merge`` on this node's cluster."""
        from ..protocol.anchoring import parse_anchor_memo
        from ..protocol.anchoring.checks import check_commit_nft, check_contribution_nft

        claim = repo.merges.anchor(merge)
        assert claim is not None
        state.update(author=claim.author, wallet=claim.payer, signature=claim.transaction, mint=claim.mint)
        genesis = await chain.genesis_hash()
        if claim.genesis != genesis:
            raise IntegrityError(f"anchored on another cluster (genesis {claim.genesis}) than this node's "
                                 f"{self.cluster} ({genesis})")
        found = await landed_transaction(chain, claim.transaction, self.commitment)
        if found.signers[:1] != (claim.payer,):
            raise IntegrityError(f"transaction {claim.transaction} is not paid for by the wallet its anchor record "
                                 f"names ({claim.payer})")
        records = []
        for memo in found.memos:
            with contextlib.suppress(IntegrityError):
                records.append(parse_anchor_memo(memo))
        if len(records) != 1:
            raise IntegrityError(f"transaction {claim.transaction} carries {len(records)} anchor memos, not one")
        record, commit, proof = records[0], repo.commit(merge), repo.merges.proof(merge)
        if (record.repo, record.branch, record.round, record.commit) != (
                repo.id, _branch_tag(repo, commit), commit.meta.get("round"), merge):
            raise IntegrityError(f"the memo of transaction {claim.transaction} names another merge")
        if proof is not None and record.proof != proof.proofs:
            raise IntegrityError(f"the memo names other proofs ({record.proof}) than this merge's ({proof.proofs})")
        landed = await chain.account(claim.mint)
        if landed is None:
            raise IntegrityError(f"mint {claim.mint} does not exist on {self.cluster}")
        check_commit_nft(landed, mint=claim.mint, record=record, aggregator=claim.payer)
        merged = dict(merged_contributions(repo, merge))
        state["contributions"] = {}
        for contribution, mint, transaction in claim.contributions:
            if contribution not in merged:
                raise IntegrityError(f"the anchor names an NFT for {short(contribution)}, which the merge does not "
                                     "merge")
            contributor = merged[contribution]
            if contributor is None:
                raise IntegrityError(f"the anchor names an NFT for {short(contribution)}, which names no wallet")
            if token_moves(await landed_transaction(chain, transaction, self.commitment), mint).get(
                    contributor) != (0, 1):
                raise IntegrityError(f"transaction {transaction} does not mint NFT {mint} to contributor "
                                     f"{short(contributor)}")
            landed = await chain.account(mint)
            if landed is None:
                raise IntegrityError(f"contribution NFT {mint} does not exist on {self.cluster}")
            check_contribution_nft(landed, mint=mint, record=record, contribution=contribution)
            state["contributions"][contribution] = {"contributor": contributor, "mint": mint,
                                                    "signature": transaction}
        state.update(status="verified", memo=_memo_text(record), checked_ms=now_ms(), error=None, next_try_ms=0)
        self.counts["verified"] += 1

    async def _confirmed(self, chain: Chain, signature: str, mint: str) -> Account:
        """Wait until ``signature`` reaches the configured commitment; the mint's account then."""
        from ..protocol.anchoring.chain import ChainError

        await confirmed(chain, signature, self.commitment, "anchor transaction")
        landed = await chain.account(mint)
        if landed is None:
            raise ChainError(f"anchor transaction {signature} landed but mint {mint} is not there")
        return landed

    def _record(self, repo: Repository, merge: CommitId) -> tuple[AnchorRecord, str, str]:
        """The anchor record of ``merge``, the URI of its stored metadata JSON, and that file's CID."""
        from ..protocol.anchoring import AnchorRecord, commit_nft_metadata, metadata_json

        commit = repo.commit(merge)
        proof = repo.merges.proof(merge)
        record = AnchorRecord(repo=repo.id, branch=_branch_tag(repo, commit), round=int(commit.meta["round"]),
                              commit=merge, proof=proof.proofs if proof is not None else None)
        secure = commit.meta.get("secure")  # a secure merge lists its (masked) contributions there
        merged = secure["contributions"] if isinstance(secure, dict) else meta_parents(dict(commit.meta))
        document = metadata_json(commit_nft_metadata(record, contributors=len(merged)))
        if len(document) > MAX_METADATA_BYTES:
            raise InvalidInput(f"the metadata of {short(merge)} is larger than {MAX_METADATA_BYTES} bytes")
        cid = unixfs.add(repo.blocks, document)
        return record, f"ipfs://{cid}", cid

    # -- state ---------------------------------------------------------------------------------------------

    def _path(self, repo: Repository, merge: CommitId) -> Path:
        return self.state_dir / repo.id / f"{merge}.json"

    def _load(self, repo: Repository, merge: CommitId) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads(self._path(repo, merge).read_text())
        except (OSError, ValueError):
            return None
        return state

    def _save(self, repo: Repository, merge: CommitId, state: dict[str, Any]) -> None:
        path = self._path(repo, merge)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(state, sort_keys=True).encode())

    def _metadata_roots(self) -> list[tuple[str, int]]:
        """The metadata files this node published (gc keeps them: the NFTs' URIs name them)."""
        roots = []
        for path in self.state_dir.glob("*/*.json") if self.state_dir.exists() else []:
            try:
                cid = json.loads(path.read_text()).get("metadata")
            except (OSError, ValueError):
                continue
            if isinstance(cid, str):
                roots.append((cid, MAX_METADATA_BYTES))
        return roots


async def each_pass(repos: RepoSet, cluster: str, every: float, step: Callable[[Chain, Repository], Awaitable[None]],
                    *, task_status: trio.TaskStatus[None]) -> None:
    """A chain service's loop: every ``every`` seconds, ``step(chain, repo)`` for each repository, with one
    client of ``cluster`` closed on the way out (also when cancelled)."""
    from ..protocol.anchoring.chain import Chain

    chain = Chain(cluster)
    task_status.started()
    try:
        while True:
            await trio.sleep(every)
            for repo in await trio.to_thread.run_sync(repos.all):
                await step(chain, repo)
    finally:
        with trio.CancelScope(shield=True):
            await chain.close()


async def landed_transaction(chain: Chain, signature: str, commitment: str) -> Landed:
    """Transaction ``signature`` as the cluster holds it (``chain.Landed``), once it is ``commitment`` or better;
    ``ChainError`` while it is not (it may still land), ``IntegrityError`` if it failed."""
    from ..protocol.anchoring.chain import ChainError

    status = await chain.status(signature)
    if status is None or status.confirmation not in ACCEPTED[commitment]:
        raise ChainError(f"transaction {signature} is not {commitment} on {chain.cluster} (yet)")
    if status.error is not None:
        raise IntegrityError(f"transaction {signature} failed on chain: {status.error}")
    landed = await chain.transaction(signature)
    if landed is None:
        raise ChainError(f"{chain.cluster} does not hold transaction {signature} (yet)")
    return landed


def token_moves(landed: Landed, mint: str) -> dict[str, tuple[int, int]]:
    """What transaction ``landed`` did to the holdings of token ``mint``: owner -> (before, after)."""
    return {m.owner: (m.before, m.after) for m in landed.token_moves if m.mint == mint}


async def sent_and_landed(chain: Chain, signature: str | None) -> bool:
    """Whether transaction ``signature`` (sent before a crash or a timeout; None: never sent) landed without error."""
    if not signature:
        return False
    status = await chain.status(signature)
    return status is not None and status.error is None


async def confirmed(chain: Chain, signature: str, commitment: str, what: str) -> None:
    """Wait until transaction ``signature`` reaches ``commitment`` (confirmed or finalized); ``ChainError`` if it
    failed on chain or is not there within ``CONFIRM_TIMEOUT_S``."""
    from ..protocol.anchoring.chain import ChainError

    deadline = time.monotonic() + CONFIRM_TIMEOUT_S
    while True:
        status = await chain.status(signature)
        if status is not None and status.error is not None:
            raise ChainError(f"{what} {signature} failed on chain: {status.error}")
        if status is not None and status.confirmation in ACCEPTED[commitment]:
            return
        if time.monotonic() > deadline:
            raise ChainError(f"{what} {signature} not {commitment} within {CONFIRM_TIMEOUT_S:g} s")
        await trio.sleep(0.5)


async def fund(chain: Chain, address: str) -> None:
    """Make sure ``address`` can pay for a few transactions: an airdrop on a local chain or devnet when it runs
    low; elsewhere ``ChainError`` saying which address to fund."""
    from urllib.parse import urlparse

    from ..protocol.anchoring.chain import LOOPBACK, ChainError

    balance = await chain.balance(address)
    if balance >= LOW_BALANCE:
        return
    if chain.cluster == "devnet" or urlparse(chain.url).hostname in LOOPBACK:
        await chain.airdrop(address, AIRDROP)
        deadline = time.monotonic() + CONFIRM_TIMEOUT_S
        while await chain.balance(address) < LOW_BALANCE:
            if time.monotonic() > deadline:
                raise ChainError(f"the airdrop to {address} did not arrive within {CONFIRM_TIMEOUT_S:g} s")
            await trio.sleep(0.5)
        return
    raise ChainError(f"this node's address {address} holds {balance} lamports, too few to pay for its "
                     f"transactions (about 7,000,000 an anchor): fund it on {chain.cluster}")


def _memo_text(record: AnchorRecord) -> str:
    from ..protocol.anchoring import anchor_memo

    return anchor_memo(record).decode()


def _branch_tag(repo: Repository, merge: Commit) -> BranchName:
    """What the chain shows of ``merge``'s branch: its tag under the merge's payload key (``anchoring.memo``)."""
    return BranchName(repo.keys.tag(str(merge.meta.get("branch")), epoch=merge.payload.key_epoch, purpose="branch"))


def repo_wallet(identity: Identity, repo: str) -> Wallet:
    """This node's wallet in ``repo`` (``core.identity.wallet``), as the chain services sign with it."""
    from ..core.identity import wallet
    from ..protocol.anchoring.wallet import Wallet

    return Wallet(wallet(identity, repo))


def merged_contributions(repo: Repository, merge: CommitId) -> list[tuple[CommitId, str | None]]:
    """The contributions round merge ``merge`` took, each with where its NFT goes (``contributor_wallet``): the
    contribution commits of a plain merge (not those it excluded), the masked updates of a secure one (the wallet
    in each one's advert)."""
    from ..core.round_messages import Advert, Roster, content_of

    meta = dict(repo.commit(merge).meta)
    secure = meta.get("secure")
    if not isinstance(secure, dict):
        return [(c, contributor_wallet(repo.commit(c))) for c in meta_parents(meta)]
    adverts = [repo.secure.message(a) for a in content_of(repo.secure.message(secure["roster"]), Roster).adverts]
    wallets = {a.author: _address(content_of(a, Advert).wallet or a.author) for a in adverts}
    return [(CommitId(entry[0]), wallets.get(entry[1])) for entry in secure["contributions"]]


def contributor_wallet(contribution: Commit) -> str | None:
    """Where ``contribution``'s NFT goes: the wallet its author named in it (``meta["wallet"]``), or, in a
    contribution that names none, the author's key; None if what it names is no Solana address."""
    named = contribution.meta.get("wallet")
    return contribution.author if named is None else _address(named)


def _address(named: object) -> str | None:
    """``named`` if it is a Solana address, else None."""
    from ..protocol.anchoring.chain import parse_address

    try:
        return str(parse_address(named))
    except InvalidInput:
        return None
