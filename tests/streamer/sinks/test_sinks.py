"""Terminal and JSON Lines sinks, fed with real result messages from the golden replay."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

from rich.console import Console

from streamer.app.terminal import TerminalSink
from streamer.core.results import AlertFigures, AlertTransition, RunResult, result_from_message
from streamer.sinks.jsonl import JsonlSink

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "default_replay.jsonl"


def _messages() -> list[tuple[str, dict]]:
    out = []
    for line in GOLDEN.read_text().splitlines():
        m = json.loads(line)
        out.append((m.pop("topic"), m))
    return out


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200, force_terminal=False, color_system=None), buf


def test_live_terminal_prints_the_table_for_every_run() -> None:
    console, buf = _console()
    sink = TerminalSink(console, every_run=True)
    msgs = _messages()
    for kind, m in msgs:
        sink.publish(result_from_message(kind, m))
    text = buf.getvalue()
    runs = sum(1 for k, _ in msgs if k == "tiers")
    assert text.count("┃ tier ") == runs
    assert text.count("scale-bias alert firing") == sum(1 for k, _ in msgs if k == "alerts")


def test_replay_terminal_prints_lines_and_the_table_on_alert_changes_and_at_the_end() -> None:
    console, buf = _console()
    sink = TerminalSink(console)
    msgs = _messages()
    for kind, m in msgs:
        sink.publish(result_from_message(kind, m))
    sink.final()
    text = buf.getvalue()
    changes = sum(1 for k, m in msgs if k == "tiers" and m["alert"]["changed"])
    last_changed = next(m for k, m in reversed(msgs) if k == "tiers")["alert"]["changed"]
    assert text.count("┃ tier ") == changes + (0 if last_changed else 1), "the last table is never printed twice"
    last = next(m for k, m in reversed(msgs) if k == "tiers")
    assert f"run {last['run']:>4} @" in text
    assert f"{last['tiers']['full']['tail']:.3f}" in text


def test_jsonl_sink_writes_one_sorted_line_per_message(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "out.jsonl"
    sink = JsonlSink(path)
    msgs = _messages()
    for kind, m in msgs:
        sink.publish(result_from_message(kind, m))
    asyncio.run(sink.close(0))
    lines = path.read_text().splitlines()
    assert len(lines) == sink.lines == len(msgs)
    assert [json.loads(x) for x in lines] == [{"topic": k, **m} for k, m in msgs]
    assert lines == GOLDEN.read_text().splitlines(), "the golden file itself was written by this sink"


def coverage_alert(result: RunResult, panel_share: float) -> AlertTransition:
    """An alert firing on coverage at ``result``'s run, with its figures and ``panel_share`` (the bundled defaults
    raise none)."""
    sb = result.scale_bias
    assert sb is not None
    figures = AlertFigures(
        residual=sb.same_game.residual, restricted_residual=sb.restricted.residual, panel_share=panel_share
    )
    return AlertTransition(
        run=result.run, indicator=result.indicator, state="firing", severity="warning", criteria=("coverage",),
        figures=figures, thresholds=result.alert.thresholds, window=result.window, as_of_us=result.as_of_us,
    )  # fmt: skip


def _firing(m: dict) -> dict:
    """A golden run as if the alert had started firing at it on coverage (the bundled defaults never fire)."""
    return {**m, "alert": {**m["alert"], "active": True, "changed": True, "criteria": ["coverage"]}}


def test_the_final_table_is_not_printed_twice_when_the_last_run_changed_the_alert() -> None:
    console, buf = _console()
    sink = TerminalSink(console)
    kind, m = [(k, m) for k, m in _messages() if k == "tiers"][-1]
    sink.publish(result_from_message(kind, _firing(m)))
    sink.final()
    text = buf.getvalue()
    assert text.count("┃ tier ") == 1
    assert "alert FIRING (coverage)" in " ".join(text.split())


def test_the_alert_line_names_what_fired_and_both_games_show() -> None:
    console, buf = _console()
    sink = TerminalSink(console, every_run=True)
    m = [m for k, m in _messages() if k == "tiers"][-1]
    result = result_from_message("tiers", m)
    assert isinstance(result, RunResult) and result.scale_bias is not None
    sb = result.scale_bias
    alert = coverage_alert(result, 0.3)
    sink.publish(result)
    sink.publish(alert)
    text = " ".join(buf.getvalue().split())
    assert "panel (100), restricted" in text and "panel (100), same game" in text
    assert f"same game: r* {sb.same_game.residual:.3f}" in text
    assert f"restricted: r* {sb.restricted.residual:.3f}" in text
    want = "scale-bias alert firing (warning): scale bias: the panel holds 30.0% of the full-scale attribution < 50%"
    assert want in text
