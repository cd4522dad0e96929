"""What made an artefact, and has it changed? One comparison for every record the tool keeps beside what it made:
a cache's view plan, a teacher's model, weights and codecs, a run's options, a checkpoint's settings, a pipeline's
world, its trained teachers and kept scores. A record is a JSON mapping; ``differences`` compares it with the one a
command would write now, key by key, and ``refuse`` explains a change in one line. Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping

from .errors import UserError


def json_normal(value):
    """``value`` as JSON reads it back (tuples become lists), so that a record and a fresh one compare equal."""
    return json.loads(json.dumps(value))


def differences(have: Mapping | None, want: Mapping, *, ignore: Collection[str] = (), known_only: bool = False,
                label: str = "") -> list[str]:
    """``key: recorded vs now`` (``label`` after the recorded value) for every key of ``want``, then of ``have``,
    whose values differ as JSON reads them, ``ignore`` aside; ``known_only``: only the keys ``have`` records are
    compared (a record made before an option existed). No record at all differs in one line."""
    if have is None:
        return ["nothing recorded"]
    keys = [k for k in want if k not in ignore and (k in have or not known_only)]
    keys += [] if known_only else [k for k in have if k not in want and k not in ignore]
    pairs = ((k, json_normal(have.get(k)), json_normal(want.get(k))) for k in keys)
    return [f"{k}: {a}{label} vs {b}" for k, a, b in pairs if a != b]


def refuse_foreign(flag: str, path, foreign: list[str], writer: str) -> None:
    """Refuse, in one line naming the first three, a ``flag`` path (``--out``, ``--cache``) that holds files ``writer``
    did not write: the tool writes only into a new folder or one of its own, and never touches a user's file."""
    if foreign:
        raise UserError(f"{flag} {path} holds files {writer} did not write ({', '.join(foreign[:3])}); {writer} writes "
                        f"only into a new folder or one of its own: choose another {flag}")


def refuse(differ: list[str], what: str, fix: str, limit: int | None = None) -> None:
    """Raise ``what (the differences); fix`` as one line when anything differs (the first ``limit`` named)."""
    if differ:
        raise UserError(f"{what} ({'; '.join(differ[:limit])}); {fix}")
