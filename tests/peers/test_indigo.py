"""Unmodified atproto peers, built from the Go module proxy, against ``skyattr relay`` and ``skyattr synth``.

- indigo's ``repo-tool verify-firehose`` inverts every ``#commit``'s operations on the MST nodes the frame carries
  and compares the root with ``prevData`` (Sync 1.1): every commit of a synthetic archive and of the real sample
  must match, none fail.
- indigo's ``relay`` resolves each account through its PLC host (``skyattr relay``'s DID documents), checks the
  account is hosted where its commits come from, verifies each commit's signature with the document's key and
  re-broadcasts what passes: what it sends on must be exactly the events ``skyattr events`` reads from the archive.
  A control with one account's key swapped shows the signatures are really checked: that account's commits, and
  only those, are refused.

goat and Jetstream live in their own Go modules, which the module proxy here does not serve (403), so indigo's
verifiers stand in for them. The binaries come from ``ops/peers/build-indigo.sh`` (``.ci/run`` builds them); without
them these tests skip, unless ``SKYATTR_REQUIRE_PEERS=1``, where they fail.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import libipld
import pytest

from streamer.sources import did_documents
from streamer.sources.archive import read_archive
from streamer.testing import identity
from tests.net import free_port, http_get

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "ops" / "peers" / "build-indigo.sh"
ADMIN = "peer-test"


def _bin_dir() -> Path:
    if env := os.environ.get("SKYATTR_PEERS_BIN"):
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("SKYATTR_PEERS_DIR") or cache / "skyattr" / "peers") / "bin"


@pytest.fixture(scope="module")
def indigo() -> Path:
    bin_dir = _bin_dir()
    missing = [name for name in ("repo-tool", "relay") if not (bin_dir / name).is_file()]
    if missing:
        message = f"indigo peers {missing} not in {bin_dir}: run `bash {BUILD.relative_to(REPO)}`"
        if os.environ.get("SKYATTR_REQUIRE_PEERS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return bin_dir


@pytest.fixture(scope="module")
def synth_archive(synth_archive_of: Callable[[int, float, int], Path]) -> Path:
    """Enough traffic for every kind of commit: deletes, profile updates, multi-op commits, identity changes."""
    return synth_archive_of(500, 8, 11)


def _commits(archive: Path) -> list[dict]:
    out = []
    for item in read_archive(archive):
        assert item.frame is not None
        header, body = libipld.decode_dag_cbor_multi(item.frame)
        if header.get("t") == "#commit":
            out.append(body)
    return out


@contextmanager
def _skyattr_relay(archive: Path) -> Iterator[int]:
    """``skyattr relay ARCHIVE --from-start`` on a free port (the CLI, as an operator runs it)."""
    port = free_port()
    cmd = [sys.executable, "-m", "streamer", "relay", str(archive), "--port", str(port), "--from-start"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"ws://127.0.0.1:{port}", proc.stderr.read() if proc.stderr else ""
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _verify_firehose(indigo: Path, port: int, commits: int, timeout: float = 90.0) -> tuple[set[int], list[str]]:
    """Seqs whose prevData ``repo-tool verify-firehose`` matched, and its errors, once it has handled ``commits``."""
    cmd = [
        str(indigo / "repo-tool"),
        "--log-level",
        "debug",
        "verify-firehose",
        "--relay-host",
        f"ws://localhost:{port}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    matched: set[int] = set()
    errors: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            entry = json.loads(line)
            if entry["msg"] == "prevData matched":
                matched.add(entry["seq"])
            elif entry["level"] == "ERROR":
                errors.append(entry.get("err", entry["msg"]))
            if len(matched) + len(errors) >= commits or time.monotonic() > deadline:
                break
    finally:
        proc.kill()
        proc.wait(10)
    return matched, errors


def test_indigo_inverts_every_synth_commit_to_its_prev_data(indigo: Path, synth_archive: Path) -> None:
    commits = _commits(synth_archive)
    ops = Counter(op["action"] for c in commits for op in c["ops"])
    assert ops["delete"] > 5 and ops["update"] > 0, ops
    assert any(len(c["ops"]) > 1 for c in commits), "multi-op commits are part of the check"
    assert all(op.get("prev") for c in commits for op in c["ops"] if op["action"] != "create")
    with _skyattr_relay(synth_archive) as port:
        matched, errors = _verify_firehose(indigo, port, len(commits))
    assert errors == []
    assert matched == {c["seq"] for c in commits}


def test_indigo_inverts_every_commit_of_the_real_sample(indigo: Path, sample_dir: Path) -> None:
    sample = sample_dir / "frames.bin.zst"
    commits = _commits(sample)
    with _skyattr_relay(sample) as port:
        matched, errors = _verify_firehose(indigo, port, len(commits))
    assert errors == []
    assert matched == {c["seq"] for c in commits}


def _events(archive: Path) -> list[str]:
    """``skyattr events`` of ``archive``, without what a relay renumbers (its seq and cursor, the receive clock),
    sorted: indigo's relay hands each account to its own worker, so accounts interleave differently. Without the
    handle of ``#identity`` events too: a relay sends on the handle it resolved and verified itself, and offline
    no handle verifies (no DNS, no ``/.well-known/atproto-did``)."""
    out = subprocess.run(
        [sys.executable, "-m", "streamer", "events", str(archive)], capture_output=True, text=True, check=True
    ).stdout
    lines = []
    for line in out.splitlines():
        event = json.loads(line)
        event.pop("time_us")
        for key in ("skyattr", "identity", "account"):
            for field in ("seq", "cursor", "handle"):
                event.get(key, {}).pop(field, None)
        lines.append(json.dumps(event, sort_keys=True))
    return sorted(lines)


@contextmanager
def _indigo_relay(indigo: Path, work: Path, upstream: int) -> Iterator[tuple[int, Path]]:
    """indigo's relay with ``skyattr relay`` on ``upstream`` as its one host and PLC directory.

    Its crawler only dials public addresses on ports 80/443 (an SSRF guard with no switch), so the host is entered
    in its database the way its admin API would have left it; it resubscribes to known hosts at start."""
    db = work / "relay.sqlite"
    env = dict(os.environ, RELAY_ADMIN_PASSWORD=ADMIN)
    log = work / "relay.log"

    def start() -> tuple[subprocess.Popen[bytes], int]:
        # ports picked free can be taken by another process before the relay binds them: pick again then
        for attempt in range(3):
            port, metrics = free_port(), free_port()
            cmd = [
                str(indigo / "relay"),
                "serve",
                f"--plc-host=http://localhost:{upstream}",
                f"--db-url=sqlite://{db}",
                f"--persist-dir={work / 'persist'}",
                f"--bind=127.0.0.1:{port}",
                f"--metrics-listen=127.0.0.1:{metrics}",
                "--allow-insecure-hosts",
                "--default-account-limit=1000000",
            ]
            seen = log.stat().st_size if log.exists() else 0
            proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)
            deadline = time.monotonic() + 30
            while not _healthy(port):
                if proc.poll() is not None and b"address already in use" in log.read_bytes()[seen:] and attempt < 2:
                    break
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            else:
                return proc, port
        raise AssertionError("unreachable")

    first, _ = start()  # creates its schema
    first.terminate()
    first.wait(10)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO host (created_at, updated_at, hostname, no_ssl, account_limit, trusted, status, last_seq) "
            "VALUES (datetime('now'), datetime('now'), ?, 1, 1000000, 1, 'active', 0)",
            (f"localhost:{upstream}",),
        )
    proc, port = start()
    try:
        yield port, log
    finally:
        proc.terminate()
        proc.wait(10)


def _healthy(port: int) -> bool:
    try:
        return http_get(f"http://127.0.0.1:{port}/xrpc/_health", timeout=1)[0] == 200
    except OSError:
        return False


def _log(path: Path, *messages: str) -> list[dict]:
    """The entries of indigo's JSON log with one of ``messages``."""
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    return [e for e in entries if e.get("msg") in messages]


def _record(port: int, frames: int, out: Path) -> Path:
    """What indigo's relay sends, recorded by ``skyattr record`` from its first seq."""
    cmd = [sys.executable, "-m", "streamer", "record", "--relay", f"ws://127.0.0.1:{port}", "--cursor", "0"]
    cmd += ["--limit", str(frames), "--out", str(out), "--no-progress"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return out


def test_indigos_relay_verifies_every_signature_and_sends_on_the_same_events(
    indigo: Path, synth_archive: Path, tmp_path: Path
) -> None:
    frames = sum(1 for _ in read_archive(synth_archive))
    with _skyattr_relay(synth_archive) as upstream, _indigo_relay(indigo, tmp_path, upstream) as (port, log):
        received = _record(port, frames, tmp_path / "through-indigo")
    assert _events(received) == _events(synth_archive)
    problems = _log(log, "commit message failed verification", "failed to invert commit MST")
    assert problems == [], "indigo's relay takes every commit: signature, MST inversion and prevData"


def test_indigos_relay_refuses_commits_signed_with_a_key_not_in_the_did_document(
    indigo: Path, synth_archive: Path, tmp_path: Path
) -> None:
    """The control: the documents of one account now list another's key; its commits must stop at indigo."""
    archive = tmp_path / "forged.skyarch.zst"
    archive.write_bytes(synth_archive.read_bytes())
    docs = list(did_documents.read_documents(did_documents.documents_path(synth_archive)))
    commits = _commits(synth_archive)
    busiest = Counter(c["repo"] for c in commits).most_common(2)
    victim, other = busiest[0][0], busiest[1][0]
    for doc in docs:
        if doc["id"] == victim:
            doc["verificationMethod"][0]["publicKeyMultibase"] = identity.multikey(identity.signing_key(other))
    did_documents.write_documents(did_documents.documents_path(archive), docs)
    frames = sum(1 for _ in read_archive(archive))
    refused = sum(1 for c in commits if c["repo"] == victim)
    with _skyattr_relay(archive) as upstream, _indigo_relay(indigo, tmp_path, upstream) as (port, log):
        received = _record(port, frames - refused, tmp_path / "through-indigo")
    expected = [e for e in _events(archive) if not (json.loads(e)["did"] == victim and '"commit"' in e)]
    assert _events(received) == expected
    failures = _log(log, "commit message failed verification")
    invalid = "commit verification: cryptographic signature invalid"
    assert {(f["did"], f["err"]) for f in failures} == {(victim, invalid)}
    assert len(failures) == refused
