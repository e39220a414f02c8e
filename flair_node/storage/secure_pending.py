"""This node's own contributions to secure rounds while their round runs: what never leaves the node.

A secure contribution is not a commit (a commit's payload is one every member decrypts). Between its advert and
the merge of its round, the contributor's node keeps the trained weights (safetensors) and the round's two
secrets (the mask key's secret and the self-mask seed), as ``<root>/<repo>/<advert id>.weights`` and
``.secrets``, each written atomically and private to the node's user (0600, in 0700 folders), and forgets them
once the round is over. A node without a home keeps them in memory.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..core.errors import IntegrityError, NotFound
from ..core.ids import is_full_id, short
from .atomic import atomic_write, make_dirs, resource_errors

SECRETS_BYTES = 64  # the mask key's secret and the self-mask seed, 32 bytes each
MAX_PENDING = 64  # contributions one repository may have waiting here (one per round per branch in practice)


class PendingContributions:
    """This node's secure contributions waiting for their round, by repository and advert id."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._memory: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        self._lock = threading.Lock()
        #: Held from a contribution's save to its advert's publication, and while finished ones are forgotten:
        #: a contribution saved and not yet advertised looks like one whose node stopped in between.
        self.advertising = threading.Lock()

    def save(self, repo: str, advert: str, secrets: bytes, weights: bytes) -> None:
        """Keep ``advert``'s ``secrets`` and trained ``weights`` (safetensors bytes) until ``drop``."""
        _check(repo, advert)
        if len(secrets) != SECRETS_BYTES:
            raise IntegrityError(f"a secure contribution's secrets are {SECRETS_BYTES} bytes")
        with self._lock:
            if len(self.adverts(repo)) >= MAX_PENDING:
                raise IntegrityError(f"{MAX_PENDING} secure contributions to {short(repo)} wait here already")
            if self.root is None:
                self._memory[(repo, advert)] = (secrets, weights)
                return
            folder = self.root / repo
            make_dirs(folder)
            atomic_write(folder / f"{advert}.weights", weights)
            atomic_write(folder / f"{advert}.secrets", secrets)  # last: a pair is complete once its secrets exist

    def load(self, repo: str, advert: str) -> tuple[bytes, bytes]:
        """The secrets and weights kept for ``advert``; ``NotFound`` if none are."""
        _check(repo, advert)
        if self.root is None:
            if (repo, advert) not in self._memory:
                raise NotFound(f"no secure contribution {short(advert)} waits here", advert=advert)
            return self._memory[(repo, advert)]
        folder = self.root / repo
        try:
            with resource_errors(folder):
                secrets = (folder / f"{advert}.secrets").read_bytes()
                weights = (folder / f"{advert}.weights").read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no secure contribution {short(advert)} waits here", advert=advert) from None
        if len(secrets) != SECRETS_BYTES:
            raise IntegrityError(f"the secrets kept for secure contribution {short(advert)} are damaged")
        return secrets, weights

    def adverts(self, repo: str) -> list[str]:
        """The adverts of ``repo`` whose contributions wait here."""
        if self.root is None:
            return sorted(a for r, a in self._memory if r == repo)
        folder = self.root / repo
        if not folder.is_dir():
            return []
        with resource_errors(folder):
            names = os.listdir(folder)
        return sorted(n[:-len(".secrets")] for n in names if n.endswith(".secrets") and is_full_id(n[:-8]))

    def drop(self, repo: str, advert: str) -> None:
        """Forget ``advert``'s secrets and weights (its round is over)."""
        _check(repo, advert)
        with self._lock:
            self._memory.pop((repo, advert), None)
            if self.root is not None:
                for suffix in (".secrets", ".weights"):
                    (self.root / repo / f"{advert}{suffix}").unlink(missing_ok=True)


def _check(repo: str, advert: str) -> None:
    if not is_full_id(repo) or not is_full_id(advert):
        raise IntegrityError("secure contributions are kept by repository and advert id")
