"""A key as a Solana wallet: the transactions the daemon's chain services send, built and signed here.

Anchors and NFTs are signed, paid for and held by the node's wallet in their repository (``core.identity.wallet``,
derived from the member key's secret); the ownership token and the registry's transactions by the member key
itself, since they publish who owns and who is a member. A ``Wallet`` holds such an ``Identity`` and turns it
into solders' keypair only inside this package: the daemon's
services give it Flair's values (anchor records, repository and commit ids, base58 keys, metadata URIs) and get
back an ``Address`` or a ``SignedTransaction``. A service saves the transaction's signature before it sends the
bytes, so that after a crash it knows which transaction to look for instead of sending another.

Each builder asks the cluster for what its transaction needs (the rent of the mint's final size, a recent
blockhash) and leaves the building to this package's builders (``commit_nft``, ``contribution``, ``ownership``,
``memo``), which check what they build. A mint's key is derived from the node's secret and the ids the mint is for
(``commit_mint`` and friends): its address is known before anything is sent, and a retry aims at the same mint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.transaction import Transaction

from ...core.errors import InvalidInput
from ...core.identity import Identity
from ...core.ids import CommitId, RepoId
from .chain import Address, Chain, solana_key
from .commit_nft import commit_mint, commit_nft_mint_size, commit_nft_transaction
from .contribution import contribution_mint, contribution_nft_mint_size, contribution_nft_transaction
from .memo import AnchorRecord, memo_instruction
from .ownership import handover_transaction, repo_token_mint, repo_token_mint_size, repo_token_transaction


@dataclass(frozen=True)
class SignedTransaction:
    """A transaction signed and ready to send: its ``signature`` (the first one, the transaction's id on chain, as
    ``Chain.status`` takes it) and its serialized bytes, ``raw`` (as ``Chain.send`` takes them)."""

    signature: str
    raw: bytes = field(repr=False)


def rent_of(size: int, lamports: int) -> Callable[[int], int]:
    """The ``rent`` a transaction builder takes, knowing the one account size it asks for (its lamports from
    ``getMinimumBalanceForRentExemption``); any other size is a mistake."""
    def rent(wanted: int) -> int:
        if wanted != size:
            raise InvalidInput(f"the transaction asked for the rent of an unexpected size ({wanted} bytes)")
        return lamports
    return rent


def _signed(transaction: Transaction) -> SignedTransaction:
    return SignedTransaction(str(transaction.signatures[0]), bytes(transaction))


class Wallet:
    """``identity`` as the Solana wallet that signs and pays for transactions. Its ``repr`` shows the address,
    never the secret."""

    def __init__(self, identity: Identity) -> None:
        self._identity = identity

    def __repr__(self) -> str:
        return f"Wallet({self.address})"

    @property
    def address(self) -> Address:
        """The wallet's address: its key's public half."""
        return Address(self._identity.public_key)

    def _keypair(self) -> Keypair:
        return Keypair.from_bytes(self._identity.keypair_bytes())

    def _seed(self) -> bytes:
        """The secret the mints' keys are derived from: the keypair's first 32 bytes."""
        return self._identity.keypair_bytes()[:32]

    # -- the mints this wallet derives ---------------------------------------------------------------------

    def commit_mint(self, merge: CommitId) -> Address:
        """The mint of the NFT this wallet mints for round merge ``merge`` (``commit_nft.commit_mint``)."""
        return Address(str(commit_mint(self._seed(), merge).pubkey()))

    def contribution_mint(self, merge: CommitId, contribution: CommitId) -> Address:
        """The mint of the NFT this wallet mints for ``contribution``, merged by ``merge``
        (``contribution.contribution_mint``)."""
        return Address(str(contribution_mint(self._seed(), merge, contribution).pubkey()))

    def repo_token_mint(self, repo: RepoId) -> Address:
        """The mint of repository ``repo``'s ownership token, minted by this wallet (``ownership.repo_token_mint``)."""
        return Address(str(repo_token_mint(self._seed(), repo).pubkey()))

    # -- the transactions it signs -------------------------------------------------------------------------

    async def commit_nft(self, chain: Chain, record: AnchorRecord, uri: str) -> SignedTransaction:
        """The transaction that mints ``record``'s commit NFT (its metadata JSON at ``uri``) to this wallet at
        ``commit_mint(record.commit)`` and writes its anchor memo (``commit_nft.commit_nft_transaction``)."""
        size = commit_nft_mint_size(record, uri)
        rent = await chain.rent(size)
        blockhash = await chain.latest_blockhash()
        return _signed(commit_nft_transaction(payer=self._keypair(), mint=commit_mint(self._seed(), record.commit),
                                              record=record, uri=uri, rent=rent_of(size, rent), blockhash=blockhash))

    async def contribution_nft(self, chain: Chain, record: AnchorRecord, contribution: CommitId, contributor: str,
                               uri: str) -> SignedTransaction:
        """The transaction that mints the NFT of ``contribution`` (merged by ``record``'s commit) into the token
        account of ``contributor`` (a base58 key, who signs nothing) at ``contribution_mint(record.commit,
        contribution)``, all paid by this wallet (``contribution.contribution_nft_transaction``)."""
        size = contribution_nft_mint_size(record, contribution, uri)
        rent = await chain.rent(size)
        return _signed(contribution_nft_transaction(
            payer=self._keypair(), mint=contribution_mint(self._seed(), record.commit, contribution), record=record,
            contributor=solana_key(contributor), contribution=contribution, uri=uri,
            blockhash=await chain.latest_blockhash(), rent=rent_of(size, rent)))

    async def repo_token(self, chain: Chain, repo: RepoId, name: str, uri: str) -> SignedTransaction:
        """The transaction that mints repository ``repo``'s ownership token (``name`` in its metadata, the metadata
        JSON at ``uri``) to this wallet at ``repo_token_mint(repo)`` (``ownership.repo_token_transaction``)."""
        size = repo_token_mint_size(repo, name, uri)
        rent = await chain.rent(size)
        return _signed(repo_token_transaction(payer=self._keypair(), mint=repo_token_mint(self._seed(), repo),
                                              repo=repo, name=name, uri=uri, rent=rent_of(size, rent),
                                              blockhash=await chain.latest_blockhash()))

    async def handover(self, chain: Chain, repo: RepoId, mint: str, to: str) -> SignedTransaction:
        """The transaction that moves repository ``repo``'s ownership token ``mint`` from this wallet to ``to`` (a
        base58 key) and writes the handover memo (``ownership.handover_transaction``)."""
        return _signed(handover_transaction(holder=self._keypair(), mint=solana_key(mint), to=solana_key(to),
                                            repo=repo, blockhash=await chain.latest_blockhash()))

    async def memo(self, chain: Chain, memo: bytes) -> SignedTransaction:
        """The transaction that writes ``memo`` with SPL Memo, signed by this wallet (``memo.memo_instruction``)."""
        payer = self._keypair()
        return _signed(Transaction.new_signed_with_payer([memo_instruction(memo, payer.pubkey())], payer.pubkey(),
                                                         [payer], await chain.latest_blockhash()))

    async def transaction(self, chain: Chain, instructions: Sequence[Instruction]) -> SignedTransaction:
        """The transaction of ``instructions`` (built by this package, such as ``RegistryProgram``'s), paid and signed
        by this wallet alone."""
        payer = self._keypair()
        return _signed(Transaction.new_signed_with_payer(list(instructions), payer.pubkey(), [payer],
                                                         await chain.latest_blockhash()))
