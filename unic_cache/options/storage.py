"""fsspec storage options (endpoint, anonymous access, project, ...) for every store a process opens.

``use_storage_options({"s3": {"endpoint_url": ...}})`` lays them into fsspec's per-protocol defaults, which
every fsspec filesystem (zarr's store, the shard reader, the claims) takes when it is created, and into
``FSSPEC_<PROTOCOL>`` so that worker processes started afresh (spawn) get them too. Options given
explicitly elsewhere still win, as in fsspec.
"""

from __future__ import annotations

import json
import os


def use_storage_options(options: dict[str, dict]) -> None:
    """Make ``options`` (protocol -> {key: value}) the defaults of every store of those protocols."""
    import fsspec.config

    for protocol, values in options.items():
        merged = {**fsspec.config.conf.get(protocol, {}), **values}
        fsspec.config.conf[protocol] = merged
        os.environ[f"FSSPEC_{protocol.upper()}"] = json.dumps(merged)
