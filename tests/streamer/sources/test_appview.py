"""Follower counts through the real atproto SDK client against a local stand-in of the AppView's getProfiles:
batching by 25, the disk cache (a second fetch asks nothing, a stale entry is asked again), a 429 waited out
until its reset, a spent budget honoured before the next call, a profile that vanished, and one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamer.sources.appview import AppViewError, AppViewFollowers, candidates
from streamer.testing.appview_server import AppViewStandIn


class Clock:
    """A fake epoch clock that moves only when the fetcher sleeps."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


DIDS = [f"did:plc:{i:024d}" for i in range(60)]


def _fetcher(appview: AppViewStandIn, tmp_path: Path, clock: Clock, **kw: float) -> AppViewFollowers:
    return AppViewFollowers(tmp_path / "cache", appview.url, sleep=clock.sleep, clock=clock, **kw)


def test_batches_of_25_the_cache_and_a_profile_that_vanished(tmp_path: Path) -> None:
    clock = Clock()
    table = {did: 10 * i for i, did in enumerate(DIDS) if i != 7}  # account 7 is gone
    with AppViewStandIn(table, clock) as appview:
        fetch = _fetcher(appview, tmp_path, clock)
        got = fetch.counts(DIDS)
        assert got == table and DIDS[7] not in got
        assert [len(c) for c in appview.script.calls] == [25, 25, 10]
        assert fetch.stats.asked == 60 and fetch.stats.gone == 1 and clock.slept == []
        again = _fetcher(appview, tmp_path, clock)  # a new process: the cache file answers
        assert again.counts(DIDS) == table and len(appview.script.calls) == 3 and again.stats.cached == 60
        clock.now += 8 * 86_400  # a week and a day later: asked again
        assert again.counts(DIDS[:5]) == {d: table[d] for d in DIDS[:5]} and len(appview.script.calls) == 4
    lines = [json.loads(x) for x in (tmp_path / "cache" / "followers.jsonl").read_text().splitlines()]
    assert {"did": DIDS[7], "followers": None, "at": 1_800_000_000.0} in lines


def test_a_429_is_waited_out_until_its_reset_and_a_spent_budget_before_the_next_call(tmp_path: Path) -> None:
    clock = Clock()
    with AppViewStandIn({d: 1 for d in DIDS}, clock) as appview:
        appview.script.refuse, appview.script.reset_in = 2, 30.0
        fetch = _fetcher(appview, tmp_path, clock)
        assert len(fetch.counts(DIDS[:25])) == 25
        assert fetch.stats.rate_limited == 2 and clock.slept == [30.0, 30.0]
        appview.script.remaining = 0  # this success spends the budget: the next call waits for the reset
        fetch.counts(DIDS[25:50])
        appview.script.remaining = 2999
        fetch.counts(DIDS[50:])
        assert clock.slept[2] == pytest.approx(30.0) and len(clock.slept) == 3
        appview.script.refuse, appview.script.reset_in, appview.script.retry_after = 1, None, 4.0
        fetch.counts([f"did:plc:{'x' * 24}"])
        assert clock.slept[-1] == 4.0


def test_a_wait_past_the_bound_and_an_unreachable_appview_are_one_clear_error(tmp_path: Path) -> None:
    clock = Clock()
    with AppViewStandIn({d: 1 for d in DIDS}, clock) as appview:
        appview.script.refuse, appview.script.reset_in = 1, 3600.0
        fetch = _fetcher(appview, tmp_path, clock, max_wait_s=600.0)
        with pytest.raises(AppViewError, match="asks to wait 3600 s"):
            fetch.counts(DIDS[:3])
    gone = AppViewFollowers(tmp_path / "c2", "http://127.0.0.1:9", sleep=lambda s: None)
    with pytest.raises(AppViewError, match="unreachable"):
        gone.counts(DIDS[:3])


def test_candidates_cover_the_head_and_middle_and_the_panels_reach() -> None:
    proxy = np.arange(100, dtype=np.float64)[::-1]  # account 0 the most attended
    x = np.where(np.arange(100) % 2 == 0, 1.0, 0.0)  # even accounts active
    got = candidates(proxy, x, head=0.01, middle=0.1, panel_size=2, margin=1.5)
    want = set(range(17)) | set(range(0, 60, 2))  # 1.5 * 11 % of 100; 1.5 * 10 * 2 = 30 active
    assert set(got.tolist()) == want
