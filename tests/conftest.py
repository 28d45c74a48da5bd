"""Shared fixtures: small heavy-tailed populations built by the library's own generator, synthetic archives, and
the real Bluesky firehose sample, read where it lies.

The sample (150 real relay frames and 10 real Jetstream events) lives in ``../shared/data/bluesky-sample/`` next to
the checkout, or wherever ``SKYATTR_SAMPLE_DIR`` points; tests that need it skip, saying so, when it is absent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import kernels
from streamer.sources.archive import read_archive

SAMPLE_DIR = Path(
    os.environ.get("SKYATTR_SAMPLE_DIR", Path(__file__).resolve().parents[2] / "shared/data/bluesky-sample")
)


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    if not (SAMPLE_DIR / "frames.bin.zst").exists():
        pytest.skip(f"real firehose sample not found at {SAMPLE_DIR} (set SKYATTR_SAMPLE_DIR to its folder)")
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def sample_frames(sample_dir: Path) -> list[bytes]:
    """The 150 raw relay frames of the sample, in order."""
    return [item.frame for item in read_archive(sample_dir / "frames.bin.zst") if item.frame is not None]


@pytest.fixture(scope="session")
def sample_manifest(sample_dir: Path) -> dict:
    return json.loads((sample_dir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def population() -> kernels.Population:
    return kernels.heavy_tailed_population(5_000, edges_per_agent=8.0, seed=7)


def random_graph(rng: np.random.Generator, n: int, edges: int, heavy: bool = True) -> kernels.AttentionGraph:
    """Random graph whose sources are drawn preferentially (heavy-tailed in-degree)."""
    p = (np.arange(1, n + 1, dtype=float) ** -1.2) if heavy else np.ones(n)
    src = rng.choice(n, size=edges, p=p / p.sum())
    att = rng.integers(0, n, size=edges)
    w = rng.choice([0.5, 1.0, 2.0, 3.0], size=edges)
    return kernels.AttentionGraph(att, src, w, n)


@pytest.fixture(scope="session")
def synth_archive_of(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int, float, int], Path]:
    """``synth_archive_of(agents, hours, seed)``: the synthetic archive of those arguments, written once a session
    (with its DID documents beside it)."""
    from streamer.testing.synth import write_synth_archive

    made: dict[tuple[int, float, int], Path] = {}

    def make(agents: int, hours: float, seed: int) -> Path:
        key = (agents, hours, seed)
        if key not in made:
            path = tmp_path_factory.mktemp("synth") / f"synth-{agents}-{hours:g}h-{seed}.skyarch.zst"
            write_synth_archive(path, agents, hours, seed)
            made[key] = path
        return made[key]

    return make
