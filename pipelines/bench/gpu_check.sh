#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md, in one prepared run (one H200 with 16 cores: under 8 minutes):
#   P1 extract efficiency (end to end / forward only) and bf16 vs float32 features, ViT-B/16 teacher at 224 px;
#   P2 stage-2 loader headroom and P3 cache overhead, ViT-B/16 student; the --fused-adamw, --channels-last and
#   --compile step ratios; P4 cached vs online step time with four ViT-B/16 teachers;
#   the photometric part per view on the GPU and the CPU part at 16 processes;
#   a killed and resumed GPU distill against an uninterrupted one.
# All on the ImageNet-like JPEG corpus (unic_cache.photos), random weights (they time as pretrained ones do).
#
#   pipelines/bench/gpu_check.sh                 # on the device: appends to BENCHMARKS.md, copied to $OUT
#   pipelines/bench/gpu_check.sh --cpu-dry-run   # the same steps at tiny sizes on this CPU (a test: under 3 minutes)
#
# The device has torch, timm, scikit-image and pyarrow but not zarr, numcodecs or webdataset: carry the wheels
# that pipelines/bench/gpu_wheels.sh downloads into .whl (device run: carry [".whl"]).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root/pipelines/bench"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = "--cpu-dry-run" ]; then
  write=""
  tiny=(--res 32)
  "$py" pixels_bench.py --n 8 --views 2 --res 32 --device cpu --workers 2 --json   # the device run's branches, on the CPU
  "$py" extract_bench.py --n 8 --arch vit_tiny_patch16_224 --depth 1 "${tiny[@]}" --views 2 --batch-size 8 --workers 1 \
    --second-arch vit_small_patch16_224 --bf16-fidelity
  "$py" distill_bench.py --n 8 --student vit_tiny_patch16_224 --model-arg depth=2 --img-size 32 "${tiny[@]}" --depth 1 --batch-size 4 \
    --workers 1 --batches 2 --step-options --online 2 --online-arch vit_tiny_patch16_224
  "$py" resume_check.py --n 8 "${tiny[@]}" --teacher vit_tiny_patch16_224 --student vit_tiny_patch16_224 \
    --model-arg depth=1 --steps 40 --batch-size 4 --workers 0
  echo "gpu_check dry run: every step ran"
  exit 0
fi
if ! "$py" -c "import zarr, numcodecs, webdataset, braceexpand, google_crc32c" 2>/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$root"/.whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
write=--write
"$py" pixels_bench.py --n 256 --device cuda --workers 16 $write
"$py" extract_bench.py --n 1024 --arch vit_base_patch16_224 --res 224 --views 8 --batch-size 256 --workers 15 \
  --device cuda --bf16-fidelity $write
"$py" distill_bench.py --n 512 --student vit_base_patch16_224 --img-size 224 --batch-size 128 --workers 15 \
  --batches 20 --step-options --online 4 $write
"$py" resume_check.py --n 128 --device cuda --steps 200 --batch-size 64 --workers 8 $write
if [ -n "${OUT:-}" ]; then cp "$root/BENCHMARKS.md" "$OUT/"; fi
