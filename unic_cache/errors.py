"""The one exception type for mistakes a user can fix (bad input, missing weights, wrong cache)."""


class UserError(Exception):
    """A problem with the user's input; the CLI prints its message as one line, without a traceback."""


class RunInterrupted(Exception):
    """A run stopped on request (Ctrl-C, SIGTERM) after saving what it did; the message says how to continue."""


def check_options(cls: type, values: dict, command: str) -> None:
    """Refuse keys that are not fields of the options dataclass ``cls`` of ``unic-cache <command>``."""
    from dataclasses import fields

    import difflib

    names = [f.name for f in fields(cls)]
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
