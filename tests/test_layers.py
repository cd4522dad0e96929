"""The import contracts of ``[tool.importlinter]`` in pyproject.toml hold (lint-imports: layers, a torch-free cache,
stage 1 and stage 2 independent), an import from a lower layer to a higher one breaks them, and no module imports
itself back through others (no cycle, type-checking imports included)."""

import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import HANG_GUARD

ROOT = Path(__file__).resolve().parents[1]
LINT = [str(Path(sys.executable).parent / "lint-imports")]


def test_the_import_layers_hold():
    result = subprocess.run(LINT, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD)
    assert result.returncode == 0 and "Contracts: 3 kept, 0 broken" in result.stdout, result.stdout[-3000:]


def cycles(package: str = "unic_cache") -> list[list[str]]:
    """The import cycles among ``package``'s modules (strongly connected components of two or more modules)."""
    import grimp

    graph = grimp.build_graph(package, exclude_type_checking_imports=False)
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(module: str) -> None:  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in sorted(graph.find_modules_directly_imported_by(module)):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_back():
    assert cycles() == []


def test_reading_a_cache_imports_no_torch(clean_cache):
    code = (f"import sys\nfrom unic_cache.cache import audit, info, store\nc = store.Cache.open({str(clean_cache)!r})\n"
            "t = c.teacher(c.teacher_names()[0])\nt.read('summary', slice(0, 4), 0)\ninfo.cache_info(c)\n"
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr[-2000:]


def test_an_upward_import_breaks_them(tmp_path):
    shutil.copytree(ROOT / "unic_cache", tmp_path / "unic_cache", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "unic_cache" / "cache" / "sizing.py").open("a").write("\nfrom ..pipeline import run_pipeline  # noqa\n")
    result = subprocess.run(LINT, cwd=tmp_path, capture_output=True, text=True, timeout=HANG_GUARD,
                            env={"PYTHONPATH": str(tmp_path), "PATH": str(Path(sys.executable).parent)})
    assert result.returncode != 0 and "unic_cache.cache.sizing -> unic_cache.pipeline" in result.stdout, result.stdout[-3000:]
