"""Payloads as IPFS content: blocks keyed by CID, and files as UnixFS DAGs laid out exactly as Kubo does.

``add`` cuts bytes into 256 KiB raw leaves and links them with dag-pb nodes of at most 174 links (Kubo's
balanced layout), so the root CID is what ``ipfs add --cid-version=1 --raw-leaves`` prints for the same bytes.
``cat`` walks a DAG back, re-hashing every block against its CID and refusing DAGs deeper, wider or larger
than declared, so bytes from anywhere can be read without trusting them. ``Bounds`` is what every walk (here,
and a Bitswap fetch) holds a DAG to: no link of zero bytes, each block exactly the size its parent gives it, and
no more block visits (a repeated link counts each time) than a DAG of the declared size has with leaves of
``MIN_LEAF`` bytes, plus the depth allowed, so a DAG of a few distinct blocks linked over and over (a "DAG bomb") is
refused after a bounded number of visits. ``MIN_LEAF`` (4 KiB, a file system block) rather than ``CHUNK``: a payload
in pieces holds small sealed deltas among its whole pieces (``storage.piece_delta``), each padded to ``MIN_LEAF``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..core.cid import DAG_PB, RAW, FileNode, Link, ParsedCid, cid_for, decode_file_node, encode_file_node, parse_cid
from ..core.errors import IntegrityError, InvalidInput, NotFound
from ..core.ids import Cid
from .stores import ObjectStore

CHUNK = 256 * 1024
MAX_LINKS = 174
MAX_DEPTH = 8
MAX_BLOCK = 1 << 20  # a leaf
MIN_LEAF = 4096  # the smallest leaf a walk counts on (Bounds)
MAX_NODE = 1 << 15  # a node: MAX_LINKS links take about 9 KiB


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
    leaves = []
    for start in range(0, max(len(data), 1), CHUNK):
        leaf = data[start:start + CHUNK]
        cid = cid_for(RAW, leaf)
        store.put(cid, leaf)
        leaves.append((cid, len(leaf)))
    return link_leaves(store, leaves)


def link_leaves(store: BlockStore, leaves: list[tuple[Cid, int]]) -> Cid:
    """The root of a UnixFS file DAG over raw ``leaves`` (CID and bytes of each, in file order, stored already),
    built as Kubo builds one: its nodes are stored here. Leaves need not be of one size (``storage.pieces``)."""
    level = [(cid, size, size) for cid, size in leaves]  # (cid, tsize, file bytes) of each node of the current level
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


@dataclass(frozen=True)
class NodeShape:
    """A block as its DAG sees it, checked: the file bytes it stands for, and its links as (child CID, file bytes
    the child must hold)."""

    size: int
    links: tuple[tuple[ParsedCid, int], ...] = ()


def shape(root: Cid, cid: ParsedCid, block: bytes) -> NodeShape:
    """The shape of ``block`` (whose CID the caller has checked), refusing with ``IntegrityError`` (naming
    ``root``, the DAG being read) a leaf over ``MAX_BLOCK`` bytes, a node over ``MAX_NODE`` bytes or
    ``MAX_LINKS`` links, and a link of zero bytes (only a lone empty leaf, the whole of an empty file, holds
    none). Decoding a node is CPU work: callers walking large DAGs do it off the event loop."""
    if cid.codec == RAW:
        if len(block) > MAX_BLOCK:
            raise IntegrityError(f"block {cid.text} of the DAG under {root} is larger than {MAX_BLOCK} bytes",
                                 cid=root)
        return NodeShape(len(block))
    if len(block) > MAX_NODE:
        raise IntegrityError(f"node {cid.text} of the DAG under {root} is larger than {MAX_NODE} bytes", cid=root)
    node = decode_file_node(block)
    if len(node.links) > MAX_LINKS:
        raise IntegrityError(f"node {cid.text} of the DAG under {root} has {len(node.links)} links (at most "
                             f"{MAX_LINKS})", cid=root)
    if 0 in node.blocksizes:
        raise IntegrityError(f"node {cid.text} of the DAG under {root} links a block of zero bytes", cid=root)
    return NodeShape(node.filesize, tuple((parse_cid(link.cid), size)
                                      for link, size in zip(node.links, node.blocksizes, strict=True)))


def max_blocks(size: int, leaf: int = CHUNK) -> int:
    """How many blocks ``add`` makes of ``size`` bytes (with ``leaf``: a DAG of leaves of that many bytes): its
    leaves and the nodes over them."""
    level = max(1, -(-size // leaf))
    total = level
    while level > 1:
        level = -(-level // MAX_LINKS)
        total += level
    return total


def max_visits(size: int) -> int:
    """How many block visits a walk of a DAG of ``size`` declared bytes may make: the blocks of one whose leaves
    hold ``MIN_LEAF`` bytes, plus one per level of depth allowed."""
    return max_blocks(size, MIN_LEAF) + MAX_DEPTH


class Bounds:
    """What one walk of the DAG under ``root`` may visit, for a caller allowing ``max_size`` file bytes.

    Every block is held to the size its parent gives it (the root to at most ``max_size``): a leaf holds exactly
    that many bytes and a node's links add up to exactly its own. A link may repeat (a file of zeros repeats its
    leaves), so the same block may be visited more than once, but every visit counts: at most ``max_visits`` of
    the root's declared size, and never deeper than ``MAX_DEPTH``. So a
    walk reads at most the declared bytes of leaves and a bounded number of small nodes, whatever the DAG.
    """

    def __init__(self, root: Cid, max_size: int) -> None:
        if parse_cid(root).version == 0:
            raise InvalidInput(f"{root} is a CIDv0, what `ipfs add` makes by default: Flair reads content added with "
                               "`ipfs add --cid-version=1 --raw-leaves` only (its payloads are such DAGs)", cid=root)
        self.root = root
        self.limit = max_visits(max_size)
        self.visits = 0

    def visit(self, depth: int) -> None:
        """Count one visit of a block at ``depth``; ``IntegrityError`` past the depth or the number allowed."""
        if depth > MAX_DEPTH:
            raise IntegrityError(f"DAG under {self.root} is deeper than {MAX_DEPTH}", cid=self.root)
        self.visits += 1
        if self.visits > self.limit:
            raise IntegrityError(f"DAG under {self.root} has more than {self.limit} blocks for the bytes it "
                                 "declares", cid=self.root)

    def place(self, cid: ParsedCid, shape: NodeShape, allowed: int, depth: int) -> list[tuple[ParsedCid, int, int]]:
        """Check a visited block's shape against the bytes its parent gave it (``allowed``); returns its links
        as (child, bytes it must hold, depth)."""
        if depth == 0:
            if shape.size > allowed:
                what = "holds more than its declared size" if cid.codec == RAW else \
                    f"declares more than {allowed} bytes"
                raise IntegrityError(f"DAG under {self.root} {what}", cid=self.root)
            self.limit = min(self.limit, max_visits(shape.size))
        elif shape.size != allowed:
            more = "more" if shape.size > allowed else "less"
            raise IntegrityError(f"DAG under {self.root} holds {more} than its declared size at {cid.text} "
                                 f"({shape.size} bytes where its parent says {allowed})", cid=self.root)
        return [(child, size, depth + 1) for child, size in shape.links]


def walk(store: BlockStore, root: Cid, *, max_size: int) -> Iterator[tuple[ParsedCid, bytes]]:
    """Every block of the DAG under ``root`` (each re-hashed), depth first, within ``Bounds``; leaves in file
    order, a repeated block each time it is linked."""
    bounds = Bounds(root, max_size)
    shapes: dict[ParsedCid, NodeShape] = {}  # each distinct node decoded once
    stack: list[tuple[ParsedCid, int, int]] = [(parse_cid(root), max_size, 0)]  # (cid, bytes it holds, depth)
    while stack:
        cid, allowed, depth = stack.pop()
        bounds.visit(depth)
        block = store.get(cid)
        known = shapes.get(cid)
        if known is None:
            known = shapes[cid] = shape(root, cid, block)
        stack.extend(reversed(bounds.place(cid, known, allowed, depth)))
        yield cid, block


def leaves(store: BlockStore, root: Cid, *, max_size: int) -> list[tuple[ParsedCid, int]]:
    """The leaves of the DAG under ``root`` in file order, each with the bytes it must hold, reading only its
    nodes (within ``Bounds``): what reads a file's ranges without reading it all (``storage.pieces``). A leaf is
    checked when it is read: ``check_leaf``. A DAG that is one leaf is read to learn its size."""
    bounds = Bounds(root, max_size)
    out: list[tuple[ParsedCid, int]] = []
    stack: list[tuple[ParsedCid, int, int]] = [(parse_cid(root), max_size, 0)]
    while stack:
        cid, allowed, depth = stack.pop()
        bounds.visit(depth)
        if cid.codec == RAW and depth > 0:
            if allowed > MAX_BLOCK:
                raise IntegrityError(f"DAG under {root} links a block of {allowed} bytes, over {MAX_BLOCK}",
                                     cid=root)
            out.append((cid, allowed))
            continue
        block = store.get(cid)
        children = bounds.place(cid, shape(root, cid, block), allowed, depth)
        if cid.codec == RAW:
            out.append((cid, len(block)))
        stack.extend(reversed(children))
    return out


def check_leaf(root: Cid, cid: ParsedCid, block: bytes, size: int) -> bytes:
    """``block`` (re-hashed against ``cid`` by the store already) if it holds the ``size`` bytes its parent gives
    it, as ``leaves`` listed it; ``IntegrityError`` otherwise."""
    if len(block) != size:
        raise IntegrityError(f"DAG under {root} holds {len(block)} bytes at {cid.text} where its parent says "
                             f"{size}", cid=root)
    return block


def cat(store: BlockStore, root: Cid, *, max_size: int) -> bytes:
    """The file bytes under ``root``, at most ``max_size`` of them."""
    return b"".join(block for cid, block in walk(store, root, max_size=max_size) if cid.codec == RAW)


def file_size(store: BlockStore, root: Cid, *, max_size: int) -> int:
    """The file bytes under ``root`` (at most ``max_size``), counted as ``cat`` would read them, without holding
    them."""
    return sum(len(block) for cid, block in walk(store, root, max_size=max_size) if cid.codec == RAW)


def block_keys(store: BlockStore, root: Cid, *, max_size: int) -> set[str]:
    """Digests of every block of the DAG under ``root``: what pinning ``root`` keeps."""
    return {cid.key for cid, _ in walk(store, root, max_size=max_size)}
