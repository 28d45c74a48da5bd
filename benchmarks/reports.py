"""A benchmark's report written where it was asked for: ``NAME.json`` (the figures) and ``NAME.md`` (the table)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write(out: Path | None, name: str, report: dict[str, Any], text: str) -> None:
    """``report`` as ``out/NAME.json`` and ``text`` as ``out/NAME.md`` (nothing written when ``out`` is None), and
    ``text`` printed."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(report, indent=2))
        (out / f"{name}.md").write_text(text)
    print(text)
