"""Synthetic commits that verify as Sync 1.1 asks: the repo's real MST, its proofs, K-256 signatures, DID documents.

Oracles: the atproto interop test vectors for the MST (root CIDs of known key sets and of the tricky insertions
and removals), order independence of the tree, the atproto SDK's own signature verifier (a separate
implementation, on OpenSSL), and the signed bytes themselves. The unmodified indigo verifiers run in
``tests/peers``.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import hashlib
import json
import random
import urllib.error
import urllib.request
from pathlib import Path

import cbor2
import libipld
import pytest
import zstandard
from atproto_crypto.consts import SECP256K1_CURVE_ORDER
from atproto_crypto.verify import verify_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.sources import did_documents
from streamer.sources.archive import read_archive
from streamer.sources.relay_server import Relay
from streamer.testing import identity, mst
from streamer.testing.encode import _looks_like_cid, commit_frame, encode_commit, signed_commit_block
from streamer.testing.synth import DEFAULT_START_US, write_synth_archive

CID1 = "bafyreie5cvv4h45feadgeuwhbcutmh6t2ceseocckahdoe6uat64zmz454"
DID_A = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"


def _cid(text: str) -> bytes:
    body = text[1:].upper()
    return base64.b32decode(body + "=" * (-len(body) % 8))


def _tree(*rkeys: str) -> mst.Node:
    return mst.from_items((f"com.example.record/{k}".encode(), _cid(CID1)) for k in rkeys)


def _root(tree: mst.Node) -> str:
    return libipld.encode_cid(tree.cid)


def test_known_maps_give_the_interop_root_cids() -> None:
    assert _root(mst.EMPTY) == "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
    assert _root(_tree("3jqfcqzm3fo2j")) == "bafyreibj4lsc3aqnrvphp5xmrnfoorvru4wynt6lwidqbm2623a6tatzdu"
    assert _root(_tree("3jqfcqzm3fx2j")) == "bafyreih7wfei65pxzhauoibu3ls7jgmkju4bspy4t2ha2qdjnzqvoy33ai"
    simple = _tree("3jqfcqzm3fp2j", "3jqfcqzm3fr2j", "3jqfcqzm3fs2j", "3jqfcqzm3ft2j", "3jqfcqzm4fc2j")
    assert _root(simple) == "bafyreicmahysq4n6wfuxo522m6dpiy7z7qzym3dzs756t5n7nfdgccwq7m"


def test_trimming_the_top_on_removal() -> None:
    tree = _tree("3jqfcqzm3fn2j", "3jqfcqzm3fo2j", "3jqfcqzm3fp2j", "3jqfcqzm3fs2j", "3jqfcqzm3ft2j", "3jqfcqzm3fu2j")
    assert tree.height == 1 and _root(tree) == "bafyreifnqrwbk6ffmyaz5qtujqrzf5qmxf7cbxvgzktl4e3gabuxbtatv4"
    trimmed = mst.remove(tree, b"com.example.record/3jqfcqzm3fs2j")
    assert trimmed.height == 0 and _root(trimmed) == "bafyreie4kjuxbwkhzg2i5dljaswcroeih4dgiqq6pazcmunwt2byd725vi"


def test_an_insertion_that_splits_two_layers_down_and_its_removal() -> None:
    keys = "3jqfcqzm3fo2j 3jqfcqzm3fp2j 3jqfcqzm3fr2j 3jqfcqzm3fs2j 3jqfcqzm3ft2j 3jqfcqzm3fz2j 3jqfcqzm4fc2j"
    tree = _tree(*keys.split(), "3jqfcqzm4fd2j", "3jqfcqzm4ff2j", "3jqfcqzm4fg2j", "3jqfcqzm4fh2j")
    assert tree.height == 1 and _root(tree) == "bafyreiettyludka6fpgp33stwxfuwhkzlur6chs4d2v4nkmq2j3ogpdjem"
    higher = mst.insert(tree, b"com.example.record/3jqfcqzm3fx2j", _cid(CID1))
    assert higher.height == 2 and _root(higher) == "bafyreid2x5eqs4w4qxvc5jiwda4cien3gw2q6cshofxwnvv7iucrmfohpm"
    assert mst.remove(higher, b"com.example.record/3jqfcqzm3fx2j").cid == tree.cid


def test_new_layers_two_above_the_top() -> None:
    tree = _tree("3jqfcqzm3ft2j", "3jqfcqzm3fz2j")
    assert _root(tree) == "bafyreidfcktqnfmykz2ps3dbul35pepleq7kvv526g47xahuz3rqtptmky"
    two_up = mst.insert(tree, b"com.example.record/3jqfcqzm3fx2j", _cid(CID1))
    assert _root(two_up) == "bafyreiavxaxdz7o7rbvr3zg2liox2yww46t7g6hkehx4i4h3lwudly7dhy"
    assert mst.remove(two_up, b"com.example.record/3jqfcqzm3fx2j").cid == tree.cid
    both = mst.insert(two_up, b"com.example.record/3jqfcqzm4fd2j", _cid(CID1))
    assert both.height == 2 and _root(both) == "bafyreig4jv3vuajbsybhyvb7gggvpwh2zszwfyttjrj6qwvcsp24h6popu"


def _value(i: int) -> bytes:
    return mst.DAG_CBOR_SHA256_PREFIX + hashlib.sha256(str(i).encode()).digest()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=80, unique=True), st.randoms(use_true_random=False))
def test_the_tree_is_a_function_of_its_key_set(numbers: list[int], rng: random.Random) -> None:
    items = [(f"app.bsky.feed.like/{n:011x}".encode(), _value(n)) for n in numbers]
    shuffled = items[:]
    rng.shuffle(shuffled)
    tree = mst.from_items(items)  # built bottom-up from the sorted keys
    one_by_one = mst.EMPTY
    for key, val in shuffled:
        one_by_one = mst.insert(one_by_one, key, val)
    assert one_by_one.cid == tree.cid and mst.from_items(shuffled).cid == tree.cid
    keep = len(items) // 2
    pruned = tree
    for key, _ in shuffled[keep:]:
        pruned = mst.remove(pruned, key)
    assert pruned.cid == mst.from_items(shuffled[:keep]).cid
    assert mst.remove(mst.from_items(items[:1]), items[0][0]).cid == mst.EMPTY.cid
    assert all(mst.get(tree, key) == val for key, val in items)
    assert all(node.height == sub.height + 1 for node in mst.walk(tree) for sub in node.subs if sub is not None)


def test_a_commit_proof_holds_the_nodes_on_the_way_to_each_key_and_no_unrelated_one() -> None:
    tree = mst.from_items((f"app.bsky.feed.like/{n:06d}".encode(), _value(n)) for n in range(3000))
    key = b"app.bsky.feed.post/3mpsytoxnddj4"
    proof = mst.commit_proof(tree, [mst.Change(key, None, _value(-1))])
    held = {cid for cid, _ in proof.blocks}
    node: mst.Node | None = proof.root
    while node is not None:  # the path from the new root to the new key is all there
        assert node.cid in held
        node = node.subs[bisect.bisect_left(node.keys, key)] if key not in node.keys else None
    assert len(proof.blocks) < 12, "a proof is a few paths, not the tree"
    assert all(hashlib.sha256(data).digest() == cid[4:] for cid, data in proof.blocks)


def test_commits_are_signed_with_the_key_of_the_did_document_and_low_s() -> None:
    frame = commit_frame(1, DID_A, DEFAULT_START_US, [("create", "app.bsky.feed.like", "3kaaa", {"$type": "x"})])
    _, body = libipld.decode_dag_cbor_multi(frame)
    _, blocks = libipld.decode_car(body["blocks"])
    commit = blocks[body["commit"]]
    unsigned = libipld.encode_dag_cbor({k: v for k, v in commit.items() if k != "sig"})
    key = identity.signing_key(DID_A)
    assert verify_signature(identity.did_key(key), unsigned, commit["sig"])
    assert int.from_bytes(commit["sig"][32:], "big") <= SECP256K1_CURVE_ORDER // 2
    assert not verify_signature(identity.did_key(identity.signing_key("did:plc:" + "b" * 24)), unsigned, commit["sig"])
    path, cid = body["ops"][0]["path"], body["ops"][0]["cid"]
    assert body["prevData"] == mst.EMPTY.cid and commit["data"] == mst.from_items([(path.encode(), cid)]).cid


def test_a_signature_that_parses_as_a_cid_stays_a_byte_string() -> None:
    """About one real signature in 256,000 parses as a CID (libipld would write it as a tag-42 link)."""
    sig = b"\x01\x71\x00\x3c" + bytes(range(60))  # CIDv1, identity multihash of 60 bytes: exactly 64 bytes
    assert _looks_like_cid(sig)
    unsigned = {"did": DID_A, "version": 3, "data": _value(1), "rev": "3mprqwpyjni23", "prev": None}
    cid, data = signed_commit_block(unsigned, sig)
    assert cbor2.loads(data)["sig"] == sig and libipld.decode_dag_cbor(data)["sig"] == sig
    assert cid[4:] == hashlib.sha256(data).digest()
    ordinary = b"\x02" + bytes(63)
    _, plain = signed_commit_block(unsigned, ordinary)
    tagged = {k: cbor2.CBORTag(42, b"\x00" + v) if k == "data" else v for k, v in unsigned.items()}
    assert plain == cbor2.dumps(dict(tagged, sig=ordinary), canonical=True), "both encoders agree elsewhere"


def test_updates_and_deletes_carry_prev_and_the_repo_must_hold_what_they_name() -> None:
    tree = mst.EMPTY
    like = {"$type": "app.bsky.feed.like", "subject": {"uri": "at://x/y/z", "cid": CID1}, "createdAt": "t"}
    frame, tree = encode_commit(1, DID_A, DEFAULT_START_US, [("create", "app.bsky.feed.like", "3ka", like)], tree=tree)
    created = mst.get(tree, b"app.bsky.feed.like/3ka")
    frame, after = encode_commit(
        2, DID_A, DEFAULT_START_US + 1, [("delete", "app.bsky.feed.like", "3ka", None)], tree=tree
    )
    _, body = libipld.decode_dag_cbor_multi(frame)
    assert body["ops"][0]["prev"] == created and body["prevData"] == tree.cid and after.cid == mst.EMPTY.cid
    with pytest.raises(ValueError, match="lacks"):
        encode_commit(3, DID_A, DEFAULT_START_US, [("delete", "app.bsky.feed.like", "3kb", None)], tree=tree)
    with pytest.raises(ValueError, match="has"):
        encode_commit(3, DID_A, DEFAULT_START_US, [("create", "app.bsky.feed.like", "3ka", like)], tree=tree)


def test_synth_writes_the_did_documents_of_its_accounts(tmp_path: Path) -> None:
    result = write_synth_archive(tmp_path / "s.skyarch.zst", 200, 3, seed=2)
    assert result.documents == tmp_path / "s.dids.jsonl.zst"
    docs = {d["id"]: d for d in did_documents.read_documents(result.documents)}
    repos = set()
    for item in read_archive(result.path):
        assert item.frame is not None
        header, body = libipld.decode_dag_cbor_multi(item.frame)
        repos.add(body.get("repo") or body.get("did"))
        if header["t"] == "#commit":
            _, blocks = libipld.decode_car(body["blocks"])
            commit = blocks[body["commit"]]
            unsigned = libipld.encode_dag_cbor({k: v for k, v in commit.items() if k != "sig"})
            method = docs[body["repo"]]["verificationMethod"][0]
            assert method["id"] == body["repo"] + "#atproto" and method["type"] == "Multikey"
            assert verify_signature("did:key:" + method["publicKeyMultibase"], unsigned, commit["sig"])
    assert repos <= set(docs) and len(docs) == result.accounts


def test_a_bad_documents_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "x.dids.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b'{"id": "did:plc:x"}\n[1, 2]\n'))
    with pytest.raises(ValueError, match=r"x\.dids\.jsonl\.zst: line 2 is not a DID document"):
        list(did_documents.read_documents(path))


async def test_the_relay_answers_did_documents_as_a_plc_directory_naming_itself_the_pds(tmp_path: Path) -> None:
    result = write_synth_archive(tmp_path / "s.skyarch.zst", 100, 2, seed=3)
    did = next(iter(d["id"] for d in did_documents.read_documents(result.documents)))
    async with Relay(result.path) as relay:
        base = relay.url.replace("ws://", "http://")

        def get(path: str) -> tuple[int, dict]:
            try:
                with urllib.request.urlopen(base + path, timeout=5) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        status, doc = await asyncio.to_thread(get, f"/{did}")
        assert status == 200 and doc["id"] == did
        assert doc["service"] == [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": base}]
        missing = "did:plc:" + "z" * 24
        assert await asyncio.to_thread(get, f"/{missing}") == (404, {"message": f"DID not registered: {missing}"})
        status, server = await asyncio.to_thread(get, "/xrpc/com.atproto.server.describeServer")
        assert status == 200 and server["did"].startswith("did:web:")
