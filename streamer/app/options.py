"""Command-line pieces shared by the commands: options of ``skyattr attribute`` and ``skyattr report`` (one
definition, one help text), and :func:`plain`, the one way to put untrusted text on the terminal."""

from __future__ import annotations

import math
from typing import Annotated

import typer
from rich.markup import escape

# C0 and C1 control characters (newline, ESC, CSI, ...) shown as \xNN: a path or a stream value must not start a
# new line, move the cursor or recolour the terminal.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def plain(text: object) -> str:
    """``text`` as literal terminal text for rich: markup escaped (``[bold]`` stays visible, ``[/]`` cannot break
    the line) and control characters made visible, so one message stays one line."""
    return escape(str(text).translate(_CONTROL))


def finite(value: float | None) -> float | None:
    """Reject ``inf`` and ``nan`` where the value is parsed: click's float ranges let ``nan`` through, and one
    non-finite figure would spread through every share and threshold downstream."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value!r}")
    return value


Indicator = Annotated[str, typer.Option(help="Macro indicator (see `skyattr indicators`).")]
Nodes = Annotated[int, typer.Option(min=1, max=1024, help="Quadrature nodes.")]
Dtype = Annotated[str, typer.Option(help="float32 or float64.")]
PanelSize = Annotated[int, typer.Option(min=1, max=10_000_000, help="Accounts in the visibility-biased panel.")]
Head = Annotated[float, typer.Option(callback=finite, help="Head tier: top fraction by visibility.")]
Middle = Annotated[float, typer.Option(callback=finite, help="Middle tier: next fraction by visibility.")]
TauTvd = Annotated[float, typer.Option(callback=finite, help="Alert threshold on tier-share TVD.")]
TauRes = Annotated[float, typer.Option(callback=finite, help="Alert threshold on the rescaling residual r*.")]
