"""Payloads as IPFS content: blocks keyed by CID, and files as UnixFS DAGs laid out exactly as Kubo does.

``add`` cuts bytes into 256 KiB raw leaves and links them with dag-pb nodes of at most 174 links (Kubo's
balanced layout), so the root CID is what ``ipfs add --cid-version=1 --raw-leaves`` prints for the same bytes.
``cat`` walks a DAG back, re-hashing every block against its CID and refusing DAGs deeper, wider or larger
than declared, so bytes from anywhere can be read without trusting them.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..core.cid import DAG_PB, RAW, FileNode, Link, ParsedCid, cid_for, decode_file_node, encode_file_node, parse_cid
from ..core.errors import IntegrityError, NotFound
from ..core.ids import Cid
from .stores import ObjectStore

CHUNK = 256 * 1024
MAX_LINKS = 174
MAX_DEPTH = 8
MAX_BLOCK = 1 << 20


class BlockStore:
    """Blocks under their CID's sha2-256 digest in an object store; every read is re-hashed.

    CIDs are given as text or already parsed (``ParsedCid``, which saves re-parsing on hot paths)."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    def put(self, cid: Cid | ParsedCid, block: bytes) -> None:
        parsed = _parsed(cid)
        parsed.check(block)
        self.objects.put(parsed.key, block)

    def put_hashed(self, cid: ParsedCid, block: bytes) -> None:
        """Store ``block`` under a CID the caller computed from these very bytes (``cid_from_prefix`` does):
        ``put`` without hashing them a second time."""
        self.objects.put(cid.key, block)

    def get(self, cid: Cid | ParsedCid) -> bytes:
        parsed = _parsed(cid)
        try:
            block = self.objects.get(parsed.key)
        except NotFound:
            raise NotFound(f"block {parsed.text} is not stored here", cid=parsed.text) from None
        parsed.check(block)
        return block

    def has(self, cid: Cid | ParsedCid) -> bool:
        return self.objects.has(_parsed(cid).key)

    def keys(self) -> Iterator[str]:
        """Digests (hex) of every stored block."""
        return self.objects.keys()

    def delete_key(self, key: str) -> None:
        self.objects.delete(key)


def _parsed(cid: Cid | ParsedCid) -> ParsedCid:
    return cid if isinstance(cid, ParsedCid) else parse_cid(cid)


def add(store: BlockStore, data: bytes) -> Cid:
    """Store ``data`` as a UnixFS file DAG; returns the root CID (Kubo's, for the same bytes)."""
    level: list[tuple[Cid, int, int]] = []  # (cid, tsize, file bytes) of each node of the current level
    for start in range(0, max(len(data), 1), CHUNK):
        leaf = data[start:start + CHUNK]
        cid = cid_for(RAW, leaf)
        store.put(cid, leaf)
        level.append((cid, len(leaf), len(leaf)))
    while len(level) > 1:
        parents = []
        for start in range(0, len(level), MAX_LINKS):
            group = level[start:start + MAX_LINKS]
            block = encode_file_node(FileNode(tuple(Link(c, t) for c, t, _ in group), tuple(s for _, _, s in group)))
            cid = cid_for(DAG_PB, block)
            store.put(cid, block)
            parents.append((cid, len(block) + sum(t for _, t, _ in group), sum(s for _, _, s in group)))
        level = parents
    return level[0][0]


def children(root: Cid, cid: ParsedCid, block: bytes, allowed: int) -> list[tuple[ParsedCid, int]]:
    """The links of a DAG block as (child CID, bytes it may hold), after checking the block's bounds.

    ``allowed`` is how many file bytes the block may stand for; a block over ``MAX_BLOCK``, a leaf larger than
    that, or a node declaring more raises ``IntegrityError`` (naming ``root``, the DAG being read).
    """
    if len(block) > MAX_BLOCK:
        raise IntegrityError(f"block {cid.text} is larger than {MAX_BLOCK} bytes", cid=cid.text)
    if cid.codec == RAW:
        if len(block) > allowed:
            raise IntegrityError(f"DAG under {root} holds more than its declared size", cid=root)
        return []
    node = decode_file_node(block)
    if node.filesize > allowed:
        raise IntegrityError(f"DAG under {root} declares more than {allowed} bytes", cid=root)
    return [(parse_cid(link.cid), size) for link, size in zip(node.links, node.blocksizes, strict=True)]


def walk(store: BlockStore, root: Cid, *, max_size: int) -> Iterator[tuple[ParsedCid, bytes]]:
    """Every block of the DAG under ``root`` (each re-hashed), depth first; leaves in file order."""
    stack: list[tuple[ParsedCid, int, int]] = [(parse_cid(root), 0, max_size)]  # (cid, depth, bytes it may hold)
    while stack:
        cid, depth, allowed = stack.pop()
        if depth > MAX_DEPTH:
            raise IntegrityError(f"DAG under {root} is deeper than {MAX_DEPTH}", cid=root)
        block = store.get(cid)
        stack.extend(reversed([(child, depth + 1, size) for child, size in children(root, cid, block, allowed)]))
        yield cid, block


def cat(store: BlockStore, root: Cid, *, max_size: int) -> bytes:
    """The file bytes under ``root``, at most ``max_size`` of them."""
    return b"".join(block for cid, block in walk(store, root, max_size=max_size) if cid.codec == RAW)


def block_keys(store: BlockStore, root: Cid, *, max_size: int) -> set[str]:
    """Digests of every block of the DAG under ``root``: what pinning ``root`` keeps."""
    return {cid.key for cid, _ in walk(store, root, max_size=max_size)}
