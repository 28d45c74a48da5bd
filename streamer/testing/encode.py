"""Encode ``com.atproto.sync.subscribeRepos`` frames in the real wire format.

The synthetic archives (:mod:`streamer.testing.synth`) must exercise exactly the code paths a live relay exercises,
so the
frames built here are byte-for-byte the same shape a relay sends: a DAG-CBOR header ``{t, op}`` followed by a
DAG-CBOR body, and for ``#commit`` a CAR v1 file holding a signed-commit block, an MST node and one block per
created or updated record, each addressed by a CIDv1 (dag-cbor, sha2-256) of its exact bytes. The decoder in
:mod:`streamer.core.frames` and the atproto SDK both read them like real frames.

libipld does the DAG-CBOR (canonical key order, tag-42 links) but has no CAR *encoder*, so the CAR framing (unsigned
varint length prefixes) is written here. libipld writes any ``bytes`` value that parses as a CID as a tag-42 link;
that is how links are given to it, and it is also why signatures are checked not to look like a CID (see
:func:`signature`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import libipld

from streamer.core.events import rfc3339

DAG_CBOR_SHA256_PREFIX = b"\x01\x71\x12\x20"  # CIDv1, codec dag-cbor (0x71), multihash sha2-256 (0x12), 32 bytes
S32_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"  # atproto's base32-sortable alphabet for TIDs

Op = tuple[str, str, str, "dict[str, Any] | None"]  # (action, collection, rkey, record or None for a delete)


def varint(n: int) -> bytes:
    """Unsigned LEB128 varint, the length prefix of CAR v1 headers and blocks."""
    if n < 0:
        raise ValueError(f"varint of a negative number: {n}")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def cid_of(data: bytes) -> bytes:
    """Raw CIDv1 (dag-cbor, sha2-256) of DAG-CBOR ``data``, in libipld's representation (bytes, no 0x00 prefix)."""
    return DAG_CBOR_SHA256_PREFIX + hashlib.sha256(data).digest()


def block(value: Any) -> tuple[bytes, bytes]:
    """``(cid, bytes)`` of a DAG-CBOR block: the CID is computed over the exact bytes that go into the CAR."""
    data = libipld.encode_dag_cbor(value)
    return cid_of(data), data


def car(roots: Sequence[bytes], blocks: Sequence[tuple[bytes, bytes]]) -> bytes:
    """A CAR v1 file: varint-prefixed header ``{version: 1, roots}``, then varint(len(cid)+len(data)) + cid + data
    for each block."""
    header = libipld.encode_dag_cbor({"version": 1, "roots": list(roots)})
    parts = [varint(len(header)), header]
    for cid, data in blocks:
        parts += [varint(len(cid) + len(data)), cid, data]
    return b"".join(parts)


def tid(time_us: int, clock_id: int = 0) -> str:
    """A timestamp identifier (the format of repo revs and most record keys): 13 base32-sortable characters of
    ``time_us << 10 | clock_id``, so TIDs sort like the times they encode."""
    value = ((time_us & ((1 << 53) - 1)) << 10) | (clock_id & 0x3FF)
    return "".join(S32_ALPHABET[(value >> (5 * i)) & 31] for i in reversed(range(13)))


def _looks_like_cid(raw: bytes) -> bool:
    return libipld.encode_dag_cbor(raw)[:2] == b"\xd8\x2a"


def signature(did: str, unsigned: bytes) -> bytes:
    """A deterministic 64-byte stand-in for the repo signing key's signature over ``unsigned``.

    About 1 in 1000 random 64-byte strings starting with 0x01 parse as a CID, and libipld would then write them as
    a tag-42 link instead of a byte string, which readers reject or misread; such draws are rehashed."""
    counter = 0
    while True:
        sig = hashlib.blake2b(unsigned + counter.to_bytes(4, "little"), digest_size=64, key=did.encode()[:64]).digest()
        if sig[0] != 0x01 or not _looks_like_cid(sig):
            return sig
        counter += 1


def _frame(type_: str, body: dict[str, Any]) -> bytes:
    return libipld.encode_dag_cbor({"t": type_, "op": 1}) + libipld.encode_dag_cbor(body)


def _mst_node(entries: list[tuple[str, bytes]]) -> dict[str, Any]:
    """One MST leaf node over ``(key, value CID)`` entries, keys prefix-compressed as in atproto repos. Real
    commits carry the whole changed path of the tree; one node keeps the frames small and the data CID resolvable."""
    out, prev = [], b""
    for key, value in sorted(entries):
        k = key.encode()
        p = 0
        while p < min(len(k), len(prev)) and k[p] == prev[p]:
            p += 1
        out.append({"k": k[p:], "p": p, "t": None, "v": value})
        prev = k
    return {"e": out, "l": None}


def commit_frame(
    seq: int,
    did: str,
    time_us: int,
    ops: Sequence[Op],
    *,
    rev: str | None = None,
    since: str | None = None,
    prev_data: bytes | None = None,
    deleted: dict[str, bytes] | None = None,
) -> bytes:
    """A ``#commit`` frame for ``did`` applying ``ops`` = ``[(action, collection, rkey, record or None)]``.

    ``rev`` defaults to a TID of ``time_us``; ``since`` is the repo's previous rev; ``prev_data`` the previous MST
    root (a fresh hash when unknown). ``deleted`` maps a path of an updated or deleted record to the CID it had,
    given as the op's ``prev`` like current relays do. Returns the raw frame bytes."""
    frame, _ = encode_commit(seq, did, time_us, ops, rev=rev, since=since, prev_data=prev_data, deleted=deleted)
    return frame


def encode_commit(
    seq: int,
    did: str,
    time_us: int,
    ops: Sequence[Op],
    *,
    rev: str | None = None,
    since: str | None = None,
    prev_data: bytes | None = None,
    deleted: dict[str, bytes] | None = None,
) -> tuple[bytes, bytes]:
    """:func:`commit_frame` plus the commit's data (MST root) CID, which a generator passes as the next commit's
    ``prev_data`` so consecutive commits of one repo chain like real ones."""
    rev = rev or tid(time_us, seq)
    deleted = deleted or {}
    blocks: list[tuple[bytes, bytes]] = []
    body_ops: list[dict[str, Any]] = []
    entries: list[tuple[str, bytes]] = []
    for action, collection, rkey, record in ops:
        path = f"{collection}/{rkey}"
        op: dict[str, Any] = {"action": action, "path": path, "cid": None}
        if action in ("create", "update"):
            if record is None:
                raise ValueError(f"{action} of {path} needs a record")
            cid, data = block(record)
            blocks.append((cid, data))
            entries.append((path, cid))
            op["cid"] = cid
        elif action != "delete":
            raise ValueError(f"unknown action {action!r}")
        if path in deleted:
            op["prev"] = deleted[path]
        body_ops.append(op)
    node_cid, node_data = block(_mst_node(entries))
    unsigned = {"did": did, "version": 3, "data": node_cid, "rev": rev, "prev": None}
    signed = dict(unsigned, sig=signature(did, libipld.encode_dag_cbor(unsigned)))
    commit_cid, commit_data = block(signed)
    blocks = [(node_cid, node_data), *blocks, (commit_cid, commit_data)]
    body = {
        "seq": seq,
        "rebase": False,
        "tooBig": False,
        "repo": did,
        "commit": commit_cid,
        "rev": rev,
        "since": since,
        "blocks": car([commit_cid], blocks),
        "ops": body_ops,
        "blobs": [],
        "time": rfc3339(time_us),
        "prevData": prev_data if prev_data is not None else cid_of(f"{did}:{rev}:prev".encode()),
    }
    return _frame("#commit", body), node_cid


def identity_frame(seq: int, did: str, time_us: int, handle: str | None = None) -> bytes:
    """An ``#identity`` frame: the DID document or handle of ``did`` changed."""
    body: dict[str, Any] = {"did": did, "seq": seq, "time": rfc3339(time_us)}
    if handle is not None:
        body["handle"] = handle
    return _frame("#identity", body)


def account_frame(seq: int, did: str, time_us: int, active: bool, status: str | None = None) -> bytes:
    """An ``#account`` frame: the hosting status of ``did`` (``status`` such as "deactivated" when not active)."""
    body: dict[str, Any] = {"did": did, "seq": seq, "time": rfc3339(time_us), "active": active}
    if status is not None:
        body["status"] = status
    return _frame("#account", body)
