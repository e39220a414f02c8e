"""What a node publishes in the DHT (``network.discovery``) so that members of its repositories find it, and what a
node looks up to find them, without telling anyone else which repository that is.

Two kinds of locator, both 32 bytes that look random to whoever cannot compute them:

- **The members' locator** of a repository: HMAC-SHA256 under the repository's first payload key (epoch 0, sealed
  to every member ever invited) of the repository id. Every node holding a role in a repository provides it, and
  looks it up to find more of the repository's nodes. Only members (present or past) can compute it, so a DHT
  node that stores it learns that some peers share a repository, not which one, and nobody who lacks the key,
  even knowing the repository id from the chain, can find who serves it.
- **An invitation locator**: SHA-256 of the repository id and the invited member's key. A node invited to a
  repository holds no payload key before its first pull, only the repository id and its own key: so for
  ``INVITATION_WINDOW_MS`` after an invitation (or until the role lapses) every member node also provides that
  member's invitation locator, and the invitee's ``flair clone REPO_ID`` looks it up. Whoever knows both the
  repository id and the invitee's key can compute it, and so find the addresses of the repository's nodes
  during that window: the price of needing no address (``flair clone --peer`` needs no DHT at all).

A node provides at most ``MAX_INVITATIONS`` invitation locators per repository (the latest invitations), so a
repository's size does not set how much it publishes.
"""

from __future__ import annotations

import hashlib
import hmac

from ..core.errors import FlairError
from ..core.ids import PublicKey, RepoId
from ..storage.repo import Repository

INVITATION_WINDOW_MS = 7 * 24 * 3600 * 1000
MAX_INVITATIONS = 64
_MEMBERS = b"flair/locator/members/1"
_INVITATION = b"flair/locator/invitation/1"


def members(repo: RepoId, first_key: bytes) -> bytes:
    """The members' locator of ``repo``, whose epoch-0 payload key is ``first_key``."""
    return hmac.new(first_key, _MEMBERS + b"\0" + repo.encode(), hashlib.sha256).digest()


def invitation(repo: RepoId, member: PublicKey) -> bytes:
    """The locator ``member`` looks up to clone ``repo`` before it holds any of its keys."""
    return hashlib.sha256(_INVITATION + b"\0" + repo.encode() + b"\0" + member.encode()).digest()


def members_of(repo: Repository) -> bytes | None:
    """The members' locator of ``repo`` if this node holds its first key, else None."""
    try:
        return members(repo.id, repo.keys.key(0))
    except FlairError:
        return None


def provided(repo: Repository, me: PublicKey, *, now_ms: int) -> list[bytes]:
    """The locators this node (member key ``me``) provides for ``repo``: none unless it holds a current role."""
    membership = repo.members.current()
    if membership.role(me, epoch=membership.epoch, at_ms=now_ms) is None:
        return []
    own = members_of(repo)
    out = [own] if own is not None else []
    invited: list[PublicKey] = []  # the latest invitations first (chain order: timestamps may tie)
    for change in reversed(repo.members.changes()):
        if len(invited) == MAX_INVITATIONS or now_ms - change.timestamp_ms >= INVITATION_WINDOW_MS:
            break
        if change.action == "invite" and change.member != me and change.member not in invited \
                and membership.role(change.member, epoch=membership.epoch, at_ms=now_ms) is not None:
            invited.append(change.member)
    return out + [invitation(repo.id, member) for member in invited]
