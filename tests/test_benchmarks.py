"""The prepared GPU check runs end to end: its dry run does every step at tiny sizes on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import HANG_GUARD

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run():
    benchmarks = (ROOT / "BENCHMARKS.md").read_text()
    result = subprocess.run([str(ROOT / "pipelines" / "bench" / "gpu_check.sh"), "--cpu-dry-run"], capture_output=True,
                            text=True, timeout=HANG_GUARD, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.rstrip().endswith("gpu_check dry run: every step ran")
    pixels = json.loads(result.stdout.splitlines()[0])  # pixels_bench --json
    for field in ("decode_ms", "cpu_ms_per_view", "device_ms_per_view_cpu", "old_ms_per_view", "max_level_diff",
                  "frac_within_1", "views_per_s_16_cores", "cpu_views_per_s",
                  "device_ms_per_view", "gpu_decode_ms", "gpu_decode_max_level_diff"):  # the --device branch ran
        assert field in pixels, field
    assert pixels["frac_within_1"] >= 0.999
    for section in ("### Extraction", "bf16 autocast against float32", "### Distillation data path", "online step time",
                    "--compile", "### Killed and resumed distill"):
        assert section in result.stdout, section
    assert "identical" in result.stdout
    assert (ROOT / "BENCHMARKS.md").read_text() == benchmarks  # a dry run writes nothing
