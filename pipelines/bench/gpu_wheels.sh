#!/usr/bin/env bash
# Download here, into .whl, the wheels gpu_check.sh needs on the device (Python 3.12, x86_64; it has torch, timm,
# scikit-image, pyarrow, fsspec, typer, tqdm, safetensors and pyyaml already). Then: device run with carry [".whl"].
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for pkg in zarr numcodecs donfig webdataset braceexpand google-crc32c crc32c typing-extensions; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$pkg"
done
ls .whl
