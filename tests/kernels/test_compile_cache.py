"""The persistent compilation cache: a later process loads compiled kernels instead of compiling them again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from streamer.app.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def _attribute(cache: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYATTR_", "JAX_"))}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    return subprocess.run(
        [sys.executable, "-m", "streamer", "attribute", "--agents", "300", "--compilation-cache", cache],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_second_process_reuses_the_compiled_kernels(tmp_path: Path) -> None:
    cache = tmp_path / "jax"
    first = _attribute(str(cache), tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    entries = sorted(p.name for p in cache.iterdir() if p.name.endswith("-cache"))
    assert any(name.startswith("jit_run-") for name in entries), entries  # the attribution kernel itself
    second = _attribute(str(cache), tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    again = sorted(p.name for p in cache.iterdir() if p.name.endswith("-cache"))
    assert again == entries, "the second process compiled nothing new: every kernel came from the cache"


def test_off_keeps_no_cache(tmp_path: Path) -> None:
    out = _attribute("off", tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not (tmp_path / "xdg").exists(), "nothing written under the user cache directory"


def test_the_default_is_the_user_cache_directory(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert load_settings(None, {}, env={}).compilation_cache_dir == tmp_path / "skyattr" / "jax"
    assert load_settings(None, {"compilation_cache": "off"}, env={}).compilation_cache_dir is None


def test_reading_settings_configures_nothing_global(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Settings are parsed by tests, tools and libraries too: the cache is set up by the command that runs, not by
    the parse (which used to write JAX_* variables into the process's environment)."""
    import kernels

    calls: list[object] = []
    monkeypatch.setattr(kernels, "use_compilation_cache", calls.append)
    for key in [k for k in os.environ if k.startswith("JAX_")]:
        monkeypatch.delenv(key)
    settings = load_settings(None, {"compilation_cache": str(tmp_path / "c")}, env={})
    assert settings.compilation_cache_dir == tmp_path / "c"
    assert not calls and not [k for k in os.environ if k.startswith("JAX_")]
