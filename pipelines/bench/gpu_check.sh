#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md, in one prepared run (one H200 with 16 cores: under 8 minutes):
#   the pixel path (geometry and photometric part per view on the GPU, nvJPEG, the CPU part at 16 processes);
#   P1 extract efficiency (end to end / forward only) and bf16 vs float32 features, ViT-B/16 teacher at 224 px;
#   P2 stage-2 loader headroom and P3 cache overhead, ViT-B/16 student; the --fused-adamw, --channels-last and
#   --compile step ratios; P4 cached vs online step time with four ViT-B/16 teachers;
#   a killed and resumed GPU distill against an uninterrupted one.
# All on the ImageNet-like JPEG corpus (unic_cache.photos), random weights (they time as pretrained ones do).
#
#   pipelines/bench/gpu_check.sh                 # on the device: appends to BENCHMARKS.md, copied to $OUT
#   pipelines/bench/gpu_check.sh --cpu-dry-run   # the same commands, every flag and branch, at tiny sizes on this
#                                                # CPU with the device set to it (a test: under 3 minutes); its
#                                                # sections go to a temporary file, BENCHMARKS.md is left alone
#
# The device has torch, timm, scikit-image and pyarrow but not zarr, numcodecs or webdataset: carry the wheels
# that pipelines/bench/gpu_wheels.sh downloads into .whl (device run: carry [".whl"]).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root/pipelines/bench"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = "--cpu-dry-run" ]; then  # the sizes of the run, and its device: nothing else differs
  device=cpu; n=(8 8 8 8); res=32; views=2; workers=2; batch=(8 4 4); batches=2; steps=40; online=2
  teacher=(--arch vit_tiny_patch16_224 --depth 1 --second-arch vit_small_patch16_224); student=(--student vit_tiny_patch16_224 --model-arg depth=2 --depth 1)
  resumed=(--teacher vit_tiny_patch16_224 --student vit_tiny_patch16_224 --model-arg depth=1)
  online_arch=vit_tiny_patch16_224
  if [ -z "${UNIC_BENCHMARKS:-}" ]; then
    export UNIC_BENCHMARKS="${TMPDIR:-/tmp}/gpu-check-dry-run-$$.md"
    trap 'rm -f "$UNIC_BENCHMARKS"' EXIT
  fi
else
  if ! "$py" -c "import zarr, numcodecs, webdataset, braceexpand, google_crc32c" 2>/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$root"/.whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  fi
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  device=cuda; n=(256 1024 512 128); res=224; views=8; workers=16; batch=(256 128 64); batches=20; steps=200; online=4
  teacher=(--arch vit_base_patch16_224); student=(--student vit_base_patch16_224); resumed=(); online_arch=vit_base_patch16_224
fi
"$py" pixels_bench.py --n "${n[0]}" --views "$views" --res "$res" --device "$device" --workers "$workers" --write
"$py" extract_bench.py --n "${n[1]}" "${teacher[@]}" --res "$res" --views "$views" --batch-size "${batch[0]}" \
  --workers "$((workers - 1))" --device "$device" --bf16-fidelity --write
"$py" distill_bench.py --n "${n[2]}" "${student[@]}" --img-size "$res" --res "$res" --batch-size "${batch[1]}" \
  --workers "$((workers - 1))" --batches "$batches" --step-options --online "$online" --online-arch "$online_arch" --write
"$py" resume_check.py --n "${n[3]}" "${resumed[@]}" --res "$res" --device "$device" --steps "$steps" \
  --batch-size "${batch[2]}" --workers "$((workers / 2))" --write
if [ "$device" = cpu ]; then echo "gpu_check dry run: every step ran"; fi
if [ -n "${OUT:-}" ] && [ "$device" != cpu ]; then cp "$root/BENCHMARKS.md" "$OUT/"; fi
