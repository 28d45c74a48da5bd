"""``skyattr study``: the figures against numpy written here, the golden table at small N (fixed seeds), resume
after an interruption equal to an uninterrupted study, the theorem's rows, and the command line end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kernels
from kernels.indicators import attention_received
from streamer.app.study import (
    Generator,
    Populations,
    StudyDirError,
    StudyPlan,
    Workspace,
    run_study,
    summarise,
    units,
)
from streamer.core.population import write_npz

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "study_small.json"
VOLATILE = {"seconds"}


def small_plan(**changes: Any) -> StudyPlan:
    fields: dict[str, Any] = {
        "indicators": ("exposure", "saturated_exposure", "cascade", "reach"),
        "source": "synthetic",
        "generator": Generator(400, edges_per_agent=6.0),
        "seeds": (0, 1),
        "bootstrap": 4,
        "level": 0.9,
        "attribution": {
            "nodes": 16, "dtype": "float64", "head": 0.01, "middle": 0.1, "panel_size": 20, "top_k": 5,
            "rule": "uniform", "params": {},
        },
        "panel_sizes": (5, 20, 60),
        "pieces": (1, 2),
        "sweeps": (("nodes", (8.0, 16.0)), ("head", (0.01, 0.05)), ("cascade.kappa", (0.5, 2.0)),
                   ("saturation.capacity_per_agent", (0.1,)), ("generator.follower_exponent", (0.9, 1.1))),
    }  # fmt: skip
    fields.update(changes)
    return StudyPlan(**fields)


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _close(got: Any, want: Any, path: str = "") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), path
        for k in want:
            _close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _close(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-7, abs=1e-10), path
    else:
        assert got == want, path


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    plan = small_plan()
    ws = Workspace(tmp_path_factory.mktemp("study"), plan)
    run_study(ws, Populations(plan))
    return summarise(ws)


def test_the_figures_are_the_ones_numpy_gives_for_a_linear_indicator(small: dict[str, Any]) -> None:
    """exposure: phi_i = x_i (W^T 1)_i. Tier shares, the panel's share and the top-k share from that closed form,
    tiers and panel chosen here by visibility rank (the DESIGN's rules: head = top 1 %, middle = next 10 %; panel
    = the 20 most visible active agents)."""
    pop = small_plan().generator.population(0)  # type: ignore[union-attr]
    phi = pop.x * attention_received(pop.graph)
    order = np.argsort(-pop.visibility, kind="stable")
    n = len(phi)
    head, middle = order[: math.ceil(0.01 * n)], order[math.ceil(0.01 * n) : math.ceil(0.11 * n)]
    got = small["indicators"]["exposure"]["figures"]
    total = phi.sum()
    assert got["full.head"]["estimate"] == pytest.approx(phi[head].sum() / total, rel=1e-9)
    assert got["full.middle"]["estimate"] == pytest.approx(phi[middle].sum() / total, rel=1e-9)
    active = order[pop.x[order] > 0][:20]
    assert got["panel_share"]["estimate"] == pytest.approx(phi[active].sum() / total, rel=1e-9)
    assert got["full.top_k"]["estimate"] == pytest.approx(np.sort(phi)[::-1][:5].sum() / total, rel=1e-9)
    assert got["same_game.r_star"]["estimate"] <= 1e-12 and got["same_game.c_star"]["estimate"] == pytest.approx(1)


def test_a_sweep_varies_one_option_around_the_study(small: dict[str, Any]) -> None:
    """The study's own value is the headline study itself; a linear indicator's figures do not move with the nodes;
    the head cut-off's shares are numpy's at that cut-off; a parameter of an indicator not studied is no sweep; the
    generator's exponent draws another population."""
    sweeps = {(sw["option"], sw["indicator"]): sw["points"] for sw in small["sweeps"]}
    assert ("saturation.capacity_per_agent", "saturation") not in sweeps
    assert {o for o, i in sweeps if i == "cascade"} == {"nodes", "head", "cascade.kappa", "generator.follower_exponent"}
    headline = small["indicators"]["cascade"]["figures"]
    nodes = {p["value"]: p for p in sweeps[("nodes", "cascade")]}
    assert nodes[16.0]["base"] and nodes[16.0]["same_game.r_star"] == headline["same_game.r_star"]["estimate"]
    linear = {p["value"]: p for p in sweeps[("nodes", "exposure")]}
    assert linear[8.0]["panel_share"] == pytest.approx(linear[16.0]["panel_share"], rel=1e-12)
    pop = small_plan().generator.population(0)  # type: ignore[union-attr]
    phi = pop.x * attention_received(pop.graph)
    order = np.argsort(-pop.visibility, kind="stable")
    head = order[: math.ceil(0.05 * len(phi))]
    middle_tail = 1 - phi[head].sum() / phi.sum()
    at = {p["value"]: p for p in sweeps[("head", "exposure")]}
    assert at[0.05]["full.middle_tail"] == pytest.approx(middle_tail, rel=1e-9)
    exponents = {p["value"]: p for p in sweeps[("generator.follower_exponent", "exposure")]}
    assert exponents[0.9]["full.middle_tail"] != pytest.approx(exponents[1.1]["full.middle_tail"], rel=1e-3)


def test_the_stratified_panel_is_reported_against_the_visibility_panel(small: dict[str, Any]) -> None:
    rows = {r["indicator"]: r for r in small["stratified"]}
    assert set(rows) == set(small_plan().indicators)
    for r in rows.values():
        assert [c["target"] for c in r["curve"]] == sorted(c["target"] for c in r["curve"])
        if r["size"] is not None:
            at = next(c for c in r["curve"] if c["size"] == r["size"])
            assert at["error_quantile"] <= r["epsilon"] and sum(r["allocation"].values()) == r["size"]


def test_the_theorem_rows_hold(small: dict[str, Any]) -> None:
    rows = {r["indicator"]: r for r in small["theorem"]}
    assert rows["exposure"]["expected"] == "= 0" and rows["saturated_exposure"]["structure"] == "f(linear)"
    assert rows["cascade"]["expected"] == "> 0" and rows["reach"]["expected"] == "> 0"
    assert all(r["holds"] for r in rows.values()), rows
    assert rows["saturated_exposure"]["r_star"] <= 1e-9 and rows["reach"]["low"] > 1e-3


def test_the_small_study_is_the_golden_one(small: dict[str, Any]) -> None:
    """Fixed seeds, float64: every number of study.json at small N. Regenerate with
    ``python -m tests.streamer.app.test_study`` after a deliberate change, and say why in the commit."""
    _close(_strip(small), json.loads(GOLDEN.read_text()))


def test_an_interrupted_study_resumes_to_the_uninterrupted_one(tmp_path: Path, small: dict[str, Any]) -> None:
    plan = small_plan()
    ws = Workspace(tmp_path, plan)
    ran: list[str] = []
    run_study(ws, Populations(plan), on_unit=lambda u, *_: ran.append(u.key), stop=lambda: len(ran) >= 7)
    assert len(ran) == 7 and summarise(ws)["missing_units"]
    again = Workspace(tmp_path, plan)  # a new process: the bootstrap draws come from their own seed
    rest: list[str] = []
    run_study(again, Populations(plan), on_unit=lambda u, *_: rest.append(u.key))
    assert not set(ran) & set(rest) and len(ran) + len(rest) == len(units(plan))
    _close(_strip(summarise(again)), _strip(small))
    with pytest.raises(StudyDirError, match="another plan"):
        Workspace(tmp_path, small_plan(bootstrap=5))
    Workspace(tmp_path, small_plan(bootstrap=5), fresh=True)
    assert not list((tmp_path / "parts").glob("*.json"))


def test_the_command_writes_the_documents_and_resumes(tmp_path: Path) -> None:
    pop = kernels.heavy_tailed_population(300, 6.0, 3)
    path = tmp_path / "pop.npz"
    write_npz(path, pop.x, pop.visibility, pop.graph)
    out = tmp_path / "study"
    cmd = [
        sys.executable, "-m", "streamer", "study", str(path), "--out", str(out), "--bootstrap", "3",
        "--indicators", "exposure,cascade", "--panel-sizes", "5,20", "--pieces", "1,2", "--dtype", "float64",
        "--panel-size", "20", "--sweep", "nodes=8,16", "--no-progress",
    ]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    names = ["study.md", "study.html", "study.json", "tier_shares.png", "residuals.png", "stratified_panel.png"]
    assert first.stdout.startswith(f"wrote 8 files to {out}:") and all((out / n).stat().st_size for n in names)
    summary = json.loads((out / "study.json").read_text())
    assert summary["plan"]["source"] == str(path) and not summary["missing_units"]
    assert "## cascade" in (out / "study.md").read_text() and "<table>" in (out / "study.html").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "resuming the study" in again.stderr
    other = subprocess.run([*cmd[:-1], "--bootstrap", "4"], capture_output=True, text=True, timeout=600)
    assert other.returncode == 2 and "another plan" in other.stderr and "Traceback" not in other.stderr
    both = subprocess.run([*cmd, "--synthetic", "50"], capture_output=True, text=True, timeout=60)
    assert both.returncode == 2 and "not both" in both.stderr
    bad = subprocess.run([*cmd, "--sweep", "window=3"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "cannot sweep 'window'" in bad.stderr and "Traceback" not in bad.stderr


if __name__ == "__main__":  # regenerate the golden file
    plan = small_plan()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        ws = Workspace(Path(d), plan)
        run_study(ws, Populations(plan))
        GOLDEN.write_text(json.dumps(_strip(summarise(ws)), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")


def test_the_study_takes_visibility_from_the_appview_through_the_sdk(tmp_path: Path) -> None:
    """--appview: follower counts asked for the candidates only, in batches of 25, cached (a resumed study asks
    nothing), and used as the visibility (the plan says so)."""
    from streamer.testing.appview_server import AppViewStandIn

    pop = kernels.heavy_tailed_population(400, 6.0, 5)
    dids = [f"did:plc:{i:024d}" for i in range(400)]
    path = tmp_path / "pop.npz"
    write_npz(path, pop.x, pop.visibility, pop.graph, dids)
    followers = {d: int(v) for d, v in zip(dids, pop.visibility, strict=True) if int(v) % 7}  # some gone
    out = tmp_path / "study"
    with AppViewStandIn(followers) as appview:
        cmd = [
            sys.executable, "-m", "streamer", "study", str(path), "--out", str(out), "--bootstrap", "2",
            "--indicators", "exposure", "--panel-sizes", "20", "--pieces", "", "--sweep", "none", "--epsilon", "0",
            "--panel-size", "20", "--appview", appview.url, "--appview-cache", str(tmp_path / "cache"),
            "--no-progress",
        ]  # fmt: skip
        first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert first.returncode == 0, first.stderr
        calls = list(appview.script.calls)
        asked = [a for c in calls for a in c]
        assert calls and all(len(c) <= 25 for c in calls) and len(set(asked)) == len(asked) < 400
        plan = json.loads((out / "plan.json").read_text())["plan"]
        assert plan["visibility"].startswith(f"follower counts from the AppView at {appview.url} for the ")
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0 and "resuming the study" in again.stderr, again.stderr
        assert appview.script.calls == calls, "the second run asked nothing: the cache answered"
    synthetic = subprocess.run(
        [sys.executable, "-m", "streamer", "study", "--synthetic", "50", "--out", str(tmp_path / "s"), "--appview",
         "http://127.0.0.1:9"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert synthetic.returncode == 2 and "needs real accounts" in synthetic.stderr


def test_the_window_sweep_replays_the_archive_with_each_window(tmp_path: Path) -> None:
    """window.hours: the archive replayed again with a window of that length; each point's figures are those of a
    replay with that window studied directly (kernels.scale_study), and a synthetic study has no window to vary."""
    from streamer.app.replay import replay
    from streamer.core.state import StateConfig
    from streamer.testing.synth import default_archive

    out = tmp_path / "study"
    cmd = [
        sys.executable, "-m", "streamer", "study", str(default_archive()), "--out", str(out), "--bootstrap", "0",
        "--indicators", "exposure", "--panel-sizes", "20", "--pieces", "", "--epsilon", "0", "--no-progress",
        "--sweep", "window.hours=3,6,336", "--dtype", "float64",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "study.json").read_text())
    (sweep,) = [s for s in summary["sweeps"] if s["option"] == "window.hours"]
    points = {p["value"]: p for p in sweep["points"]}
    assert points[336.0]["base"] and not points[3.0]["base"]
    for hours in (3.0, 6.0):
        snap = replay(default_archive(), config=StateConfig(bucket_hours=hours, buckets=1)).state.snapshot()
        ind = kernels.get_indicator("exposure")
        st = kernels.scale_study(ind, snap.x, snap.graph, snap.visibility, nodes=32, dtype="float64", panel_size=100)
        want = st.games["restricted"].bias.residual
        assert points[hours]["restricted.r_star"] == pytest.approx(want, rel=1e-9)
        assert points[hours]["full.middle_tail"] == pytest.approx(1 - st.games["restricted"].bias.tiers_full[0])
    assert len({round(p["full.middle_tail"], 6) for p in points.values()}) == 3  # the window changes the figures
    synthetic = subprocess.run(
        [sys.executable, "-m", "streamer", "study", "--synthetic", "50", "--out", str(tmp_path / "s"), "--sweep",
         "window.hours=6"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert synthetic.returncode == 2 and "give the study an archive" in synthetic.stderr
    plan = small_plan(sweeps=(("window.hours", (6.0, 24.0)),))
    assert not [u for u in units(plan) if u.variant is not None]  # a synthetic population has no window to vary
