"""One flag, ``--appview URL``, gives ``replay`` (and so ``run``), ``report`` and ``study`` real visibility: follower
counts from the AppView (here the local stand-in, through the atproto SDK's client) for the accounts within reach of
the head and middle tiers or the panel, 0 for the others; asked once per account (cached), and a run whose AppView
cannot answer is skipped with one line, never run on made-up visibility."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from streamer.app.daemon import replay_pipeline
from streamer.app.replay import replay
from streamer.app.settings import ConfigError, load_settings
from streamer.sources.appview import candidates
from streamer.testing.appview_server import AppViewStandIn
from streamer.testing.synth import default_archive


@pytest.fixture(scope="module")
def table() -> dict[str, int]:
    """Follower counts for every account of the bundled archive, unrelated to the attention they receive."""
    dids = replay(default_archive()).state.dids
    return {did: (i * 7919) % 5003 for i, did in enumerate(dids)}


def _replay(tmp_path: Path, name: str, **flags: object) -> list[dict]:
    out = tmp_path / f"{name}.jsonl"
    settings = load_settings(flags={"interval": 3600, "out": out, **flags}, env={})
    asyncio.run(replay_pipeline(settings, default_archive(), tables=False))
    return [m for m in map(json.loads, out.read_text().splitlines()) if m["topic"] == "tiers"]


def test_a_replay_takes_its_visibility_from_the_appview_asking_each_account_once(
    tmp_path: Path, table: dict[str, int]
) -> None:
    cache = tmp_path / "cache"
    with AppViewStandIn(table) as appview:
        got = _replay(tmp_path, "appview", appview=appview.url, appview_cache=cache)
        asked = [did for call in appview.script.calls for did in call]
    proxy = _replay(tmp_path, "proxy")
    assert [m["run"] for m in got] == [m["run"] for m in proxy]
    assert all(len(call) <= 25 for call in appview.script.calls)
    assert len(asked) == len(set(asked)), "an account asked twice: the cache was not used"
    assert len(set(asked)) < len(table)  # only the candidates, not every account
    # every listed account's visibility is its follower count, or 0 when it was not a candidate
    listed = [(a["did"], a["visibility"]) for m in got for a in m["top"]]
    assert any(v > 0 for _, v in listed)
    assert all(v == table[did] or (v == 0 and did not in asked) for did, v in listed)
    assert [m["tiers"] for m in got] != [m["tiers"] for m in proxy]  # visibility sets the tiers
    # run again from the cache alone: the AppView is not asked, the results are the same
    with AppViewStandIn(table) as again:
        repeat = _replay(tmp_path, "again", appview=again.url, appview_cache=cache)
        assert again.script.calls == []
    assert [m["tiers"] for m in repeat] == [m["tiers"] for m in got]


def test_the_candidates_asked_are_those_the_last_snapshot_ranks_within_reach(table: dict[str, int]) -> None:
    state = replay(default_archive()).state
    snap = state.snapshot()
    proxy = np.asarray(snap.visibility)
    picked = candidates(proxy, snap.x, head=0.01, middle=0.10, panel_size=100)
    # the head and middle tiers by the proxy, with a margin, and the 1,500 most visible active accounts
    assert len(picked) >= int(0.11 * len(snap.dids))
    assert set(np.argsort(-proxy, kind="stable")[: int(0.11 * len(proxy))].tolist()) <= set(picked.tolist())


def test_an_appview_that_cannot_answer_skips_the_runs_with_one_line(
    tmp_path: Path, table: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    with AppViewStandIn(table) as appview, caplog.at_level(logging.INFO):
        appview.script.down = True
        got = _replay(tmp_path, "down", appview=appview.url, appview_cache=tmp_path / "cache")
    assert got == []
    skipped = [r.getMessage() for r in caplog.records if "run skipped" in r.getMessage()]
    assert skipped and all("no visibility: the AppView at" in line and "refused" in line for line in skipped)
    assert not any(r.exc_info for r in caplog.records)


def test_followers_and_appview_are_one_choice() -> None:
    with pytest.raises(ConfigError, match="--followers or --appview, not both"):
        load_settings(flags={"followers": Path("f.csv"), "appview": "http://127.0.0.1:1"}, env={})


def test_both_modes_skip_a_run_whose_visibility_cannot_be_had() -> None:
    """The single process's pipeline and the distributed attributor measure through one function: a follower
    source that raises skips the run with its line (no snapshot, nothing published)."""
    from streamer.core.attribution import AttributionConfig, Skipped, finish, measure_snapshot
    from streamer.sources.appview import AppViewError

    def take() -> object:
        raise AppViewError("the AppView at http://127.0.0.1:9 is unreachable: refused")

    m = measure_snapshot(take, AttributionConfig())  # type: ignore[arg-type]
    assert isinstance(m, Skipped) and m.snap is None and m.reason.startswith("no visibility: the AppView at")
    out = finish(m, AttributionConfig(), run=3, as_of_us=0, alert_active=True)
    assert out.result is None and out.alert is None and out.alert_active is True
