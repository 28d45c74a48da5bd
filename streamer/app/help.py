"""How ``--help`` reads: click's plain layout, metavars named by type, arguments by name.

The help is click's plain formatter (``rich_markup_mode=None`` on the app), not typer's rich panels: a rich panel
at 80 columns cuts long option names (``--checkpoint-ever…``), while the plain layout gives a long name its own
line and never shortens it, and its text is the same on a terminal, in a pipe and in a test. Typer labels values
with its own ``<int range>``/``<str>`` tags; :class:`Command` names them the way click, ruff and uv do instead
(``INTEGER``, ``FLOAT``, ``TEXT``, ``PATH``, choices as ``[a|b]``), names positional arguments in capitals
(``[ARCHIVE]``), and leaves flags without one (``--quiet / --no-quiet``).
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperCommand

from streamer.app.pipes import quiet_stdout

_BY_TYPE = {int: "INTEGER", float: "FLOAT", str: "TEXT", bool: "BOOLEAN"}


def metavar(param: Any) -> str | None:
    """The metavar for a typer parameter without one: None for a flag (it takes no value)."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return None
    if isinstance(param, TyperArgument):
        return str(param.name).upper()
    desc = param.type_descriptor
    if desc.is_choice:
        return "[" + "|".join(str(c) for c in desc.choices or ()) + "]"
    if desc.is_path:
        return {"file": "FILE", "dir": "DIR", "directory": "DIR"}.get(str(desc.path_type).lower(), "PATH")
    annotation = desc.annotation
    args = getattr(annotation, "__args__", ())
    if getattr(annotation, "__origin__", None) is list and len(args) == 1:
        annotation = args[0]
    return _BY_TYPE.get(annotation, "VALUE")


class Command(TyperCommand):
    """A typer command whose help reads like click's (see the module doc), and that ends quietly with exit 0 when
    the reader of its output goes away (``skyattr events A | head -1``), as Unix tools do, instead of click's
    exit 1 or an error line."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            quiet_stdout()
            ctx.exit(0)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.metavar is None:
                param.metavar = metavar(param)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """``[OPTIONS] ARCHIVE`` / ``[OPTIONS] [ARCHIVE]`` (typer writes ``{archive}`` / ``[archive]``)."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = str(param.metavar) + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        """Arguments by name only (typer appends its type tag to it), then the options."""
        args: list[tuple[str, str]] = []
        opts: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if isinstance(param, TyperArgument):
                args.append((str(param.metavar), record[1]))
            else:
                opts.append(record)
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        if opts:
            with formatter.section("Options"):
                formatter.write_dl(opts)
