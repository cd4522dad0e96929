"""A cache's metadata against its seals, as a whole: every sealed place (the root's, each teacher's and view block's),
the ``zarr.json`` documents that differ from their seal (read before any metadata is parsed, so a damaged one is
found rather than failed on) and their restoration (``verify --repair``)."""

from __future__ import annotations

from zarr.core.sync import sync

from ..errors import UserError, reason
from .format import store_path
from .layout import VIEW_BLOCK
from .seal import ROOT_SEAL_AT, differences, restore


def _sealed_places(url: str) -> list[str]:
    """Where a cache's seals are: the root's, then each teacher's (listed from the store: no metadata is parsed)."""
    root = store_path(url)

    async def children(prefix: str) -> list[str]:
        return [name async for name in root.store.list_dir(prefix)]

    prefix = "/".join(p for p in (root.path, "teachers") if p)
    names = sorted(n.strip("/") for n in sync(children(prefix)) if n.strip("/") != "zarr.json")
    blocks = [f"{n}/{b.strip('/')}" for n in names for b in sorted(sync(children(f"{prefix}/{n}")))
              if b.startswith(VIEW_BLOCK)]
    return [ROOT_SEAL_AT, *(f"teachers/{n}" for n in sorted(names + blocks))]


def metadata_damage(url: str) -> tuple[list[str], list[str]]:
    """(metadata that differs from its seal, seals that are themselves damaged): read before any metadata is
    parsed, so a damaged ``zarr.json`` is found rather than failed on."""
    root, changed, broken = store_path(url), [], []
    for at in _sealed_places(url):
        try:
            changed += differences(root, at)
        except UserError as exc:
            broken.append(reason(exc))
    return changed, broken


def restore_metadata(url: str) -> list[str]:
    """Rewrite every sealed ``zarr.json`` that differs from its seal; what was restored."""
    root = store_path(url, mode="a")
    done = []
    for at in _sealed_places(url):
        try:
            done += restore(root, at)
        except UserError:
            continue  # a damaged seal restores nothing (reported by metadata_damage)
    return done
