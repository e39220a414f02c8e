"""flair_registry, the on-chain repository registry: its IDL read by anchorpy gives the README's bytes, and the
program itself, deployed on a real SVM, does what the README says and refuses the rest with its error codes.

Registry squatting (issue 16, finding 9) is performed here: a stranger who calls ``create_repository`` for someone
else's repository before its owner creates only an account at an address of its own, cannot create (or fund away)
the owner's, and the owner's creation still succeeds."""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from anchorpy.error import _LangErrorCode
from anchorpy.program.context import Context
from anchorpy.program.core import Program
from anchorpy.provider import Provider, Wallet
from solana.rpc.async_api import AsyncClient
from solders.account import Account
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.pubkey import Pubkey
from solders.rent import Rent
from solders.system_program import ID as SYSTEM_PROGRAM_ID
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction
from solders.transaction_metadata import FailedTransactionMetadata, TransactionMetadata
from solders.transaction_status import InstructionErrorCustom, TransactionErrorInstructionError

from flair_node.core.errors import IntegrityError, InvalidInput
from flair_node.protocol.anchoring import registry
from flair_node.protocol.anchoring.registry import (
    ANCHOR_ERRORS,
    BRANCH_SIZE,
    REPOSITORY_SIZE,
    BranchState,
    RepositoryState,
    Role,
    add_member,
    branch_address,
    create_repository,
    decode_branch,
    decode_legacy_owner,
    decode_repository,
    legacy_repository_address,
    record_merge,
    registry_error,
    remove_member,
    repository_address,
    set_owner,
    set_policy,
)

from .conftest import REPO

PROGRAM_ID = Keypair.from_seed(b"flair-registry-test-program-id!!").pubkey()
REPO_ID = bytes.fromhex(REPO)
POLICY = hashlib.sha256(b"policy v1").digest()
POLICY_2 = hashlib.sha256(b"policy v2").digest()
C1, C2, C3 = (hashlib.sha256(b"commit %d" % i).digest() for i in (1, 2, 3))
ZERO = bytes(32)
A, B = Keypair.from_seed(bytes([1]) * 32).pubkey(), Keypair.from_seed(bytes([2]) * 32).pubkey()

#: The README's discriminators.
README_INSTRUCTIONS = {"create_repository": "f183cebb0279dffd", "set_policy": "28850c9debca0284",
                       "add_member": "0d747b827ec63922", "remove_member": "ab39e796a7801237",
                       "record_merge": "81b405b854dad24f", "set_owner": "48ca78344d8060c5"}
README_ACCOUNTS = {"Repository": "64825c27facb7eaa", "Branch": "0e3f643219081d05"}
README_ERRORS = {6000: "NotOwner", 6001: "MayNotMoveBranch", 6002: "StaleHead", 6003: "BadRound", 6004: "MembersFull",
                 6005: "NotAMember", 6006: "InvalidRole", 6007: "InvalidBranchName", 6008: "OwnerIsNotAMember",
                 6009: "AlreadyInUse", 6010: "RentUnknown", 6011: "SameOwner", 6012: "InvalidOwner"}


def disc(name: str) -> bytes:
    return bytes.fromhex(README_INSTRUCTIONS[name])


def metas(ix: Instruction) -> list[tuple[Pubkey, bool, bool]]:
    return [(m.pubkey, m.is_signer, m.is_writable) for m in ix.accounts]


def repository_bytes(owner: Pubkey, members: list[tuple[Pubkey, int]], bump: int = 254,
                     policy: bytes = POLICY, genesis: Pubkey | None = None) -> bytes:
    """A Repository account laid out by hand from the README's table (created by ``genesis``, by default the owner)."""
    slots = b"".join(bytes(key) + bytes([role]) for key, role in members) + bytes(33 * (32 - len(members)))
    return (bytes.fromhex(README_ACCOUNTS["Repository"]) + REPO_ID + bytes(genesis or owner) + bytes(owner) + policy
            + bytes([bump]) + bytes([len(members)]) + slots)


def branch_bytes(repository: Pubkey, name: bytes, head: bytes, round: int, merges: int, author: Pubkey) -> bytes:
    return (bytes.fromhex(README_ACCOUNTS["Branch"]) + bytes(repository) + bytes([len(name)])
            + name.ljust(32, b"\0") + head + struct.pack("<QQ", round, merges) + bytes(author) + b"\xfd")


# -- the IDL and the encoding (no program needed) ------------------------------------------------------------

def test_anchorpy_computes_the_readme_discriminators() -> None:
    for name, expected in README_INSTRUCTIONS.items():
        assert registry.instruction_discriminator(name).hex() == expected
        assert hashlib.sha256(f"global:{name}".encode()).digest()[:8].hex() == expected
    for name, expected in README_ACCOUNTS.items():
        assert registry.account_discriminator(name).hex() == expected
        assert hashlib.sha256(f"account:{name}".encode()).digest()[:8].hex() == expected


def test_the_idl_is_anchors_legacy_format() -> None:
    idl = json.loads(registry.IDL_PATH.read_text())
    assert idl["name"] == "flair_registry" and idl["version"]
    assert [ix["name"] for ix in idl["instructions"]] == [
        "createRepository", "setPolicy", "addMember", "removeMember", "recordMerge", "setOwner"]
    assert [(e["code"], e["name"]) for e in idl["errors"]] == list(README_ERRORS.items())
    assert all(e["msg"] for e in idl["errors"])
    parsed = registry.load_idl()
    assert parsed.name == "flair_registry" and [t.name for t in parsed.types] == ["Member"]
    assert [a.name for a in parsed.accounts] == ["Repository", "Branch"]


def test_instructions_are_the_readme_bytes_and_accounts() -> None:
    repo, _ = repository_address(PROGRAM_ID, REPO_ID, A)
    ix = create_repository(PROGRAM_ID, owner=A, repo_id=REPO_ID, policy_hash=POLICY)
    assert ix.program_id == PROGRAM_ID and ix.data == disc("create_repository") + REPO_ID + POLICY
    assert metas(ix) == [(repo, False, True), (A, True, True), (SYSTEM_PROGRAM_ID, False, False)]
    ix = set_policy(PROGRAM_ID, owner=A, repo_id=REPO_ID, policy_hash=POLICY_2)
    assert ix.data == disc("set_policy") + POLICY_2 and metas(ix) == [(repo, False, True), (A, True, False)]
    ix = add_member(PROGRAM_ID, owner=A, repo_id=REPO_ID, member=B, role=Role.MAINTAINER)
    assert ix.data == disc("add_member") + bytes(B) + b"\x02" and metas(ix) == [(repo, False, True), (A, True, False)]
    ix = remove_member(PROGRAM_ID, owner=A, repo_id=REPO_ID, member=B)
    assert ix.data == disc("remove_member") + bytes(B) and metas(ix) == [(repo, False, True), (A, True, False)]
    ix = record_merge(PROGRAM_ID, repo_id=REPO_ID, genesis_owner=A, authority=B, branch="main", previous=C1,
                      commit=C2, round=7)
    assert ix.data == disc("record_merge") + b"\x04\x00\x00\x00main" + C1 + C2 + struct.pack("<Q", 7)
    branch, _ = branch_address(PROGRAM_ID, repo, "main")
    assert metas(ix) == [(repo, False, False), (branch, False, True), (B, True, True),
                         (SYSTEM_PROGRAM_ID, False, False)]
    ix = set_owner(PROGRAM_ID, owner=A, repo_id=REPO_ID, new_owner=B)
    assert ix.data == disc("set_owner") + bytes(B) and metas(ix) == [(repo, False, True), (A, True, False)]
    # after a handover the owner signs for the account its genesis owner created
    ix = set_policy(PROGRAM_ID, owner=B, repo_id=REPO_ID, policy_hash=POLICY, genesis_owner=A)
    assert metas(ix) == [(repo, False, True), (B, True, False)]


def test_the_builders_agree_with_anchorpys_program_namespace() -> None:
    program = Program(registry.load_idl(), PROGRAM_ID, Provider(AsyncClient("http://127.0.0.1:9"), Wallet.dummy()))
    repo, _ = repository_address(PROGRAM_ID, REPO_ID, A)
    branch, _ = branch_address(PROGRAM_ID, repo, "dev")
    owned = {"repository": repo, "owner": A}
    pairs = [
        (program.instruction["create_repository"](REPO_ID, POLICY, ctx=Context(
            accounts={**owned, "system_program": SYSTEM_PROGRAM_ID})),
         create_repository(PROGRAM_ID, owner=A, repo_id=REPO_ID, policy_hash=POLICY)),
        (program.instruction["set_policy"](POLICY, ctx=Context(accounts=owned)),
         set_policy(PROGRAM_ID, owner=A, repo_id=REPO_ID, policy_hash=POLICY)),
        (program.instruction["add_member"](B, 1, ctx=Context(accounts=owned)),
         add_member(PROGRAM_ID, owner=A, repo_id=REPO_ID, member=B, role=1)),
        (program.instruction["remove_member"](B, ctx=Context(accounts=owned)),
         remove_member(PROGRAM_ID, owner=A, repo_id=REPO_ID, member=B)),
        (program.instruction["record_merge"]("dev", C1, C2, 3, ctx=Context(accounts={
            "repository": repo, "branch": branch, "authority": A, "system_program": SYSTEM_PROGRAM_ID})),
         record_merge(PROGRAM_ID, repo_id=REPO_ID, genesis_owner=A, authority=A, branch="dev", previous=C1, commit=C2,
                      round=3)),
        (program.instruction["set_owner"](B, ctx=Context(accounts=owned)),
         set_owner(PROGRAM_ID, owner=A, repo_id=REPO_ID, new_owner=B)),
    ]
    for theirs, ours in pairs:
        assert theirs == ours


def test_addresses_are_the_readme_seeds() -> None:
    repo, bump = repository_address(PROGRAM_ID, REPO_ID, A)
    assert (repo, bump) == Pubkey.find_program_address([b"repository", REPO_ID, bytes(A)], PROGRAM_ID)
    # each genesis owner has its own address for the same id; the id alone was the earlier derivation
    assert repository_address(PROGRAM_ID, REPO_ID, B)[0] != repo
    assert legacy_repository_address(PROGRAM_ID, REPO_ID) == Pubkey.find_program_address(
        [b"repository", REPO_ID], PROGRAM_ID)[0] != repo
    assert branch_address(PROGRAM_ID, repo, "main") == Pubkey.find_program_address(
        [b"branch", bytes(repo), b"main"], PROGRAM_ID)
    assert branch_address(PROGRAM_ID, repo, "é" * 16)[0] != branch_address(PROGRAM_ID, repo, "main")[0]
    assert repository_address(Pubkey.default(), REPO_ID, A)[0] != repo


def test_builders_refuse_bad_input() -> None:
    bad: list[dict[str, object]] = [{"repo_id": REPO_ID[:31]}, {"repo_id": REPO}, {"branch": ""},
                                    {"branch": "x" * 33}, {"branch": "é" * 17}, {"round": 0}, {"round": 2**64},
                                    {"previous": C1[:31]}, {"commit": b""}, {"genesis_owner": str(A)}]
    ok: dict[str, object] = {"repo_id": REPO_ID, "genesis_owner": A, "authority": A, "branch": "main",
                             "previous": C1, "commit": C2, "round": 1}
    for change in bad:
        with pytest.raises(InvalidInput):
            record_merge(PROGRAM_ID, **{**ok, **change})  # type: ignore[arg-type]
    record_merge(PROGRAM_ID, **{**ok, "branch": "é" * 16, "round": 2**64 - 1})  # type: ignore[arg-type]
    for role in (3, -1, 255):
        with pytest.raises(InvalidInput, match="a role is"):
            add_member(PROGRAM_ID, owner=A, repo_id=REPO_ID, member=B, role=role)
    with pytest.raises(InvalidInput, match="32 bytes"):
        create_repository(PROGRAM_ID, owner=A, repo_id=REPO_ID, policy_hash=POLICY[:16])
    with pytest.raises(InvalidInput):
        repository_address(PROGRAM_ID, REPO_ID + b"\0", A)
    with pytest.raises(InvalidInput, match="a genesis owner is a Pubkey"):
        set_policy(PROGRAM_ID, owner=A, repo_id=REPO_ID, policy_hash=POLICY, genesis_owner=str(A))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="all-zero key"):
        set_owner(PROGRAM_ID, owner=A, repo_id=REPO_ID, new_owner=Pubkey.default())
    with pytest.raises(InvalidInput, match="owns the repository already"):
        set_owner(PROGRAM_ID, owner=A, repo_id=REPO_ID, new_owner=A)
    with pytest.raises(InvalidInput, match="a new owner is a Pubkey"):
        set_owner(PROGRAM_ID, owner=A, repo_id=REPO_ID, new_owner=str(B))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        set_owner(PROGRAM_ID, owner=A, repo_id=REPO_ID[:31], new_owner=B)


def test_decoders_read_the_readme_layout() -> None:
    data = repository_bytes(A, [(B, 2), (PROGRAM_ID, 0)], bump=251, genesis=B)
    assert len(data) == REPOSITORY_SIZE == 1194
    state = decode_repository(data)
    assert state == RepositoryState(repo_id=REPO_ID, genesis_owner=str(B), owner=str(A), policy_hash=POLICY,
                                    bump=251, members=((str(B), 2), (str(PROGRAM_ID), 0)))
    assert state.member_count == 2 and state.role_of(B) == 2 and state.role_of(A) is None
    # the earlier layout (no genesis_owner), as a legacy address may still hold it: only its owner is read
    legacy = data[:40] + data[72:]
    assert len(legacy) == 1162 and decode_legacy_owner(legacy) == str(A)
    for bad in (data, legacy[:-1], bytes(8) + legacy[8:]):
        with pytest.raises(IntegrityError, match="earlier layout"):
            decode_legacy_owner(bad)
    repo, _ = repository_address(PROGRAM_ID, REPO_ID, A)
    data = branch_bytes(repo, "é-main".encode(), C1, 12, 3, B)
    assert len(data) == BRANCH_SIZE == 154
    assert decode_branch(data) == BranchState(repository=str(repo), name="é-main", head=C1, round=12, merges=3,
                                              last_author=str(B), bump=0xfd)


def test_decoders_refuse_malformed_accounts() -> None:
    repo = repository_bytes(A, [(B, 1)])
    branch = branch_bytes(A, b"main", C1, 1, 1, B)
    malformed = [
        (decode_repository, branch.ljust(REPOSITORY_SIZE, b"\0"), "not a Repository account"),
        (decode_repository, bytes(REPOSITORY_SIZE), "discriminator"),
        (decode_repository, repo[:-1], "1194 bytes"),
        (decode_repository, repo + b"\0", "1194 bytes"),
        (decode_repository, repo[:137] + b"\x21" + repo[138:], "33 members"),
        (decode_repository, repo[:170] + b"\x03" + repo[171:], "unknown role"),
        (decode_branch, repo[:BRANCH_SIZE], "not a Branch account"),
        (decode_branch, branch[:40] + b"\x00" + branch[41:], "malformed name"),
        (decode_branch, branch[:40] + b"\x21" + branch[41:], "malformed name"),
        (decode_branch, branch[:45] + b"x" + branch[46:], "malformed name"),  # a byte after the name
        (decode_branch, branch[:41] + b"\xff" + branch[42:], "not UTF-8"),
    ]
    for decode, data, message in malformed:
        with pytest.raises(IntegrityError, match=message):
            decode(data)


def test_error_names() -> None:
    for code, name in README_ERRORS.items():
        assert registry_error(code) == name
    # Anchor's framework codes the program uses, named as anchorpy names them.
    for code, name in ANCHOR_ERRORS.items():
        assert registry_error(code) == name == _LangErrorCode(code).name
    assert registry_error(0x1234) == "custom program error 0x1234"


# -- the program on a real SVM -------------------------------------------------------------------------------

@dataclass
class Registry:
    svm: LiteSVM
    payer: Keypair  # a fee payer that is nobody in the repository
    owner: Keypair
    repository: Pubkey

    def send(self, *instructions: Instruction, signers: tuple[Keypair, ...] = (),
             payer: Keypair | None = None) -> TransactionMetadata | FailedTransactionMetadata:
        fee_payer = payer or self.owner
        keys = {k.pubkey(): k for k in (fee_payer, *signers)}
        self.svm.expire_blockhash()  # a resend of the same instructions is a new transaction
        tx = Transaction.new_signed_with_payer(list(instructions), fee_payer.pubkey(), list(keys.values()),
                                               self.svm.latest_blockhash())
        return self.svm.send_transaction(tx)

    def ok(self, *instructions: Instruction, signers: tuple[Keypair, ...] = (), payer: Keypair | None = None) -> None:
        result = self.send(*instructions, signers=signers, payer=payer)
        assert isinstance(result, TransactionMetadata), result

    def refused(self, *instructions: Instruction, signers: tuple[Keypair, ...] = (),
                payer: Keypair | None = None) -> str:
        """The custom error the program refused the transaction with, as ``"<code> <name>"``; nothing changed."""
        before = {key: self.svm.get_account(key) for ix in instructions for key in (m.pubkey for m in ix.accounts)
                  if key != (payer or self.owner).pubkey()}
        result = self.send(*instructions, signers=signers, payer=payer)
        assert isinstance(result, FailedTransactionMetadata), "the transaction should have been refused"
        err = result.err()
        assert isinstance(err, TransactionErrorInstructionError), err
        assert isinstance(err.err, InstructionErrorCustom), err
        code = err.err.code
        logs = result.meta().logs()
        assert f"Program {PROGRAM_ID} failed: custom program error: {code:#x}" in logs, logs
        assert {key: self.svm.get_account(key) for key in before} == before
        return f"{code} {registry_error(code)}"

    def state(self) -> RepositoryState:
        account = self.svm.get_account(self.repository)
        assert account is not None and account.owner == PROGRAM_ID
        return decode_repository(bytes(account.data))

    def branch(self, name: str) -> BranchState | None:
        account = self.svm.get_account(branch_address(PROGRAM_ID, self.repository, name)[0])
        if account is None:
            return None
        assert account.owner == PROGRAM_ID
        return decode_branch(bytes(account.data))

    def add(self, member: Pubkey, role: int) -> None:
        self.ok(add_member(PROGRAM_ID, owner=self.owner.pubkey(), repo_id=REPO_ID, member=member, role=role))

    def merge(self, author: Keypair, previous: bytes, commit: bytes, round: int, branch: str = "main") -> Instruction:
        return record_merge(PROGRAM_ID, repo_id=REPO_ID, genesis_owner=self.owner.pubkey(), authority=author.pubkey(),
                            branch=branch, previous=previous, commit=commit, round=round)


def funded(svm: LiteSVM, seed: int) -> Keypair:
    key = Keypair.from_seed(bytes([seed]) * 32)
    svm.airdrop(key.pubkey(), 10**10)
    return key


def replace_meta(meta: AccountMeta, *, is_signer: bool | None = None, is_writable: bool | None = None) -> AccountMeta:
    return AccountMeta(meta.pubkey, meta.is_signer if is_signer is None else is_signer,
                       meta.is_writable if is_writable is None else is_writable)


def replace_account_data(account: Account, data: bytes) -> Account:
    return Account(account.lamports, data, account.owner, account.executable, account.rent_epoch)


@pytest.fixture
def deployed(svm: LiteSVM, payer: Keypair, registry_so: Path) -> Registry:
    svm.add_program(PROGRAM_ID, registry_so.read_bytes())
    owner = funded(svm, 11)
    return Registry(svm, payer, owner, repository_address(PROGRAM_ID, REPO_ID, owner.pubkey())[0])


@pytest.fixture
def reg(deployed: Registry) -> Registry:
    deployed.ok(create_repository(PROGRAM_ID, owner=deployed.owner.pubkey(), repo_id=REPO_ID, policy_hash=POLICY))
    return deployed


# -- create_repository --

def test_create_repository(deployed: Registry) -> None:
    owner = deployed.owner.pubkey()
    before = deployed.svm.get_balance(owner)
    deployed.ok(create_repository(PROGRAM_ID, owner=owner, repo_id=REPO_ID, policy_hash=POLICY))
    after = deployed.svm.get_balance(owner)
    account = deployed.svm.get_account(deployed.repository)
    assert account is not None and account.owner == PROGRAM_ID and not account.executable
    rent = deployed.svm.minimum_balance_for_rent_exemption(REPOSITORY_SIZE)
    assert len(account.data) == REPOSITORY_SIZE and account.lamports == rent
    assert before is not None and after is not None
    assert before - after == rent + 5000  # the rent and one signature's fee
    state = deployed.state()
    assert state == RepositoryState(repo_id=REPO_ID, genesis_owner=str(owner), owner=str(owner), policy_hash=POLICY,
                                    bump=repository_address(PROGRAM_ID, REPO_ID, owner)[1], members=())


def test_a_repository_is_created_once(reg: Registry) -> None:
    ix = create_repository(PROGRAM_ID, owner=reg.owner.pubkey(), repo_id=REPO_ID, policy_hash=POLICY_2)
    assert reg.refused(ix) == "6009 AlreadyInUse"
    # nor can anyone else create it over the owner's: the address is the owner's, the signature would not be
    other = funded(reg.svm, 12)
    theirs = create_repository(PROGRAM_ID, owner=other.pubkey(), repo_id=REPO_ID, policy_hash=POLICY_2)
    at_owners = Instruction(PROGRAM_ID, theirs.data, [AccountMeta(reg.repository, False, True), *theirs.accounts[1:]])
    assert reg.refused(at_owners, payer=other) == "2006 ConstraintSeeds"
    assert reg.state().owner == str(reg.owner.pubkey()) and reg.state().policy_hash == POLICY


def test_create_refuses_a_rent_it_cannot_compute(deployed: Registry) -> None:
    # The program computes the rent-exempt minimum itself, which is only right for the two-year threshold.
    deployed.svm.set_rent(Rent(lamports_per_byte_year=3480, exemption_threshold=1.5, burn_percent=50))
    ix = create_repository(PROGRAM_ID, owner=deployed.owner.pubkey(), repo_id=REPO_ID, policy_hash=POLICY)
    assert deployed.refused(ix) == "6010 RentUnknown"


def test_create_refuses_another_address(deployed: Registry) -> None:
    ix = create_repository(PROGRAM_ID, owner=deployed.owner.pubkey(), repo_id=REPO_ID, policy_hash=POLICY)
    elsewhere = repository_address(PROGRAM_ID, bytes(32), deployed.owner.pubkey())[0]
    wrong = Instruction(PROGRAM_ID, ix.data, [AccountMeta(elsewhere, False, True), *ix.accounts[1:]])
    assert deployed.refused(wrong) == "2006 ConstraintSeeds"


# -- set_policy --

def test_set_policy_by_the_owner(reg: Registry) -> None:
    reg.ok(set_policy(PROGRAM_ID, owner=reg.owner.pubkey(), repo_id=REPO_ID, policy_hash=POLICY_2))
    assert reg.state().policy_hash == POLICY_2


def test_set_policy_by_another_signer_is_refused(reg: Registry) -> None:
    other = funded(reg.svm, 12)
    ix = set_policy(PROGRAM_ID, owner=other.pubkey(), repo_id=REPO_ID, policy_hash=POLICY_2,
                    genesis_owner=reg.owner.pubkey())
    assert reg.refused(ix, payer=other) == "6000 NotOwner"
    reg.add(other.pubkey(), Role.MAINTAINER)  # a maintainer is not the owner either
    assert reg.refused(ix, payer=other) == "6000 NotOwner"


def test_the_owner_must_sign(reg: Registry) -> None:
    ix = set_policy(PROGRAM_ID, owner=reg.owner.pubkey(), repo_id=REPO_ID, policy_hash=POLICY_2)
    unsigned = Instruction(ix.program_id, ix.data, [ix.accounts[0], replace_meta(ix.accounts[1], is_signer=False)])
    assert reg.refused(unsigned, payer=reg.payer) == "2002 ConstraintSigner"


def test_the_repository_must_be_writable(reg: Registry) -> None:
    ix = set_policy(PROGRAM_ID, owner=reg.owner.pubkey(), repo_id=REPO_ID, policy_hash=POLICY_2)
    readonly = Instruction(ix.program_id, ix.data, [replace_meta(ix.accounts[0], is_writable=False), ix.accounts[1]])
    assert reg.refused(readonly) == "2000 ConstraintMut"


# -- members --

def test_add_member_and_change_its_role(reg: Registry) -> None:
    reg.add(A, Role.CONTRIBUTOR)
    reg.add(B, Role.READER)
    assert reg.state().members == ((str(A), 1), (str(B), 0))
    reg.add(A, Role.MAINTAINER)
    assert reg.state().members == ((str(A), 2), (str(B), 0))


def test_add_member_refuses_an_unknown_role(reg: Registry) -> None:
    ix = add_member(PROGRAM_ID, owner=reg.owner.pubkey(), repo_id=REPO_ID, member=A, role=2)
    assert reg.refused(Instruction(ix.program_id, ix.data[:-1] + b"\x03", ix.accounts)) == "6006 InvalidRole"
    assert reg.state().members == ()


def test_the_owner_is_not_a_member(reg: Registry) -> None:
    owner = reg.owner.pubkey()
    assert reg.refused(add_member(PROGRAM_ID, owner=owner, repo_id=REPO_ID, member=owner, role=2)) == \
        "6008 OwnerIsNotAMember"
    assert reg.refused(remove_member(PROGRAM_ID, owner=owner, repo_id=REPO_ID, member=owner)) == \
        "6008 OwnerIsNotAMember"


def test_thirty_two_members_at_most(reg: Registry) -> None:
    keys = [Keypair.from_seed(bytes([100 + i]) * 32).pubkey() for i in range(33)]
    owner = reg.owner.pubkey()
    for chunk in range(4):  # eight to a transaction
        reg.ok(*(add_member(PROGRAM_ID, owner=owner, repo_id=REPO_ID, member=k, role=i % 3)
                 for i, k in enumerate(keys[chunk * 8:chunk * 8 + 8], start=chunk * 8)))
    assert reg.state().members == tuple((str(k), i % 3) for i, k in enumerate(keys[:32]))
    assert reg.refused(add_member(PROGRAM_ID, owner=owner, repo_id=REPO_ID, member=keys[32], role=0)) == \
        "6004 MembersFull"
    reg.add(keys[5], Role.MAINTAINER)  # a full repository still changes roles
    assert reg.state().role_of(keys[5]) == 2


def test_remove_member(reg: Registry) -> None:
    c = Keypair.from_seed(bytes([3]) * 32).pubkey()
    for key, role in ((A, 2), (B, 1), (c, 0)):
        reg.add(key, role)
    reg.ok(remove_member(PROGRAM_ID, owner=reg.owner.pubkey(), repo_id=REPO_ID, member=A))
    # The last member takes the removed one's place; the freed slot is zeroed.
    assert reg.state().members == ((str(c), 0), (str(B), 1))
    account = reg.svm.get_account(reg.repository)
    assert account is not None and bytes(account.data)[138 + 2 * 33:] == bytes(33 * 30)
    reg.ok(remove_member(PROGRAM_ID, owner=reg.owner.pubkey(), repo_id=REPO_ID, member=B))
    assert reg.state().members == ((str(c), 0),)
    assert reg.state().role_of(A) is None


def test_remove_a_non_member_is_refused(reg: Registry) -> None:
    reg.add(B, Role.READER)
    assert reg.refused(remove_member(PROGRAM_ID, owner=reg.owner.pubkey(), repo_id=REPO_ID, member=A)) == \
        "6005 NotAMember"
    other = funded(reg.svm, 12)
    assert reg.refused(remove_member(PROGRAM_ID, owner=other.pubkey(), repo_id=REPO_ID, member=B,
                                     genesis_owner=reg.owner.pubkey()), payer=other) == "6000 NotOwner"


# -- set_owner --

def test_set_owner_passes_the_repository(reg: Registry) -> None:
    old, new = reg.owner, funded(reg.svm, 12)
    reg.add(A, Role.MAINTAINER)
    reg.ok(set_owner(PROGRAM_ID, owner=old.pubkey(), repo_id=REPO_ID, new_owner=new.pubkey()))
    state = reg.state()
    assert state.owner == str(new.pubkey()) and state.members == ((str(A), 2),) and state.policy_hash == POLICY
    # Only the new owner is the owner now.
    assert reg.refused(set_policy(PROGRAM_ID, owner=old.pubkey(), repo_id=REPO_ID, policy_hash=POLICY_2)) == \
        "6000 NotOwner"
    assert reg.refused(set_owner(PROGRAM_ID, owner=old.pubkey(), repo_id=REPO_ID, new_owner=B)) == "6000 NotOwner"
    reg.ok(set_policy(PROGRAM_ID, owner=new.pubkey(), repo_id=REPO_ID, policy_hash=POLICY_2,
                      genesis_owner=old.pubkey()), payer=new)
    # The handover Flair makes: the new owner's node adds the old owner back as a maintainer.
    reg.ok(add_member(PROGRAM_ID, owner=new.pubkey(), repo_id=REPO_ID, member=old.pubkey(), role=Role.MAINTAINER,
                      genesis_owner=old.pubkey()), payer=new)
    # the account stays where its genesis owner created it, and says who that was
    assert reg.state() == RepositoryState(repo_id=REPO_ID, genesis_owner=str(old.pubkey()), owner=str(new.pubkey()),
                                          policy_hash=POLICY_2, bump=state.bump,
                                          members=((str(A), 2), (str(old.pubkey()), 2)))


def test_set_owner_to_a_member_takes_it_out_of_the_members(reg: Registry) -> None:
    new = funded(reg.svm, 12)
    c = Keypair.from_seed(bytes([3]) * 32).pubkey()
    for key, role in ((A, 1), (new.pubkey(), 2), (B, 0), (c, 1)):
        reg.add(key, role)
    reg.ok(set_owner(PROGRAM_ID, owner=reg.owner.pubkey(), repo_id=REPO_ID, new_owner=new.pubkey()))
    # As remove_member does: the last member takes the new owner's slot; the freed slot is zeroed.
    state = reg.state()
    assert state.owner == str(new.pubkey()) and state.members == ((str(A), 1), (str(c), 1), (str(B), 0))
    assert state.role_of(new.pubkey()) is None
    account = reg.svm.get_account(reg.repository)
    assert account is not None and bytes(account.data)[138 + 3 * 33:] == bytes(33 * 29)
    # The last member in the list leaves without moving anyone.
    reg.ok(set_owner(PROGRAM_ID, owner=new.pubkey(), repo_id=REPO_ID, new_owner=B, genesis_owner=reg.owner.pubkey()),
           payer=new)
    assert reg.state().owner == str(B) and reg.state().members == ((str(A), 1), (str(c), 1))


def test_set_owner_refuses_the_owner_and_the_zero_key(reg: Registry) -> None:
    owner = reg.owner.pubkey()
    ix = set_owner(PROGRAM_ID, owner=owner, repo_id=REPO_ID, new_owner=B)
    # Built by hand: the client refuses both first.
    assert reg.refused(Instruction(PROGRAM_ID, disc("set_owner") + bytes(owner), ix.accounts)) == "6011 SameOwner"
    assert reg.refused(Instruction(PROGRAM_ID, disc("set_owner") + ZERO, ix.accounts)) == "6012 InvalidOwner"
    assert reg.refused(Instruction(PROGRAM_ID, ix.data[:-1], ix.accounts)) == "102 InstructionDidNotDeserialize"
    assert reg.state().owner == str(owner)


def test_set_owner_is_for_the_owner(reg: Registry) -> None:
    other = funded(reg.svm, 12)
    ix = set_owner(PROGRAM_ID, owner=other.pubkey(), repo_id=REPO_ID, new_owner=B, genesis_owner=reg.owner.pubkey())
    assert reg.refused(ix, payer=other) == "6000 NotOwner"
    reg.add(other.pubkey(), Role.MAINTAINER)  # a maintainer is not the owner either
    assert reg.refused(ix, payer=other) == "6000 NotOwner"
    # nor to take the repository for itself (built by hand: the client refuses a new owner that is the signer)
    take = Instruction(PROGRAM_ID, disc("set_owner") + bytes(other.pubkey()), ix.accounts)
    assert reg.refused(take, payer=other) == "6000 NotOwner"
    ix = set_owner(PROGRAM_ID, owner=reg.owner.pubkey(), repo_id=REPO_ID, new_owner=B)
    unsigned = Instruction(ix.program_id, ix.data, [ix.accounts[0], replace_meta(ix.accounts[1], is_signer=False)])
    assert reg.refused(unsigned, payer=reg.payer) == "2002 ConstraintSigner"
    assert reg.state().owner == str(reg.owner.pubkey())


# -- record_merge --

def test_record_merge_creates_then_extends_the_branch(reg: Registry) -> None:
    maintainer = funded(reg.svm, 12)
    reg.add(maintainer.pubkey(), Role.MAINTAINER)
    owner = reg.owner
    assert reg.branch("main") is None
    reg.ok(reg.merge(owner, ZERO, C1, 12))
    address, bump = branch_address(PROGRAM_ID, reg.repository, "main")
    account = reg.svm.get_account(address)
    assert account is not None and account.lamports == reg.svm.minimum_balance_for_rent_exemption(BRANCH_SIZE)
    assert reg.branch("main") == BranchState(repository=str(reg.repository), name="main", head=C1, round=12,
                                             merges=1, last_author=str(owner.pubkey()), bump=bump)
    reg.ok(reg.merge(maintainer, C1, C2, 13), payer=maintainer)
    assert reg.branch("main") == BranchState(repository=str(reg.repository), name="main", head=C2, round=13,
                                             merges=2, last_author=str(maintainer.pubkey()), bump=bump)
    reg.ok(reg.merge(owner, C2, C3, 14))
    state = reg.branch("main")
    assert state is not None and (state.head, state.round, state.merges) == (C3, 14, 3)
    # Another branch is another account, with its own rounds.
    reg.ok(reg.merge(maintainer, ZERO, C1, 1, branch="é-dev"), payer=maintainer)
    dev = reg.branch("é-dev")
    assert dev is not None and (dev.name, dev.round, dev.merges) == ("é-dev", 1, 1)


def test_record_merge_refuses_a_stale_head_or_a_wrong_round(reg: Registry) -> None:
    reg.ok(reg.merge(reg.owner, ZERO, C1, 12))
    assert reg.refused(reg.merge(reg.owner, C2, C3, 13)) == "6002 StaleHead"
    assert reg.refused(reg.merge(reg.owner, ZERO, C3, 13)) == "6002 StaleHead"
    assert reg.refused(reg.merge(reg.owner, C1, C2, 14)) == "6003 BadRound"  # skipped
    assert reg.refused(reg.merge(reg.owner, C1, C2, 12)) == "6003 BadRound"  # replayed
    assert reg.refused(reg.merge(reg.owner, C1, C2, 11)) == "6003 BadRound"
    # Round 0 never starts a branch (built by hand: the client refuses it first).
    ix = reg.merge(reg.owner, ZERO, C1, 1, branch="dev")
    assert reg.refused(Instruction(ix.program_id, ix.data[:-8] + bytes(8), ix.accounts)) == "6003 BadRound"
    state = reg.branch("main")
    assert state is not None and (state.head, state.round, state.merges) == (C1, 12, 1)


def test_record_merge_on_main_is_for_the_owner_or_a_maintainer(reg: Registry) -> None:
    contributor, reader, stranger = funded(reg.svm, 12), funded(reg.svm, 13), funded(reg.svm, 14)
    reg.add(contributor.pubkey(), Role.CONTRIBUTOR)
    reg.add(reader.pubkey(), Role.READER)
    for key in (contributor, reader, stranger):
        assert reg.refused(reg.merge(key, ZERO, C1, 1), payer=key) == "6001 MayNotMoveBranch"
    reg.ok(reg.merge(reg.owner, ZERO, C1, 1))
    assert reg.refused(reg.merge(contributor, C1, C2, 2), payer=contributor) == "6001 MayNotMoveBranch"
    reg.add(contributor.pubkey(), Role.MAINTAINER)
    reg.ok(reg.merge(contributor, C1, C2, 2), payer=contributor)
    reg.ok(remove_member(PROGRAM_ID, owner=reg.owner.pubkey(), repo_id=REPO_ID, member=contributor.pubkey()))
    assert reg.refused(reg.merge(contributor, C2, C3, 3), payer=contributor) == "6001 MayNotMoveBranch"


def test_record_merge_on_another_branch_takes_a_contributor_as_flair_nodes_do(reg: Registry) -> None:
    contributor, reader, stranger = funded(reg.svm, 15), funded(reg.svm, 16), funded(reg.svm, 17)
    reg.add(contributor.pubkey(), Role.CONTRIBUTOR)
    reg.add(reader.pubkey(), Role.READER)
    for key in (reader, stranger):
        assert reg.refused(reg.merge(key, ZERO, C1, 1, branch="dev"), payer=key) == "6001 MayNotMoveBranch"
    reg.ok(reg.merge(contributor, ZERO, C1, 1, branch="dev"), payer=contributor)
    state = reg.branch("dev")
    assert state is not None and state.last_author == str(contributor.pubkey()) and state.round == 1
    # a name that only starts like the protected one is another branch
    reg.ok(reg.merge(contributor, ZERO, C1, 1, branch="mainline"), payer=contributor)


def test_record_merge_refuses_another_branchs_address(reg: Registry) -> None:
    reg.ok(reg.merge(reg.owner, ZERO, C1, 1, branch="dev"))
    ix = reg.merge(reg.owner, ZERO, C1, 1)
    for name in ("dev", "other"):  # an existing branch's account, or a fresh one of another name
        other = branch_address(PROGRAM_ID, reg.repository, name)[0]
        wrong = Instruction(ix.program_id, ix.data, [ix.accounts[0], AccountMeta(other, False, True),
                                                     *ix.accounts[2:]])
        assert reg.refused(wrong) == "2006 ConstraintSeeds"
    assert reg.branch("main") is None


def test_record_merge_refuses_a_branch_name_of_33_bytes(reg: Registry) -> None:
    ix = reg.merge(reg.owner, ZERO, C1, 1)
    for name in (b"x" * 33, b""):
        data = disc("record_merge") + struct.pack("<I", len(name)) + name + ZERO + C1 + struct.pack("<Q", 1)
        assert reg.refused(Instruction(ix.program_id, data, ix.accounts)) == "6007 InvalidBranchName"


def test_a_repository_owned_by_another_program_is_refused(deployed: Registry) -> None:
    # The right address and the right bytes, but not this program's account: anyone could have written them.
    owner = deployed.owner.pubkey()
    bump = repository_address(PROGRAM_ID, REPO_ID, owner)[1]
    fake = Account(10**9, repository_bytes(owner, [], bump=bump), Keypair.from_seed(bytes([9]) * 32).pubkey())
    deployed.svm.set_account(deployed.repository, fake)
    assert deployed.refused(set_policy(PROGRAM_ID, owner=owner, repo_id=REPO_ID, policy_hash=POLICY_2)) == \
        "3007 AccountOwnedByWrongProgram"
    assert deployed.refused(record_merge(PROGRAM_ID, repo_id=REPO_ID, genesis_owner=owner, authority=owner,
                                         branch="main", previous=ZERO, commit=C1, round=1)) == \
        "3007 AccountOwnedByWrongProgram"


def test_a_repository_with_another_discriminator_is_refused(reg: Registry) -> None:
    account = reg.svm.get_account(reg.repository)
    assert account is not None
    data = bytes.fromhex(README_ACCOUNTS["Branch"]) + bytes(account.data)[8:]
    reg.svm.set_account(reg.repository, replace_account_data(account, data))
    owner = reg.owner.pubkey()
    assert reg.refused(add_member(PROGRAM_ID, owner=owner, repo_id=REPO_ID, member=A, role=1)) == \
        "3002 AccountDiscriminatorMismatch"
    assert reg.refused(reg.merge(reg.owner, ZERO, C1, 1)) == "3002 AccountDiscriminatorMismatch"


def test_a_repository_that_does_not_exist(deployed: Registry) -> None:
    owner = deployed.owner.pubkey()
    assert deployed.refused(set_policy(PROGRAM_ID, owner=owner, repo_id=REPO_ID, policy_hash=POLICY)) == \
        "3012 AccountNotInitialized"


def test_unknown_instructions(reg: Registry) -> None:
    ix = set_policy(PROGRAM_ID, owner=reg.owner.pubkey(), repo_id=REPO_ID, policy_hash=POLICY_2)
    assert reg.refused(Instruction(PROGRAM_ID, b"\x00" * 8 + POLICY_2, ix.accounts)) == \
        "101 InstructionFallbackNotFound"
    assert reg.refused(Instruction(PROGRAM_ID, b"\x28\x85", ix.accounts)) == "100 InstructionMissing"
    assert reg.refused(Instruction(PROGRAM_ID, ix.data[:-1], ix.accounts)) == "102 InstructionDidNotDeserialize"


# -- squatting (issue 16, finding 9) --

def test_a_squatter_who_calls_create_first_does_not_take_the_owners_account(deployed: Registry) -> None:
    owner, squatter = deployed.owner, funded(deployed.svm, 66)
    # First, with its own key: that creates an account at the address of (repository id, squatter), which no node
    # derives (they use the owner the genesis record names); the owner's address stays free.
    deployed.ok(create_repository(PROGRAM_ID, owner=squatter.pubkey(), repo_id=REPO_ID, policy_hash=POLICY_2),
                payer=squatter)
    squatted = repository_address(PROGRAM_ID, REPO_ID, squatter.pubkey())[0]
    assert squatted != deployed.repository and deployed.svm.get_account(deployed.repository) is None
    # At the owner's address: refused, signing as itself or naming the owner without the owner's signature.
    theirs = create_repository(PROGRAM_ID, owner=squatter.pubkey(), repo_id=REPO_ID, policy_hash=POLICY_2)
    at_owners = Instruction(PROGRAM_ID, theirs.data, [AccountMeta(deployed.repository, False, True),
                                                      *theirs.accounts[1:]])
    assert deployed.refused(at_owners, payer=squatter) == "2006 ConstraintSeeds"
    forged = create_repository(PROGRAM_ID, owner=owner.pubkey(), repo_id=REPO_ID, policy_hash=POLICY_2)
    unsigned = Instruction(PROGRAM_ID, forged.data, [forged.accounts[0], replace_meta(forged.accounts[1],
                                                                                       is_signer=False),
                                                     forged.accounts[2]])
    assert deployed.refused(unsigned, payer=squatter) == "2002 ConstraintSigner"
    # Lamports sent ahead to the owner's address do not block it either (they are topped up to rent).
    deployed.ok(transfer(TransferParams(from_pubkey=squatter.pubkey(), to_pubkey=deployed.repository,
                                        lamports=1_000)), payer=squatter)
    assert deployed.svm.get_account(deployed.repository) is not None
    # The real owner's creation, afterwards, succeeds, with the owner's policy and no trace of the squatter.
    deployed.ok(create_repository(PROGRAM_ID, owner=owner.pubkey(), repo_id=REPO_ID, policy_hash=POLICY))
    assert deployed.state() == RepositoryState(
        repo_id=REPO_ID, genesis_owner=str(owner.pubkey()), owner=str(owner.pubkey()), policy_hash=POLICY,
        bump=repository_address(PROGRAM_ID, REPO_ID, owner.pubkey())[1], members=())
    account = deployed.svm.get_account(deployed.repository)
    assert account is not None and account.lamports == deployed.svm.minimum_balance_for_rent_exemption(
        REPOSITORY_SIZE)
    # and the owner's repository works as any: the squatter is nobody in it
    deployed.ok(deployed.merge(owner, ZERO, C1, 1))
    assert deployed.refused(deployed.merge(squatter, C1, C2, 2), payer=squatter) == "6001 MayNotMoveBranch"
    assert deployed.refused(set_policy(PROGRAM_ID, owner=squatter.pubkey(), repo_id=REPO_ID, policy_hash=POLICY_2,
                                       genesis_owner=owner.pubkey()), payer=squatter) == "6000 NotOwner"


def test_an_account_another_key_created_cannot_stand_in_for_the_owners(deployed: Registry) -> None:
    # The squatter's account, bytes and all, placed at the owner's address (which only the program could do): its
    # genesis owner is a seed the program re-derives, so it is not at its address and nothing accepts it.
    owner, squatter = deployed.owner.pubkey(), funded(deployed.svm, 66)
    deployed.ok(create_repository(PROGRAM_ID, owner=squatter.pubkey(), repo_id=REPO_ID, policy_hash=POLICY_2),
                payer=squatter)
    squatted = deployed.svm.get_account(repository_address(PROGRAM_ID, REPO_ID, squatter.pubkey())[0])
    assert squatted is not None
    deployed.svm.set_account(deployed.repository, squatted)
    assert deployed.refused(set_policy(PROGRAM_ID, owner=squatter.pubkey(), repo_id=REPO_ID, policy_hash=POLICY,
                                       genesis_owner=owner), payer=squatter) == "2006 ConstraintSeeds"
    merge = record_merge(PROGRAM_ID, repo_id=REPO_ID, genesis_owner=owner, authority=squatter.pubkey(),
                         branch="main", previous=ZERO, commit=C1, round=1)
    assert deployed.refused(merge, payer=squatter) == "2006 ConstraintSeeds"
