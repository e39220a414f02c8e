"""What a node publishes in the DHT for a repository: the members' locator (only who holds the first key computes
it) and, for a week after each invitation, the invitee's locator; nothing for a node that holds no role."""

from flair_node.core.identity import Identity
from flair_node.protocol import locators
from flair_node.storage.repo import now_ms
from flair_node.storage.repos import RepoSet
from flair_node.testing.commit_graph import tiny_state

OWNER, ALICE, BOB = Identity.generate(), Identity.generate(), Identity.generate()
WEEK = locators.INVITATION_WINDOW_MS


def repository():
    repo = RepoSet.in_memory(OWNER).create("net", tiny_state(0))
    repo.invite(OWNER, ALICE.public_key, "contributor")
    return repo


def test_every_member_publishes_the_members_locator_and_the_invitation_of_everyone_else():
    repo = repository()
    at = now_ms()
    members = locators.members(repo.id, repo.keys.key(0))
    assert locators.provided(repo, OWNER.public_key, now_ms=at) == [
        members, locators.invitation(repo.id, ALICE.public_key)]
    # alice's node holds the same first key (sealed to her), and does not publish her own invitation
    assert locators.provided(repo, ALICE.public_key, now_ms=at)[0] == members
    assert locators.invitation(repo.id, ALICE.public_key) not in locators.provided(repo, ALICE.public_key, now_ms=at)


def test_a_locator_names_neither_the_repository_nor_the_member_and_differs_between_repositories():
    repo, other = repository(), repository()
    members = locators.members(repo.id, repo.keys.key(0))
    assert repo.id.encode() not in members and bytes.fromhex(repo.id) not in members and len(members) == 32
    assert members != locators.members(other.id, other.keys.key(0))
    # the first key, not the id: whoever knows only the id (it is on chain when anchoring) cannot compute it
    assert members != locators.members(repo.id, other.keys.key(0))
    assert locators.invitation(repo.id, ALICE.public_key) != locators.invitation(other.id, ALICE.public_key)


def test_an_invitation_is_published_for_a_week_and_not_for_a_removed_member():
    repo = repository()
    later = now_ms() + WEEK + 1
    assert locators.provided(repo, OWNER.public_key, now_ms=later) == [locators.members(repo.id, repo.keys.key(0))]
    repo.invite(OWNER, BOB.public_key, "reader")
    assert locators.invitation(repo.id, BOB.public_key) in locators.provided(repo, OWNER.public_key, now_ms=now_ms())
    repo.remove(OWNER, BOB.public_key)
    assert locators.invitation(repo.id, BOB.public_key) not in locators.provided(repo, OWNER.public_key,
                                                                               now_ms=now_ms())
    # and bob's node, no longer a member, publishes nothing at all
    assert locators.provided(repo, BOB.public_key, now_ms=now_ms()) == []


def test_a_node_publishes_at_most_the_latest_invitations():
    repo = repository()
    invited = [Identity.generate().public_key for _ in range(locators.MAX_INVITATIONS + 3)]
    for key in invited:
        repo.invite(OWNER, key, "reader")
    published = locators.provided(repo, OWNER.public_key, now_ms=now_ms())
    assert len(published) == 1 + locators.MAX_INVITATIONS
    assert locators.invitation(repo.id, invited[-1]) in published
    assert locators.invitation(repo.id, ALICE.public_key) not in published  # the oldest ones go first
