"""The daemon's side of repository ownership on Solana: minting a repository's ownership token, handing it over,
checking the token changes and handovers peers send, and anchoring membership changes as memos.

- **Minting** (``flair init --chain``, ``flair owner REPO --mint``; API ``repo.owner``): the owner's node mints
  the repository's one-of-one Token-2022 token to its own address (``protocol.anchoring.ownership``; the mint
  key is derived from the node's key and the repository id, so a retry after a crash aims at the same mint),
  waits for it at ``chain.commitment``, checks the mint, and appends a token change to the membership chain.
- **Handing over** (``flair handover REPO MEMBER``; API ``repo.handover``): the owner's node moves the token to
  a current member on chain, then appends the handover. A member who received the token some other way (a
  wallet) publishes the handover itself (``flair handover REPO --claim SIGNATURE``).
- **Checking** (``check``, installed as every repository's ``check_ownership``): before a peer's token change or
  handover is applied, the node asks its cluster whether the named transaction landed (at ``chain.commitment``,
  without error, in the slot the change names) and moved the token exactly as the change says: minted to the
  owner (and the mint is the repository's token, by the owner), or from the owner in the membership chain to
  the new owner. The token must move directly from owner to member: a transfer through anyone else is not one a
  node accepts. A change made on another cluster is judged as a node without a chain would
  (``storage.repo.check_ownership_offline``).
- **Membership memos**: every membership change this node signs in a repository with a token is written on chain
  as an SPL Memo (``flair:1:member:<repo>:<seq>:<change>``), from state kept in ``<home>/ownership/<repo>.json``
  and retried with backoff like anchors. A crash between sending and recording may write a memo twice; readers
  take the first.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from ..api.views import ownership_json
from ..core.errors import FlairError, Forbidden, IntegrityError, InvalidInput, RemoteError
from ..core.identity import Identity
from ..core.ids import PublicKey, short
from ..core.membership import ChainRef, MembershipChange
from ..storage import unixfs
from ..storage.atomic import atomic_write
from ..storage.repo import Repository, check_ownership_offline, now_ms
from ..storage.repos import RepoSet
from .anchor_service import (
    ACCEPTED,
    MAX_BACKOFF_S,
    MAX_METADATA_BYTES,
    confirmed,
    each_pass,
    fund,
    landed_transaction,
    sent_and_landed,
    token_moves,
)

if TYPE_CHECKING:
    from ..protocol.anchoring.chain import Chain

log = logging.getLogger(__name__)


class OwnershipService:
    def __init__(self, repos: RepoSet, identity: Identity, state_dir: Path, *, cluster: str,
                 commitment: str = "confirmed", every: float = 2.0, on_change: Any = lambda: None) -> None:
        from ..protocol.anchoring.wallet import Wallet

        if commitment not in ACCEPTED:
            raise InvalidInput(f"chain.commitment is confirmed or finalized, not {commitment!r}")
        self.repos, self.identity, self.state_dir = repos, identity, state_dir
        self.wallet = Wallet(identity)  # the node's key, holding the tokens of the repositories it owns
        self.cluster, self.commitment, self.every, self.on_change = cluster, commitment, every, on_change
        self.counts: Counter[str] = Counter()  # tokens_minted, handovers, memos, checked, refused
        self._chain: Chain | None = None
        self._busy = trio.Lock()  # one token transaction at a time: mints and handovers read, then write, state
        repos.pins.append(self._metadata_roots)
        repos.check_ownership = self.check

    def chain(self) -> Chain:
        from ..protocol.anchoring.chain import Chain

        if self._chain is None:
            self._chain = Chain(self.cluster)
        return self._chain

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await each_pass(self.repos, self.cluster, self.every, self._memos, task_status=task_status)
        finally:
            with trio.CancelScope(shield=True):
                if self._chain is not None:
                    await self._chain.close()

    async def _memos(self, chain: Chain, repo: Repository) -> None:
        for change in await trio.to_thread.run_sync(self._due_memos, repo):
            await self._memo(chain, repo, change)

    # -- minting and handing over -------------------------------------------------------------------------

    async def mint(self, repo: Repository) -> None:
        """Mint ``repo``'s ownership token to this node (its owner) and bind the repository to it; nothing if
        it is bound already."""
        from ..protocol.anchoring.checks import check_repo_token

        async with self._busy:
            membership = await trio.to_thread.run_sync(repo.members.current)
            if membership.token is not None:
                return
            if membership.owner != self.identity.public_key:
                raise Forbidden(f"only the owner of repository {repo.name} ({short(membership.owner)}) mints its "
                                "ownership token", repo=repo.id)
            chain = self.chain()
            mint = self.wallet.repo_token_mint(repo.id)
            state = await trio.to_thread.run_sync(self._load, repo)
            uri, metadata = await trio.to_thread.run_sync(self._token_metadata, repo)
            token = state.setdefault("token", {})
            token.update(mint=mint, metadata=metadata)
            if await chain.account(token["mint"]) is None:
                if not await sent_and_landed(chain, token.get("signature")):
                    await fund(chain, self.wallet.address)
                    tx = await self.wallet.repo_token(chain, repo.id, repo.name, uri)
                    token["signature"] = tx.signature
                    await trio.to_thread.run_sync(self._save, repo, state)  # before sending: a crash knows it
                    await chain.send(tx.raw)
            if not token.get("signature"):
                raise IntegrityError(f"mint {token['mint']} exists, but this node lost the transaction that made "
                                     "it: its state file is gone", repo=repo.id)
            await confirmed(chain, token["signature"], self.commitment, "ownership token transaction")
            landed = await landed_transaction(chain, token["signature"], self.commitment)
            account = await chain.account(token["mint"])
            if account is None:
                raise RemoteError(f"ownership token transaction {token['signature']} landed but mint "
                                  f"{token['mint']} is not there")
            check_repo_token(account, mint=mint, repo=repo.id, name=repo.name)
            ref = ChainRef(await chain.genesis_hash(), token["mint"], token["signature"], landed.slot)
            await trio.to_thread.run_sync(repo.bind_token, self.identity, ref)
            await trio.to_thread.run_sync(self._save, repo, state)
        self.counts["tokens_minted"] += 1
        log.info("minted the ownership token of %s: mint %s, transaction %s", short(repo.id), ref.mint,
                 ref.transaction)
        self.on_change()

    async def hand_over(self, repo: Repository, member: str) -> None:
        """Move ``repo``'s token from this node (its owner) to ``member`` on chain, then record the handover."""
        async with self._busy:
            membership = await trio.to_thread.run_sync(repo.members.current)
            token = self._bound(repo, membership)
            if membership.owner != self.identity.public_key:
                raise Forbidden(f"only the owner of repository {repo.name} ({short(membership.owner)}) hands it over; "
                                "a member who received the token publishes the handover with --claim", repo=repo.id)
            joined = membership.members.get(PublicKey(member))
            if member == membership.owner or joined is None or joined.removed_epoch is not None:
                raise InvalidInput(f"{short(member)} is not a current member of {repo.name}: invite them first (the "
                                   "new owner needs the payload keys)", member=member)
            chain = self.chain()
            state = await trio.to_thread.run_sync(self._load, repo)
            pending = state.setdefault("handovers", {}).get(member)
            if not await sent_and_landed(chain, pending):
                if not await chain.holds(self.identity.public_key, token.mint):
                    raise IntegrityError(f"this node's address does not hold the ownership token {token.mint} on "
                                         f"{self.cluster}: it moved on chain; its holder publishes the handover",
                                         repo=repo.id)
                await fund(chain, self.wallet.address)
                tx = await self.wallet.handover(chain, repo.id, token.mint, member)
                pending = state["handovers"][member] = tx.signature
                await trio.to_thread.run_sync(self._save, repo, state)
                await chain.send(tx.raw)
            assert pending is not None
            await confirmed(chain, pending, self.commitment, "handover transaction")
            ref = await self._checked_move(chain, repo, membership.owner, member, pending)
            await trio.to_thread.run_sync(repo.hand_over, self.identity, member, ref)
            del state["handovers"][member]
            await trio.to_thread.run_sync(self._save, repo, state)
        self.counts["handovers"] += 1
        log.info("handed repository %s over to %s: transaction %s", short(repo.id), short(member), pending)
        self.on_change()

    async def claim(self, repo: Repository, signature: str) -> None:
        """Record that transaction ``signature`` moved ``repo``'s token from its owner to this node."""
        async with self._busy:
            membership = await trio.to_thread.run_sync(repo.members.current)
            self._bound(repo, membership)
            me = self.identity.public_key
            if membership.owner == me:
                raise InvalidInput(f"this node owns {repo.name} already")
            ref = await self._checked_move(self.chain(), repo, membership.owner, me, signature)
            await trio.to_thread.run_sync(repo.hand_over, self.identity, me, ref)
        self.counts["handovers"] += 1
        self.on_change()

    # -- checking peers' changes -----------------------------------------------------------------------------

    def check(self, repo: Repository, change: MembershipChange) -> None:
        """``Repository.check_ownership``: called in a worker thread of the daemon's trio loop before ``change`` (a
        token change or a handover from a peer) is applied; raises unless the chain shows it holds."""
        try:
            trio.from_thread.run(self._check, repo, change)
        except RuntimeError as exc:  # not a trio worker thread: nothing to ask the chain with
            raise RemoteError(f"membership change {short(change.id)} needs a chain check, which runs in the "
                              f"daemon only ({exc})") from None

    async def _check(self, repo: Repository, change: MembershipChange) -> None:
        from ..protocol.anchoring.checks import check_repo_token

        ref, chain = change.chain, self.chain()
        assert ref is not None
        if ref.genesis != await chain.genesis_hash():
            log.warning("membership change %s of %s names another cluster (genesis %s) than %s: judged without it",
                        short(change.id), short(repo.id), ref.genesis, self.cluster)
            check_ownership_offline(repo, change)
            return
        owner = (await trio.to_thread.run_sync(repo.members.current)).owner
        try:
            if change.action == "token":
                if change.author != owner:
                    raise IntegrityError("a token change is the owner's")
                await self._checked_move(chain, repo, None, owner, ref.transaction, expect=ref)
                account = await chain.account(ref.mint)
                if account is None:
                    raise IntegrityError(f"mint {ref.mint} does not exist on {self.cluster}")
                check_repo_token(account, mint=ref.mint, repo=repo.id, name=repo.name)
            else:
                await self._checked_move(chain, repo, owner, change.member, ref.transaction, expect=ref)
        except IntegrityError:
            self.counts["refused"] += 1
            raise
        self.counts["checked"] += 1

    async def _checked_move(self, chain: Chain, repo: Repository, giver: str | None, taker: str, signature: str, *,
                            expect: ChainRef | None = None) -> ChainRef:
        """The reference of transaction ``signature`` after checking that it moved ``repo``'s token from
        ``giver`` (None: minted) to ``taker``, and, with ``expect``, that it is the one ``expect`` names."""
        membership = await trio.to_thread.run_sync(repo.members.current)
        mint = expect.mint if expect is not None else self._bound(repo, membership).mint
        landed = await landed_transaction(chain, signature, self.commitment)
        if expect is not None and landed.slot != expect.slot:
            raise IntegrityError(f"transaction {signature} landed in slot {landed.slot}, not {expect.slot}")
        moves = token_moves(landed, mint)
        if moves.get(taker) != (0, 1) or giver is not None and moves.get(giver) != (1, 0):
            source = f"from {short(giver)} " if giver is not None else ""
            raise IntegrityError(f"transaction {signature} does not move the ownership token {mint} of "
                                 f"{short(repo.id)} {source}to {short(taker)}", repo=repo.id)
        return ChainRef(await chain.genesis_hash(), mint, signature, landed.slot)

    def _bound(self, repo: Repository, membership: Any) -> ChainRef:
        if membership.token is None:
            raise InvalidInput(f"repository {repo.name} has no ownership token: its owner mints one with "
                               f"flair owner {repo.name} --mint")
        token: ChainRef = membership.token
        return token

    # -- membership memos ----------------------------------------------------------------------------------

    def _due_memos(self, repo: Repository) -> list[MembershipChange]:
        """The membership changes this node signed in ``repo`` (once it has a token) not yet written on chain."""
        if repo.members.current().token is None:
            return []
        memos, now = self._load(repo).get("memos", {}), now_ms()
        due = []
        for change in repo.members.changes():
            entry = memos.get(change.id, {})
            if change.author == self.identity.public_key and entry.get("status") != "anchored" \
                    and entry.get("next_try_ms", 0) <= now:
                due.append(change)
        return due

    async def _memo(self, chain: Chain, repo: Repository, change: MembershipChange) -> None:
        from ..protocol.anchoring import membership_memo

        state = await trio.to_thread.run_sync(self._load, repo)
        entry = state.setdefault("memos", {}).setdefault(change.id, {"seq": change.seq, "attempts": 0})
        try:
            if not await sent_and_landed(chain, entry.get("signature")):
                await fund(chain, self.wallet.address)
                tx = await self.wallet.memo(chain, membership_memo(repo.id, change.seq, change.id))
                entry.update(signature=tx.signature, status="sent")
                await trio.to_thread.run_sync(self._save, repo, state)
                await chain.send(tx.raw)
            await confirmed(chain, entry["signature"], self.commitment, "membership memo")
            entry.update(status="anchored", error=None, next_try_ms=0)
            self.counts["memos"] += 1
        except FlairError as exc:
            entry["attempts"] += 1
            backoff = min(MAX_BACKOFF_S, 2 ** entry["attempts"])
            entry.update(status="retrying", error=str(exc), next_try_ms=now_ms() + backoff * 1000)
            log.warning("writing membership change %d of %s on chain failed (attempt %d, next in %d s): %s",
                        change.seq, short(repo.id), entry["attempts"], backoff, exc)
        await trio.to_thread.run_sync(self._save, repo, state)

    # -- what a person sees --------------------------------------------------------------------------------

    async def describe(self, repo: Repository) -> dict[str, Any]:
        """The repository's owner and token, whether the owner holds it on chain now, the handovers, and the
        memos of the changes this node signed, with explorer links."""
        from ..protocol.anchoring.chain import explorer_url

        membership = await trio.to_thread.run_sync(repo.members.current)
        changes = await trio.to_thread.run_sync(repo.members.changes)
        state = await trio.to_thread.run_sync(self._load, repo)
        shown = ownership_json(membership, changes, self.cluster)
        if membership.token is not None:
            try:
                shown["owner_holds_token"] = await self.chain().holds(membership.owner, membership.token.mint)
            except FlairError as exc:
                shown["owner_holds_token"], shown["chain_error"] = None, str(exc)
            shown["explorer"] = {"mint": explorer_url(self.cluster, address=membership.token.mint)}
            for handed in shown["handovers"]:
                handed["explorer"] = explorer_url(self.cluster, tx=handed["transaction"])
        shown["memos"] = [{**entry, "change": change_id, "explorer": explorer_url(self.cluster, tx=entry["signature"])
                           if entry.get("signature") else None}
                          for change_id, entry in sorted(state.get("memos", {}).items(), key=lambda i: i[1]["seq"])]
        return shown

    # -- state ---------------------------------------------------------------------------------------------

    def _token_metadata(self, repo: Repository) -> tuple[str, str]:
        """The token's metadata JSON (Metaplex's standard) stored as a UnixFS file: its URI and CID."""
        from ..protocol.anchoring import metadata_json
        from ..protocol.anchoring.ownership import repo_token_name

        document = metadata_json({
            "name": repo_token_name(repo.id), "symbol": "FLAIR",
            "description": f"Ownership of Flair repository {repo.id}: whoever holds this token owns the repository.",
            "attributes": [{"trait_type": "repository", "value": repo.id}],  # public: never the name
        })
        if len(document) > MAX_METADATA_BYTES:
            raise InvalidInput(f"the token metadata of {short(repo.id)} is larger than {MAX_METADATA_BYTES} bytes")
        cid = unixfs.add(repo.blocks, document)
        return f"ipfs://{cid}", cid

    def _path(self, repo: Repository) -> Path:
        return self.state_dir / f"{repo.id}.json"

    def _load(self, repo: Repository) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self._path(repo).read_text())
        except (OSError, ValueError):
            return {}
        return state

    def _save(self, repo: Repository, state: dict[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path(repo), json.dumps(state, sort_keys=True).encode())

    def _metadata_roots(self) -> list[tuple[str, int]]:
        roots = []
        for path in self.state_dir.glob("*.json") if self.state_dir.exists() else []:
            try:
                cid = json.loads(path.read_text()).get("token", {}).get("metadata")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(cid, str):
                roots.append((cid, MAX_METADATA_BYTES))
        return roots
