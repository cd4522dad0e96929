"""Options of ``unic-cache info`` and ``unic-cache verify`` (no zarr, no torch: checked at once)."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import Options, option, storage_option


@dataclass
class InfoOptions(Options):
    """Options of ``unic-cache info``."""

    command = "info"

    cache: str = option(help="Cache path or URL.", positional=True)
    json: bool = option(False, "Print JSON instead of a table.", flag="--json")
    bad: bool = option(False, "List every bad sample (key and reason) instead.", flag="--bad")
    storage_options: dict = storage_option()


@dataclass
class VerifyOptions(Options):
    """Options of ``unic-cache verify``."""

    command = "verify"

    cache: str = option(help="Cache path or URL.", positional=True)
    data: str | None = option(None, "The dataset: check it is the one the cache was made for, and every image's digest.")
    repair: bool = option(False, "Unflag damaged units (re-run the same extract to rewrite them), rewrite a damaged "
                                 "view plan, rebuild a damaged index from --data.", flag="--repair")
    progress: bool = option(True, "Show progress bars.")
    storage_options: dict = storage_option()
