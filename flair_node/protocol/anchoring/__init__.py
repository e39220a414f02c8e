"""Anchoring merged commits on Solana: pure builders of the transaction, and readers of what it leaves on chain.

A round's aggregator anchors its merged commit with one transaction that mints a one-of-one Token-2022 NFT
for the commit (metadata on the mint itself, mint authority revoked) and writes an SPL Memo naming the
repository, branch, round, commit and proof. Anyone can then audit the branch's history in a chain explorer,
and any node can check an anchor from RPC data alone.

- ``memo``: the anchor record and its one canonical memo spelling, parsed back strictly.
- ``token2022``: the Token-2022, token-metadata and associated-token-account instructions, encoded from their
  specifications, and parsers of mint and token account data.
- ``commit_nft``: the NFT transaction, the deterministic mint key that makes retries safe, the metadata JSON
  for IPFS, and the check of a minted NFT against its record.

Nothing here talks to a network or reads a file: the RPC client sends what these functions build.
"""

from .commit_nft import MAX_TRANSACTION_BYTES as MAX_TRANSACTION_BYTES
from .commit_nft import MAX_URI_BYTES as MAX_URI_BYTES
from .commit_nft import NFT_SYMBOL as NFT_SYMBOL
from .commit_nft import commit_mint as commit_mint
from .commit_nft import commit_nft_fields as commit_nft_fields
from .commit_nft import commit_nft_instructions as commit_nft_instructions
from .commit_nft import commit_nft_metadata as commit_nft_metadata
from .commit_nft import commit_nft_mint_size as commit_nft_mint_size
from .commit_nft import commit_nft_name as commit_nft_name
from .commit_nft import commit_nft_transaction as commit_nft_transaction
from .commit_nft import metadata_json as metadata_json
from .commit_nft import verify_commit_nft as verify_commit_nft
from .memo import MAX_ROUND as MAX_ROUND
from .memo import MEMO_PROGRAM_ID as MEMO_PROGRAM_ID
from .memo import AnchorRecord as AnchorRecord
from .memo import anchor_memo as anchor_memo
from .memo import memo_instruction as memo_instruction
from .memo import parse_anchor_memo as parse_anchor_memo
from .token2022 import ASSOCIATED_TOKEN_PROGRAM_ID as ASSOCIATED_TOKEN_PROGRAM_ID
from .token2022 import TOKEN_2022_PROGRAM_ID as TOKEN_2022_PROGRAM_ID
from .token2022 import MetadataPointer as MetadataPointer
from .token2022 import MintAccount as MintAccount
from .token2022 import TokenAccount as TokenAccount
from .token2022 import TokenMetadata as TokenMetadata
from .token2022 import associated_token_address as associated_token_address
from .token2022 import parse_mint as parse_mint
from .token2022 import parse_token_account as parse_token_account

