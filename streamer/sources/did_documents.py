"""DID documents of an archive's accounts, and the PLC-directory answers ``skyattr relay`` gives from them.

A consumer that verifies commits (a relay, Jetstream, ``goat``) resolves each DID to its document for the signing
key and the PDS that hosts the account. Offline there is no PLC directory, so ``skyattr synth`` writes its accounts'
documents beside the archive (``x.skyarch.zst`` → ``x.dids.jsonl.zst``: zstd, one compact JSON document per line)
and the relay answers ``GET /{did}`` with them, as ``https://plc.directory`` does; pointing the consumer's PLC
setting at the relay is all it takes.

The relay is also what serves those accounts' commits, so a served document names the relay itself as the PDS
(its ``#atproto_pds`` endpoint is the origin the request came to): a consumer that checks an account's commits
come from its PDS finds that they do.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import zstandard

from streamer.sources.archive import SUFFIX as ARCHIVE_SUFFIX

SYNTH_PDS = "https://pds.synth.invalid"  # the endpoint written in documents; a serving relay puts its own instead
DOCUMENTS_SUFFIX = ".dids.jsonl.zst"
PDS_SERVICE_ID = "#atproto_pds"


def documents_path(archive: Path) -> Path:
    """Where the DID documents of ``archive`` lie: ``x.skyarch.zst`` → ``x.dids.jsonl.zst`` beside it."""
    name = archive.name
    stem = name[: -len(ARCHIVE_SUFFIX)] if name.endswith(ARCHIVE_SUFFIX) else name
    return archive.with_name(stem + DOCUMENTS_SUFFIX)


def write_documents(path: Path, documents: Iterable[dict[str, Any]]) -> int:
    """Write one compact JSON document per line, zstd-compressed, under a temporary name then renamed (so a reader
    never sees half a file). Returns the number written."""
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    try:
        with tmp.open("wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as out:
            for doc in documents:
                out.write(json.dumps(doc, separators=(",", ":"), sort_keys=True).encode() + b"\n")
                count += 1
    except BaseException:  # an error or an interrupt: no half file left behind
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return count


def read_documents(path: Path) -> Iterator[dict[str, Any]]:
    """The documents of a file written by :func:`write_documents`; a line that is not a document with an ``id``
    raises ValueError naming the file and line."""
    with path.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream:
        for line_no, line in enumerate(io.BufferedReader(stream), start=1):
            yield _document(path, line_no, line)


def _document(path: Path, line_no: int, line: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(line)
    except ValueError as exc:
        raise ValueError(f"{path}: line {line_no} is not JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
        raise ValueError(f"{path}: line {line_no} is not a DID document (no string 'id')")
    return doc


def beside(archive: Path) -> list[Path]:
    """The document files of an archive file, or of every archive file in a directory, that exist."""
    files = sorted(archive.glob(f"*{ARCHIVE_SUFFIX}")) if archive.is_dir() else [archive]
    return [p for p in map(documents_path, files) if p.is_file()]


class Directory:
    """DID → document, from document files; answers lookups like the PLC directory's ``GET /{did}``."""

    def __init__(self, files: Iterable[Path] = ()) -> None:
        self.documents: dict[str, dict[str, Any]] = {}
        self.files = list(files)
        for path in self.files:
            for doc in read_documents(path):
                self.documents[doc["id"]] = doc

    def __len__(self) -> int:
        return len(self.documents)

    def resolve(self, did: str, origin: str) -> tuple[int, dict[str, Any]]:
        """``(HTTP status, JSON body)`` for ``GET /{did}``: the document with its PDS endpoint set to ``origin``
        (the relay answering), or 404 with the PLC directory's message."""
        doc = self.documents.get(did)
        if doc is None:
            return 404, {"message": f"DID not registered: {did}"}
        services = [
            dict(s, serviceEndpoint=origin) if s.get("id") == PDS_SERVICE_ID else s for s in doc.get("service", [])
        ]
        return 200, dict(doc, service=services)
