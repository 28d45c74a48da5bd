"""The ``skyattr attribute`` command: table and JSON output, population files, clear errors (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from typer.testing import CliRunner

import kernels
from streamer.app.cli import app
from streamer.core.population import load_npz, save_npz

runner = CliRunner()


def test_attribute_json_on_a_saved_population(tmp_path: Path) -> None:
    path = tmp_path / "pop.npz"
    result = runner.invoke(app, ["attribute", "--agents", "3000", "--seed", "2", "--save", str(path), "--json"])
    assert result.exit_code == 0, result.output
    first = json.loads(result.stdout.strip().splitlines()[-1])
    assert first["agents"] == 3000 and first["indicator"] == "cascade"
    assert first["residual"] < 1e-4
    assert sum(first["tiers"]["full"].values()) == pytest.approx(1.0)
    # named as in the skyattr.tiers message: the schema's own definitions of these fields accept them
    schema = json.loads((Path(__file__).resolve().parents[3] / "streamer/schemas/tiers.schema.json").read_text())
    for name in ("tiers", "scale_bias", "tier_sizes", "alert", "runtime_s", "device", "value", "baseline"):
        sub = {**schema, "required": [name], "properties": {name: schema["properties"][name]}}
        jsonschema.validate({name: first[name]} if name != "alert" else {name: {**first[name], "changed": False}}, sub)
    # the saved file reproduces the run exactly
    again = runner.invoke(app, ["attribute", str(path), "--json"])
    second = json.loads(again.stdout.strip().splitlines()[-1])
    assert second["value"] == first["value"]
    assert second["scale_bias"] == first["scale_bias"]
    # and the file holds the same population the library would generate
    pop, ref = load_npz(path), kernels.heavy_tailed_population(3000, 8.0, seed=2)
    np.testing.assert_array_equal(pop.x, ref.x)
    assert pop.graph.edges == ref.graph.edges


def test_attribute_table_names_the_tiers() -> None:
    result = runner.invoke(app, ["attribute", "--agents", "2000", "--indicator", "reach", "--nodes", "16"])
    assert result.exit_code == 0, result.output
    for word in ("head", "middle", "tail", "same game: r*", "restricted: r*", "panel share", "error estimate="):
        assert word in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--indicator", "nope"], "unknown indicator"),
        (["--dtype", "float16"], "dtype"),
        (["--head", "0"], "tier fractions"),
        (["--nodes", "0"], "nodes"),
        (["--tau-res", "-1"], "threshold"),
        (["--tau-coverage", "1.5"], "coverage threshold"),
        (["--tau-tvd", "0.3"], "No such option"),
    ],
)
def test_bad_options_exit_2_with_a_message(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["attribute", "--agents", "500", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_bad_population_file_exit_2(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["attribute", str(tmp_path / "absent.npz")])
    assert missing.exit_code == 2 and "cannot read population file" in missing.output
    partial = tmp_path / "partial.npz"
    np.savez(partial, x=np.ones(3))
    result = runner.invoke(app, ["attribute", str(partial)])
    assert result.exit_code == 2 and "lacks array(s): visibility, attender, source, weight" in result.output
    pop = kernels.heavy_tailed_population(100, 4.0, seed=0)
    bad = tmp_path / "bad.npz"
    save_npz(pop, bad)
    data = dict(np.load(bad))
    data["source"][0] = 10_000
    np.savez(bad, **data)
    result = runner.invoke(app, ["attribute", str(bad)])
    assert result.exit_code == 2 and "out of range" in result.output


def test_indicators_command_lists_builtins() -> None:
    result = runner.invoke(app, ["indicators"])
    assert result.exit_code == 0
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in result.stdout.splitlines()}
    assert {"reach", "cascade", "saturation", "exposure", "activity"} <= set(rows)
    assert all(len(row) == 3 for row in rows.values()), "structure, parameters, what it measures"
    assert rows["exposure"][0] == rows["activity"][0] == "linear" and rows["cascade"][0] == "linear stem"
    assert "total attended activity" in rows["exposure"][2] and "two-hop cascade" in rows["cascade"][2]
    assert "linear stem = v is a function of the exposures W x" in result.stderr


@pytest.mark.parametrize(("content", "why"), [(b"", "(empty)"), (bytes(range(256)) * 8, "(not a zip archive)")])
def test_a_population_file_that_is_not_an_npz_says_what_one_is(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "pop.npz"
    path.write_bytes(content)
    result = runner.invoke(app, ["attribute", str(path)])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert f"population file {path} is not an .npz of arrays x, visibility" in text and why in text
    assert "pickle" not in text


def test_a_resumed_replay_says_it_resumed_and_from_where(tmp_path: Path) -> None:
    from streamer.testing.synth import write_synth_archive

    archive = tmp_path / "a.skyarch.zst"
    write_synth_archive(archive, 40, 2, 0)
    ckpt = tmp_path / "ckpt"
    args = ["replay", str(archive), "--checkpoint-dir", str(ckpt), "--quiet", "--no-progress", "--interval", "3600"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "resumed" not in first.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    text = " ".join(again.output.split())
    assert f"resumed from the checkpoint in {ckpt} after item" in text and "this run read 0 more" in text
    assert "runs in all" in text


def test_an_interrupted_replay_without_a_checkpoint_directory_does_not_promise_a_resume() -> None:
    import signal
    import subprocess
    import sys

    from tests.faults import Lines, signal_when

    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer", "replay", "--quiet", "--no-progress", "--speed", "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, stderr = Lines(proc.stdout), Lines(proc.stderr)
    # the first run's line: the pipeline (and its signal handlers) are up; 24 h at 100x leaves 14 min to go
    signal_when(proc, out.seen("run    1 @"), 120, "the first run", signal.SIGTERM)
    proc.wait(60)
    err = stderr.text()
    text = " ".join(err.split())
    assert proc.returncode == 0, err[-2000:]
    assert "interrupted at item" in text and "no --checkpoint-dir, so a rerun starts from the beginning" in text
    assert "rerun to resume" not in text
    assert (
        "final checkpoint" not in text
        and "stopping (applying what was read, flushing sinks; no --checkpoint-dir" in text
    )


def test_synthetic_options_with_a_population_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pop.npz"
    assert runner.invoke(app, ["attribute", "--agents", "300", "--save", str(path), "--json"]).exit_code == 0
    result = runner.invoke(app, ["attribute", str(path), "--agents", "50"])
    assert result.exit_code == 2
    assert "--agents, --edges-per-agent and --seed make a synthetic population" in " ".join(result.output.split())


@pytest.mark.parametrize(("dtype", "bound"), [("float32", 1e-6), ("float64", 1e-12)])
def test_attribute_json_publishes_both_games_and_a_linear_indicator_is_proportional_in_the_same_game(
    dtype: str, bound: float
) -> None:
    """exposure is linear: in the same game the panel's attribution is its accounts' full-scale attribution (r* at
    rounding), while the restricted game, which deletes the attention the rest pays the panel, is not; cascade
    interacts, so even the same game leaves r* > 0. Neither decides the alert by its restricted figure."""
    base = ["attribute", "--agents", "5000", "--no-progress", "--json", "--dtype", dtype]
    linear = json.loads(runner.invoke(app, [*base, "--indicator", "exposure"]).stdout)
    same, restricted = linear["scale_bias"]["same_game"], linear["scale_bias"]["restricted"]
    assert same["residual"] <= bound and same["rescale"] == pytest.approx(1.0, abs=1e-5)
    assert restricted["residual"] > 0.1
    assert "residual" not in linear["alert"]["criteria"]
    assert linear["error_estimate"] is not None and linear["error_estimate"] <= 1e-5
    assert set(linear["tiers"]) == {"full", "restricted", "same_game"}
    cascade = json.loads(runner.invoke(app, [*base, "--indicator", "cascade"]).stdout)
    assert cascade["scale_bias"]["same_game"]["residual"] > 1e-3
    share = cascade["scale_bias"]["panel_share"]
    assert ("coverage" in cascade["alert"]["criteria"]) == (share < 0.5)


def test_attribute_with_a_tolerance_reports_the_node_count_it_settled_on() -> None:
    """--tolerance makes the count error-driven from --nodes: the JSON names the count the kernels settle on for
    that population (and the option, so a result says how it was made); a tolerance outside [0, 1) is one line."""
    result = runner.invoke(app, ["attribute", "--agents", "3000", "--seed", "2", "--nodes", "2", "--tolerance", "1e-4",
                                 "--quadrature", "log-graded", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    pop = kernels.heavy_tailed_population(3000, 8.0, seed=2)
    want = kernels.attribute("cascade", pop.x, pop.graph, nodes=2, rule="log-graded", tolerance=1e-4)
    assert out["nodes"] == want.nodes > 2 and out["config"]["tolerance"] == 1e-4
    bad = runner.invoke(app, ["attribute", "--agents", "300", "--tolerance", "1.5"])
    assert bad.exit_code == 2 and "tolerance" in bad.output and "Traceback" not in bad.output
