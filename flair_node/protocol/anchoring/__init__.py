"""Anchoring merged commits on Solana: pure builders of the transaction, and readers of what it leaves on chain.

A round's aggregator anchors its merged commit with one transaction that mints a one-of-one Token-2022 NFT
for the commit (metadata on the mint itself, mint authority revoked) and writes an SPL Memo naming the
repository, branch, round, commit and proof. Anyone can then audit the branch's history in a chain explorer,
and any node can check an anchor from RPC data alone. The same kind of NFT, minted once per repository, is the
repository's ownership token: whoever holds it owns the repository, and moving it hands the repository over.

- ``memo``: the anchor record and its one canonical memo spelling, parsed back strictly; the ownership token's
  memos (minting, handover, membership change), each with one spelling and a strict parser.
- ``token2022``: the Token-2022, token-metadata and associated-token-account instructions, encoded from their
  specifications, and parsers of mint and token account data.
- ``nft``: the one-of-one NFT every Flair token is (its instructions, the signing within a packet, the check
  of a minted one, and whether an account holds it).
- ``commit_nft``: the NFT transaction, the deterministic mint key that makes retries safe, the metadata JSON
  for IPFS, and the check of a minted NFT against its record.
- ``ownership``: the repository's ownership token (its minting and check) and the handover that moves it.
- ``contribution``: the optional NFT a round's aggregator mints to each contributor of the merge.
- ``chain`` (not re-exported here): the one module that talks to a cluster, over solana-py's RPC client; the
  ``Address`` type and ``parse_address``; ``map_exceptions``, the one place where what solana-py, httpx and
  solders raise becomes Flair's errors.
- ``registry``: the client of ``flair_registry``, Flair's own program (``anchor_program/``): its addresses,
  instructions built with anchorpy's coder from the program's IDL (the one file read here), and its accounts.

The modules above speak solders' types (``Pubkey``, ``Keypair``, ``Instruction``). The rest of Flair speaks its own,
through three adapters, and never imports solders, solana-py or anchorpy (an import-linter contract in
``pyproject.toml`` keeps it so):

- ``wallet``: a node's ``Identity`` as a Solana wallet: the mints it derives, as addresses, and the transactions
  its services send (NFTs, tokens, handovers, memos), built and signed, as a ``SignedTransaction``.
- ``checks``: whether a mint's account, as ``Chain.account`` reads it, is the NFT or token a record says.
- ``registry_program`` (not re-exported here): one deployment of ``flair_registry``, its addresses and
  instructions with ids in hex and keys in base58.

Nothing here talks to a network or reads a file except ``chain`` and ``registry``'s IDL: the RPC client sends
what these functions build.
"""

from .checks import check_commit_nft as check_commit_nft
from .checks import check_contribution_nft as check_contribution_nft
from .checks import check_repo_token as check_repo_token
from .commit_nft import commit_mint as commit_mint
from .commit_nft import commit_nft_fields as commit_nft_fields
from .commit_nft import commit_nft_instructions as commit_nft_instructions
from .commit_nft import commit_nft_metadata as commit_nft_metadata
from .commit_nft import commit_nft_mint_size as commit_nft_mint_size
from .commit_nft import commit_nft_name as commit_nft_name
from .commit_nft import commit_nft_transaction as commit_nft_transaction
from .commit_nft import metadata_json as metadata_json
from .commit_nft import verify_commit_nft as verify_commit_nft
from .contribution import contribution_mint as contribution_mint
from .contribution import contribution_nft_fields as contribution_nft_fields
from .contribution import contribution_nft_instructions as contribution_nft_instructions
from .contribution import contribution_nft_mint_size as contribution_nft_mint_size
from .contribution import contribution_nft_name as contribution_nft_name
from .contribution import contribution_nft_transaction as contribution_nft_transaction
from .contribution import verify_contribution_nft as verify_contribution_nft
from .memo import MAX_ROUND as MAX_ROUND
from .memo import MAX_SEQ as MAX_SEQ
from .memo import MEMO_PROGRAM_ID as MEMO_PROGRAM_ID
from .memo import AnchorRecord as AnchorRecord
from .memo import anchor_memo as anchor_memo
from .memo import handover_memo as handover_memo
from .memo import membership_memo as membership_memo
from .memo import memo_instruction as memo_instruction
from .memo import ownership_memo as ownership_memo
from .memo import parse_anchor_memo as parse_anchor_memo
from .memo import parse_handover_memo as parse_handover_memo
from .memo import parse_membership_memo as parse_membership_memo
from .memo import parse_ownership_memo as parse_ownership_memo
from .nft import MAX_TRANSACTION_BYTES as MAX_TRANSACTION_BYTES
from .nft import MAX_URI_BYTES as MAX_URI_BYTES
from .nft import NFT_SYMBOL as NFT_SYMBOL
from .nft import holds_one as holds_one
from .nft import one_of_one_instructions as one_of_one_instructions
from .nft import one_of_one_mint_size as one_of_one_mint_size
from .nft import signed_within_packet as signed_within_packet
from .nft import verify_one_of_one as verify_one_of_one
from .ownership import handover_instructions as handover_instructions
from .ownership import handover_transaction as handover_transaction
from .ownership import repo_token_fields as repo_token_fields
from .ownership import repo_token_instructions as repo_token_instructions
from .ownership import repo_token_mint as repo_token_mint
from .ownership import repo_token_mint_size as repo_token_mint_size
from .ownership import repo_token_name as repo_token_name
from .ownership import repo_token_transaction as repo_token_transaction
from .ownership import verify_repo_token as verify_repo_token
from .token2022 import ASSOCIATED_TOKEN_PROGRAM_ID as ASSOCIATED_TOKEN_PROGRAM_ID
from .token2022 import TOKEN_2022_PROGRAM_ID as TOKEN_2022_PROGRAM_ID
from .token2022 import MetadataPointer as MetadataPointer
from .token2022 import MintAccount as MintAccount
from .token2022 import TokenAccount as TokenAccount
from .token2022 import TokenMetadata as TokenMetadata
from .token2022 import associated_token_address as associated_token_address
from .token2022 import parse_mint as parse_mint
from .token2022 import parse_token_account as parse_token_account
from .token2022 import transfer_checked as transfer_checked
from .wallet import SignedTransaction as SignedTransaction
from .wallet import Wallet as Wallet
