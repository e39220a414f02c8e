"""Payload blocks are ciphertext to everyone but members; tampering fails authentication."""

import pytest
import torch

from flair_node.core import crypto
from flair_node.core.errors import IntegrityError, NotAMember
from flair_node.core.identity import Identity
from flair_node.storage.repo import Repository
from flair_node.storage.repos import RepoSet

OWNER, STRANGER = Identity.generate(), Identity.generate()


def distinctive_state():
    return {"secret_layer.weight": torch.full((64,), 1234.5678), "secret_layer.bias": torch.arange(8.0)}


def test_a_non_member_with_every_block_learns_nothing_but_ciphertext():
    repos = RepoSet.in_memory(OWNER)
    repo = repos.create("private", distinctive_state())
    changed = distinctive_state()
    changed["secret_layer.weight"] += 1
    commit = repo.commit_weights(OWNER, changed, message="update")

    every_block = b"".join(repos.blocks.objects.get(k) for k in repos.blocks.keys())
    assert b"secret_layer" not in every_block  # tensor names (safetensors headers) are encrypted too
    assert torch.full((64,), 1234.5678).numpy().tobytes()[:16] not in every_block

    # The stranger holds the same records and blocks, but no sealed key: it can verify, not read.
    theirs = Repository.open(repo.id, repos.objects, repos.blocks, repo.refs, reader=STRANGER)
    theirs.commit(commit.id).verify(commit.id)
    with pytest.raises(NotAMember, match="no key"):
        theirs.materialize(commit.id)
    ours = Repository.open(repo.id, repos.objects, repos.blocks, repo.refs, reader=OWNER)
    assert torch.equal(ours.materialize(commit.id)["secret_layer.weight"], changed["secret_layer.weight"])


def test_the_key_is_sealed_to_the_owner_only():
    key = crypto.new_key()
    sealed = crypto.seal_key(key, OWNER.public_key)
    assert crypto.open_sealed_key(sealed, OWNER) == key
    with pytest.raises(IntegrityError, match="not sealed to this node"):
        crypto.open_sealed_key(sealed, STRANGER)


@pytest.mark.parametrize("damage", [
    lambda c: c[:-1],                                   # truncated
    lambda c: c[:30] + bytes([c[30] ^ 1]) + c[31:],     # one bit flipped
    lambda c: c[:10],                                   # shorter than nonce + tag
    lambda c: b"XXXX" + c[4:],                          # not Flair's format
])
def test_altered_or_truncated_ciphertext_fails_authentication(damage):
    key = crypto.new_key()
    sealed = crypto.encrypt(key, b"weights" * 100, b"repo-a/bitdelta-v1")
    assert crypto.decrypt(key, sealed, b"repo-a/bitdelta-v1") == b"weights" * 100
    with pytest.raises(IntegrityError, match="authentication|truncated"):
        crypto.decrypt(key, damage(sealed), b"repo-a/bitdelta-v1")


def test_ciphertext_cannot_be_replayed_into_another_repository_or_codec():
    key = crypto.new_key()
    sealed = crypto.encrypt(key, b"payload", b"repo-a/bitdelta-v1")
    for context in (b"repo-b/bitdelta-v1", b"repo-a/full-v1"):
        with pytest.raises(IntegrityError, match="authentication"):
            crypto.decrypt(key, sealed, context)
    with pytest.raises(IntegrityError):
        crypto.decrypt(crypto.new_key(), sealed, b"repo-a/bitdelta-v1")
