"""Encode ``com.atproto.sync.subscribeRepos`` frames in the real wire format.

The synthetic archives (:mod:`streamer.testing.synth`) must exercise exactly the code paths a live relay exercises
and pass the checks a Sync 1.1 consumer makes, so the frames built here are what a PDS sends: a DAG-CBOR header
``{t, op}`` followed by a DAG-CBOR body, and for ``#commit`` a CAR v1 file holding the signed commit (a real K-256
signature, :mod:`streamer.testing.identity`), the MST nodes that prove the operations (:mod:`streamer.testing.mst`)
and one block per created or updated record, each addressed by a CIDv1 (dag-cbor, sha2-256) of its exact bytes.
The decoder in :mod:`streamer.core.frames`, the atproto SDK and indigo's verifiers read them like real frames.

libipld does the DAG-CBOR (canonical key order, tag-42 links) but has no CAR *encoder*, so the CAR framing (unsigned
varint length prefixes) is written here. libipld writes any ``bytes`` value that parses as a CID as a tag-42 link;
that is how links are given to it, and it is also why a signature that happens to parse as a CID is written by
cbor2 instead (:func:`signed_commit_block`).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import cbor2
import coincurve
import libipld

from streamer.core.events import rfc3339
from streamer.testing import identity, mst
from streamer.testing.mst import cid_of

S32_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"  # atproto's base32-sortable alphabet for TIDs
_SORTABLE = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", S32_ALPHABET.encode())

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
    # 65 bits, left-aligned in 9 bytes: the first 13 characters of their base32 are the TID, in atproto's alphabet
    return base64.b32encode((value << 7).to_bytes(9, "big")).translate(_SORTABLE)[:13].decode()


def _looks_like_cid(raw: bytes) -> bool:
    return libipld.encode_dag_cbor(raw)[:2] == b"\xd8\x2a"


def signed_commit_block(unsigned: dict[str, Any], sig: bytes) -> tuple[bytes, bytes]:
    """``(cid, bytes)`` of the signed commit ``unsigned + {sig}``.

    About one real signature in 256,000 parses as a CID, and libipld would then write it as a tag-42 link instead
    of a byte string; such a commit is encoded with cbor2 (canonical order, links as tag 42), which writes bytes as
    bytes. Both give the same DAG-CBOR for every other signature."""
    if not _looks_like_cid(sig):
        return block(dict(unsigned, sig=sig))
    value = {k: cbor2.CBORTag(42, b"\x00" + v) if k == "data" else v for k, v in unsigned.items()}
    data = cbor2.dumps(dict(value, sig=sig), canonical=True)
    return cid_of(data), data


def _frame(type_: str, body: dict[str, Any]) -> bytes:
    return libipld.encode_dag_cbor({"t": type_, "op": 1}) + libipld.encode_dag_cbor(body)


def _prior_cid(did: str, path: str) -> bytes:
    """A CID for a record a stateless caller updates or deletes without saying what it held."""
    return cid_of(f"{did}/{path}:prior".encode())


def commit_frame(
    seq: int,
    did: str,
    time_us: int,
    ops: Sequence[Op],
    *,
    rev: str | None = None,
    since: str | None = None,
    deleted: dict[str, bytes] | None = None,
) -> bytes:
    """A ``#commit`` frame for ``did`` applying ``ops`` = ``[(action, collection, rkey, record or None)]`` to a repo
    that held just the records those ops update or delete.

    ``rev`` defaults to a TID of ``time_us``; ``since`` is the repo's previous rev. ``deleted`` maps the path of an
    updated or deleted record to the CID it had (a stand-in CID otherwise). The commit verifies like a real one:
    signed by the key of ``did`` (:func:`streamer.testing.identity.signing_key`), its MST proof and ``prevData``
    those of that repo. Returns the raw frame bytes."""
    tree = mst.EMPTY
    for action, collection, rkey, _ in ops:
        path = f"{collection}/{rkey}"
        if action in ("update", "delete"):
            prior = (deleted or {}).get(path) or _prior_cid(did, path)
            tree = mst.insert(tree, path.encode(), prior)
    frame, _ = encode_commit(seq, did, time_us, ops, tree=tree, rev=rev, since=since)
    return frame


def encode_commit(
    seq: int,
    did: str,
    time_us: int,
    ops: Sequence[Op],
    *,
    tree: mst.Node = mst.EMPTY,
    key: coincurve.PrivateKey | None = None,
    rev: str | None = None,
    since: str | None = None,
) -> tuple[bytes, mst.Node]:
    """The ``#commit`` frame applying ``ops`` to the repo whose MST is ``tree``, and the repo's new MST.

    As a Sync 1.1 PDS writes it: each op carries ``prev`` (the CID an update or delete replaces), ``prevData`` is
    ``tree``'s root, the CAR holds the signed commit, the new records and the MST nodes a consumer needs to invert
    the ops (:func:`streamer.testing.mst.commit_proof`), and the commit is signed with ``key`` (by default the key
    of ``did``). Raises ValueError for an op the repo cannot take (an update or delete of a record it lacks, a create
    of one it has, two ops on one record)."""
    rev = rev or tid(time_us, seq)
    key = key if key is not None else identity.signing_key(did)
    records: list[tuple[bytes, bytes]] = []
    body_ops: list[dict[str, Any]] = []
    changes: list[mst.Change] = []
    seen: set[str] = set()
    for action, collection, rkey, record in ops:
        path = f"{collection}/{rkey}"
        if path in seen:
            raise ValueError(f"two ops on {path} in one commit")
        seen.add(path)
        current = mst.get(tree, path.encode())
        op: dict[str, Any] = {"action": action, "path": path, "cid": None}
        if action in ("create", "update"):
            if record is None:
                raise ValueError(f"{action} of {path} needs a record")
            if (action == "create") != (current is None):
                raise ValueError(f"{action} of {path}, which the repo {'lacks' if current is None else 'has'}")
            cid, data = block(record)
            records.append((cid, data))
            op["cid"] = cid
            changes.append(mst.Change(path.encode(), current, cid))
        elif action == "delete":
            if current is None:
                raise ValueError(f"delete of {path}, which the repo lacks")
            changes.append(mst.Change(path.encode(), current, None))
        else:
            raise ValueError(f"unknown action {action!r}")
        if current is not None:
            op["prev"] = current
        body_ops.append(op)
    proof = mst.commit_proof(tree, changes)
    unsigned = {"did": did, "version": 3, "data": proof.root.cid, "rev": rev, "prev": None}
    commit_cid, commit_data = signed_commit_block(unsigned, identity.sign(key, libipld.encode_dag_cbor(unsigned)))
    body = {
        "seq": seq,
        "rebase": False,
        "tooBig": False,
        "repo": did,
        "commit": commit_cid,
        "rev": rev,
        "since": since,
        "blocks": car([commit_cid], [(commit_cid, commit_data), *proof.blocks, *records]),
        "ops": body_ops,
        "blobs": [],
        "time": rfc3339(time_us),
        "prevData": tree.cid,
    }
    return _frame("#commit", body), proof.root


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
