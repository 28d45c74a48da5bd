"""``benchmarks/gpu.sh``, the one prepared GPU run, run here on the CPU at small sizes so that it cannot rot: it
checks the device, measures, and writes its table as JSON and Markdown with every column filled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_script_runs_on_the_cpu_and_writes_its_table(tmp_path: Path) -> None:
    env = {**os.environ, "SKYATTR_GPU_SKIP_INSTALL": "1", "PYTHON": sys.executable, "OUT": str(tmp_path)}
    args = ["--cpu", "--sizes", "1500", "3000", "--repeats", "1", "--indicators", "cascade", "reach"]
    done = subprocess.run(["bash", "benchmarks/gpu.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "JAX " in done.stdout and "cpu:" in done.stdout
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert [r["agents"] for r in report["rows"]] == [1500, 3000] and report["copy_bandwidth_gbs"] > 0
    for row in report["rows"]:
        assert row["edges"] > 5 * row["agents"] and row["graph_bytes"] > 0
        for name in ("cascade", "reach"):
            e = row["indicators"][name]
            assert e["steady_s"] > 0 and e["compile_s"] >= 0 and e["node_ms"] > 0 and e["bound_node_ms"] > 0
            assert e["device"].startswith("cpu")
    table = (tmp_path / "gpu.md").read_text()
    assert "| agents | edges | indicator | compile s | steady ms |" in table and table.count("| 1,500 |") == 2
    # the attributor as a daemon runs it: the device holds nothing of a run once it is over, the size buckets met
    # are compiled once, and a restarted process finds every kernel in the compilation cache
    daemon = json.loads((tmp_path / "daemon_device.json").read_text())
    rows = daemon["runs"]["rows"]
    assert len(rows) == 6 and all(r["device_bytes"] == 0 for r in rows), rows
    assert rows[-1]["compiles"] == rows[0]["compiles"] > 0 and len({r["bucket"] for r in rows}) == 1, rows
    cold, warm, off = (daemon["restart"][k]["first"] for k in ("cold", "warm", "off"))
    assert cold["compiles"] > 0 and cold["cache_hits"] == 0 and off["cache_hits"] == 0
    assert warm["compiles"] == 0 and warm["cache_hits"] == cold["compiles"], (cold, warm)
    assert "| restarted, same cache |" in (tmp_path / "daemon_device.md").read_text()


def test_the_gpu_script_refuses_a_machine_without_a_gpu(tmp_path: Path) -> None:
    env = {**os.environ, "SKYATTR_GPU_SKIP_INSTALL": "1", "PYTHON": sys.executable, "OUT": str(tmp_path),
           "JAX_PLATFORMS": "cpu"}  # fmt: skip
    done = subprocess.run(["bash", "benchmarks/gpu.sh", "--sizes", "1500"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode != 0 and "JAX sees no GPU" in done.stderr
    assert not (tmp_path / "gpu.json").exists()
