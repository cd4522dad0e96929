"""The alias table answers without torch, and says what the models built by timm say."""

import subprocess
import sys

import pytest

from unic_cache.models.registry import FAMILIES, SHAPES, alias_shape, default_resolution
from unic_cache.models.teachers import teacher_shape

ALIASES = [(family.alias, size) for family in FAMILIES.values() for size in family.sizes]


SUMMARIES = {"dinov2": "cls", "dinov2-reg": "cls", "dinov3": "cls", "dino": "cls", "deit3": "cls", "clip": "cls",
             "dfn-clip": "cls", "mae": "cls", "c-radio": "cls", "c-radio-v4": "cls", "siglip": "pooled",
             "siglip2": "pooled", "pe-core": "pooled", "pe-spatial": "pooled", "aimv2": "pooled", "sam": "pooled",
             "dinov3-convnext": "pooled", "efficientnet-lite": "pooled", "ibot": "cls", "dbot-ft": "pooled"}


@pytest.mark.parametrize("resolution", [224, None])
def test_every_alias_shape_is_the_built_models(resolution):
    """Width, grid, prefix tokens (CLS and registers) and summary tokens (C-RADIO's) of every alias, at UNIC's 224 and
    at its family's own resolution (SAM's 1024), as the torch-free table says and as timm builds it on the meta
    device. And each family takes its summary by its own rule (DINOv3's CLS although timm pools by average; PE's
    pool although it has a CLS token; the pool where there is no CLS), as `teachers` says, whatever route names the
    model (alias, or timm:<id> with the family's arguments, as a cache records it)."""
    assert set(SUMMARIES) == set(FAMILIES)
    for alias, size in ALIASES:
        at = resolution or default_resolution(alias, None)
        table, built = alias_shape(alias, size, at), teacher_shape(alias, size, resolution)
        prefix = SHAPES[table.model_id][2]
        assert (table.dim, table.grid, table.resolution, prefix, table.summary_tokens) == (
            built.dim, tuple(built.grid), built.resolution, built.prefix_tokens, built.summary_tokens), (alias, size)
        assert built.summary_kind == SUMMARIES[alias], alias
        if resolution is None and size == next(iter(FAMILIES[alias].sizes)):  # the rule is the family's: one size
            named = teacher_shape(f"timm:{FAMILIES[alias].sizes[size]}", None, 64, FAMILIES[alias].model_args)
            assert (named.summary_kind, named.summary_tokens) == (built.summary_kind, built.summary_tokens), alias


def test_teachers_and_plan_of_aliases_never_import_torch():
    code = ("import sys; from unic_cache.cli import main; sys.argv = ['unic-cache'] + sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'")
    for args in (["teachers"], ["plan", "--samples", "1281167", "--teachers", "dino:base,deit3:base", "--patch-codec",
                                "pca-192+int8"]):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert out.returncode == 0 and "dim" in out.stdout, out.stderr
