"""The import layers of ``[tool.importlinter]`` in pyproject.toml hold (lint-imports), and an import from a lower
layer to a higher one breaks them."""

import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import HANG_GUARD

ROOT = Path(__file__).resolve().parents[1]
LINT = [str(Path(sys.executable).parent / "lint-imports")]


def test_the_import_layers_hold():
    result = subprocess.run(LINT, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD)
    assert result.returncode == 0 and "Contracts: 1 kept, 0 broken" in result.stdout, result.stdout[-3000:]


def test_an_upward_import_breaks_them(tmp_path):
    shutil.copytree(ROOT / "unic_cache", tmp_path / "unic_cache", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "unic_cache" / "cache" / "sizing.py").open("a").write("\nfrom ..pipeline import run_pipeline  # noqa\n")
    result = subprocess.run(LINT, cwd=tmp_path, capture_output=True, text=True, timeout=HANG_GUARD,
                            env={"PYTHONPATH": str(tmp_path), "PATH": str(Path(sys.executable).parent)})
    assert result.returncode != 0 and "unic_cache.cache.sizing -> unic_cache.pipeline" in result.stdout, result.stdout[-3000:]
