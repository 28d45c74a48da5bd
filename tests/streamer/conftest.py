"""Fixtures for the daemon's tests: the real Bluesky firehose sample, read where it lies.

The sample (150 real relay frames and 10 real Jetstream events) lives in ``../shared/data/bluesky-sample/`` next to
the checkout, or wherever ``SKYATTR_SAMPLE_DIR`` points; tests that need it skip, saying so, when it is absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from streamer.sources.archive import read_archive

SAMPLE_DIR = Path(
    os.environ.get("SKYATTR_SAMPLE_DIR", Path(__file__).resolve().parents[3] / "shared/data/bluesky-sample")
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
