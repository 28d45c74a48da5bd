"""The results are typed end to end: the model is the message, and the published JSON Schemas are the model's.

The schema files in ``streamer/schemas/`` must be what the models generate (so they cannot drift from the code);
an independent JSON Schema validator (``jsonschema``, not the code under test) accepts every golden message under
them and refuses broken ones; and a message read back is the same typed result, refused with the field named when
it is not one, derived fields included."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from streamer.core.results import (
    AlertTransition,
    RunResult,
    result_from_message,
    schema_text,
)

REPO = Path(__file__).resolve().parents[3]
GOLDEN = REPO / "tests" / "golden" / "default_replay.jsonl"


def _golden() -> list[dict[str, Any]]:
    return [json.loads(line) for line in GOLDEN.read_text().splitlines()]


def _validator(topic: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((REPO / "streamer" / "schemas" / f"{topic}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def _alert(run: RunResult) -> AlertTransition:
    assert run.scale_bias is not None
    return AlertTransition.model_validate(
        {
            "run": run.run,
            "indicator": run.indicator,
            "state": "firing",
            "severity": "warning",
            "criteria": ["residual"],
            "figures": {"residual": 0.4, "restricted_residual": 0.5, "panel_share": None},
            "thresholds": run.alert.thresholds.model_dump(),
            "window": {"start_us": run.window.start_us, "end_us": run.window.end_us},
            "as_of_us": run.as_of_us,
        }
    )


@pytest.mark.parametrize("kind", [RunResult, AlertTransition])
def test_the_published_schema_is_the_models(kind: type[RunResult] | type[AlertTransition]) -> None:
    path = REPO / "streamer" / "schemas" / f"{kind.topic}.schema.json"
    assert path.read_text() == schema_text(kind), "regenerate with `python -m streamer.core.results`"


def test_every_golden_message_is_its_type_and_the_same_message_again() -> None:
    tiers, alerts = _validator("tiers"), _validator("alerts")
    for line in _golden():
        topic = line.pop("topic")
        assert not list((tiers if topic == "tiers" else alerts).iter_errors(line))
        result = result_from_message(topic, line)
        assert result.to_message() == line
    alert = _alert(result_from_message("tiers", _golden()[-1]))  # type: ignore[arg-type]
    message = alert.to_message()
    assert not list(alerts.iter_errors(message))
    assert message["summary"] == "scale bias: same-game r* 0.400 > 0.2" and message["id"] == _golden()[-1]["id"]
    assert result_from_message("alerts", message) == alert


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (("run",), 0, "run"),  # a bound
        (("run",), 1.0, "run"),  # a float where an integer belongs
        (("agents",), "12", "agents"),  # a number as text
        (("value",), "NaN", "value"),
        (("tiers", "full", "head"), None, "tiers/full/head"),
        (("top", 0, "did"), "alice", "top/0/did"),  # not a DID
        (("alert", "criteria"), ["tvd"], "alert/criteria/0"),  # TVD decides nothing
        (("window", "start"), "2026-01-01T00:00:00.000Z", "window"),  # not the window's own start
        (("id",), "cascade@1", "(top level)"),  # not the run's indicator and time
        (("extra",), 1, "extra"),
    ],
)
def test_a_broken_message_is_refused_naming_the_field(path: tuple[Any, ...], value: Any, where: str) -> None:
    message = _golden()[-1]
    node = message
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ValueError, match=re.escape(f"tiers message does not match its schema at {where}")):
        result_from_message("tiers", message)
    # JSON Schema has no rule for the derived fields' agreement, and counts 1.0 an integer: the model's own checks
    structural = path[0] not in ("window", "id") and not isinstance(value, float)
    if structural and value != "NaN":
        assert list(_validator("tiers").iter_errors({k: v for k, v in message.items() if k != "topic"}))


def test_an_older_version_is_named() -> None:
    message = {**_golden()[-1], "schema": "skyattr.tiers/1"}
    with pytest.raises(ValueError, match="written by an older skyattr"):
        result_from_message("tiers", message)


def test_a_changed_result_derives_its_identity_again() -> None:
    result = result_from_message("tiers", _golden()[-1])
    moved = result.but(as_of_us=result.as_of_us + 1, run=99)
    assert moved.id == f"{result.indicator}@{result.as_of_us + 1}" and moved.run == 99
    assert moved.window == result.window
