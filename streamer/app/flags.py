"""Command-line flags generated from :class:`streamer.app.settings.Settings`, and the one way a command loads them.

A command names the settings fields it reads (``include``) or the ones it does not (``exclude``);
:func:`with_settings_options` appends one ``--field-name`` option per field to its signature, each defaulting to
None so that a flag left unset does not override the YAML file or the environment. The command takes them as
``**flags`` and calls :func:`load_or_exit`, which layers defaults < ``--config`` YAML < ``SKYATTR_*`` < flags
(:func:`streamer.app.settings.load_settings`) or prints one ``error:`` line and exits 2. So ``--help``, the YAML
keys, the environment variables and the README's configuration table never drift apart, in any command.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import typer
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from rich.console import Console

import kernels
from streamer.app.options import finite, plain
from streamer.app.role_settings import SECTIONS, section_flag
from streamer.app.settings import ConfigError, Settings, flag_name, load_settings

F = TypeVar("F", bound=Callable[..., Any])
console = Console(stderr=True, soft_wrap=True)

# The fields each kind of work reads, for the commands' ``include`` sets.
ATTRIBUTION_FIELDS = frozenset(
    {
        "indicator",
        "indicator_params",
        "nodes",
        "tolerance",
        "dtype",
        "head",
        "middle",
        "panel_size",
        "top_k",
        "tau_res",
        "tau_coverage",
        "alert_clear",
        "error_estimate",
        "quadrature",
        "stratified_epsilon",
        "compilation_cache",
    }
)
WINDOW_FIELDS = frozenset({"bucket_hours", "buckets", "edge_budget", "record_budget", "max_future_skew"})


def cli_type(annotation: Any) -> Any:
    """The type typer parses for a settings field: Optional[X] -> X, Literal/dict/secret -> str (dict as JSON or
    YAML flow text, parsed by :func:`streamer.app.settings.load_settings`)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in args if a is not type(None))
    if typing.get_origin(annotation) is Literal or annotation in (dict[str, Any], SecretStr):
        return str
    return annotation


def _field(name: str) -> FieldInfo:
    """A settings field by its flag parameter's name: ``interval``, or ``worker__store`` for a role's section."""
    section, _, inner = name.partition("__")
    return SECTIONS[section].model_fields[inner] if inner else Settings.model_fields[name]


def shown_default(name: str) -> str:
    """``  [default: 300.0]`` (set off by two spaces, as click does) for the help of a settings flag, or "" where
    there is nothing worth showing (no default, an empty list or mapping). The default is the settings' own: a
    default factory is called, so a mapping field never shows pydantic's ``PydanticUndefined`` placeholder."""
    default = _field(name).get_default(call_default_factory=True)
    if default is None or default in ({}, [], ""):
        return ""
    if isinstance(default, bool):  # as click shows a boolean flag's default: the flag that gives it
        return f"  [default: {'' if default else 'no-'}{name.rpartition('__')[2].replace('_', '-')}]"
    if isinstance(default, list | dict):
        return f"  [default: {json.dumps(default)}]"
    return f"  [default: {default}]"


def field_metavar(annotation: Any) -> str | None:
    """The metavar of a settings flag whose CLI type hides what it takes: the choices of a ``Literal``
    (``[float32|float64]``) and ``MAPPING`` for a dict; None leaves it to :mod:`streamer.app.help`."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in args if a is not type(None))
    if typing.get_origin(annotation) is Literal:
        return "[" + "|".join(str(a) for a in typing.get_args(annotation)) + "]"
    if annotation == dict[str, Any]:
        return "MAPPING"
    if annotation is SecretStr:
        return "TEXT"
    return None


def settings_fields(include: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> list[str]:
    """Settings field names, in declaration order: ``include`` (default all) less ``exclude``. An included name
    that is no field is a programming error, raised at import time (it would silently lose a flag); an excluded one
    is allowed, so a command can exclude a field before or after it exists."""
    known = [name for name in Settings.model_fields if name not in SECTIONS]  # a section's fields: ``sections``
    wanted = set(known if include is None else include)
    unknown = wanted - set(known)
    if unknown:
        raise ValueError(f"not Settings fields: {', '.join(sorted(unknown))}")
    dropped = set(exclude)
    return [name for name in known if name in wanted and name not in dropped]


def with_settings_options(
    exclude: Iterable[str] = (),
    *,
    include: Iterable[str] | None = None,
    sections: Mapping[str, Iterable[str] | None] | None = None,
    check_finite: bool = False,
) -> Callable[[F], F]:
    """Append one ``--option`` per chosen settings field (default None: unset flags do not override YAML or env).

    ``sections``: a role's fields, ``{"worker": None}`` for all of a section, ``{"topics": ["events"]}`` for some;
    each is a flag of :func:`~streamer.app.role_settings.section_flag`'s name, taken as ``worker__store``.
    ``check_finite`` rejects ``inf``/``nan`` for float flags while the command line is parsed (a usage error,
    as ``attribute`` and ``report`` always did); without it they reach the settings check like any other value."""
    names = [(name, flag_name(name)) for name in settings_fields(include, exclude)]
    for section, wanted in (sections or {}).items():
        for inner in wanted if wanted is not None else SECTIONS[section].model_fields:
            names.append((f"{section}__{inner}", section_flag(section, inner)))

    def deco(fn: F) -> F:
        sig = inspect.signature(fn)
        annotations = dict(typing.get_type_hints(fn, include_extras=True))
        params = [
            p.replace(annotation=annotations.get(p.name, p.annotation))
            for p in sig.parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        for name, flag in names:
            f = _field(name)
            base = cli_type(f.annotation)
            typ = base | None
            option = typer.Option(
                None,
                f"{flag}/--no-{flag[2:]}" if base is bool else flag,  # a flag can also undo a YAML or env True
                help=f"{f.description}{shown_default(name)}",
                metavar=field_metavar(f.annotation) or ("DIR" if name.endswith("_dir") else None),
                show_default=False,  # the option's own default is None (unset); the settings' one is in the help
                callback=finite if check_finite and base is float else None,
            )
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=typ))
            annotations[name] = typ
        fn.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        fn.__annotations__ = annotations
        return fn

    return deco


def load_or_exit(config: Path | None, flags: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    """Settings from defaults < ``config`` < environment < ``flags``, or one ``error:`` line and exit 2. The
    process then keeps its compiled kernels where the settings say (``compilation_cache``): a command's settings
    configure its process here, once, not while they are parsed (a test or a library call that only reads
    settings changes nothing global)."""
    try:
        settings = load_settings(config, flags, env)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {plain(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    kernels.use_compilation_cache(settings.compilation_cache_dir)
    return settings
