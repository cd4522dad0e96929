"""The alias table answers without torch, and says what the models built by timm say."""

import subprocess
import sys

import pytest

from unic_cache.models.registry import FAMILIES, alias_shape
from unic_cache.models.teachers import teacher_shape

ALIASES = [(family.alias, size) for family in FAMILIES.values() for size in family.sizes]


@pytest.mark.parametrize("resolution", [224, 160])
def test_every_alias_shape_is_the_built_models(resolution):
    for alias, size in ALIASES:
        table, built = alias_shape(alias, size, resolution), teacher_shape(alias, size, resolution)
        assert (table.dim, table.grid, table.resolution) == (built.dim, tuple(built.grid), built.resolution), (alias, size)


def test_teachers_and_plan_of_aliases_never_import_torch():
    code = ("import sys; from unic_cache.cli import main; sys.argv = ['unic-cache'] + sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'")
    for args in (["teachers"], ["plan", "--samples", "1281167", "--teachers", "dino:base,deit3:base", "--patch-codec",
                                "pca-192+int8"]):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert out.returncode == 0 and "dim" in out.stdout, out.stderr
