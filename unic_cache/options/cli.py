"""The command line made from the options classes: one typer flag per field, ``--config FILE.yaml`` and ``--set
KEY=VALUE`` (defaults < YAML < --set < flags), and the one-line report of a user's mistake (``user_errors``)."""

from __future__ import annotations

import dataclasses
import errno
import functools
import inspect
import types
import typing
from typing import Annotated, Any, Callable, Optional

import typer

from ..errors import RunInterrupted, UserError
from . import flag_name, set_value


def _one_line(exc: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker wrapped it in a traceback."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("Caught "):
        return lines[-1].split(": ", 1)[-1]
    return lines[0] if lines else type(exc).__name__


def user_errors(fn):
    """Print a UserError as one line on stderr and exit with code 2, without a traceback; a run stopped by
    Ctrl-C or SIGTERM says how to continue it and exits with 128 + the signal (130, 143)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {_one_line(exc)}", err=True)
            raise typer.Exit(2) from None
        except RunInterrupted as exc:
            typer.echo(f"interrupted: {exc}", err=True)
            raise typer.Exit(128 + exc.signum) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: what was finished is kept; run the same command to continue", err=True)
            raise typer.Exit(130) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            typer.echo(f"error: no space left on the device ({exc.filename or 'writing'}); free space and run the same "
                       "command again: it resumes where it stopped", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _read_config(path: str) -> dict:
    import yaml

    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read --config {path}: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path} must be a YAML mapping of option names to values")
    return values


def _cli_annotation(f: dataclasses.Field, kind: Any):
    """How a field of an options class is spelled on the command line (every value optional: None means
    'not given', so that --config and --set values are kept)."""
    meta = f.metadata
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    help_text = meta["help"] + (f" (default: {default})" if default not in (None, "", [], {}) else "")
    if meta["positional"]:
        return Annotated[Optional[str], typer.Argument(help=help_text, show_default=False, metavar=f.name.upper())]
    if (typing.get_origin(kind) or kind) in (typing.Union, types.UnionType):  # X | None -> X
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    base = typing.get_origin(kind) or kind
    if meta["parse"] is not None or base is list:
        return Annotated[Optional[list[str]], typer.Option(flag_name(f), help=help_text, show_default=False,
                                                           metavar="TEXT")]
    if base is bool:
        flag = meta["flag"] or f"--{f.name.replace('_', '-')}/--no-{f.name.replace('_', '-')}"
        on, off = flag.split("/") if "/" in flag else (flag, None)
        said = f" (default: {on if default else off})" if off and default is not None else ""
        return Annotated[Optional[bool], typer.Option(flag, help=meta["help"] + said, show_default=False)]
    if base is tuple:
        return Annotated[Optional[kind], typer.Option(flag_name(f), help=help_text, show_default=False,
                                                      metavar=" ".join(METAVARS[t] for t in typing.get_args(kind)))]
    return Annotated[Optional[base], typer.Option(flag_name(f), help=help_text, show_default=False, metavar=METAVARS[base])]


METAVARS = {str: "TEXT", int: "INT", float: "FLOAT"}  # how a value is shown in --help (not Python's type names)


def _set_example(cls: type) -> str:
    """``name=value`` for one of ``cls``'s own number options (its default), as --set's example."""
    for f in dataclasses.fields(cls):
        if isinstance(f.default, (int, float)) and not isinstance(f.default, bool) and not f.metadata["positional"]:
            return f"{f.name}={f.default}"
    f = next(f for f in dataclasses.fields(cls) if not f.metadata["positional"])
    return f"{f.name}={'true' if isinstance(f.default, bool) else 'VALUE'}"


def options_command(app: typer.Typer, name: str, cls: type, run: Callable[..., None], doc: str,
                    extra: list | None = None) -> None:
    """Register ``unic-cache NAME`` on ``app`` with one flag per field of the options class ``cls``, plus ``--config
    FILE.yaml`` and ``--set KEY=VALUE``: defaults < YAML < --set < flags. ``extra``: inspect.Parameters
    outside the options (extract's DATA and --cache), passed to ``run(opts, **extra)``."""
    fields, kinds = dataclasses.fields(cls), cls.field_types()
    params = list(extra or [])
    for f in fields:
        params.append(inspect.Parameter(f"opt_{f.name}", inspect.Parameter.KEYWORD_ONLY,
                                        annotation=_cli_annotation(f, kinds[f.name]), default=None))
    params += [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[str], typer.Option("--config", metavar="FILE.yaml", help="YAML file with any of these options (their field names); "
                                                         "--set and flags override it.")]),
        inspect.Parameter("set_", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help=f"Override one option by its field name: --set {_set_example(cls)} "
                                                            "(repeatable).")]),
    ]

    def command(**kwargs) -> None:
        values = _read_config(kwargs["config"]) if kwargs["config"] else {}
        for item in kwargs["set_"] or []:
            set_value(values, item)
        for f in fields:
            given = kwargs[f"opt_{f.name}"]
            if given is not None:
                values[f.name] = f.metadata["parse"](given) if f.metadata["parse"] else given
        opts = cls.from_dict(values)
        run(opts, **{p.name: kwargs[p.name] for p in extra or []})

    wrapped = user_errors(command)
    del wrapped.__wrapped__  # typer reads the signature below, not command's (**kwargs)
    wrapped.__signature__ = inspect.Signature(params)
    wrapped.__annotations__ = {p.name: p.annotation for p in params}
    wrapped.__doc__ = doc
    app.command(name)(wrapped)
