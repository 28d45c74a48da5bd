"""A reader that goes away (``skyattr events A | head -1``): the command ends quietly with exit 0, as Unix tools do.

Three places meet the closed pipe: a command's own write (:class:`streamer.app.help.Command` catches the
``BrokenPipeError``), a rich console's write (rich points stdout at /dev/null and exits 1: :class:`StdoutConsole`
exits 0 instead), and click's last flush (it exits 1: ``streamer.app.cli.main`` turns that into 0).
"""

from __future__ import annotations

import os
import sys

from rich.console import Console

_closed = False


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail a second time on the closed pipe."""
    global _closed
    _closed = True
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def reader_gone() -> bool:
    """Whether this process's stdout pipe was closed by its reader: seen here, or by click (which wraps stdout to
    silence the flush before it exits 1)."""
    if _closed or type(sys.stdout).__name__ == "PacifyFlushWrapper":
        return True
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_stdout()
        return True
    except (OSError, ValueError):
        return False
    return False


class StdoutConsole(Console):
    """A rich console on stdout for the results a command was asked for; a closed pipe ends the command with 0."""

    def on_broken_pipe(self) -> None:
        quiet_stdout()
        raise SystemExit(0)
