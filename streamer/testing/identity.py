"""Signing keys and DID documents of synthetic accounts.

A Sync 1.1 consumer resolves a commit's DID to its document, takes the ``#atproto`` verification method (a K-256 or
P-256 public key as a multikey) and checks the commit's signature: ECDSA over SHA-256 of the unsigned commit's
DAG-CBOR, as 64 bytes ``r || s`` with ``s`` in the lower half of the group order (atproto rejects the high-S twin).

Each synthetic account gets a secp256k1 key derived from its DID, so archives stay byte-identical across runs
(libsecp256k1 signs deterministically, RFC 6979, and always low-S), and a document listing that key, its handle
and a PDS endpoint. The documents are written beside the archive
(:func:`streamer.sources.did_documents.documents_path`) and served by ``skyattr relay`` as a PLC-directory stand-in.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any

import coincurve
from atproto_crypto.consts import SECP256K1_JWT_ALG
from atproto_crypto.did import format_multikey

from streamer.sources.did_documents import SYNTH_PDS

DID_CONTEXT = ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"]


@lru_cache(maxsize=65536)
def signing_key(did: str) -> coincurve.PrivateKey:
    """The secp256k1 signing key of the synthetic account ``did``: a hash of the DID (a valid scalar with
    overwhelming probability; the next counter is taken in the rare case it is not).

    Derived from the public DID, so anyone can sign as a synthetic account: these keys make synthetic commits
    verifiable, not trustworthy."""
    counter = 0
    while True:
        secret = hashlib.sha256(f"skyattr-synth-key:{did}:{counter}".encode()).digest()
        try:
            return coincurve.PrivateKey(secret)
        except ValueError:
            counter += 1


def sign(key: coincurve.PrivateKey, unsigned: bytes) -> bytes:
    """The atproto signature of ``unsigned`` (the DAG-CBOR of a commit without ``sig``): compact ``r || s``, low-S."""
    return key.sign_recoverable(unsigned)[:64]  # libsecp256k1 hashes with SHA-256 and normalises s to the low half


def multikey(key: coincurve.PrivateKey) -> str:
    """The public key as a ``publicKeyMultibase`` value (base58btc of the secp256k1-pub multicodec and the point)."""
    return format_multikey(SECP256K1_JWT_ALG, key.public_key.format(compressed=True))


def did_key(key: coincurve.PrivateKey) -> str:
    return "did:key:" + multikey(key)


def document(did: str, handle: str, key: coincurve.PrivateKey, pds: str = SYNTH_PDS) -> dict[str, Any]:
    """The DID document of an account, shaped like the PLC directory's answer for ``GET /{did}``."""
    return {
        "@context": DID_CONTEXT,
        "id": did,
        "alsoKnownAs": [f"at://{handle}"],
        "verificationMethod": [
            {"id": f"{did}#atproto", "type": "Multikey", "controller": did, "publicKeyMultibase": multikey(key)}
        ],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds}],
    }
