"""Command-line pieces shared by the commands: the ``--config`` option, the :func:`finite` check, and :func:`plain`,
the one way to put untrusted text on the terminal. The options that are settings are generated from
:class:`streamer.app.settings.Settings` by :mod:`streamer.app.flags` (their defaults live in :mod:`kernels.defaults`
and the settings), so none is written here."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

# C0 and C1 control characters (newline, ESC, CSI, ...) shown as \xNN: a path or a stream value must not start a
# new line, move the cursor or recolour the terminal.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def visible(text: object) -> str:
    """``text`` with its control characters shown as ``\\xNN``: for lines written without rich (log lines)."""
    return str(text).translate(_CONTROL)


_errors = Console(stderr=True, soft_wrap=True)


def plain(text: object) -> str:
    """``text`` as literal terminal text for rich: markup escaped (``[bold]`` stays visible, ``[/]`` cannot break
    the line) and control characters made visible, so one message stays one line."""
    return escape(visible(text))


def fail(message: str) -> NoReturn:
    """A command's error: one line on stderr (``error: ...``, the message as :func:`plain` text, since it names
    paths and values from the user or the stream) and exit status 2."""
    _errors.print(f"[red]error:[/red] {plain(message)}", highlight=False)
    raise typer.Exit(2)


def finite(value: float | None) -> float | None:
    """Reject ``inf`` and ``nan`` where the value is parsed: click's float ranges let ``nan`` through, and one
    non-finite figure would spread through every share and threshold downstream."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value!r}")
    return value


GAME_WORDS = {"restricted": "restricted", "same_game": "same game"}  # the panel games as tables and captions say them


def figure(value: float | None, spec: str = ".3f") -> str:
    """A figure for people: one that is undefined (None, or not finite) prints as ``n/a``."""
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


Config = Annotated[
    Path | None,
    typer.Option(help="YAML file of options (keys as the flags below, with _ for -; see the README's configuration)."),
]
