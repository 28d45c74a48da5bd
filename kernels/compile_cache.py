"""Where compiled kernels are kept between processes: JAX's persistent compilation cache.

A kernel is compiled once per indicator, node count, dtype and size bucket; on a CPU that costs 0.3-1 s, which is
most of a short replay and the whole first minute of a restarted pod. With the cache on, a later process loads
the compiled executable from ``path`` instead (it still traces, a few ms). Every compilation is kept, however
short (JAX's default keeps only those over 1 s), and the cache is bounded in size (least recently used entries
go first).

This only sets configuration: before JAX is imported it sets the environment variables JAX reads at import (so
calling it costs nothing and loads nothing), afterwards it updates ``jax.config``. JAX itself creates and writes
the directory, on the first compilation.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MAX_BYTES = 2 << 30  # least recently used entries are evicted beyond this

_OPTIONS = {
    "jax_compilation_cache_dir": None,  # set per call
    "jax_persistent_cache_min_compile_time_secs": 0,
    "jax_persistent_cache_min_entry_size_bytes": 0,
    "jax_compilation_cache_max_size": MAX_BYTES,
}


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/skyattr/jax`` (``~/.cache/skyattr/jax`` when unset): where user caches belong."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "skyattr" / "jax"


def use_compilation_cache(path: str | os.PathLike[str] | None) -> None:
    """Keep compiled kernels under ``path`` (None or empty: no persistent cache, compile in every process)."""
    values = dict(_OPTIONS, jax_compilation_cache_dir=str(path) if path else None)
    if "jax" in sys.modules:
        import jax

        if not path:
            jax.config.update("jax_compilation_cache_dir", None)
            return
        for name, value in values.items():
            jax.config.update(name, value)
        return
    if not path:
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
        return
    for name, value in values.items():
        os.environ[name.upper()] = str(value)
