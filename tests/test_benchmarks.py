"""The prepared GPU check runs end to end: its dry run does every step at tiny sizes on the CPU."""

import os
import subprocess
import sys
from pathlib import Path

from .conftest import HANG_GUARD

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path):
    """One body of commands for both runs (each bench script once), so the dry run passes every flag the device run
    passes and takes every branch it takes, --write included (into a file of its own)."""
    script = (ROOT / "pipelines" / "bench" / "gpu_check.sh").read_text()
    for bench in ("pixels_bench.py", "extract_bench.py", "distill_bench.py", "resume_check.py"):
        assert script.count(f'"$py" {bench}') == 1, bench
    benchmarks = (ROOT / "BENCHMARKS.md").read_text()
    written = tmp_path / "sections.md"
    result = subprocess.run([str(ROOT / "pipelines" / "bench" / "gpu_check.sh"), "--cpu-dry-run"], capture_output=True,
                            text=True, timeout=HANG_GUARD,
                            env={**os.environ, "PYTHON": sys.executable, "UNIC_BENCHMARKS": str(written)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.rstrip().endswith("gpu_check dry run: every step ran")
    sections = written.read_text()
    for section in ("### Pixel path", "On cpu: geometry (the exact kernel", "at most 0 level(s) from PIL",
                    "geometry at most 0 level(s) apart", "worker part in 2 processes", "### Extraction",
                    "bf16 autocast against float32", "### Distillation data path", "online step time", "--compile",
                    "### Killed and resumed distill", "identical"):  # every branch of the device run wrote its part
        assert section in sections, section
    assert (ROOT / "BENCHMARKS.md").read_text() == benchmarks  # the dry run leaves BENCHMARKS.md alone
