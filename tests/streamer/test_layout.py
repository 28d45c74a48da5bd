"""The layout is the architecture: command-line code only in ``streamer/app/``, and the stages do not reach up."""

from __future__ import annotations

import ast
from pathlib import Path

STREAMER = Path(__file__).resolve().parents[2] / "streamer"
KERNELS = STREAMER.parent / "kernels"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def test_only_the_app_layer_imports_typer_or_rich() -> None:
    offenders = {
        str(p.relative_to(STREAMER)): sorted(_top(_imports(p)) & {"typer", "rich", "click"})
        for p in STREAMER.rglob("*.py")
        if "app" not in p.relative_to(STREAMER).parts and p.name != "__main__.py"
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_stages_do_not_import_the_app_layer_and_kernels_never_import_streamer() -> None:
    up = {
        str(p.relative_to(STREAMER)): sorted(n for n in _imports(p) if n.startswith("streamer.app"))
        for p in STREAMER.rglob("*.py")
        if "app" not in p.relative_to(STREAMER).parts and p.name != "__main__.py"
    }
    assert {k: v for k, v in up.items() if v} == {}
    outer = ("streamer.sinks", "streamer.sources", "streamer.distributed", "streamer.testing")
    core = {
        str(p.relative_to(STREAMER)): sorted(n for n in _imports(p) if n.startswith(outer))
        for p in (STREAMER / "core").rglob("*.py")
    }
    assert {k: v for k, v in core.items() if v} == {}, "core is handed items and results: it knows no source or sink"
    assert not any("streamer" in _top(_imports(p)) for p in KERNELS.rglob("*.py"))
