"""What the chain holds, checked in Flair's types: is the account at a mint the NFT or token it should be?

The daemon's chain services read a mint's account with ``Chain.account`` (its owner program and data, as an RPC
node reports them) and ask here whether it is what a record says. Each check hands the account and the addresses,
as solders' keys, to the verifier of the builder that mints that kind of token (``verify_commit_nft``,
``verify_contribution_nft``, ``verify_repo_token``), which raises ``IntegrityError`` saying what differs. An
address that is not one is ``InvalidInput``.
"""

from __future__ import annotations

from ...core.ids import CommitId, RepoId
from .chain import Account, solana_key
from .commit_nft import verify_commit_nft
from .contribution import verify_contribution_nft
from .memo import AnchorRecord
from .ownership import verify_repo_token


def check_commit_nft(account: Account, *, mint: str, record: AnchorRecord, aggregator: str) -> None:
    """Check that ``account``, found at ``mint``, is ``record``'s commit NFT minted by ``aggregator`` (a base58
    key): one token whose authorities are gone and whose metadata names the record (``verify_commit_nft``)."""
    verify_commit_nft(mint=solana_key(mint), owner=solana_key(account.owner), data=account.data, record=record,
                      aggregator=solana_key(aggregator))


def check_contribution_nft(account: Account, *, mint: str, record: AnchorRecord, contribution: CommitId) -> None:
    """Check that ``account``, found at ``mint``, is the NFT of ``contribution`` merged by ``record``'s commit,
    whose metadata can never change (``verify_contribution_nft``). Who holds it is ``Chain.holds``'s question."""
    verify_contribution_nft(mint=solana_key(mint), owner=solana_key(account.owner), data=account.data, record=record,
                            contribution=contribution)


def check_repo_token(account: Account, *, mint: str, repo: RepoId, name: str) -> None:
    """Check that ``account``, found at ``mint``, is the ownership token of repository ``repo`` named ``name``,
    whose metadata can never change (``verify_repo_token``). Who holds it is ``Chain.holds``'s question."""
    verify_repo_token(mint=solana_key(mint), owner=solana_key(account.owner), data=account.data, repo=repo, name=name)
