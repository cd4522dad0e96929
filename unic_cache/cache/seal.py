"""Metadata under checksum: a *seal* is a copy of the ``zarr.json`` documents that decide what a cache's data
means (the view plan, sample count, shard table, every array's shape, chunks and codecs, a teacher's width,
normalisation, grid and codec parameters), written once with a sha256 of its own.

Chunks carry crc32c, but a ``zarr.json`` is plain text: an edited ``"seed"`` or ``"dim"`` would silently change
what intact data is read as. A sealed document that no longer matches its seal is refused on open, in one line
naming the path and key, and ``verify --repair`` restores it from the seal (checked data is never rewritten from
unchecked metadata; here unchecked metadata is rewritten from checked metadata).

Two seals per cache kind: ``index/seal.json`` covers the root, ``index/*`` and ``views/*``; each teacher's
``teachers/<name>/seal.json`` covers that teacher's group and arrays. Attribute keys a cache changes while it
is used (a teacher's ``complete`` flag and fidelity, set when its statistics are merged) are *volatile*: not
sealed, and checked by ``verify`` against the data they describe instead. A seal is written by one store
``set`` (a rename on local disk, one put on an object store), so it is never half-written.
"""

from __future__ import annotations

import hashlib
import json

import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import StorePath

from ..errors import UserError

SEAL = "seal.json"
ROOT_SEAL_AT = "index"  # the root seal lives beside the index it protects
# attrs that change after creation: a teacher's, checked by verify against the data they describe, and the root's
# ``ready`` flag (formats 1-3 were made once it was set; a cache of format 4 or later once its seal exists, and since
# 0.3 it is not written: a kill between the seal and the flag left a cache unlike an uninterrupted one)
VOLATILE = {"complete", "fidelity_cosine", "ready"}


def _key(root: StorePath, path: str, name: str = "zarr.json") -> str:
    return "/".join(p for p in (root.path, path, name) if p)


def read_bytes(root: StorePath, key: str) -> bytes | None:
    buffer = sync(root.store.get(key, prototype=default_buffer_prototype()))
    return None if buffer is None else buffer.to_bytes()


def write_bytes(root: StorePath, key: str, data: bytes) -> None:
    sync(root.store.set(key, default_buffer_prototype().buffer.from_bytes(data)))


def _document(root: StorePath, path: str) -> dict | str:
    """The ``zarr.json`` at ``path`` without its volatile attributes, or a string saying why it cannot be read."""
    raw = read_bytes(root, _key(root, path))
    if raw is None:
        return "missing"
    try:
        doc = json.loads(raw)
    except ValueError:
        return "unreadable (not JSON)"
    if not isinstance(doc, dict):
        return "unreadable (not a JSON object)"
    attrs = doc.get("attributes")
    if isinstance(attrs, dict):
        doc = {**doc, "attributes": {k: v for k, v in attrs.items() if k not in VOLATILE}}
    return doc


def _digest(documents: dict) -> str:
    return hashlib.sha256(json.dumps(documents, sort_keys=True).encode()).hexdigest()


def member_paths(group: zarr.Group, prefix: str) -> list[str]:
    """``prefix`` and every group and array below ``group`` (whose path is ``prefix``), as paths from the cache root."""
    out = [prefix]
    for name, member in sorted(group.members(), key=lambda kv: kv[0]):
        path = f"{prefix}/{name}" if prefix else name
        out.extend(member_paths(member, path) if isinstance(member, zarr.Group) else [path])
    return out


def write_seal(root: StorePath, at: str, paths: list[str]) -> None:
    """Seal the documents at ``paths`` (from the cache root) into ``<at>/seal.json``."""
    documents = {}
    for path in paths:
        doc = _document(root, path)
        if isinstance(doc, str):
            raise RuntimeError(f"cannot seal {path or '(root)'}: its zarr.json is {doc}")
        documents[path] = doc
    write_bytes(root, _key(root, at, SEAL), json.dumps({"documents": documents, "sha256": _digest(documents)}).encode())


def has_seal(root: StorePath, at: str) -> bool:
    return sync(root.store.exists(_key(root, at, SEAL)))


def read_seal(root: StorePath, at: str) -> dict | None:
    """The sealed documents of ``<at>/seal.json`` (None: no seal); a seal that fails its own digest is an error."""
    raw = read_bytes(root, _key(root, at, SEAL))
    if raw is None:
        return None
    try:
        seal = json.loads(raw)
        documents = seal["documents"]
        ok = _digest(documents) == seal["sha256"]
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        fix = ("extract into a new --cache" if at == ROOT_SEAL_AT else
               "`unic-cache verify CACHE --repair` removes that teacher and the same extract command makes it again")
        raise UserError(f"{at}/{SEAL} is damaged (its sha256 does not match); the metadata it protects cannot be "
                        f"checked: {fix}")
    return documents


def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict) and value:
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def differences(root: StorePath, at: str) -> list[str]:
    """One line per sealed document that differs from the seal (empty: all match; no seal: nothing to check)."""
    sealed = read_seal(root, at)
    if sealed is None:
        return []
    out = []
    for path, want in sealed.items():
        have = _document(root, path)
        where = f"{path or '(root)'}/zarr.json"
        if isinstance(have, str):
            out.append(f"{where} {have}")
        elif have != want:
            a, b = _flat(want), _flat(have)
            keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            shown = "; ".join(f"{k}: {_short(a.get(k))} (sealed) vs {_short(b.get(k))}" for k in keys[:3])
            out.append(f"{where} changed since it was written ({shown}{'; ...' if len(keys) > 3 else ''})")
    return out


def restore(root: StorePath, at: str) -> list[str]:
    """Rewrite every sealed document that differs from the seal (volatile attributes kept where readable; a
    teacher whose ``complete`` flag is lost merges its statistics again). Returns what was restored."""
    sealed = read_seal(root, at) or {}
    done = []
    for path, want in sealed.items():
        if _document(root, path) == want:
            continue
        raw = read_bytes(root, _key(root, path))
        try:
            attrs = json.loads(raw).get("attributes", {}) if raw else {}
        except (ValueError, AttributeError):
            attrs = {}
        kept = {k: v for k, v in (attrs if isinstance(attrs, dict) else {}).items() if k in VOLATILE}
        doc = dict(want)
        if "attributes" in doc:
            doc["attributes"] = {**doc["attributes"], **kept}
        write_bytes(root, _key(root, path), json.dumps(doc, indent=2).encode())
        done.append(f"restored {path or '(root)'}/zarr.json from its seal")
    return done


def check(root: StorePath, at: str, url: str) -> None:
    """Refuse, in one line, metadata that differs from its seal."""
    problems = differences(root, at)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"cache {url}: {problems[0]}{more}; run `unic-cache verify {url} --repair` to restore it "
                        "from its checksummed seal")
