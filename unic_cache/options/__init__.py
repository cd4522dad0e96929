"""Options as the single source of truth: every command's options are one dataclass whose fields carry
their help, how the command line spells them, and their checks. The CLI (flags), ``--config FILE.yaml``
and ``--set KEY=VALUE`` are all made from these fields (``options.cli.options_command``), so they cannot drift,
and ``Options.check`` refuses bad values in one line before any work starts. No torch here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError


def check_options(cls: type, values: dict, command: str) -> None:
    """Refuse keys that are not fields of the options dataclass ``cls`` of ``unic-cache <command>``."""
    import difflib

    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        hints = []
        for key in unknown:  # --set batch-size=4 means batch_size; --set lrr=1e-3 probably lr
            close = [key.replace("-", "_")] if key.replace("-", "_") in names else difflib.get_close_matches(key, names, 1)
            hints += [f"{key} -> {close[0]}"] if close else []
        mean = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise UserError(f"unknown {command} option(s) {', '.join(unknown)}{mean}; see `unic-cache {command} --help`")


def yaml_value(text: str, what: str):
    """``text`` read as a plain YAML value (no python tags: those are refused), for ``what`` (e.g. --set a=b)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{what}: not a plain YAML value ({' '.join(str(exc).split())[:120]})") from None


Check = Callable[[Any], "str | None"]  # what is wrong with a value ("{flag}" stands for the option), or None


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable | None = None,
           checks: tuple[Check, ...] = (), flag: str | None = None, parse: Callable[[list[str]], Any] | None = None,
           positional: bool = False) -> Any:
    """A dataclass field of an options class.

    ``flag``: the CLI spelling (default ``--field-name``); ``parse``: turns the repeated CLI strings into
    the value (``--model-arg depth=2``); ``positional``: a CLI argument rather than a flag.
    """
    metadata = {"help": help, "checks": checks, "flag": flag, "parse": parse, "positional": positional}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low}, got {v}"


def in_range(low: float, high: float, high_open: bool = False) -> Check:
    def check(v):
        ok = low <= v < high if high_open else low <= v <= high
        return None if ok else f"must be in [{low}, {high}{')' if high_open else ']'}, got {v}"
    return check


def one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"unknown {{flag}} {v!r}; choose one of {', '.join(choices)}"


def existing_path(v: str) -> str | None:
    """Local paths must exist; URLs (s3://, memory://, ...) are checked when opened."""
    if "://" in v or any(ch in v for ch in "{*?[") or "::" in v:
        return None
    return None if Path(v).exists() else f"not found: {v}"


def key_values(items: list[str]) -> dict:
    """``["depth=2", "qkv_bias=false"]`` -> ``{"depth": 2, "qkv_bias": False}`` (values read as YAML scalars)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--model-arg takes KEY=VALUE, got {item!r}")
        out[key] = yaml_value(value, f"--model-arg {item}")
    return out


def storage_option() -> Any:
    """The ``storage_options`` field shared by every command that opens a store (cache, shards)."""
    return option(help="fsspec option PROTOCOL.KEY=VALUE for every store of that protocol (repeatable), e.g. "
                       "s3.endpoint_url=http://10.0.0.5:9000, s3.anon=true, gcs.project=P; YAML: "
                       "storage_options: {s3: {endpoint_url: ...}}. Credentials best stay in the environment.",
                  factory=dict, flag="--storage-option", parse=protocol_key_values,
                  checks=(lambda v: None if all(isinstance(o, dict) for o in v.values())
                          else "takes PROTOCOL: {KEY: VALUE} mappings",))


def protocol_key_values(items: list[str]) -> dict:
    """``["s3.endpoint_url=http://x", "s3.anon=true"]`` -> ``{"s3": {"endpoint_url": "http://x", "anon": True}}``."""
    out: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        protocol, dot, name = key.partition(".")
        if not sep or not dot or not protocol or not name:
            raise UserError(f"--storage-option takes PROTOCOL.KEY=VALUE (e.g. s3.endpoint_url=http://host:9000), got {item!r}")
        out.setdefault(protocol, {})[name] = yaml_value(value, f"--storage-option {item}")
    return out


def comma_list(items: list[str]) -> list[str]:
    """Repeated and comma-separated values as one list: ``--teachers a,b --teachers c``."""
    return [part for item in items for part in item.split(",") if part]


def set_value(config: dict, assignment: str) -> None:
    """Apply ``a.b.c=VALUE`` (VALUE read as YAML) to a nested dict, creating levels as needed."""
    path, sep, value = assignment.partition("=")
    if not sep or not path:
        raise UserError(f"--set takes KEY.PATH=VALUE, got {assignment!r}")
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {assignment}: {key} is not a section")
    node[last] = yaml_value(value, f"--set {assignment}")


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


class Options:
    """Base of the options dataclasses: building from a dict (YAML, --set, flags) and checking."""

    command = ""  # the CLI command these options belong to, for messages

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def from_dict(cls, values: dict) -> "Options":
        """Options from ``values`` (unknown keys refused), converted to the fields' types, each value checked
        (the checks across fields and against the cache run in ``check``, before the command's work)."""
        check_options(cls, values, cls.command)
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in values]
        if missing:
            raise UserError(f"{cls.command} needs {', '.join(flag_name(f) for f in dataclasses.fields(cls) if f.name in missing)}")
        types = cls.field_types()
        opts = cls(**{k: _coerce(v, types[k], k, cls.command) for k, v in values.items()})
        opts.check_values()
        return opts

    def check(self) -> None:
        """Everything, before a command starts: each value, then the checks involving several fields (which
        may open stores: the storage options take effect first, for every store the process opens)."""
        self.check_values()
        if getattr(self, "storage_options", None):
            from .storage import use_storage_options

            use_storage_options(self.storage_options)
        self.check_together()

    def check_values(self) -> None:
        """Each field's own checks."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            for check in f.metadata.get("checks", ()):
                problem = check(value)
                if problem:  # "{flag}" in a message stands for the option's name; else the name leads
                    flag = flag_name(f).split("/")[0]
                    raise UserError(problem.replace("{flag}", flag) if "{flag}" in problem else f"{flag} {problem}")

    def check_together(self) -> None:
        """Checks that involve several fields (overridden where needed)."""


def _coerce(value: Any, kind: Any, name: str, command: str) -> Any:
    """A YAML or CLI value as the field's type: ints for floats, lists for tuples; wrong kinds refused."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if value is None:
        if type(None) in typing.get_args(kind):
            return None
        raise UserError(f"{command} option {name} cannot be empty")
    base = typing.get_origin(kind) or kind
    if base in (typing.Union, types.UnionType) and args:
        return _coerce(value, args[0], name, command)
    if base is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise UserError(f"{command} option {name} takes {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, name, command) for v, a in zip(value, args))
    if base is list:
        if isinstance(value, str):
            value = comma_list([value])
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{command} option {name} takes a list, got {value!r}")
        return list(value)
    if base is dict:
        if not isinstance(value, dict):
            raise UserError(f"{command} option {name} takes a mapping, got {value!r}")
        return value
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if base is str and isinstance(value, int) and not isinstance(value, bool):  # --set lop_hidden=768
        return str(value)
    if base in (bool, int, float, str) and (not isinstance(value, base) or base is int and isinstance(value, bool)):
        kind = {"bool": "a bool (true or false)", "int": "an int", "float": "a float", "str": "a string"}[base.__name__]
        raise UserError(f"{command} option {name} takes {kind}, got {value!r}")
    return value
