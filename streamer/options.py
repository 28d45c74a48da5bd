"""Command-line options shared by ``skyattr attribute`` and ``skyattr report`` (one definition, one help text)."""

from __future__ import annotations

from typing import Annotated

import typer

Indicator = Annotated[str, typer.Option(help="Macro indicator (see `skyattr indicators`).")]
Nodes = Annotated[int, typer.Option(help="Quadrature nodes.")]
Dtype = Annotated[str, typer.Option(help="float32 or float64.")]
PanelSize = Annotated[int, typer.Option(help="Accounts in the visibility-biased panel.")]
Head = Annotated[float, typer.Option(help="Head tier: top fraction by visibility.")]
Middle = Annotated[float, typer.Option(help="Middle tier: next fraction by visibility.")]
TauTvd = Annotated[float, typer.Option(help="Alert threshold on tier-share TVD.")]
TauRes = Annotated[float, typer.Option(help="Alert threshold on the rescaling residual r*.")]
