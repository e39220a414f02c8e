"""Who may do what in a repository: a chain of signed membership changes that every node re-checks.

The repository record (the genesis) names the owner and seals key epoch 0 to them. Each later change is a
``MembershipChange`` signed by the owner; it names the change before it (the repository id for the first) and
its position, so the chain has exactly one order and any node holding it folds it to the same ``Membership``.

- An invitation grants a role to a public key until an expiry (or for good) and carries every payload key so
  far, sealed to that key: the new member reads the whole history, nobody else learns anything.
- A removal starts a new key epoch whose key is sealed to each remaining member whose role has not expired at
  the removal's time, never to the removed one: payloads from then on are closed to them. What they could read
  before stays readable to them.
- A rotation starts a new key epoch the same way without removing anyone. It is how an expiry stops reads: the
  owner's node appends one when it notices a member whose role has expired still holding the current epoch's
  key (``Membership.expired_holders``; ``storage.repo.Repository.rotate_if_expired``). Until then the sync server,
  which judges roles at the current time, already refuses an expired member the repository's records. A new
  key, by a removal or a rotation, is never sealed to a member whose role has expired.

- A policy change sets how rounds run (``rounds.RoundPolicy``: strategy, buffer, deadline, staleness, timeout);
  the chain carries it so every member applies the same one from the same point on.
- A token change binds the repository to an ownership token on Solana (``ChainRef``: the cluster's genesis
  hash, the token's mint, the transaction that minted it to the owner). From then on, whoever holds the token
  owns the repository: a handover names the transaction that moved the token to a current member, and makes
  them the owner and the previous owner a maintainer. The owner or the new holder publishes it; a handover's
  transfer must come later on chain than the token's last move, so an old transfer cannot be replayed. Whether
  the transaction did what the change says is a question for the chain, asked by the node before it applies
  the change (``daemon.ownership_service``); the rules here are the ones every node checks on the records alone.

Roles, from least to most: reader (pulls), contributor (commits; moves unprotected branches), maintainer (also
moves protected branches, so merges into them), owner (also changes membership and policy). A role holds for
records whose (signed) timestamp is before its expiry and whose key epoch is before the member's removal; a
commit is dated no earlier than its parents (``objects.check_commit_time``), so the time it is judged at is
never before the history it builds on. A contribution branch ``contrib/<branch>/<key>`` is moved by the holder
of ``<key>`` alone, whatever anyone else's role, and points only at a commit that key authored
(``Membership.require_branch_move``, ``check_move_target``): one member, one contribution branch per branch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from . import encoding, schema
from .crypto import seal_key
from .errors import Forbidden, IntegrityError, InvalidInput
from .identity import Identity, public_key_bytes
from .ids import PublicKey, RepoId, short
from .objects import Commit, RepositoryRecord
from .refs import CONTRIBUTION_KEY_CHARS, BranchMove, contribution_holder, holds_branch
from .round_rules import RoundPolicy
from .schema import RECORD_VERSION
from .signed import SignedRecord

ROLES = ("reader", "contributor", "maintainer", "owner")
INVITABLE = ROLES[:3]
ACTIONS = ("invite", "remove", "policy", "token", "handover", "rotate")
#: Branches only maintainers and the owner move (merges into them included).
PROTECTED_BRANCHES = frozenset({"main"})
MAX_KEYS = 1024  # sealed keys one change may carry (one per epoch, or one per remaining member)


@dataclass(frozen=True)
class SealedKey:
    member: PublicKey
    epoch: int
    sealed: bytes  # the epoch's payload key, sealed to ``member`` (``crypto.seal_key``)


@dataclass(frozen=True)
class ChainRef:
    """An event of the ownership token on Solana: on the cluster whose genesis hash is ``genesis``, transaction
    ``transaction`` (base58 signature), landed in ``slot``, minted the token ``mint`` or moved it."""

    genesis: str
    mint: str
    transaction: str
    slot: int

    def record(self) -> list[Any]:
        return [self.genesis, self.mint, self.transaction, self.slot]

    @classmethod
    def from_record(cls, value: Any) -> ChainRef:
        genesis, mint, transaction, slot = schema.listing(value, "chain reference")
        return cls(schema.base58(genesis, "chain genesis", 44), schema.base58(mint, "token mint", 44),
                   schema.base58(transaction, "chain transaction", 88), schema.natural(slot, "chain slot"))


@dataclass(frozen=True)
class MembershipChange(SignedRecord):
    TAG: ClassVar[bytes] = b"flair/membership/v1\0"
    KIND: ClassVar[str] = "membership change"

    repo: RepoId
    previous: str  # id of the change before, or the repository id for the first
    seq: int  # 1 for the first change
    author: PublicKey
    timestamp_ms: int
    action: str
    member: PublicKey
    role: str = ""  # for an invitation
    expires_ms: int = 0  # for an invitation; 0: until removed
    epoch: int = 0  # the payload key epoch in force after this change
    keys: tuple[SealedKey, ...] = ()
    policy: RoundPolicy | None = None  # for a policy change (the key is in the body of those only)
    chain: ChainRef | None = None  # for a token change or a handover (the same)
    signature: bytes = b""

    def body(self) -> dict[str, Any]:
        body = {
            "v": RECORD_VERSION, "type": "membership", "repo": self.repo, "previous": self.previous,
            "seq": self.seq, "author": self.author, "timestamp_ms": self.timestamp_ms, "action": self.action,
            "member": self.member, "role": self.role, "expires_ms": self.expires_ms, "epoch": self.epoch,
            "keys": [[k.member, k.epoch, k.sealed] for k in self.keys],
        }
        if self.policy is not None:
            body["policy"] = self.policy.record()
        if self.chain is not None:
            body["chain"] = self.chain.record()
        return body

    @property
    def id(self) -> str:
        return self.digest

    @classmethod
    def decode(cls, data: bytes) -> MembershipChange:
        body, sig = schema.outer(encoding.decode(data), "membership")
        try:
            keys = []
            for entry in schema.listing(body["keys"], "keys")[:MAX_KEYS + 1]:
                member, epoch, sealed = schema.listing(entry, "sealed key entry")
                keys.append(SealedKey(PublicKey(schema.text(member, "key member", 64)),
                                      schema.natural(epoch, "key epoch"), schema.blob(sealed, "sealed key", 256)))
            change = cls(
                repo=RepoId(schema.hex_id(body["repo"], "repo")),
                previous=schema.hex_id(body["previous"], "previous"),
                seq=schema.natural(body["seq"], "seq"),
                author=PublicKey(schema.text(body["author"], "author", 64)),
                timestamp_ms=schema.natural(body["timestamp_ms"], "timestamp_ms"),
                action=schema.choice(body["action"], "action", ACTIONS),
                member=PublicKey(schema.text(body["member"], "member", 64)),
                role=schema.choice(body["role"], "role", ("", *INVITABLE)),
                expires_ms=schema.natural(body["expires_ms"], "expires_ms"),
                epoch=schema.natural(body["epoch"], "epoch"),
                keys=tuple(keys),
                policy=RoundPolicy.from_dict(body["policy"]) if "policy" in body else None,
                chain=ChainRef.from_record(body["chain"]) if "chain" in body else None,
                signature=sig,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"membership change is missing or mistypes a field: {exc}") from exc
        if change.body() != body:
            raise IntegrityError("membership change has unknown fields or too many keys")
        return change


@dataclass(frozen=True)
class Member:
    key: PublicKey
    role: str
    expires_ms: int = 0  # 0: no expiry
    joined_epoch: int = 0
    removed_epoch: int | None = None  # first epoch closed to them
    removed_ms: int = 0  # when they were removed

    def active(self, *, epoch: int, at_ms: int) -> bool:
        """Whether the role holds for a record of key ``epoch`` signed at ``at_ms``: before any expiry, and
        before the removal in both epoch and time (a removed member cannot date a record back into its term
        and have it count after the fact, beyond what it could have signed while a member)."""
        removed = self.removed_epoch is not None and (epoch >= self.removed_epoch or at_ms >= self.removed_ms)
        return not removed and not self.expired(at_ms)

    def expired(self, at_ms: int) -> bool:
        """Whether the role's expiry has passed at ``at_ms``."""
        return bool(self.expires_ms) and at_ms >= self.expires_ms

    def keeps_keys(self, at_ms: int) -> bool:
        """Whether a key epoch opened at ``at_ms`` is sealed to this member: not removed, role not expired."""
        return self.removed_epoch is None and not self.expired(at_ms)


@dataclass(frozen=True)
class Membership:
    """The members of one repository after the chain up to ``head``; change it only through ``apply``."""

    repo: RepoId
    owner: PublicKey
    head: str
    seq: int = 0
    epoch: int = 0
    members: Mapping[PublicKey, Member] = field(default_factory=dict)
    #: Every payload key sealed so far, by (member, epoch).
    sealed: Mapping[tuple[PublicKey, int], bytes] = field(default_factory=dict)
    #: Ids of the changes applied so far.
    applied: frozenset[str] = frozenset()
    #: How rounds run, as the last policy change set it (the defaults until one does).
    policy: RoundPolicy = field(default_factory=RoundPolicy)
    #: The ownership token's last event (its minting, then each handover); None if the repository has none.
    token: ChainRef | None = None

    @classmethod
    def genesis(cls, record: RepositoryRecord) -> Membership:
        return cls(repo=record.id, owner=record.owner, head=record.id,
                   members={record.owner: Member(record.owner, "owner")},
                   sealed={(PublicKey(k), 0): v for k, v in record.sealed_keys.items()})

    def apply(self, change: MembershipChange) -> Membership:
        """The membership after ``change``; ``IntegrityError`` if it does not follow this one or breaks a rule."""
        def refuse(why: str) -> IntegrityError:
            return IntegrityError(f"membership change {short(change.id)} refused: {why}", change=change.id)

        change.verify()
        if change.repo != self.repo or change.previous != self.head or change.seq != self.seq + 1:
            raise refuse(f"it does not follow change {self.seq} ({short(self.head)}) of repository "
                         f"{short(self.repo)}")
        if (change.action == "policy") != (change.policy is not None):
            raise refuse("a policy change, and only one, carries a policy")
        if (change.action in ("token", "handover")) != (change.chain is not None):
            raise refuse("a token change or a handover, and only those, name a chain transaction")
        if change.action == "handover":
            return self._handover(change, refuse)
        if change.author != self.owner:
            raise refuse("only the owner changes membership")
        if change.action == "rotate":
            if change.member != self.owner or change.role or change.expires_ms or change.epoch != self.epoch + 1:
                raise refuse("a rotation names the owner, grants nothing and starts the next key epoch")
            need = {(m.key, change.epoch) for m in self.members.values() if m.keeps_keys(change.timestamp_ms)}
            return self._with_keys(change, need, dict(self.members), refuse)
        if change.action in ("policy", "token"):
            if change.member != self.owner or change.role or change.expires_ms or change.keys \
                    or change.epoch != self.epoch:
                raise refuse(f"a {change.action} change names the owner, grants nothing and keeps the key epoch")
            if change.policy is not None:
                return replace(self, head=change.id, seq=change.seq, policy=change.policy,
                               applied=self.applied | {change.id})
            if self.token is not None:
                raise refuse(f"the repository's ownership token is mint {self.token.mint} already")
            return replace(self, head=change.id, seq=change.seq, token=change.chain,
                           applied=self.applied | {change.id})
        if change.member == self.owner:
            raise refuse("the owner's own role does not change")
        try:
            public_key_bytes(change.member)
        except InvalidInput:
            raise refuse("the member is not an Ed25519 public key") from None
        current = self.members.get(change.member)
        members = dict(self.members)
        if change.action == "invite":
            if change.role not in INVITABLE or change.epoch != self.epoch:
                raise refuse("an invitation grants reader, contributor or maintainer and keeps the key epoch")
            need = {(change.member, e) for e in range(self.epoch + 1)}
            joined = current.joined_epoch if current is not None and current.removed_epoch is None else self.epoch
            members[change.member] = Member(change.member, change.role, change.expires_ms, joined)
        else:
            if current is None or current.removed_epoch is not None or change.role or change.expires_ms \
                    or change.epoch != self.epoch + 1:
                raise refuse("a removal names a current member and starts the next key epoch")
            members[change.member] = replace(current, removed_epoch=change.epoch, removed_ms=change.timestamp_ms)
            need = {(m, change.epoch) for m, member in members.items() if member.keeps_keys(change.timestamp_ms)}
        return self._with_keys(change, need, members, refuse)

    def _with_keys(self, change: MembershipChange, need: set[tuple[PublicKey, int]],
                   members: dict[PublicKey, Member], refuse: Callable[[str], IntegrityError]) -> Membership:
        """The membership after ``change``, which must carry a sealed key for exactly ``need``."""
        given = {(k.member, k.epoch) for k in change.keys}
        if given != need or len(change.keys) != len(given):
            raise refuse("it must carry exactly one sealed key per member and epoch it opens (a new epoch's key "
                         "goes to every member not removed whose role has not expired at the change's time)")
        sealed = dict(self.sealed)
        sealed.update({(k.member, k.epoch): k.sealed for k in change.keys})
        return replace(self, head=change.id, seq=change.seq, epoch=change.epoch, members=members, sealed=sealed,
                       applied=self.applied | {change.id})

    def _handover(self, change: MembershipChange, refuse: Callable[[str], IntegrityError]) -> Membership:
        chain, token = change.chain, self.token
        assert chain is not None
        if token is None:
            raise refuse("the repository has no ownership token to hand over")
        if (chain.genesis, chain.mint) != (token.genesis, token.mint):
            raise refuse(f"it moves mint {chain.mint}, not the repository's ownership token {token.mint}")
        if chain.slot <= token.slot:
            raise refuse(f"its transfer (slot {chain.slot}) is not later than the token's last move (slot "
                         f"{token.slot})")
        new = self.members.get(change.member)
        if change.member == self.owner or new is None or new.removed_epoch is not None:
            raise refuse("the token goes to a current member other than the owner (invite them first: only a "
                         "member holds the payload keys an owner seals to others)")
        if change.author not in (self.owner, change.member):
            raise refuse("the owner or the new owner publishes a handover")
        if change.role or change.expires_ms or change.keys or change.epoch != self.epoch:
            raise refuse("a handover grants nothing else and keeps the key epoch")
        members = dict(self.members)
        members[change.member] = replace(new, role="owner", expires_ms=0)
        members[self.owner] = replace(members[self.owner], role="maintainer")
        return replace(self, owner=change.member, head=change.id, seq=change.seq, members=members, token=chain,
                       applied=self.applied | {change.id})

    # -- questions every node asks ------------------------------------------------------------------------

    def role(self, key: str, *, epoch: int, at_ms: int) -> str | None:
        """``key``'s role for a record of key ``epoch`` signed at ``at_ms``; None if it holds none."""
        member = self.members.get(PublicKey(key))
        return member.role if member is not None and member.active(epoch=epoch, at_ms=at_ms) else None

    def require(self, key: str, least: str, *, epoch: int, at_ms: int, what: str) -> None:
        """``Forbidden`` unless ``key`` holds at least role ``least`` (for a record of ``epoch`` at ``at_ms``)."""
        role = self.role(key, epoch=epoch, at_ms=at_ms)
        if role is None or ROLES.index(role) < ROLES.index(least):
            held = f"holds the role {role}" if role else "is not a member"
            raise Forbidden(f"{what} needs the role {least} or more in repository {short(self.repo)}; "
                            f"{short(key)} {held}", member=key)

    def require_branch_move(self, key: str, branch: str, *, epoch: int, at_ms: int) -> None:
        """``Forbidden`` unless ``key`` may move ``branch`` (for a move of ``epoch`` at ``at_ms``): the rule every
        node applies to every move, its own and its peers'. A contribution branch ``contrib/<branch>/<key>`` is
        its holder's alone (the owner's and maintainers' roles included: nobody else moves it)."""
        if not holds_branch(key, branch):
            holder = contribution_holder(branch)
            whose = f"the pending contribution of key {holder}..., and only that key moves it" if holder else \
                f"no one's contribution: no key holds it (contribution branches are contrib/<branch>/<the first " \
                f"{CONTRIBUTION_KEY_CHARS} characters of the holder's key>)"
            raise Forbidden(f"branch {branch} holds {whose}; {short(key)} contributes on "
                            f"contrib/<branch>/{key[:CONTRIBUTION_KEY_CHARS]}", member=key, branch=branch)
        least = "maintainer" if branch in PROTECTED_BRANCHES else "contributor"
        self.require(key, least, epoch=epoch, at_ms=at_ms, what=f"moving branch {branch}")

    def expired_holders(self, at_ms: int) -> list[PublicKey]:
        """Members whose role has expired at ``at_ms`` but who hold the current epoch's payload key: what a
        rotation (by the owner) closes future payloads to."""
        return sorted(m.key for m in self.members.values() if m.removed_epoch is None and m.expired(at_ms)
                      and (m.key, self.epoch) in self.sealed)

    def sealed_key(self, key: str, epoch: int) -> bytes | None:
        return self.sealed.get((PublicKey(key), epoch))

    def current(self) -> list[Member]:
        """Members not removed, owner first, then by role and key."""
        live = [m for m in self.members.values() if m.removed_epoch is None]
        return sorted(live, key=lambda m: (-ROLES.index(m.role), m.key))


def check_move_target(move: BranchMove, commit: Commit) -> None:
    """What a branch move must hold against the commit it points at, wherever that commit is at hand
    (``IntegrityError`` otherwise): a contribution branch points only at a commit authored by its holder, so no
    member makes another's contribution count twice, or anyone's count under its own name."""
    if move.commit != commit.id:
        raise IntegrityError(f"branch move {short(move.id)} points at {short(move.commit)}, not {short(commit.id)}",
                             move=move.id)
    if contribution_holder(move.branch) is not None and commit.author != move.author:
        raise IntegrityError(f"branch move {short(move.id)} points contribution branch {move.branch} at commit "
                             f"{short(commit.id)} by {short(commit.author)}: a contribution branch holds only its "
                             "holder's own commits", move=move.id, commit=commit.id)


def invitation(membership: Membership, owner: Identity, member: PublicKey, role: str, *, expires_ms: int,
               keys: Mapping[int, bytes], now_ms: int) -> MembershipChange:
    """The next change: ``member`` invited as ``role``, with every epoch's key (``keys``) sealed to them."""
    if role not in INVITABLE:
        raise InvalidInput(f"role {role!r}: invite as one of {', '.join(INVITABLE)}", role=role)
    if expires_ms and expires_ms <= now_ms:
        raise InvalidInput("an invitation's expiry is in the future", expires_ms=str(expires_ms))
    sealed = tuple(SealedKey(member, e, seal_key(keys[e], member)) for e in range(membership.epoch + 1))
    return _next(membership, owner, "invite", member, role=role, expires_ms=expires_ms, epoch=membership.epoch,
                 keys=sealed, now_ms=now_ms)


def removal(membership: Membership, owner: Identity, member: PublicKey, *, new_key: bytes,
            now_ms: int) -> MembershipChange:
    """The next change: ``member`` removed, and ``new_key`` opening the next epoch, sealed to everyone else."""
    current = membership.members.get(member)
    if current is None or current.removed_epoch is not None:
        raise InvalidInput(f"{short(member)} is not a member of repository {short(membership.repo)}", member=member)
    epoch = membership.epoch + 1
    keys = tuple(SealedKey(m.key, epoch, seal_key(new_key, m.key)) for m in membership.current()
                 if m.key != member and m.keeps_keys(now_ms))
    return _next(membership, owner, "remove", member, epoch=epoch, keys=keys, now_ms=now_ms)


def rotation(membership: Membership, owner: Identity, *, new_key: bytes, now_ms: int) -> MembershipChange:
    """The next change: ``new_key`` opens the next epoch, sealed to every member not removed whose role has not
    expired at ``now_ms`` (how an expiry closes later payloads to the expired member)."""
    epoch = membership.epoch + 1
    keys = tuple(SealedKey(m.key, epoch, seal_key(new_key, m.key)) for m in membership.current()
                 if m.keeps_keys(now_ms))
    return _next(membership, owner, "rotate", owner.public_key, epoch=epoch, keys=keys, now_ms=now_ms)


def policy_change(membership: Membership, owner: Identity, policy: RoundPolicy, *, now_ms: int) -> MembershipChange:
    """The next change: rounds run by ``policy`` from now on."""
    return _next(membership, owner, "policy", owner.public_key, epoch=membership.epoch, policy=policy, now_ms=now_ms)


def token_binding(membership: Membership, owner: Identity, chain: ChainRef, *, now_ms: int) -> MembershipChange:
    """The next change: the repository is owned by whoever holds the token ``chain`` minted to ``owner``."""
    return _next(membership, owner, "token", owner.public_key, epoch=membership.epoch, chain=chain, now_ms=now_ms)


def handover(membership: Membership, author: Identity, new_owner: PublicKey, chain: ChainRef, *,
             now_ms: int) -> MembershipChange:
    """The next change: ``new_owner`` owns the repository, since transaction ``chain`` moved the token to them;
    ``author`` is the owner or ``new_owner``."""
    return _next(membership, author, "handover", new_owner, epoch=membership.epoch, chain=chain, now_ms=now_ms)


def _next(membership: Membership, author: Identity, action: str, member: PublicKey, *, now_ms: int,
          **fields: Any) -> MembershipChange:
    change = MembershipChange(repo=membership.repo, previous=membership.head, seq=membership.seq + 1,
                              author=author.public_key, timestamp_ms=now_ms, action=action, member=member,
                              **fields).signed(author)
    membership.apply(change)  # the same checks every receiving node makes
    return change
