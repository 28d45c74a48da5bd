"""Every command reads its options the same way: defaults < ``--config`` YAML < ``SKYATTR_*`` < flags.

For each of ``attribute``, ``report``, ``relay`` and ``record``: a YAML file sets an option and the command's output
shows it, the environment overrides the file, a flag overrides both, and a bad value in the environment is one
``error:`` line naming the variable's origin, exit 2. Then the settings path itself: mapping options in JSON or YAML
flow style, and the one-line errors for what is not a mapping or not a number. Inputs are small (2,000 synthetic
agents, a two-hour 60-account archive), so the module runs in seconds.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

from kernels import defaults
from streamer.app import relay_command as relay_module
from streamer.app.cli import app
from streamer.app.distributed_commands import KAFKA_SETTINGS
from streamer.app.flags import load_or_exit, settings_fields, with_settings_options
from streamer.app.options import Config
from streamer.app.role_settings import SECTIONS, WorkerSettings
from streamer.app.settings import ConfigError, Settings, load_settings
from streamer.distributed import defaults as dd
from streamer.sources.archive import read_archive
from streamer.sources.relay_server import Relay
from streamer.testing.threaded import serving_in_thread

from ...net import free_port

runner = CliRunner()


def _invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, args, env=env, prog_name="skyattr")


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def _env_error(result: Result, variable_value: str) -> str:
    """Exit 2 with exactly one ``error:`` line, naming the environment as the origin."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert len(lines) == 1 and lines[0].startswith("error: invalid config: "), result.stderr
    assert lines[0].endswith("(from environment)") and repr(variable_value) in lines[0], lines[0]
    return lines[0]


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "skyattr.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def archive(synth_archive_of: Callable[[int, float, int], Path]) -> Path:
    return synth_archive_of(60, 2, 0)


# --- attribute -------------------------------------------------------------------------------------------------------
def _attribute(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    config = _yaml(tmp_path, "indicator: reach\nhead: 0.05\nnodes: 8\n")
    result = _ok(_invoke(["attribute", "--agents", "2000", "--json", "--config", str(config), *args], env))
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_attribute_reads_the_config_file_then_env_then_flags(tmp_path: Path) -> None:
    out = _attribute(tmp_path)
    assert out["indicator"] == "reach" and out["config"]["head"] == 0.05 and out["config"]["nodes"] == 8
    assert out["config"]["middle"] == defaults.MIDDLE, "what no layer sets keeps its default"
    out = _attribute(tmp_path, env={"SKYATTR_HEAD": "0.07", "SKYATTR_INDICATOR_PARAMS": ""})
    assert out["config"]["head"] == 0.07 and out["indicator"] == "reach"
    out = _attribute(tmp_path, "--head", "0.09", env={"SKYATTR_HEAD": "0.07"})
    assert out["config"]["head"] == 0.09


def test_attribute_takes_indicator_params_in_yaml_flow_style(tmp_path: Path) -> None:
    out = _attribute(tmp_path, "--indicator", "cascade", "--indicator-params", "{kappa: 3, theta: 2.5}")
    assert out["indicator"] == "cascade" and out["config"]["params"] == {"kappa": 3, "theta": 2.5}


def test_attribute_bad_env_value_is_one_line(tmp_path: Path) -> None:
    line = _env_error(_invoke(["attribute", "--agents", "2000"], {"SKYATTR_HEAD": "lots"}), "lots")
    assert "invalid config: head: " in line


# --- report ----------------------------------------------------------------------------------------------------------
def _report(tmp_path: Path, archive: Path, name: str, *args: str, env: dict[str, str] | None = None) -> Path:
    config = _yaml(tmp_path, "indicator: reach\nhead: 0.05\nnodes: 8\nbucket_hours: 1\nbuckets: 3\n")
    out = tmp_path / name
    _ok(_invoke(["report", str(archive), "--out", str(out), "--config", str(config), *args], env))
    return out


def test_report_reads_the_config_file_then_env_then_flags(tmp_path: Path, archive: Path) -> None:
    out = _report(tmp_path, archive, "yaml")
    message = json.loads((out / "result.json").read_text())
    assert message["indicator"] == "reach" and message["nodes"] == 8
    md = (out / "report.md").read_text()
    assert "head = top 5%" in md and "3 buckets of 1 h" in md
    md = (_report(tmp_path, archive, "env", env={"SKYATTR_HEAD": "0.2"}) / "report.md").read_text()
    assert "head = top 20%" in md
    md = (_report(tmp_path, archive, "flag", "--head", "0.3", env={"SKYATTR_HEAD": "0.2"}) / "report.md").read_text()
    assert "head = top 30%" in md


def test_report_bad_env_value_is_one_line_and_writes_nothing(tmp_path: Path, archive: Path) -> None:
    out = tmp_path / "out"
    result = _invoke(["report", str(archive), "--out", str(out)], {"SKYATTR_BUCKETS": "0"})
    assert "invalid config: buckets: must be >= 1" in _env_error(result, "0")
    assert not out.exists()


# --- relay -----------------------------------------------------------------------------------------------------------
@pytest.fixture
def relay_once(monkeypatch: pytest.MonkeyPatch) -> list[Relay]:
    """``relay`` starts its real server, prints its real start-up line, and stops (instead of waiting for ^C)."""
    served: list[Relay] = []

    async def once(relay: Relay, v2: object) -> None:
        async with relay:
            typer.echo(relay_module.banner(relay), err=True)
        served.append(relay)

    monkeypatch.setattr(relay_module, "_serve", once)
    return served


def test_relay_reads_the_config_file_then_env_then_flags(
    tmp_path: Path, archive: Path, relay_once: list[Relay]
) -> None:
    config = _yaml(tmp_path, "speed: 50\n")
    args = ["relay", str(archive), "--port", "0", "--config", str(config)]
    assert "paced at 50x event time" in _ok(_invoke(args)).stderr
    assert "paced at 70x event time" in _ok(_invoke(args, {"SKYATTR_SPEED": "70"})).stderr
    assert "paced at 90x event time" in _ok(_invoke([*args, "--speed", "90"], {"SKYATTR_SPEED": "70"})).stderr
    assert "as fast as clients read" in _ok(_invoke(["relay", str(archive), "--port", "0"])).stderr
    assert [r.speed for r in relay_once] == [50, 70, 90, None]


def test_relay_bad_env_value_is_one_line(archive: Path, relay_once: list[Relay]) -> None:
    result = _invoke(["relay", str(archive), "--port", "0"], {"SKYATTR_SPEED": "0"})
    assert "invalid config: speed: must be >= 0.001" in _env_error(result, "0")
    assert relay_once == []


# --- record ----------------------------------------------------------------------------------------------------------
def _record(args: list[str], env: dict[str, str] | None = None) -> Result:
    """``record`` in a thread with a deadline: a relay URL that is not honoured would have it retry forever."""
    done: list[Result] = []
    worker = threading.Thread(target=lambda: done.append(_invoke(args, env)), daemon=True)
    worker.start()
    worker.join(60)
    assert done, f"record did not finish: it is not reading the relay it was given ({args}, {env})"
    return done[0]


def test_record_reads_the_config_file_then_env_then_flags(tmp_path: Path, archive: Path) -> None:
    dead = f"ws://127.0.0.1:{free_port()}"  # nobody listens: recording from it would never finish
    with serving_in_thread(Relay(archive)) as relay:
        cases = [
            (f"relay: {relay.url}\n", [], None),
            (f"relay: {dead}\n", [], {"SKYATTR_RELAY": relay.url}),
            (f"relay: {dead}\n", ["--relay", relay.url], {"SKYATTR_RELAY": dead}),
        ]
        for i, (yaml_text, flags, env) in enumerate(cases):
            out = tmp_path / f"rec{i}"
            config = _yaml(tmp_path, yaml_text)
            result = _ok(_record(["record", "--out", str(out), "--limit", "5", "--config", str(config), *flags], env))
            assert f"record: wrote 5 frames from {relay.url} to " in result.stdout, result.output
            assert len(list(read_archive(out))) == 5


def test_record_bad_env_value_is_one_line(tmp_path: Path) -> None:
    result = _invoke(["record", "--out", str(tmp_path / "rec"), "--limit", "1"], {"SKYATTR_RELAY": "ftp://x"})
    assert "invalid config: relay: must be a websocket URL" in _env_error(result, "ftp://x")


# --- the settings path itself ----------------------------------------------------------------------------------------
def test_layers_and_whole_mapping_values(tmp_path: Path) -> None:
    config = _yaml(tmp_path, "indicator-params: {kappa: 1e3, theta: 2}\nhead: 0.05\n")
    assert load_settings(config, env={}).indicator_params == {"kappa": 1000.0, "theta": 2}
    env = {"SKYATTR_INDICATOR_PARAMS": "{theta: 4}", "SKYATTR_HEAD": "0.06"}
    s = load_settings(config, env=env)
    assert s.indicator_params == {"theta": 4}, "a layer's mapping replaces the one below, it is not merged"
    assert s.head == 0.06
    s = load_settings(config, flags={"indicator_params": '{"rho": 2}', "head": None}, env=env)
    assert s.indicator_params == {"rho": 2} and s.head == 0.06, "a None flag is unset"
    assert load_settings(env={"SKYATTR_INDICATOR_PARAMS": '{"kappa": 2}'}).indicator_params == {"kappa": 2}


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (
            {"indicator_params": '{"kappa": "x"}'},
            {},
            "invalid config: indicator_params: kappa must be a number, got 'x' (from flags)",
        ),
        ({"indicator_params": "{kappa: x}"}, {}, "invalid config: indicator_params: kappa must be a number, got 'x'"),
        (
            {},
            {"SKYATTR_INDICATOR_PARAMS": '{"theta": "three"}'},
            "invalid config: indicator_params: theta must be a number, got 'three' (from environment)",
        ),
        (
            {"indicator_params": "[1, 2]"},
            {},
            "invalid config: --indicator-params must be a JSON object (got [1, 2]) or a YAML flow mapping",
        ),
        ({"indicator_params": "3"}, {}, "invalid config: --indicator-params must be a JSON object (got 3)"),
        ({}, {"SKYATTR_INDICATOR_PARAMS": "{kappa: 2"}, "invalid config: SKYATTR_INDICATOR_PARAMS must be a JSON"),
        ({}, {"SKYATTR_HEAD": "0"}, "invalid config: head: must be > 0, got '0'; tier fractions must satisfy"),
    ],
)
def test_one_line_errors(flags: dict[str, Any], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(flags=flags, env=env)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_role_section_is_merged_field_by_field_across_the_layers(tmp_path: Path) -> None:
    """The distributed roles' sections layer like every option, but field by field: the YAML file sets the
    worker's session timeout, the environment its membership id, a flag its group; the topics likewise."""
    config = _yaml(
        tmp_path, "worker: {session_timeout: 12, instance: from-yaml, app_id: yaml}\ntopics:\n  events: e.yaml\n"
    )
    env = {"SKYATTR_WORKER__INSTANCE": "from-env", "SKYATTR_TOPICS__SHARDS": "s.env"}
    s = load_settings(config, flags={"worker__app_id": "flag", "worker__stuck_timeout": None}, env=env)
    assert s.worker == WorkerSettings(session_timeout=12, instance="from-env", app_id="flag")
    assert (s.topics.events, s.topics.shards, s.topics.state) == ("e.yaml", "s.env", dd.STATE_TOPIC)
    assert load_settings(env={}).worker.instance == ""


@pytest.mark.parametrize(
    ("yaml", "flags", "env", "message"),
    [
        (
            "",
            {},
            {"SKYATTR_WORKER__SESSION_TIMEOUT": "soon"},
            "worker.session_timeout: Input should be a valid number, unable to parse string as a number, got 'soon' "
            "(from environment)",
        ),
        (
            "",
            {"worker__session_timeout": 1.0},
            {},
            "invalid config: worker.session_timeout: must be >= 6, got 1.0 (from flags)",
        ),
        ("worker: {store: memory://}", {}, {}, "invalid config: worker.store: unknown option"),
        (
            "ingest: {partitions: yes}",
            {},
            {},
            "invalid config: ingest.partitions: must be a number, not true (from config file)",
        ),
        (
            "attributor: {gather_timeout: .nan}",
            {},
            {},
            "invalid config: attributor.gather_timeout: must be a finite number",
        ),
    ],
)
def test_a_bad_role_option_is_one_line(
    tmp_path: Path, yaml: str, flags: dict[str, Any], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(_yaml(tmp_path, yaml), flags=flags, env=env)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_role_command_refuses_a_bad_section_value_in_one_line() -> None:
    result = _invoke(["worker"], {"SKYATTR_WORKER__SESSION_TIMEOUT": "soon"})
    assert "invalid config: worker.session_timeout" in _env_error(result, "soon")


def test_a_new_role_reads_the_shared_file_the_environment_and_its_flags(tmp_path: Path) -> None:
    """docs/architecture.md, "to add a role": a command declared with the Kafka settings and a section of the
    topics gets them from the shared YAML file, the environment and its flags, with nothing parsed by hand."""
    seen: list[Settings] = []

    @with_settings_options(include=KAFKA_SETTINGS, sections={"topics": ["shards"]})
    def inspect_shards(config: Config = None, **flags: Any) -> None:
        seen.append(load_or_exit(config, flags))

    role = typer.Typer()
    role.command("inspect-shards")(inspect_shards)
    role.command("other")(lambda: None)  # two commands: typer then takes the command's name
    config = _yaml(tmp_path, "kafka_bootstrap: kafka:9092\ntopics: {shards: from.yaml, events: e}\n")
    env = {"SKYATTR_LOG_LEVEL": "debug", "SKYATTR_KAFKA_BOOTSTRAP": ""}  # empty: unset (CI sets one)
    result = runner.invoke(role, ["inspect-shards", "--config", str(config), "--shards-topic", "from.flag"], env=env)
    assert result.exit_code == 0, result.output
    (s,) = seen
    assert (s.kafka_bootstrap, s.topics.shards, s.topics.events, s.log_level) == (
        "kafka:9092",
        "from.flag",
        "e",
        "DEBUG",
    )
    assert "--shards-topic" in runner.invoke(role, ["inspect-shards", "--help"]).output


def test_documented_flow_style_flag_reaches_the_daemon_commands(tmp_path: Path, archive: Path) -> None:
    """``replay --indicator-params '{kappa: 2, theta: 3}'``, as the README writes it, is accepted; ``{kappa: x}`` is
    one line naming the parameter."""
    out = tmp_path / "results.jsonl"
    args = ["replay", str(archive), "--interval", "3600", "--quiet", "--no-progress", "--out", str(out)]
    _ok(_invoke([*args, "--indicator-params", "{kappa: 2.5, theta: 3}"], {}))
    runs = [json.loads(line) for line in out.read_text().splitlines()]
    assert runs and {json.dumps(r["params"], sort_keys=True) for r in runs} == {
        json.dumps({"kappa": 2.5, "rho": 1.0, "theta": 3.0}, sort_keys=True)
    }
    result = _invoke([*args, "--indicator-params", "{kappa: x}"], {})
    assert result.exit_code == 2 and "kappa must be a number, got 'x' (from flags)" in result.stderr


def test_defaults_are_written_once() -> None:
    """Settings, the kernels and AlertThresholds all read kernels.defaults."""
    import inspect

    import kernels

    s = load_settings(env={})
    assert (s.indicator, s.nodes, s.dtype, s.head, s.middle) == (
        defaults.DEFAULT_INDICATOR,
        defaults.NODES,
        defaults.DTYPE,
        defaults.HEAD,
        defaults.MIDDLE,
    )
    assert (s.panel_size, s.top_k, s.tau_coverage, s.tau_res, s.alert_clear, s.interval) == (
        defaults.PANEL_SIZE,
        defaults.TOP_K,
        defaults.TAU_COVERAGE,
        defaults.TAU_RES,
        defaults.ALERT_CLEAR,
        defaults.INTERVAL_S,
    )
    t = kernels.AlertThresholds()
    assert (t.coverage, t.residual, t.clear) == (defaults.TAU_COVERAGE, defaults.TAU_RES, defaults.ALERT_CLEAR)
    tiers = inspect.signature(kernels.assign_tiers).parameters
    assert (tiers["head"].default, tiers["middle"].default) == (defaults.HEAD, defaults.MIDDLE)
    assert inspect.signature(kernels.select_panel).parameters["size"].default == defaults.PANEL_SIZE


def test_flag_generator_picks_fields() -> None:
    assert settings_fields(include={"head", "nodes"}) == ["nodes", "head"]  # declaration order
    assert "relay" not in settings_fields(exclude={"relay"})
    assert len(settings_fields()) == len(Settings.model_fields) - len(SECTIONS)  # a section's fields are its own
    assert settings_fields(include={"head"}, exclude={"not_yet_a_field"}) == ["head"]
    with pytest.raises(ValueError, match="not Settings fields: nope"):
        with_settings_options(include={"nope"})
