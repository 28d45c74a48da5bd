"""Follower tables (CSV or Parquet) as visibility: parsed strictly, and they move accounts between tiers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from streamer.app.cli import app
from streamer.app.replay import replay
from streamer.core.followers import load_followers

runner = CliRunner()
A, B = "did:plc:" + "a" * 24, "did:plc:" + "b" * 24


def test_csv_and_parquet_give_the_same_table(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    csv_path = tmp_path / "f.csv"
    csv_path.write_text(f"did,followers,handle\n{A},1200,alice\n{B},0,bob\n")
    parquet_path = tmp_path / "f.parquet"
    pq.write_table(pa.table({"did": [A, B], "followers": [1200, 0]}), parquet_path)
    assert load_followers(csv_path) == load_followers(parquet_path) == {A: 1200.0, B: 0.0}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("did,count\nx,1\n", "needs a header with columns did,followers"),
        (f"did,followers\n{A},many\n", "row 1: bad count 'many'"),
        (f"did,followers\n{A},-3\n", "row 1: count must be a finite number >= 0"),
        ("did,followers\nalice.bsky.social,3\n", "row 1: 'alice.bsky.social' is not a DID"),
        (f"did,followers\n{A},1\n{B},2\n{A},3\n", f"rows 1 and 3 both give {A}"),
        (f"did,followers,bio\n{A},1,ok\n{B},2,{'x' * 140_000}\n", r"row 2: field larger than field limit \(131072\)"),
        (f"did,followers,{'h' * 140_000}\n{A},1,x\n", "header: field larger than field limit"),
        ("did,followers\ndid:PLC:abc,1\n", "row 1: 'did:PLC:abc' is not a DID"),
        ("did,followers\ndid:plc:abc:,1\n", "row 1: 'did:plc:abc:' is not a DID"),
        (f"did,followers\ndid:plc:{'a' * 2100},1\n", "row 1: 'did:plc:aaaa.*… is not a DID"),
        (f"did,followers\n{A}\0,1\n", r"row 1: .* is not a DID"),
    ],
)
def test_bad_csv_rows_are_named(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_followers(path)
    with pytest.raises(ValueError, match="cannot read followers file"):
        load_followers(tmp_path / "absent.csv")


def test_a_byte_order_mark_is_not_part_of_the_header(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffdid,followers\n".encode() + f"{A},7\n".encode())
    assert load_followers(path) == {A: 7.0}
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"did,followers\n\xff\xfe,1\n")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        load_followers(binary)


def test_duplicate_dids_in_parquet_are_refused(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "f.parquet"
    pq.write_table(pa.table({"did": [A, B, B], "followers": [1, 2, 3]}), path)
    with pytest.raises(ValueError, match=f"rows 2 and 3 both give {B}"):
        load_followers(path)
    pq.write_table(pa.table({"did": [A], "followers": ["many"]}), path)
    with pytest.raises(ValueError, match="column followers must be numeric"):
        load_followers(path)


def test_followers_set_visibility_and_tiers(tmp_path: Path, sample_dir: Path) -> None:
    archive = sample_dir / "frames.bin.zst"
    plain = replay(archive).state.snapshot()
    quiet_account = plain.dids[int(np.argmin(plain.visibility))]
    table = tmp_path / "followers.csv"
    table.write_text(f"did,followers\n{quiet_account},5000000\n")
    snap = replay(archive, followers=load_followers(table)).state.snapshot()
    assert snap.visibility[snap.dids.index(quiet_account)] == 5_000_000
    assert np.count_nonzero(snap.visibility) == 1, "accounts missing from the table have 0 followers"
    out = tmp_path / "r.jsonl"
    result = runner.invoke(
        app, ["replay", str(archive), "--followers", str(table), "--out", str(out), "--quiet", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    bad = runner.invoke(app, ["replay", str(archive), "--followers", str(tmp_path / "absent.csv")])
    assert bad.exit_code == 2 and "cannot read followers file" in bad.output
    runs = [m for m in map(json.loads, out.read_text().splitlines()) if m["topic"] == "tiers"]
    assert runs and all(m["agents"] == snap.agents for m in runs)
