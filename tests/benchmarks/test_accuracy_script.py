"""``benchmarks/accuracy.py`` (time to accuracy) at a small size, so that it cannot rot: every column filled, the
errors it reports are the oracle's (they fall as the nodes grow) and the fewest mat-vecs to the target is the
cheapest count that met it."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import accuracy


def test_the_accuracy_benchmark_writes_its_table(tmp_path: Path) -> None:
    accuracy.main(["--sizes", "2000", "--indicators", "reach", "--counts", "2", "8", "16", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "accuracy.json").read_text())
    (row,) = report["rows"]
    assert row["agents"] == 2000 and row["spmv_ms"] > 0
    graded = row["indicators"]["reach"]["rules"]["log-graded"]
    errors = [p["error"] for p in graded["points"]]
    assert [p["nodes"] for p in graded["points"]] == [2, 8, 16] and errors[0] > 10 * errors[2], errors
    met = [p for p in graded["points"] if p["error"] <= 1e-4]
    assert graded["to_target"] == min(met, key=lambda p: p["spmv"]) and graded["spmv_per_node"] > 0
    search = graded["search"]
    assert search["nodes"] >= 8 and search["error"] <= 1e-4 and search["spmv"] > 0
    table = (tmp_path / "accuracy.md").read_text()
    assert table.count("| 2,000 | reach |") == 2 and "fewest SpMV to 0.0001" in table
