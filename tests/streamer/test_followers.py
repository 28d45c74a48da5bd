"""Follower tables (CSV or Parquet) as visibility: parsed strictly, and they move accounts between tiers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from streamer.cli import app
from streamer.ingest import load_followers, replay

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
    ],
)
def test_bad_csv_rows_are_named(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_followers(path)
    with pytest.raises(ValueError, match="cannot read followers file"):
        load_followers(tmp_path / "absent.csv")


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
