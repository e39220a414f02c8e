"""Token-2022 instructions and account layouts, encoded by hand from the SPL specifications.

solana-py's ``spl.token`` knows no Token-2022 extensions, so the few instructions Flair's NFTs need are written
here, each from the program's published layout:

- ``InitializeMint2`` (20): ``[20][decimals u8][mint authority 32][freeze authority: 0 | 1 + 32]``.
- ``MintTo`` (7): ``[7][amount u64 LE]``; ``SetAuthority`` (6): ``[6][authority type u8][new: 0 | 1 + 32]``.
- ``TransferChecked`` (12): ``[12][amount u64 LE][decimals u8]``; accounts: source (writable), mint, destination
  (writable), the source's owner (signer). The program refuses it unless mint and decimals match the source's.
- ``MetadataPointerExtension`` (39), sub-instruction ``Initialize`` (0): ``[39][0][authority 32][address 32]``,
  each an ``OptionalNonZeroPubkey`` (32 zero bytes mean none). It must come before ``InitializeMint2``.
- The SPL token-metadata interface, which Token-2022 implements on the mint itself: instructions open with the
  first 8 bytes of ``sha256("spl_token_metadata_interface:<name>")``, then borsh (strings are a u32 LE length
  and UTF-8). ``Initialize`` carries name, symbol and URI; ``UpdateField`` a field (enum: Name, Symbol, Uri,
  Key(string)) and a value; ``UpdateAuthority`` the new update authority as an ``OptionalNonZeroPubkey`` (32
  zero bytes revoke it: the metadata can never change again). Token-2022 grows the mint account for them, but
  only the lamports the account already holds pay its rent: the creator funds the final size up front
  (``mint_space`` and ``token_metadata_size``).
- The associated token account program's ``CreateIdempotent`` (1), which succeeds when the account exists.

A mint with extensions is laid out as the 82-byte base mint, zeros up to byte 165, an account-type byte (1 for
a mint), then TLV entries (type u16 LE, length u16 LE, value). ``parse_mint`` and ``parse_token_account`` read
account data as an RPC node returns it, bounded and strict: anything malformed raises ``IntegrityError``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from enum import IntEnum

from solders.instruction import AccountMeta, Instruction
from solders.pubkey import Pubkey

from ...core.errors import IntegrityError, InvalidInput

TOKEN_2022_PROGRAM_ID = Pubkey.from_string("TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb")
ASSOCIATED_TOKEN_PROGRAM_ID = Pubkey.from_string("ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL")
SYSTEM_PROGRAM_ID = Pubkey.from_string("11111111111111111111111111111111")

MINT_BASE_SIZE = 82
ACCOUNT_BASE_SIZE = 165  # a token account; mints with extensions are padded to it so the two never collide
_TLV_START = ACCOUNT_BASE_SIZE + 1  # after the account-type byte
_TLV_HEADER = 4
ACCOUNT_TYPE_MINT = 1
ACCOUNT_TYPE_TOKEN = 2
#: Solana's largest account; nothing longer is parsed.
MAX_ACCOUNT_BYTES = 10 * 1024 * 1024


class ExtensionType(IntEnum):
    """The Token-2022 extensions Flair writes or reads (the program's ``ExtensionType`` numbers)."""

    IMMUTABLE_OWNER = 7
    METADATA_POINTER = 18
    TOKEN_METADATA = 19


class AuthorityType(IntEnum):
    MINT_TOKENS = 0
    FREEZE_ACCOUNT = 1


METADATA_POINTER_SIZE = 64  # authority and metadata address


def _interface_discriminator(name: str) -> bytes:
    return hashlib.sha256(f"spl_token_metadata_interface:{name}".encode()).digest()[:8]


METADATA_INITIALIZE = _interface_discriminator("initialize_account")
METADATA_UPDATE_FIELD = _interface_discriminator("updating_field")
METADATA_UPDATE_AUTHORITY = _interface_discriminator("update_the_authority")


class MetadataField(IntEnum):
    """The borsh variant of the token-metadata ``Field`` enum; ``KEY`` is followed by the key string."""

    NAME = 0
    SYMBOL = 1
    URI = 2
    KEY = 3


# -- encodings -------------------------------------------------------------------------------------------

def _borsh_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<I", len(raw)) + raw


def _coption(key: Pubkey | None) -> bytes:
    """An instruction's ``COption<Pubkey>``: a tag byte, then the key when present."""
    return b"\x00" if key is None else b"\x01" + bytes(key)


def _optional_nonzero(key: Pubkey | None) -> bytes:
    return bytes(32) if key is None else bytes(key)


def mint_space(extensions: dict[ExtensionType, int]) -> int:
    """Bytes of a mint carrying fixed-size ``extensions`` (type -> value length): what ``create_account`` asks."""
    return _TLV_START + sum(_TLV_HEADER + length for length in extensions.values())


def token_metadata_size(name: str, symbol: str, uri: str, additional: tuple[tuple[str, str], ...] = ()) -> int:
    """Bytes the ``TokenMetadata`` TLV entry (header included) takes once Token-2022 has written it."""
    value = 32 + 32 + sum(4 + len(text.encode("utf-8")) for text in (name, symbol, uri)) + 4
    value += sum(8 + len(key.encode("utf-8")) + len(item.encode("utf-8")) for key, item in additional)
    return _TLV_HEADER + value


# -- instructions ------------------------------------------------------------------------------------------

def initialize_metadata_pointer(mint: Pubkey, authority: Pubkey | None, metadata_address: Pubkey) -> Instruction:
    """Point ``mint``'s metadata at ``metadata_address`` (the mint itself for on-mint metadata); ``authority``
    may later move the pointer, ``None`` makes it permanent. Comes before ``initialize_mint2``."""
    data = bytes([39, 0]) + _optional_nonzero(authority) + bytes(metadata_address)
    return Instruction(TOKEN_2022_PROGRAM_ID, data, [AccountMeta(mint, is_signer=False, is_writable=True)])


def initialize_mint2(mint: Pubkey, decimals: int, mint_authority: Pubkey,
                     freeze_authority: Pubkey | None = None) -> Instruction:
    if not 0 <= decimals <= 255:
        raise InvalidInput(f"decimals {decimals} is not a u8")
    data = bytes([20, decimals]) + bytes(mint_authority) + _coption(freeze_authority)
    return Instruction(TOKEN_2022_PROGRAM_ID, data, [AccountMeta(mint, is_signer=False, is_writable=True)])


def mint_to(mint: Pubkey, destination: Pubkey, authority: Pubkey, amount: int) -> Instruction:
    if not 0 < amount < 1 << 64:
        raise InvalidInput(f"amount {amount} is not a positive u64")
    return Instruction(TOKEN_2022_PROGRAM_ID, bytes([7]) + struct.pack("<Q", amount), [
        AccountMeta(mint, is_signer=False, is_writable=True),
        AccountMeta(destination, is_signer=False, is_writable=True),
        AccountMeta(authority, is_signer=True, is_writable=False),
    ])


def transfer_checked(source: Pubkey, mint: Pubkey, destination: Pubkey, authority: Pubkey, amount: int,
                     decimals: int) -> Instruction:
    """Move ``amount`` raw units of ``mint`` from token account ``source`` to token account ``destination``;
    ``authority`` (the source's owner) signs."""
    if not 0 < amount < 1 << 64:
        raise InvalidInput(f"amount {amount} is not a positive u64")
    if not 0 <= decimals <= 255:
        raise InvalidInput(f"decimals {decimals} is not a u8")
    return Instruction(TOKEN_2022_PROGRAM_ID, bytes([12]) + struct.pack("<QB", amount, decimals), [
        AccountMeta(source, is_signer=False, is_writable=True),
        AccountMeta(mint, is_signer=False, is_writable=False),
        AccountMeta(destination, is_signer=False, is_writable=True),
        AccountMeta(authority, is_signer=True, is_writable=False),
    ])


def set_authority(account: Pubkey, current: Pubkey, authority_type: AuthorityType,
                  new: Pubkey | None) -> Instruction:
    """Hand ``authority_type`` over ``account`` to ``new``; ``None`` revokes it for good."""
    data = bytes([6, int(authority_type)]) + _coption(new)
    return Instruction(TOKEN_2022_PROGRAM_ID, data, [
        AccountMeta(account, is_signer=False, is_writable=True),
        AccountMeta(current, is_signer=True, is_writable=False),
    ])


def initialize_token_metadata(mint: Pubkey, update_authority: Pubkey, mint_authority: Pubkey,
                              name: str, symbol: str, uri: str) -> Instruction:
    """Write name, symbol and URI into ``mint``'s own ``TokenMetadata`` entry; the mint authority signs, the
    update authority need not. The mint must already point its metadata at itself and be initialized."""
    data = METADATA_INITIALIZE + _borsh_string(name) + _borsh_string(symbol) + _borsh_string(uri)
    return Instruction(TOKEN_2022_PROGRAM_ID, data, [
        AccountMeta(mint, is_signer=False, is_writable=True),  # the metadata account: the mint itself
        AccountMeta(update_authority, is_signer=False, is_writable=False),
        AccountMeta(mint, is_signer=False, is_writable=False),
        AccountMeta(mint_authority, is_signer=True, is_writable=False),
    ])


def update_token_metadata_field(mint: Pubkey, update_authority: Pubkey, field: MetadataField | str,
                                value: str) -> Instruction:
    """Set a base field (``MetadataField``) or an additional key (a string) of ``mint``'s metadata."""
    if isinstance(field, MetadataField):
        if field is MetadataField.KEY:
            raise InvalidInput("give an additional field as its key string, not MetadataField.KEY")
        encoded = bytes([int(field)])
    else:
        encoded = bytes([MetadataField.KEY]) + _borsh_string(field)
    return Instruction(TOKEN_2022_PROGRAM_ID, METADATA_UPDATE_FIELD + encoded + _borsh_string(value), [
        AccountMeta(mint, is_signer=False, is_writable=True),
        AccountMeta(update_authority, is_signer=True, is_writable=False),
    ])


def update_token_metadata_authority(metadata: Pubkey, current: Pubkey, new: Pubkey | None) -> Instruction:
    """Hand the update authority of the token metadata at ``metadata`` (the mint itself for on-mint metadata)
    from ``current``, who signs, to ``new``; ``None`` revokes it for good, freezing name, symbol, URI and
    fields."""
    return Instruction(TOKEN_2022_PROGRAM_ID, METADATA_UPDATE_AUTHORITY + _optional_nonzero(new), [
        AccountMeta(metadata, is_signer=False, is_writable=True),
        AccountMeta(current, is_signer=True, is_writable=False),
    ])


def associated_token_address(owner: Pubkey, mint: Pubkey) -> Pubkey:
    """The Token-2022 associated token account of ``owner`` for ``mint``."""
    seeds = [bytes(owner), bytes(TOKEN_2022_PROGRAM_ID), bytes(mint)]
    return Pubkey.find_program_address(seeds, ASSOCIATED_TOKEN_PROGRAM_ID)[0]


def create_associated_token_account_idempotent(payer: Pubkey, owner: Pubkey, mint: Pubkey) -> Instruction:
    """Create ``owner``'s Token-2022 account for ``mint``, paid by ``payer``; a no-op when it exists."""
    return Instruction(ASSOCIATED_TOKEN_PROGRAM_ID, bytes([1]), [
        AccountMeta(payer, is_signer=True, is_writable=True),
        AccountMeta(associated_token_address(owner, mint), is_signer=False, is_writable=True),
        AccountMeta(owner, is_signer=False, is_writable=False),
        AccountMeta(mint, is_signer=False, is_writable=False),
        AccountMeta(SYSTEM_PROGRAM_ID, is_signer=False, is_writable=False),
        AccountMeta(TOKEN_2022_PROGRAM_ID, is_signer=False, is_writable=False),
    ])


# -- account data ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MetadataPointer:
    authority: Pubkey | None
    metadata_address: Pubkey | None


@dataclass(frozen=True)
class TokenMetadata:
    update_authority: Pubkey | None
    mint: Pubkey
    name: str
    symbol: str
    uri: str
    additional: tuple[tuple[str, str], ...]  # in the order the fields were first set

    def field(self, key: str) -> str | None:
        return next((value for name, value in self.additional if name == key), None)


@dataclass(frozen=True)
class MintAccount:
    mint_authority: Pubkey | None  # None: revoked, the supply can never grow
    supply: int
    decimals: int
    freeze_authority: Pubkey | None
    extensions: tuple[int, ...]  # extension type numbers, in account order
    metadata_pointer: MetadataPointer | None
    metadata: TokenMetadata | None


@dataclass(frozen=True)
class TokenAccount:
    mint: Pubkey
    owner: Pubkey
    amount: int
    frozen: bool


class _Reader:
    """Bounded reads over account bytes; running off the end is an ``IntegrityError``."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise IntegrityError(f"{self.what} ends early (wanted {n} bytes at offset {self.pos})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def string(self) -> str:
        try:
            return self.take(self.u32()).decode("utf-8")
        except UnicodeDecodeError:
            raise IntegrityError(f"{self.what} holds a string that is not UTF-8") from None

    def optional_nonzero(self) -> Pubkey | None:
        raw = self.take(32)
        return None if raw == bytes(32) else Pubkey.from_bytes(raw)

    def done(self) -> None:
        if self.pos != len(self.data):
            raise IntegrityError(f"{self.what} has {len(self.data) - self.pos} unexpected trailing bytes")


def _state_coption(raw: bytes, what: str) -> Pubkey | None:
    """An account's ``COption<Pubkey>``: a u32 tag (0 or 1), then 32 bytes (left as they were when the tag is 0:
    a revoked authority keeps its old key's bytes)."""
    tag = struct.unpack("<I", raw[:4])[0]
    if tag == 0:
        return None
    if tag == 1:
        return Pubkey.from_bytes(raw[4:36])
    raise IntegrityError(f"{what} has a malformed optional key (tag {tag})")


def _extensions(data: bytes, account_type: int, what: str) -> dict[int, bytes]:
    """The TLV entries after the base state, keyed by type; duplicates and overruns are refused."""
    if data[ACCOUNT_BASE_SIZE] != account_type:
        raise IntegrityError(f"{what} has account type {data[ACCOUNT_BASE_SIZE]}, not {account_type}")
    entries: dict[int, bytes] = {}
    pos = _TLV_START
    while pos + _TLV_HEADER <= len(data):
        kind, length = struct.unpack_from("<HH", data, pos)
        if kind == 0:  # uninitialized: only zeros may follow
            if any(data[pos:]):
                raise IntegrityError(f"{what} has data after its last extension")
            return entries
        if kind in entries:
            raise IntegrityError(f"{what} holds extension {kind} twice")
        end = pos + _TLV_HEADER + length
        if end > len(data):
            raise IntegrityError(f"{what}'s extension {kind} runs past the end of the account")
        entries[kind] = data[pos + _TLV_HEADER:end]
        pos = end
    if pos != len(data):
        raise IntegrityError(f"{what} ends inside an extension header")
    return entries


def _parse_token_metadata(value: bytes) -> TokenMetadata:
    reader = _Reader(value, "token metadata")
    update_authority = reader.optional_nonzero()
    mint = Pubkey.from_bytes(reader.take(32))
    name, symbol, uri = reader.string(), reader.string(), reader.string()
    count = reader.u32()
    if count * 8 > len(value) - reader.pos:
        raise IntegrityError(f"token metadata claims {count} additional fields, more than its bytes can hold")
    additional = tuple((reader.string(), reader.string()) for _ in range(count))
    reader.done()
    return TokenMetadata(update_authority, mint, name, symbol, uri, additional)


def parse_mint(data: bytes) -> MintAccount:
    """A Token-2022 (or SPL Token) mint from its account data. The caller checks who owns the account."""
    what = "mint account"
    if len(data) > MAX_ACCOUNT_BYTES:
        raise IntegrityError(f"{what} of {len(data)} bytes is larger than Solana allows")
    if len(data) < MINT_BASE_SIZE or MINT_BASE_SIZE < len(data) <= ACCOUNT_BASE_SIZE:
        raise IntegrityError(f"{what} of {len(data)} bytes is not a mint's size")
    mint_authority = _state_coption(data[0:36], what)
    supply, decimals, initialized = struct.unpack_from("<QBB", data, 36)
    freeze_authority = _state_coption(data[46:82], what)
    if initialized != 1:
        raise IntegrityError(f"{what} is not initialized")
    entries: dict[int, bytes] = {}
    if len(data) > MINT_BASE_SIZE:
        if any(data[MINT_BASE_SIZE:ACCOUNT_BASE_SIZE]):
            raise IntegrityError(f"{what} has non-zero padding")
        entries = _extensions(data, ACCOUNT_TYPE_MINT, what)
    pointer = None
    if (raw := entries.get(ExtensionType.METADATA_POINTER)) is not None:
        if len(raw) != METADATA_POINTER_SIZE:
            raise IntegrityError(f"{what}'s metadata pointer is {len(raw)} bytes, not {METADATA_POINTER_SIZE}")
        reader = _Reader(raw, "metadata pointer")
        pointer = MetadataPointer(reader.optional_nonzero(), reader.optional_nonzero())
    metadata = None
    if (raw := entries.get(ExtensionType.TOKEN_METADATA)) is not None:
        metadata = _parse_token_metadata(raw)
    return MintAccount(mint_authority, supply, decimals, freeze_authority, tuple(entries), pointer, metadata)


def parse_token_account(data: bytes) -> TokenAccount:
    """A token account (mint, owner, amount) from its account data."""
    what = "token account"
    if len(data) > MAX_ACCOUNT_BYTES or len(data) < ACCOUNT_BASE_SIZE:
        raise IntegrityError(f"{what} of {len(data)} bytes is not a token account's size")
    if len(data) > ACCOUNT_BASE_SIZE:
        _extensions(data, ACCOUNT_TYPE_TOKEN, what)
    state = data[108]
    if state not in (1, 2):  # initialized, frozen
        raise IntegrityError(f"{what} is not initialized (state {state})")
    return TokenAccount(Pubkey.from_bytes(data[0:32]), Pubkey.from_bytes(data[32:64]),
                        int(struct.unpack_from("<Q", data, 64)[0]), frozen=state == 2)
