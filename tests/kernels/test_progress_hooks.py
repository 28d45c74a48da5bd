"""The kernels' progress hooks: what they report is the work done, and hearing it changes nothing computed."""

from __future__ import annotations

import numpy as np
import pytest

import kernels
from kernels import synthetic
from kernels.attribution import passes


def _arrays(pop: kernels.Population) -> list[np.ndarray]:
    return [pop.x, pop.visibility, pop.graph.attender, pop.graph.source, pop.graph.weight]


def test_a_population_is_the_same_whatever_the_draw_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The draws go by chunks (a progress report each, sorted searches): a chunking that consumed the generator
    differently, or put a chunk's sorted results back in the wrong places, would change the population."""
    whole = kernels.heavy_tailed_population(5_000, 6.0, seed=11)
    monkeypatch.setattr(synthetic, "DRAW_CHUNK", 777)
    heard: list[tuple[int, int]] = []
    chunked = kernels.heavy_tailed_population(5_000, 6.0, seed=11, progress=lambda d, t: heard.append((d, t)))
    for a, b in zip(_arrays(whole), _arrays(chunked), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [t for _, t in heard] == [90_000] * len(heard), "30,000 edges drawn at both ends, then sorted"
    assert [d for d, _ in heard] == sorted(d for d, _ in heard) and heard[-1][0] == 90_000
    assert len(heard) == 2 * -(-30_000 // 777) + 1


def test_draws_follow_their_weights() -> None:
    """An independent check of the sorted search: indices drawn from known weights land with those frequencies."""
    rng = np.random.default_rng(3)
    weights = np.array([0.0, 5.0, 1.0, 0.0, 4.0])
    drawn = synthetic._draw(np.cumsum(weights), 200_000, rng)
    freq = np.bincount(drawn, minlength=5) / 200_000
    np.testing.assert_allclose(freq, weights / weights.sum(), atol=0.005)
    assert freq[0] == freq[3] == 0.0, "a zero weight is never drawn"


@pytest.mark.parametrize(("rule", "estimate"), [("log-graded", False), ("log-graded", True), ("auto", True)])
def test_a_study_reports_every_pass_over_the_whole_graph(rule: str, estimate: bool) -> None:
    pop = kernels.heavy_tailed_population(400, seed=2)
    heard: list[tuple[int, int]] = []
    quiet = kernels.scale_study("reach", pop.x, pop.graph, pop.visibility, nodes=8, rule=rule, estimate_error=estimate)
    st = kernels.scale_study(
        "reach", pop.x, pop.graph, pop.visibility, nodes=8, rule=rule, estimate_error=estimate,
        progress=lambda d, t: heard.append((d, t)),
    )  # fmt: skip
    np.testing.assert_array_equal(st.full.phi, quiet.full.phi)
    done = [d for d, _ in heard]
    assert done == sorted(done) and all(d <= t for d, t in heard)
    assert heard[-1][0] == heard[-1][1], "the last report is the whole"
    assert heard[0][1] == passes(8, rule, estimate) + 8, "the first total is the most there can be (+ the same game)"
    per_pass = 3 * 8 if rule == "auto" else 8  # auto/estimate: m then 2m nodes
    expected = {("log-graded", False): 16, ("log-graded", True): 8 + 16 + 8}.get((rule, estimate))
    if expected is not None:
        assert heard[-1][0] == expected
    else:
        assert heard[-1][0] in (per_pass + 8, 2 * per_pass + 8), "one rule or both, then the same game"
