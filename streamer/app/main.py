"""The ``skyattr`` entry point: the SIGINT handling first (:mod:`streamer.app.interrupt`), then the CLI, whose
imports take the first second of every command (an interrupt there ends it with 130 too, without a traceback)."""

from __future__ import annotations

import sys

from streamer.app import interrupt


def main() -> None:
    interrupt.install()
    try:
        from streamer.app.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        interrupt.said()
        sys.exit(interrupt.EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
