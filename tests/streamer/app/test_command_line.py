"""The command line as a newcomer meets it: help that reads at 80 columns, progress on every long job, and the
output split (results on stdout; progress, logs, warnings and errors on stderr)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer.main
from rich.console import Console
from typer.testing import CliRunner

from streamer.app.cli import COMMANDS, app
from streamer.app.flags import settings_fields, shown_default
from streamer.app.progress import EVERY_ENV, JobProgress, archive_frames, duration
from streamer.sources.archive import ArchiveWriter
from streamer.testing.synth import write_synth_archive

runner = CliRunner()
FAST = {EVERY_ENV: "0.01"}  # a progress line every 10 ms instead of every 10 s
WIDE = {"COLUMNS": "80"}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "small.skyarch.zst"
    write_synth_archive(path, agents=300, hours=6, seed=0)
    return path


def _flat(text: str) -> str:
    """One line, as the help reads: a word wrapped at a hyphen (a long URL) joined again."""
    return " ".join(re.sub(r"-\n\s+", "-", text).split())


# --- help --------------------------------------------------------------------------------------------------------
def _commands() -> dict[str, object]:
    return dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", [name for name, _, _ in COMMANDS])
def test_help_at_80_columns_names_every_option_in_full(name: str) -> None:
    command = _commands()[name]
    result = runner.invoke(app, [name, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    text = result.stdout
    for param in command.params:  # type: ignore[attr-defined]
        if param.param_type_name != "option":
            assert str(param.metavar) in text and str(param.metavar).isupper(), (name, param.name)
            continue
        for flag in [*param.opts, *param.secondary_opts]:
            assert re.search(rf"(^|[\s,/]){re.escape(flag)}($|[\s,])", text, re.M), (name, flag, text)
        if param.is_flag and param.secondary_opts:  # booleans as --quiet / --no-quiet, with no value to give
            assert f"{param.opts[0]} / {param.secondary_opts[0]}" in text, (name, param.name)
    for bad in ("PydanticUndefined", "<bool>", "<str>", "<int", "<float", "<path>", "…", "\\["):
        assert bad not in text, (name, bad, text)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert f"Usage: root {name} [OPTIONS]" in text


@pytest.mark.parametrize("name", ["replay", "run", "attribute", "report", "record", "relay"])
def test_every_settings_option_with_a_default_shows_it(name: str) -> None:
    command = _commands()[name]
    flat = _flat(runner.invoke(app, [name, "--help"], env=WIDE).stdout)
    names = {p.name for p in command.params} & set(settings_fields())  # type: ignore[attr-defined]
    assert names, name
    for field in names:
        shown = shown_default(field)
        if shown:
            assert _flat(shown) in flat, (name, field, shown)
    if "interval" in names:
        assert "--interval FLOAT" in flat and "[default: 300.0]" in flat
    if "indicator_params" in names:
        assert "--indicator-params MAPPING" in flat


def test_the_top_level_help_describes_the_tool_and_lists_one_line_per_command() -> None:
    result = runner.invoke(app, ["--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    flat = _flat(result.stdout)
    assert "skyattr: watch the Bluesky firehose, attribute a macro indicator" in flat
    assert "scale bias of a visibility panel" in flat and "Start with `skyattr replay`" in flat
    assert "Command line:" not in flat and "``" not in flat
    listing = result.stdout.split("Commands:")[1].splitlines()[1:]
    for name, _, line in COMMANDS:
        assert any(row.split() == [name, *line.split()] for row in listing), (name, listing)
    assert listing[0].split()[0] == "replay", "the first command a newcomer should run comes first"
    assert runner.invoke(app, ["-h"], env=WIDE).stdout == result.stdout


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and re.fullmatch(r"skyattr \S+\n", result.stdout), result.output


def test_a_boolean_settings_flag_can_undo_the_environment() -> None:
    """``--no-jetstream-compress`` exists (a flag left unset still leaves YAML and env alone)."""
    from streamer.app.flags import load_or_exit

    assert load_or_exit(None, {"jetstream_compress": None}, env={"SKYATTR_JETSTREAM_COMPRESS": "1"}).jetstream_compress
    assert not load_or_exit(
        None, {"jetstream_compress": False}, env={"SKYATTR_JETSTREAM_COMPRESS": "1"}
    ).jetstream_compress
    flat = _flat(runner.invoke(app, ["run", "--help"], env=WIDE).stdout)
    assert "--jetstream-compress / --no-jetstream-compress" in flat


# --- progress, the module ----------------------------------------------------------------------------------------
def test_off_a_terminal_a_line_names_count_total_percentage_rate_and_eta() -> None:
    stream = io.StringIO()
    with JobProgress(every=0.01, stream=stream) as bar:
        assert bar.mode == "log"
        task = bar.task("replay", total=11_998)
        task.update(2_000)
        time.sleep(0.05)
        task.update(6_000, detail="run 3")
        time.sleep(0.05)
    lines = stream.getvalue().splitlines()
    assert lines, "no progress line"
    last = lines[-1]
    assert re.fullmatch(r"replay: 6,000/11,998 items \(50%\), [\d,]+/s, ETA \d+ s, run 3", last), last
    assert all(line.startswith("replay: ") for line in lines)
    n = len(lines)
    time.sleep(0.05)
    assert len(stream.getvalue().splitlines()) == n, "the log thread stopped with the job"


def test_a_job_without_a_total_counts_and_a_step_job_shows_no_rate() -> None:
    stream = io.StringIO()
    with JobProgress(every=0.01, stream=stream) as bar:
        frames = bar.task("record", unit="frames")
        frames.update(1_234)
        time.sleep(0.05)
        frames.done()
        steps = bar.task("attribute", total=3, unit="steps", rate=False, detail="full attribution")
        steps.update(1)
        time.sleep(0.05)
    text = stream.getvalue()
    assert re.search(r"^record: 1,234 frames, \d+ s elapsed$|^record: 1,234 frames, [\d,]+/s, ", text, re.M), text
    assert re.search(r"^attribute: 1/3 steps \(33%\), \d+ s elapsed, full attribution$", text, re.M), text


def test_on_a_terminal_the_bar_renders_with_a_percentage() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120, color_system=None)
    with JobProgress(console=console) as bar:
        assert bar.mode == "bar"
        task = bar.task("replay", total=200, detail="a.skyarch.zst")
        task.update(50)
        time.sleep(0.02)
        task.update(100)
    out = buf.getvalue()
    assert "50%" in out and "100/200 items" in out and "replay · a.skyarch.zst" in out, out
    assert "\x1b[2K" in out, "transient: the bar is erased at the end"


def test_at_80_columns_the_bar_stays_one_line_with_its_count() -> None:
    """A long file name is cut (with an ellipsis), never the count, the rate or the ETA, and nothing wraps."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=80, color_system=None)
    bar = JobProgress(console=console)
    task = bar.task("replay", total=11_998, detail="skyattr-2026-07-04T00-00-00Z-0001.skyarch.zst")
    task.update(6_000)
    console.print(bar._rich.get_renderable())  # one frame of the bar, as the live display draws it
    lines = [line for line in buf.getvalue().splitlines() if line.strip()]
    assert len(lines) == 1 and len(lines[0]) <= 80, lines
    assert "6,000/11,998 items" in lines[0] and "50%" in lines[0] and lines[0].startswith("replay · sk"), lines
    assert "…" in lines[0]


def test_no_progress_means_nothing_at_all() -> None:
    stream, buf = io.StringIO(), io.StringIO()
    for bar in (JobProgress(False, every=0.01, stream=stream), JobProgress(False, console=Console(file=buf))):
        with bar:
            assert bar.mode == "off"
            bar.task("replay", total=10).update(5)
            time.sleep(0.03)
    assert stream.getvalue() == "" and buf.getvalue() == ""


def test_the_total_of_a_replay_comes_from_the_archive_trailers(archive: Path, tmp_path: Path) -> None:
    frames = sum(1 for _ in __import__("streamer.sources.archive", fromlist=["read_archive"]).read_archive(archive))
    assert archive_frames(archive) == frames == 454
    directory = tmp_path / "rec"
    with ArchiveWriter(directory, source="test", rotate_bytes=1, flush_every=1) as writer:  # one file per frame
        for i in range(3):
            writer.write(b"x" * 10, i)
    assert len(list(directory.iterdir())) == 3 and archive_frames(directory) == 3
    crashed = tmp_path / "crashed.skyarch.zst"
    crashed.write_bytes(archive.read_bytes()[:-40])  # no trailer: no total, the bar counts without one
    assert archive_frames(crashed) is None
    assert archive_frames(tmp_path / "missing") is None


def test_durations_read_well() -> None:
    assert [duration(s) for s in (0.4, 2, 65, 3600 * 2 + 600)] == ["0 s", "2 s", "1 min 05 s", "2 h 10 min"]


# --- progress and output streams, the commands -------------------------------------------------------------------
PROGRESS_LINE = re.compile(r"^replay: [\d,]+/454 items \(\d+%\), .*small\.skyarch\.zst", re.M)


def test_replay_results_go_to_stdout_progress_and_logs_to_stderr(archive: Path) -> None:
    """As a user runs it: ``skyattr replay ARCHIVE > runs.txt`` keeps the runs, the terminal keeps the rest."""
    out = subprocess.run(
        [sys.executable, "-m", "streamer", "replay", str(archive), "--interval", "3600"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, **FAST},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"^run    1 @ ", out.stdout, re.M) and re.search(r"^run    6 @ ", out.stdout, re.M), out.stdout
    assert "┃ tier" in out.stdout and "alert " in out.stdout, "the final tier table"
    assert "replay:" not in out.stdout and "items in" not in out.stdout
    assert PROGRESS_LINE.search(out.stderr), out.stderr
    assert "small.skyarch.zst: 454 items in" in out.stderr, "the closing statistics: stderr"
    assert "run    1 @" not in out.stderr and "┃ tier" not in out.stderr


def test_replay_warnings_go_to_stderr_and_no_progress_silences_it(archive: Path, tmp_path: Path) -> None:
    broken = tmp_path / "small.skyarch.zst"
    data = archive.read_bytes()
    broken.write_bytes(data[: len(data) * 2 // 3])  # cut mid-frame: replayed up to the damage, with a warning
    result = runner.invoke(app, ["replay", str(broken), "--interval", "3600", "--no-progress"], env=FAST)
    assert result.exit_code == 0, result.output
    assert re.search(r"^warning: .*small\.skyarch\.zst", result.stderr, re.M), result.stderr
    assert "warning" not in result.stdout and re.search(r"^run    1 @ ", result.stdout, re.M), result.stdout
    assert "replay:" not in result.stderr, "--no-progress: no progress lines"


def test_replay_json_keeps_stdout_machine_readable(archive: Path) -> None:
    result = runner.invoke(app, ["replay", str(archive), "--interval", "3600", "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["runs"] == 6, result.stdout
    assert re.search(r"^run    6 @ ", result.stderr, re.M), "the human lines moved to stderr, not lost"


def test_attribute_prints_its_table_on_stdout_and_its_progress_on_stderr() -> None:
    result = runner.invoke(app, ["attribute", "--agents", "200", "--indicator", "reach", "--nodes", "8"], env=FAST)
    assert result.exit_code == 0, result.output
    for word in ("tier", "head", "middle", "tail", "same game: r*", "alert="):
        assert word in result.stdout, word
    assert "head" not in result.stderr and "r*" not in result.stderr
    lines = re.findall(r"^attribution: ([\d,]+)/([\d,]+) nodes \(\d+%\), .*$", result.stderr, re.M)
    assert lines, result.stderr
    for done, total in lines:  # reach: auto rule, 8 nodes: at most 6 * 8 over the full graph, plus 8 in the same game
        assert int(done) <= int(total) <= 56, result.stderr


def test_attribute_tells_the_build_and_the_attribution_of_a_large_population_with_an_eta() -> None:
    """``attribute --agents 1000000`` sat at "0/3 steps" with no ETA for its ~10 s build; both long parts now count
    their work, so a line taken mid-way has a rate and an ETA."""
    env = {EVERY_ENV: "0.05"}
    args = [
        "attribute",
        "--agents",
        "300000",
        "--indicator",
        "reach",
        "--nodes",
        "8",
        "--quadrature",
        "log-graded",
        "--no-error-estimate",
    ]
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    built = re.findall(r"^population: ([\d,]+)/([\d,]+) edge steps \(\d+%\), [\d,]+/s, ETA \d+", result.stderr, re.M)
    assert built, result.stderr
    assert {int(total.replace(",", "")) for _, total in built} == {3 * 8 * 300_000}, (
        "8 edges per agent, each drawn at both ends and sorted"
    )
    assert re.search(r"^attribution: [\d,]+/16 nodes", result.stderr, re.M), "8 for the full game, 8 the same game"


def test_synth_shows_progress_and_names_the_file_on_stdout(tmp_path: Path) -> None:
    out = tmp_path / "s.skyarch.zst"
    env = {EVERY_ENV: "0.001"}
    result = runner.invoke(app, ["synth", "--agents", "2000", "--hours", "6", "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {out}: ") and "wrote" not in result.stderr
    assert re.search(r"^synth: [\d,]+/[\d,]+ events \(\d+%\)", result.stderr, re.M), result.stderr


async def test_record_shows_its_count_against_the_limit(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from streamer.app.record import record_command
    from streamer.sources.relay_server import Relay

    monkeypatch.setenv(EVERY_ENV, "0.01")
    async with Relay(archive, speed=2000) as relay:  # about 10 s of event time per 5 ms: a few ticks of progress
        await asyncio.to_thread(record_command, out=tmp_path / "rec", limit=100, relay=relay.url)
    captured = capfd.readouterr()
    assert f"record: wrote 100 frames from {relay.url} to " in captured.out, captured
    assert re.search(r"^record: [\d,]+/100 frames \(\d+%\)", captured.err, re.M), captured.err
    assert "resume with --cursor" in captured.err


@pytest.mark.parametrize("raw", ["abc", "-1", "0", "nan", "inf"])
def test_a_progress_interval_that_is_not_a_positive_number_is_named_not_ignored(
    raw: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamer.app.progress import DEFAULT_EVERY_S, log_every

    assert log_every({EVERY_ENV: raw}) == DEFAULT_EVERY_S
    assert f"warning: {EVERY_ENV}={raw} is not a positive number of seconds" in capsys.readouterr().err
    assert log_every({EVERY_ENV: "0.5"}) == 0.5 and log_every({}) == DEFAULT_EVERY_S
    assert capsys.readouterr().err == ""
