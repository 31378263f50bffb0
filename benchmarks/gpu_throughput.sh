#!/usr/bin/env bash
# Issue 4's GPU figure in one run, on a machine with a CUDA build of PyTorch and no package
# index: synthetic events through the project's synth, ingest and features steps (validation
# is skipped: Great Expectations is not carried), then MMoE's training throughput on the GPU
# with its peak GPU memory, at each batch size given.
#
#   where pip reaches an index:   benchmarks/offline_wheels.sh .whl 3.12
#   on the GPU machine (repo root, the wheels beside it):
#     bash benchmarks/gpu_throughput.sh .whl OUT_DIR [EVENTS] [BATCH_SIZES]
#   defaults: 10,000,000 events (protocol synth-scale); batches 65536,262144
#   DEVICE=cpu rehearses the same run on a machine without a GPU (small EVENTS and batches).
#
# Writes OUT_DIR/synth_scale.json (each step's wall time and peak memory, the features step's
# parts), OUT_DIR/train_throughput-b<batch>.json and OUT_DIR/nvidia-smi.txt.
set -euo pipefail
wheels=${1:?usage: gpu_throughput.sh WHEELS OUT_DIR [EVENTS] [BATCH_SIZES]}
out=${2:?usage: gpu_throughput.sh WHEELS OUT_DIR [EVENTS] [BATCH_SIZES]}
events=${3:-10000000}
batches=${4:-65536,262144}
device=${DEVICE:-cuda}
root=$(cd "$(dirname "$0")/.." && pwd)
site=$(mktemp -d)
work=$(mktemp -d)
mkdir -p "$out"

python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheels"/*.whl
export PYTHONPATH="$site:$root/src:$root/benchmarks" PYTHONUNBUFFERED=1
if [[ $device == cuda ]]; then
  nvidia-smi >"$out/nvidia-smi.txt"
fi

python3 "$root/benchmarks/synth_scale.py" --events "$events" --out "$work" --no-validate \
  --set "data.duckdb_threads=$(nproc)" --set data.duckdb_memory_limit=32GB
cp "$work/synth_scale.json" "$out/"
for batch in ${batches//,/ }; do
  python3 "$root/benchmarks/train_throughput.py" --training-set "$work/training_set.parquet" \
    --params "$work/params.yaml" --device "$device" --batch-size "$batch" --epochs 1 --repeats 3 \
    --out "$out/train_throughput-b$batch.json"
done
