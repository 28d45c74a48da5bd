"""``skyattr report``: the files it writes, that its numbers are the ``skyattr.tiers`` message's, escaping, errors.

One report of the bundled archive is written per module (replay and attribution take about two seconds) and the
tests read it back the way a person or a script would: Markdown tables parsed, PNGs decoded, JSON loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

import kernels
from streamer.app.cli import app
from streamer.app.report import (
    FIGURES,
    ReportData,
    build_report,
    document,
    gini,
    lorenz,
    render_html,
    render_markdown,
)
from streamer.testing.synth import default_archive

runner = CliRunner()
SCHEMA = Path(__file__).resolve().parents[3] / "streamer" / "schemas" / "tiers.schema.json"


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "out"  # not there yet: the command creates it
    result = runner.invoke(app, ["report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote 6 files to {out}: report.md, report.html"), "the paths: stdout"
    assert "wrote" not in result.stderr
    return out


@pytest.fixture(scope="module")
def data() -> ReportData:
    return build_report(default_archive())


def _table(markdown: str, heading: str) -> list[list[str]]:
    """Body rows (cells stripped) of the first table after the ``## heading`` line."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## ") and heading in line)
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("|") and not re.fullmatch(r"\|[-:|]+\|", line):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows[1:]  # drop the header row


def _num(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("%"))


def test_report_writes_every_file(report_dir: Path) -> None:
    names = {"report.md", "report.html", "result.json", *FIGURES.values()}
    assert names <= {p.name for p in report_dir.iterdir()}
    md, page = (report_dir / "report.md").read_text(), (report_dir / "report.html").read_text()
    for name in FIGURES.values():  # every figure is referenced from both documents
        assert f"]({name})" in md and f'src="{name}"' in page
    assert str(default_archive()) in md and str(default_archive()) in page


@pytest.mark.parametrize("name", sorted(FIGURES.values()))
def test_figures_are_valid_pngs(report_dir: Path, name: str) -> None:
    path = report_dir / name
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # something was drawn, not a blank canvas


def test_result_json_is_a_valid_tiers_message(report_dir: Path) -> None:
    message = json.loads((report_dir / "result.json").read_text())
    jsonschema.validate(message, json.loads(SCHEMA.read_text()))
    assert message["run"] == 1 and message["indicator"] == "cascade"
    assert message["nodes"] == 32 and message["scale_bias"]["panel_size"] == 100


def test_markdown_tables_equal_the_message(report_dir: Path) -> None:
    md = (report_dir / "report.md").read_text()
    message = json.loads((report_dir / "result.json").read_text())
    rows = _table(md, "Tier shares")
    assert [r[0] for r in rows] == list(kernels.TIER_NAMES)
    for name, size, full, restricted, same in rows:
        assert int(_num(size)) == message["tier_sizes"][name]
        assert float(full) == float(f"{message['tiers']['full'][name]:.4f}")
        assert float(restricted) == float(f"{message['tiers']['restricted'][name]:.4f}")
        assert float(same) == float(f"{message['tiers']['same_game'][name]:.4f}")
    figures = {r[0]: r[1:] for r in _table(md, "Scale bias")}
    sb = message["scale_bias"]
    games = (sb["restricted"], sb["same_game"])
    assert "| figure | restricted | same game |" in md  # the games' columns, in this order
    assert [float(v) for v in figures["TVD between tier shares (decides nothing)"]] == [
        float(f"{g['tvd']:.4f}") for g in games
    ]
    assert [float(v) for v in figures[r"r\* (residual after the best rescaling)"]] == [
        float(f"{g['residual']:.4f}") for g in games
    ]
    assert [float(v) for v in figures[r"c\* (best rescaling)"]] == [float(f"{g['rescale']:.4g}") for g in games]
    assert float(figures["top-10 share, full"][0]) == float(f"{sb['top10_full']:.4f}")
    assert float(figures["panel share of the full attribution (coverage)"][0]) == float(f"{sb['panel_share']:.4f}")
    estimate = figures["quadrature error estimate (relative L2, φ at m vs 2m nodes)"][0]
    assert float(estimate) == float(f"{message['error_estimate']:.2e}")
    top = _table(md, "Top 10 accounts")
    assert [r[1].strip("`") for r in top] == [t["did"] for t in message["top"]]
    assert [r[2] for r in top] == [t["tier"] for t in message["top"]]
    assert ("**FIRING**" in md) == message["alert"]["active"]


def test_per_agent_arrays_match_the_message(data: ReportData) -> None:
    """The figures are drawn from the run's per-agent phi; it must be the attribution the message summarises."""
    msg = data.message
    shares = kernels.tier_shares(data.phi, data.tiers)
    np.testing.assert_allclose(shares, [msg["tiers"]["full"][n] for n in kernels.TIER_NAMES], rtol=1e-9)
    order = np.lexsort((np.arange(len(data.phi)), -data.phi))[:10]
    np.testing.assert_allclose(data.phi[order], [t["phi"] for t in msg["top"]], rtol=1e-9)
    assert sum(data.phi) == pytest.approx(msg["value"] - msg["baseline"], rel=1e-4)
    assert set(data.panel_phi) == {"restricted", "same_game"}
    for phi in data.panel_phi.values():
        assert len(data.panel) == len(phi) == msg["scale_bias"]["panel_size"]


def _gini_reference(values: np.ndarray) -> float:
    """Mean absolute difference over twice the mean: the textbook definition, O(n^2)."""
    v = np.clip(values, 0, None)
    return float(np.abs(v[:, None] - v[None, :]).sum() / (2 * len(v) ** 2 * v.mean()))


def test_gini_is_in_range_and_matches_the_reference(data: ReportData, report_dir: Path) -> None:
    g = gini(data.phi)
    assert 0 <= g <= 1
    assert g == pytest.approx(_gini_reference(data.phi), rel=1e-9)
    same = data.panel_phi["same_game"]
    assert gini(same) == pytest.approx(_gini_reference(same), rel=1e-9)
    # the report compares like with like: the panel's accounts at full scale and in the panel study
    on_panel = gini(data.phi[data.panel])
    assert on_panel == pytest.approx(_gini_reference(data.phi[data.panel]), rel=1e-9)
    text = " ".join((report_dir / "report.md").read_text().split())
    assert f"at full scale {on_panel:.4f}, in the panel study {gini(same):.4f} (same game)" in text
    assert f"the full-scale attribution has Gini {g:.4f}" in text
    assert gini(np.ones(50)) == pytest.approx(0.0, abs=1e-12)
    assert gini(np.eye(1, 50)[0]) == pytest.approx(49 / 50)
    assert gini(np.zeros(5)) == 0.0
    xs, ys = lorenz(data.phi)
    assert ys[0] == 0 and ys[-1] == pytest.approx(1) and np.all(np.diff(ys) >= 0) and np.all(ys <= xs + 1e-12)


def _with_did(data: ReportData, did: str) -> ReportData:
    r = data.result
    top = (r.top[0].model_copy(update={"did": did}), *r.top[1:])
    result = r.but(top=top, indicator="<b>ind</b>")
    return dataclasses.replace(data, result=result, archive="/tmp/a<b>&c.zst")


def test_html_and_markdown_escape_user_strings(data: ReportData) -> None:
    did = 'did:plc:<script>alert("x")</script>|&`'
    blocks = document(_with_did(data, did))
    page = render_html(blocks)
    assert "<script>" not in page and "<b>" not in page and "a<b>&c" not in page
    assert "did:plc:&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;|&amp;`" in page
    assert "/tmp/a&lt;b&gt;&amp;c.zst" in page
    md = render_markdown(blocks)
    row = next(line for line in md.splitlines() if "did:plc:<script>" in line)
    assert '`` did:plc:<script>alert("x")</script>\\|&` ``' in row  # a code span, with the table's | escaped
    assert len(re.split(r"(?<!\\)\|", row)) == 8  # still six cells
    assert r"\<b\>ind\</b\>" in md


def test_archive_path_with_markup_is_escaped_end_to_end(tmp_path: Path) -> None:
    archive = tmp_path / "a<b>&.skyarch.zst"
    shutil.copy(default_archive(), archive)
    out = tmp_path / "out"
    result = runner.invoke(app, ["report", str(archive), "--out", str(out), "--indicator", "reach", "--nodes", "8"])
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert "a&lt;b&gt;&amp;.skyarch.zst" in page and "a<b>" not in page
    assert json.loads((out / "result.json").read_text())["indicator"] == "reach"


def _one_error_line(output: str, message: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    assert message in lines[0], output


def test_bad_inputs_exit_2_with_one_line(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\xff" * 64)
    no_edges = tmp_path / "posts.jsonl"
    post = {"text": "hi", "createdAt": "2024-01-01T00:00:00Z"}
    commit = {"operation": "create", "collection": "app.bsky.feed.post", "rkey": "1", "record": post}
    no_edges.write_text(
        json.dumps({"did": "did:plc:a", "time_us": 1_704_067_200_000_000, "kind": "commit", "commit": commit}) + "\n"
    )
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        ([str(tmp_path / "missing.zst"), "--out", out], "cannot read archive"),
        ([str(garbage), "--out", out], "nothing readable"),
        ([str(no_edges), "--out", out], "no attention edges"),
        (["--indicator", "nope", "--out", out], "unknown indicator 'nope'"),
        (["--out", str(a_file)], "not a directory"),
        (["--out", str(a_file / "sub")], "cannot write to output directory"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["report", *args])
        assert result.exit_code == 2, (args, result.output)
        _one_error_line(result.output, message)
    assert not (tmp_path / "out").exists()  # a failed run leaves no empty output directory behind


def test_the_progress_is_full_while_the_report_attributes(tmp_path: Path) -> None:
    """Off a terminal (a line every 0.05 s here): once the archive is read the line says 100 % and the time spent,
    not where the last progress report left it with "ETA 0 s"."""
    import subprocess
    import sys

    env = {**os.environ, "SKYATTR_PROGRESS_EVERY": "0.05"}
    proc = subprocess.run(
        [sys.executable, "-m", "streamer", "report", "--out", str(tmp_path / "out"), "--nodes", "8"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    attributing = [line for line in proc.stderr.splitlines() if "attributing at the end" in line]
    assert attributing, proc.stderr
    assert all("11,998/11,998 items (100%)" in line and "elapsed" in line for line in attributing), attributing
