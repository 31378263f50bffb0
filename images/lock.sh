#!/usr/bin/env bash
# Regenerate the images' lock files (pinned versions with sha256 hashes) from pyproject.toml,
# for the images' Python (Debian bookworm: CPython 3.11, glibc 2.36, x86_64). Needs uv
# (`pip install uv`) and a package index. Run from the repository root after changing a
# dependency; tests/test_image_locks.py fails while a lock no longer satisfies pyproject.toml.
#   images/requirements.lock            pipeline image: everything, CPU torch
#   images/requirements-predictor.lock  predictor image: what `shopguide serve` needs, CPU torch
#   images/requirements-cuda.lock       GPU image: everything, PyPI's CUDA torch (CUDA runtime
#                                       as nvidia-* wheels)
# CPU_WHEELS: a directory holding the torch CPU wheel (default: PyTorch's CPU index). CUDA torch
# comes from PyPI; set CUDA_INDEX (e.g. https://download.pytorch.org/whl/cu128) and edit
# images/torch-cuda.in (torch==X+cu128) for another CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
target=(--python-version 3.11 --python-platform x86_64-manylinux_2_36 --generate-hashes --quiet)
if [ -n "${CPU_WHEELS:-}" ]; then
  cpu=(--find-links "$CPU_WHEELS")
else
  cpu=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
fi
cuda=(${CUDA_INDEX:+--extra-index-url "$CUDA_INDEX" --index-strategy unsafe-best-match})
uv pip compile pyproject.toml images/torch-cpu.in "${target[@]}" "${cpu[@]}" \
  --custom-compile-command "images/lock.sh" -o images/requirements.lock
uv pip compile images/predictor.in images/torch-cpu.in "${target[@]}" "${cpu[@]}" \
  --custom-compile-command "images/lock.sh" -o images/requirements-predictor.lock
uv pip compile pyproject.toml images/torch-cuda.in "${target[@]}" "${cuda[@]}" \
  --custom-compile-command "images/lock.sh" -o images/requirements-cuda.lock
