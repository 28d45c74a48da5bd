"""The atproto Merkle Search Tree of a repository: persistent, canonical, with the proof blocks a commit carries.

A Sync 1.1 consumer (a relay, Jetstream, ``goat firehose --verify-mst``) checks each ``#commit`` by *inverting* its
operations on the partial tree carried in the frame's CAR and comparing the root it gets with the frame's
``prevData``. For synthetic archives to pass that check, every repo needs its real MST (the structure is a pure
function of the key set: a key's layer is the number of leading zero bit-pairs of its SHA-256, fanout 4), and every
commit must carry exactly the nodes that inversion reads.

Trees here are immutable: an insert or a removal returns a new root sharing every untouched node with the old one,
so keeping each repo's tree costs O(log n) per operation. :func:`commit_proof` applies a commit's operations,
inverts them on the new tree while recording which of its nodes were read, checks the inverted root equals the
old one (the same check a consumer makes), and returns the new root with those nodes' blocks.
"""

from __future__ import annotations

import hashlib
import itertools
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import libipld

DAG_CBOR_SHA256_PREFIX = b"\x01\x71\x12\x20"  # CIDv1, dag-cbor, sha2-256, 32-byte digest


def cid_of(data: bytes) -> bytes:
    """Raw CIDv1 (dag-cbor, sha2-256) of DAG-CBOR ``data``, in libipld's representation (bytes, no 0x00 prefix)."""
    return DAG_CBOR_SHA256_PREFIX + hashlib.sha256(data).digest()


def layer(key: bytes) -> int:
    """The MST layer of ``key``: leading zero bits of its SHA-256, halved and rounded down (fanout 4)."""
    digest = int.from_bytes(hashlib.sha256(key).digest(), "big")
    return (256 - digest.bit_length()) // 2


class Node:
    """One MST node at ``height``: sorted ``keys`` (all of that layer) with their value CIDs, and ``subs``, one more
    than the keys, the subtrees (one layer lower, or None when empty) left of, between and right of them.

    Immutable; the CID and encoding are computed once, when first asked for."""

    __slots__ = ("_cid", "_data", "height", "keys", "subs", "vals")

    def __init__(self, height: int, keys: tuple[bytes, ...], vals: tuple[bytes, ...], subs: tuple[Node | None, ...]):
        self.height = height
        self.keys = keys
        self.vals = vals
        self.subs = subs
        self._cid: bytes | None = None
        self._data: bytes | None = None

    def encode(self) -> bytes:
        """The node's DAG-CBOR block: ``{l, e: [{p, k, v, t}]}``, each key compressed against the previous one."""
        if self._data is None:
            entries: list[dict[str, Any]] = []
            prev = b""
            for key, val, right in zip(self.keys, self.vals, self.subs[1:], strict=True):
                limit = min(len(key), len(prev))
                differ = int.from_bytes(key[:limit], "big") ^ int.from_bytes(prev[:limit], "big")
                shared = limit - (differ.bit_length() + 7) // 8  # the bytes before the first differing one
                entries.append({"k": key[shared:], "p": shared, "t": _cid(right), "v": val})
                prev = key
            self._data = libipld.encode_dag_cbor({"e": entries, "l": _cid(self.subs[0])})
        return self._data

    @property
    def cid(self) -> bytes:
        if self._cid is None:
            self._cid = cid_of(self.encode())
        return self._cid


def _cid(node: Node | None) -> bytes | None:
    return None if node is None else node.cid


EMPTY = Node(0, (), (), (None,))


def _make(height: int, keys: tuple[bytes, ...], vals: tuple[bytes, ...], subs: tuple[Node | None, ...]) -> Node | None:
    """A node, or None when it would hold nothing (no key and no subtree): empty subtrees are absent."""
    if not keys and subs[0] is None:
        return None
    return Node(height, keys, vals, subs)


def _lift(node: Node | None, height: int) -> Node | None:
    """``node`` under empty-keyed nodes up to ``height``: a subtree is always exactly one layer below its parent."""
    if node is None:
        return None
    while node.height < height:
        node = Node(node.height + 1, (), (), (node,))
    return node


class Reads:
    """The nodes an operation read: what a consumer holding only the commit's blocks needs to repeat it."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}

    def add(self, node: Node) -> None:
        self.nodes[id(node)] = node


def _split(node: Node | None, key: bytes, reads: Reads) -> tuple[Node | None, Node | None]:
    """The parts of ``node``'s subtree below and above ``key`` (absent from it), at the same height."""
    if node is None:
        return None, None
    reads.add(node)
    i = bisect_left(node.keys, key)
    low, high = _split(node.subs[i], key, reads)
    h = node.height
    left = _make(h, node.keys[:i], node.vals[:i], (*node.subs[:i], low))
    right = _make(h, node.keys[i:], node.vals[i:], (high, *node.subs[i + 1 :]))
    return left, right


def _merge(left: Node | None, right: Node | None, reads: Reads) -> Node | None:
    """Two adjacent subtrees of one height (every key of ``left`` below every key of ``right``) as one."""
    if left is None:
        return right
    if right is None:
        return left
    reads.add(left)
    reads.add(right)
    middle = _merge(left.subs[-1], right.subs[0], reads)
    return Node(left.height, left.keys + right.keys, left.vals + right.vals, (*left.subs[:-1], middle, *right.subs[1:]))


def _insert(node: Node, key: bytes, val: bytes, level: int, reads: Reads) -> Node:
    reads.add(node)
    h = node.height
    i = bisect_left(node.keys, key)
    if i < len(node.keys) and node.keys[i] == key:
        return Node(h, node.keys, (*node.vals[:i], val, *node.vals[i + 1 :]), node.subs)
    if level == h:
        low, high = _split(node.subs[i], key, reads)
        return Node(
            h,
            (*node.keys[:i], key, *node.keys[i:]),
            (*node.vals[:i], val, *node.vals[i:]),
            (*node.subs[:i], low, high, *node.subs[i + 1 :]),
        )
    child = node.subs[i]
    if child is None:
        child = _lift(Node(level, (key,), (val,), (None, None)), h - 1)
    else:
        child = _insert(child, key, val, level, reads)
    return Node(h, node.keys, node.vals, (*node.subs[:i], child, *node.subs[i + 1 :]))


def insert(root: Node, key: bytes, val: bytes, reads: Reads | None = None) -> Node:
    """The tree ``root`` with ``key`` set to the CID ``val`` (added, or replaced when present)."""
    reads = reads if reads is not None else Reads()
    level = layer(key)
    if not root.keys and root.subs[0] is None:
        return Node(level, (key,), (val,), (None, None))
    if level > root.height:
        reads.add(root)
        low, high = _split(root, key, reads)
        return Node(level, (key,), (val,), (_lift(low, level - 1), _lift(high, level - 1)))
    return _insert(root, key, val, level, reads)


def _remove(node: Node | None, key: bytes, level: int, reads: Reads) -> Node | None:
    if node is None:
        raise KeyError(key)
    reads.add(node)
    h = node.height
    i = bisect_left(node.keys, key)
    if level == h:
        if i == len(node.keys) or node.keys[i] != key:
            raise KeyError(key)
        merged = _merge(node.subs[i], node.subs[i + 1], reads)
        keys, vals = node.keys[:i] + node.keys[i + 1 :], node.vals[:i] + node.vals[i + 1 :]
        return _make(h, keys, vals, (*node.subs[:i], merged, *node.subs[i + 2 :]))
    child = _remove(node.subs[i], key, level, reads)
    return _make(h, node.keys, node.vals, (*node.subs[:i], child, *node.subs[i + 1 :]))


def remove(root: Node, key: bytes, reads: Reads | None = None) -> Node:
    """The tree ``root`` without ``key`` (KeyError when absent), its top trimmed to the highest remaining layer."""
    reads = reads if reads is not None else Reads()
    level = layer(key)
    if level > root.height:
        raise KeyError(key)
    out = _remove(root, key, level, reads)
    while out is not None and not out.keys:
        out = out.subs[0]
        if out is not None and not out.keys:  # trimming through it takes knowing it has no keys: a read
            reads.add(out)
    return EMPTY if out is None else out


def get(root: Node, key: bytes) -> bytes | None:
    """The value CID of ``key`` in the tree, or None."""
    node: Node | None = root
    while node is not None:
        i = bisect_left(node.keys, key)
        if i < len(node.keys) and node.keys[i] == key:
            return node.vals[i]
        node = node.subs[i]
    return None


def from_items(items: Iterable[tuple[bytes, bytes]]) -> Node:
    """The tree of ``(key, value CID)`` pairs (the last value of a repeated key wins), built bottom-up from the
    sorted keys in one pass per layer: the same tree inserting them one by one gives, in a fraction of the time."""
    latest = dict(items)
    keys = sorted(latest)
    if not keys:
        return EMPTY
    layers = [layer(k) for k in keys]
    top = max(layers)
    root = _build(keys, [latest[k] for k in keys], layers, 0, len(keys), top)
    assert root is not None
    return root


def _build(keys: list[bytes], vals: list[bytes], layers: list[int], lo: int, hi: int, height: int) -> Node | None:
    """The subtree at ``height`` of the sorted keys ``[lo, hi)`` (all of layer ``height`` or below)."""
    if lo >= hi:
        return None
    here = [i for i in range(lo, hi) if layers[i] == height]
    if height == 0:
        return Node(0, tuple(keys[lo:hi]), tuple(vals[lo:hi]), (None,) * (hi - lo + 1))
    bounds = [lo - 1, *here, hi]
    subs = tuple(_build(keys, vals, layers, a + 1, b, height - 1) for a, b in itertools.pairwise(bounds))
    return Node(height, tuple(keys[i] for i in here), tuple(vals[i] for i in here), subs)


def walk(root: Node) -> Iterable[Node]:
    """Every node of the tree, root first."""
    stack: list[Node] = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(sub for sub in node.subs if sub is not None)


@dataclass(frozen=True, slots=True)
class Change:
    """One record operation of a commit on the tree: ``prev`` is the CID the key had (None for a create), ``value``
    the CID it gets (None for a delete)."""

    key: bytes
    prev: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Proof:
    root: Node
    blocks: list[tuple[bytes, bytes]]  # (cid, DAG-CBOR) of the new tree's nodes that inverting the commit reads


class InversionMismatch(AssertionError):
    """Inverting a commit on its own proof did not give back the previous root: a bug in this module."""


def _orders(changes: Sequence[Change]) -> list[list[Change]]:
    """The orders a consumer may invert a commit's operations in: indigo's (deletions first, then by key), its
    reverse, and the commit's own order reversed. The inverted root is the same in each; the nodes read are not."""
    if len(changes) < 2:
        return [list(changes)]
    indigo = sorted(changes, key=lambda c: (c.value is not None, c.key))
    return [indigo, indigo[::-1], list(changes)[::-1]]


def commit_proof(old: Node, changes: Sequence[Change]) -> Proof:
    """Apply ``changes`` to ``old`` and return the new root with the blocks of the new tree a consumer needs to
    invert them (the nodes read on the way to each key, and by the splits, merges and trims inversion makes),
    whichever of :func:`_orders` it inverts them in.

    The inversion is run here on the new tree in each of those orders, the read nodes recorded, and each inverted
    root compared with ``old``'s: the check a consumer makes, made before the commit is written."""
    new = old
    for change in changes:
        new = remove(new, change.key) if change.value is None else insert(new, change.key, change.value)
    reads = Reads()
    reads.add(new)
    for order in _orders(changes):
        inverted = new
        for change in order:
            if change.prev is None:
                inverted = remove(inverted, change.key, reads)
            else:
                inverted = insert(inverted, change.key, change.prev, reads)
        if inverted.cid != old.cid:
            raise InversionMismatch(f"inverted root {inverted.cid.hex()} is not the previous root {old.cid.hex()}")
    in_new = {id(node) for node in walk_touched(new, reads)}
    blocks = [(node.cid, node.encode()) for key, node in reads.nodes.items() if key in in_new]
    return Proof(new, blocks)


def walk_touched(root: Node, reads: Reads) -> Iterable[Node]:
    """The nodes of ``root``'s tree that ``reads`` holds, found by descending only into read nodes (a read node's
    parent was read too, so this visits O(reads) nodes, not the whole tree)."""
    if id(root) not in reads.nodes:
        return
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(sub for sub in node.subs if sub is not None and id(sub) in reads.nodes)
