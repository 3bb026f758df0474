#!/usr/bin/env bash
# Run HERE (a machine with PyPI), from anywhere: fills <repo>/.gpu/ with what the GPU machine lacks for the
# benches (it has torch, triton, numpy, safetensors, aiohttp, psutil, nvidia-ml-py ... but no ComfyUI and
# none of ComfyUI's own pins), then prints the size that will travel (limit: ~60 MB with the repo).
#
#   bash bench/gpu/prepare.sh [COMFYUI_TARBALL_DIR]      # default ../shared/comfyui beside the checkout
#
# .gpu/ ignores itself (.gpu/.gitignore = "*"), so nothing here is ever committed; name it in `carry`.
# Which wheels, and why (found by running the benches and `main.py` in a Python that had only the GPU
# image's packages, adding one package at a time until they ran; docs/benchmarks.md):
#   executor path, 0.8.0 and 0.33: torchsde (+ trampoline), av (comfy_api imports it; 0.33 needs av 17+ for
#   av.video.reformatter.ColorPrimaries although its requirements say >= 16), comfy-kitchen
#   (0.33 imports it unconditionally; its pure-Python wheel, 0.2 MB: eager and Triton backends, no CUDA
#   backend, which is 58 MB and more than the carry limit allows);
#   0.33 also: comfy-aimdo (Dynamic VRAM); the 0.33 server (bench/server_memory.py) also: sqlalchemy,
#   alembic, mako, pydantic (+ pydantic-core, annotated-types, typing-inspection) for its asset database.
# Not carried: comfyui-frontend-package (85 MB; the server bench passes --front-end-root instead),
# kornia/spandrel/simpleeval/blake3 (optional nodes only).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TARBALLS="${1:-$REPO/../../shared/comfyui}"
[ -d "$TARBALLS" ] || TARBALLS=/work/shared/comfyui
GPU="$REPO/.gpu"
mkdir -p "$GPU/wheels"
echo '*' > "$GPU/.gitignore"
for v in ${GPU_COMFYUI_VERSIONS:-0.33.0 0.8.0}; do  # both: 53 MB with the wheels, ~56 MB with the repo
  cp -u "$TARBALLS/ComfyUI-$v.tar.gz" "$GPU/"
done
WHEELS=(
  comfy-aimdo==0.4.13 torchsde==0.2.6 trampoline==0.1.2 av==18.1.0
  sqlalchemy==2.0.44 alembic==1.17.2 mako==1.3.10 pydantic==2.12.5 pydantic-core==2.41.5
  annotated-types==0.7.0 typing-inspection==0.4.2
)
PY="${PYTHON:-python3}"
# the GPU machine: CPython 3.12, x86-64 manylinux; --no-deps: each needed dependency is listed above
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
  -d "$GPU/wheels" "${WHEELS[@]}"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform any -d "$GPU/wheels" comfy-kitchen==0.2.31
ls -la "$GPU" "$GPU/wheels"
echo "total that travels (.gpu + tracked files):"
du -sh "$GPU"
git -C "$REPO" ls-files -z | (cd "$REPO" && xargs -0 du -cb 2>/dev/null) | tail -1
