"""Every bad input to the commands is one ``error:`` line naming the option or file, and exit status 2.

No traceback, no framed panel, no rich markup taken from a path or the stream. The cases fail before any archive is
replayed (or replay a two-record file), so the whole module runs in seconds.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
import typing
from pathlib import Path

import libipld
import pytest
import zstandard
from typer.testing import CliRunner

import kernels
from streamer.app.cli import app
from streamer.app.role_settings import numeric
from streamer.app.settings import Settings
from streamer.testing.synth import default_archive, synth_frames

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[3]
SCRIPT = Path(sys.executable).parent / "skyattr"
A, B = "did:plc:" + "a" * 24, "did:plc:" + "b" * 24


def _one_error_line(args: list[str], env: dict[str, str] | None = None) -> str:
    """Run the real CLI; assert exit 2 and exactly one line on stderr, which starts with ``error:``; return it."""
    result = runner.invoke(app, args, env=env, prog_name="skyattr")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit), result.exception  # not a crash
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny archive: replay gets past its own checks in well under a second."""
    path = tmp_path_factory.mktemp("archive") / "tiny.bin"
    path.write_bytes(b"".join(struct.pack("<I", len(f)) + f for _, f in synth_frames(5, 1, 1)))
    return path


# --- 1-3: numbers out of range or not finite ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "inf"], "invalid config: interval: must be a finite number, got inf (from flags)"),
        (["--interval", "1e-9"], "invalid config: interval: must be >= 0.001, got 1e-09 (from flags)"),
        (["--interval", "nan"], "interval: must be a finite number, got nan"),
        (["--interval", "1e12"], "interval: must be <= 315576000"),
        (["--bucket-hours", "1e-12"], "invalid config: bucket_hours: must be >= 0.000277778, got 1e-12 (from flags)"),
        (["--bucket-hours", "1e300"], "invalid config: bucket_hours: must be <= 87660, got 1e+300 (from flags)"),
        (["--buckets", "100000"], "invalid config: buckets: must be <= 10000, got 100000 (from flags)"),
        (["--bucket-hours", "24", "--buckets", "5000"], "24 x 5000 = 120000 h is longer than 10 years (87660 h)"),
        (["--speed", "1e-300"], "invalid config: speed: must be >= 0.001, got 1e-300 (from flags)"),
        (["--speed", "1e10"], "speed: must be <= 1000000000"),
        (["--metrics-port", "99999"], "metrics_port: must be <= 65535, got 99999"),
        (["--metrics-host", "bad host!"], "metrics_host: must be an IP address or a host name, got 'bad host!'"),
        (["--edge-budget", "0"], "edge_budget: must be >= 1, got 0"),
    ],
)
def test_out_of_range_numbers(archive: Path, args: list[str], message: str) -> None:
    assert message in _one_error_line(["replay", str(archive), *args])


FLOAT_FIELDS = sorted(
    n for n, f in Settings.model_fields.items() if f.annotation is float or float in typing.get_args(f.annotation)
)


def test_float_fields_are_found() -> None:
    assert {"interval", "bucket_hours", "speed", "head", "tau_coverage", "checkpoint_every"} <= set(FLOAT_FIELDS)
    assert all(numeric(Settings.model_fields[name].annotation) for name in FLOAT_FIELDS)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_every_float_option_refuses_non_finite(archive: Path, name: str, value: str) -> None:
    flag = "--" + name.replace("_", "-")
    line = _one_error_line(["replay", str(archive), flag, value])
    assert f"invalid config: {name}: must be a finite number, got {value}" in line, line


def test_environment_and_config_file_are_held_to_the_same_rules(archive: Path, tmp_path: Path) -> None:
    line = _one_error_line(["replay", str(archive)], env={"SKYATTR_INTERVAL": "inf"})
    assert "interval: must be a finite number, got 'inf' (from environment)" in line
    deep = "[" * 100_000
    line = _one_error_line(["replay", str(archive)], env={"SKYATTR_INDICATOR_PARAMS": deep})
    assert "SKYATTR_INDICATOR_PARAMS must be a JSON object (nested too deeply)" in line
    cases = {
        "yes.yaml": ("interval: yes\n", "interval: must be a number, not true (from config file)"),
        "inf.yaml": ("bucket_hours: .inf\n", "bucket_hours: must be a finite number, got inf (from config file)"),
        "deep.yaml": ("x: " + deep + "\n", "is nested too deeply"),
        "binary.yaml": (b"\xff\xfe\x00\x01", "is not UTF-8 text"),
        "broken.yaml": ("interval: [\n", "is not valid YAML"),
        "unknown.yaml": ("no_such_option: 1\n", "no_such_option: unknown option"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        line = _one_error_line(["replay", str(archive), "--config", str(path)])
        assert message in line, (name, line)


# --- 4: indicator parameters ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"kappa": None}, "indicator 'cascade': parameter kappa must be a positive finite number, got None"),
        ({"kappa": True}, "indicator 'cascade': parameter kappa must be a positive finite number, got True"),
        ({"kappa": "2"}, "parameter kappa must be a positive finite number, got '2'"),
        ({"kappa": 1e400}, "parameter kappa must be a positive finite number, got inf"),
        ({"theta": [3]}, "parameter theta must be a finite number, got [3]"),
        ({"rho": -1}, "parameter rho must be a positive finite number, got -1"),
        ({"nope": 1}, "bad parameters for indicator 'cascade': unknown parameter nope (known: kappa, theta, rho)"),
    ],
)
def test_indicator_params_are_checked_before_the_first_run(archive: Path, params: dict, message: str) -> None:
    line = _one_error_line(["replay", str(archive), "--indicator-params", json.dumps(params)])
    assert line.startswith("error: invalid config: indicator_params: ") and message in line, line
    assert line.endswith("(from flags)"), line


def test_indicator_params_for_another_indicator(archive: Path) -> None:
    args = ["replay", str(archive), "--indicator", "saturation", "--indicator-params", '{"kappa": 2}']
    assert "unknown parameter kappa (known: capacity_per_agent, capacity)" in _one_error_line(args)
    args = ["replay", str(archive), "--indicator", "saturation", "--indicator-params", '{"capacity": false}']
    assert "parameter capacity must be a positive finite number, got False" in _one_error_line(args)


def test_a_cached_indicator_does_not_let_a_boolean_through() -> None:
    """True == 1 and they hash alike, so a cache keyed on values alone would hand back the kappa=1 instance."""
    assert kernels.get_indicator("cascade", kappa=1).params["kappa"] == 1.0
    with pytest.raises(ValueError, match="parameter kappa must be a positive finite number, got True"):
        kernels.get_indicator("cascade", kappa=True)


# --- 5: followers files ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (f"did,followers,handle\n{A},1,a\n{B},2,{'x' * 200_000}\n", "row 2: field larger than field limit (131072)"),
        (f"did,followers\n{A},1\n{B},2\n{A},3\n", f"rows 1 and 3 both give {A}"),
        (f"did,followers\n{A},1\ndid:plc:a b,2\n", "row 2: 'did:plc:a b' is not a DID"),
        (f"did,followers\ndid:plc:{'a' * 3000},1\n", "row 1: 'did:plc:aaaa"),
        (b"did,followers\n\xff,1\n", "is not UTF-8 text"),
    ],
)
def test_bad_followers_files(archive: Path, tmp_path: Path, content: str | bytes, message: str) -> None:
    path = tmp_path / "followers.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    line = _one_error_line(["replay", str(archive), "--followers", str(path)])
    assert f"followers file {path}" in line and message in line, line
    assert len(line) < 300, "a huge field is not echoed back"


# --- 6: rich markup in paths and in the stream ----------------------------------------------------------------------
def _markup_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "runs["  # with the file name below, the path holds "[/]"
    folder.mkdir()
    return folder


def test_markup_in_an_archive_path_is_printed_literally(tmp_path: Path) -> None:
    junk = _markup_dir(tmp_path) / "][bold]junk.bin"
    junk.write_bytes(b"\x01\x02\x03")
    expected = (
        f"error: nothing readable in {junk}: {junk}: truncated frame (3 trailing bytes) (at byte 0 of the 3-byte file, "
        "after 0 items)"
    )
    assert _one_error_line(["replay", str(junk), "--quiet", "--no-progress"]) == expected
    assert _one_error_line(["events", str(junk)]) == expected
    missing = _one_error_line(["replay", str(junk.parent / "[red]absent[/red]")])
    assert "[red]absent[/red] does not exist" in missing


def test_markup_in_a_frame_type_and_a_path_is_printed_literally(tmp_path: Path) -> None:
    odd = libipld.encode_dag_cbor({"t": "#x[/bold]", "op": 1}) + libipld.encode_dag_cbor({"seq": 5})
    path = _markup_dir(tmp_path) / "][bold]frames.bin"
    path.write_bytes(struct.pack("<I", len(odd)) + odd)
    result = runner.invoke(app, ["events", str(path)])
    assert result.exit_code == 0, result.output
    assert "skipped unknown_type: '#x[/bold]'" in result.stderr
    result = runner.invoke(app, ["replay", str(path), "--quiet", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "][bold]frames.bin: 1 items" in result.stderr


# --- 7: a zero-length record is skipped, counted, and reading goes on -----------------------------------------------
@pytest.mark.parametrize("compressed", [False, True])
def test_zero_length_record_is_a_counted_skip(tmp_path: Path, compressed: bool) -> None:
    frames = [f for _, f in synth_frames(5, 1, 1)]
    assert len(frames) >= 2
    body = b"".join(struct.pack("<I", len(f)) + f for f in frames[:1])
    body += struct.pack("<I", 0)
    body += b"".join(struct.pack("<I", len(f)) + f for f in frames[1:])
    path = tmp_path / ("gap.zst" if compressed else "gap.bin")
    path.write_bytes(zstandard.ZstdCompressor().compress(body) if compressed else body)
    result = runner.invoke(app, ["events", str(path)])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(events) == len(frames), "the records after the empty one are read too"
    offset = 4 + len(frames[0])
    assert f"warning: {path}: skipped 1 zero-length record(s), the first at byte {offset}" in result.stderr
    result = runner.invoke(app, ["replay", str(path), "--quiet", "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["stats"]["items"] == len(frames)
    assert summary["errors"] == [f"{path}: skipped 1 zero-length record(s), the first at byte {offset}"]


# --- 8: malformed command lines ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuch"], "error: skyattr: No such command 'nosuch'."),
        (["replay", "--nosuch"], "No such option: --nosuch"),
        (["replay", "a", "b"], "Got unexpected extra argument(s) (b)"),
        (["replay", "--interval"], "Option '--interval' requires an argument."),
        (["replay", "--interval", "soon"], "Invalid value for '--interval'"),
        (["replay", "--nodes", "1e300"], "Invalid value for '--nodes'"),
        (["replay", "--checkpoint-every-items", "0"], "Invalid value for '--checkpoint-every-items'"),
        (["run", "--speed", "2"], "No such option: --speed"),
        (["replay", "--relay", "wss://x"], "No such option: --relay"),
        (["events"], "Missing argument"),
        (["events", "x", "--limit", "-1"], "Invalid value for '--limit'"),
        (["attribute", "--agents", "0"], "Invalid value for '--agents'"),
        (["attribute", "--head", "nan"], "Invalid value for '--head': must be a finite number, got nan"),
        (["attribute", "--tau-res", "inf"], "Invalid value for '--tau-res': must be a finite number, got inf"),
        (["attribute", "--edges-per-agent", "inf"], "Invalid value for '--edges-per-agent'"),
        (["attribute", "--seed", "-1"], "Invalid value for '--seed'"),
    ],
)
def test_malformed_command_lines(args: list[str], message: str) -> None:
    line = _one_error_line(args)
    assert message in line, line
    assert "--help" in line, "the line says where to look"


def test_snapshot_out_into_a_missing_directory_fails_before_replaying(archive: Path, tmp_path: Path) -> None:
    target = tmp_path / "absent" / "snap.npz"
    line = _one_error_line(["replay", str(archive), "--snapshot-out", str(target)])
    assert line == f"error: --snapshot-out {target}: directory {target.parent} does not exist"


@pytest.mark.skipif(not SCRIPT.exists(), reason=f"console script {SCRIPT} not installed")
def test_the_installed_entry_point_prints_one_line_too() -> None:
    """The console script, not the test runner: the same single line, exit 2, nothing else."""
    args = ["replay", "--bogus", "--interval", "inf"]
    done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: skyattr replay: No such option: --bogus"), done.stderr


def test_a_relay_port_in_use_is_named_with_what_to_do(archive: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_error_line(["relay", str(archive), "--port", str(port)])
    assert line == (
        f"error: cannot listen on 127.0.0.1:{port}: the address is already in use (another `skyattr relay`, "
        "or another server); stop it or choose another --port"
    )


@pytest.mark.parametrize(
    "role",
    [
        ["attributor"],
        ["worker"],
        ["ingest", "--to-kafka"],
    ],
)
def test_every_role_names_an_unreachable_broker_in_one_line(role: list[str], tmp_path: Path) -> None:
    """The real client against a port nothing listens on: the role waits --kafka-connect-timeout for a broker it
    has never reached (one warning, the client's retries folded), then exits 2 with one line naming the broker,
    never a traceback."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in role]
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "streamer", *args, "--kafka-bootstrap", "127.0.0.1:1", "--kafka-connect-timeout", "4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert time.monotonic() - started >= 4, "it tried for the connect timeout"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: Kafka at 127.0.0.1:1 not reachable within --kafka-connect-timeout 4 s (KafkaConnectionError: Unable "
        "to bootstrap from [('127.0.0.1', 1, <AddressFamily.AF_INET: 2>)]); is the address right?"
    ], proc.stderr[-2000:]
    assert proc.stderr.count("not reachable yet") == 1, proc.stderr[-2000:]
    assert len(proc.stderr.splitlines()) < 12, "the client's retries are folded, not one line each"


SAVE = ["attribute", "--agents", "200", "--no-progress", "--save"]
PORT = "Invalid value for '--port': Input should be"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [*SAVE, "{tmp}/missing/x.npz"],
            "cannot write the population to {tmp}/missing/x.npz: No such file or directory",
        ),
        ([*SAVE, "{tmp}/file/x.npz"], "cannot write the population to {tmp}/file/x.npz: Not a directory"),
        (["synth", "--agents", "20", "--hours", "1", "--out", "/proc/x.skyarch.zst"], "cannot write /proc/x.skyarch"),
        (["relay", str(default_archive()), "--port", "70000"], f"{PORT} less than or equal to 65535"),
        (["relay", str(default_archive()), "--port", "-5"], f"{PORT} greater than or equal to 0"),
    ],
)
def test_unwritable_outputs_and_impossible_ports_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file, not a directory")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = subprocess.run([sys.executable, "-m", "streamer", *args], capture_output=True, text=True, timeout=120)
    text = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "Traceback" not in text, text[-2000:]
    assert message.replace("{tmp}", str(tmp_path)) in text, text[-2000:]


@pytest.mark.parametrize(
    "args",
    [["events", str(default_archive())], ["replay", "--quiet"], ["attribute", "--agents", "300", "--no-progress"]],
)
def test_a_reader_that_goes_away_ends_the_command_quietly_with_0(args: list[str]) -> None:
    """``skyattr ... | head -1``: the first line arrives, then the pipe closes; exit 0 and nothing on stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "error" not in err.lower() and "Traceback" not in err and "Exception ignored" not in err, err[-2000:]


def test_a_key_given_twice_in_the_config_file_is_refused_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "skyattr.yaml"
    config.write_text("tau_res: 0.2\ninterval: 60\nindicator_params: {kappa: 2, kappa: 3}\n")
    result = CliRunner().invoke(app, ["replay", "--config", str(config)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "found the key 'kappa' twice" in text and "line 3" in text, text


def test_log_levels_are_taken_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYATTR_LOG_LEVEL", "debug")
    from streamer.app.settings import load_settings

    assert load_settings().log_level == "DEBUG"


def test_sigterm_on_synth_leaves_no_file_behind(tmp_path: Path) -> None:
    """Interrupted mid-write (seen writing by its progress line): exit 130, one line, and no file, hidden or not."""
    import os
    import signal

    from tests.faults import Lines, signal_when

    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer", "synth", "--agents", "20000", "--hours", "48", "--out", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SKYATTR_PROGRESS_EVERY": "0.05"},
    )
    err = Lines(proc.stderr)
    signal_when(proc, err.past(1), 120, "the first events written", signal.SIGTERM)
    assert proc.wait(60) == 130
    assert "synth: interrupted;" in err.text() and "Traceback" not in err.text()
    assert list(tmp_path.iterdir()) == []


def test_a_directory_replays_its_archive_files_only(tmp_path: Path) -> None:
    """A synth's DID documents beside its archive are not frames; a folder of other files is an error, not ~95
    warnings and exit 0."""
    runner = CliRunner()
    assert runner.invoke(app, ["synth", "--agents", "20", "--hours", "1", "--out", str(tmp_path)]).exit_code == 0
    (tmp_path / "README.md").write_text("# notes\\n" * 50)
    result = runner.invoke(app, ["replay", str(tmp_path), "--quiet", "--no-progress"])
    assert result.exit_code == 0 and "undecodable none" in result.output, result.output
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x" * 5000)
    result = runner.invoke(app, ["replay", str(other), "--no-progress"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "holds no archive files" in text and "it holds only notes.txt" in text, text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "--quiet", "--out", "{file}/x.jsonl"], "the results file {file}/x.jsonl: {file} is a file"),
        (["replay", "--quiet", "--snapshot-out", "{file}/x.npz"], "--snapshot-out {file}/x.npz: {file} is a file"),
        (["synth", "--out", "{file}/x.skyarch.zst"], "cannot write {file}/x.skyarch.zst: {file} is a file"),
        (["synth", "--out", "{tmp}/no/x.skyarch.zst"], "cannot write {tmp}/no/x.skyarch.zst: directory {tmp}/no does"),
        (["relay", str(default_archive()), "--max-clients", "-1"], "'--max-clients': Input should be greater than or"),
        (["relay", str(default_archive()), "--restart-at", "0"], "'--restart-at': Input should be greater than or"),
        (["relay", str(default_archive()), "--send-timeout", "-1"], "'--send-timeout': Input should be greater than"),
    ],
)  # fmt: skip
def test_a_parent_that_is_a_file_and_flag_ranges_are_said_as_the_user_wrote_them(
    args: list[str], message: str, tmp_path: Path
) -> None:
    """Not "File exists", not "directory does not exist" for a file, not Python's names (max_clients, None)."""
    file = tmp_path / "plain-file"
    file.write_text("not a directory")
    args = [a.replace("{file}", str(file)).replace("{tmp}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in text, text
    assert message.replace("{file}", str(file)).replace("{tmp}", str(tmp_path)) in text, text
    assert "None" not in text and "Errno" not in text and "File exists" not in text
