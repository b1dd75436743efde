#!/usr/bin/env bash
# The GPU benchmark as one prepared command for a lent H100/H200 session (see benchmarks/README.md):
# uses the machine's own JAX, flax, optax and orbax; flaxzoo from this checkout.
#   bash benchmarks/gpu.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-benchmarks/results}}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_nvidia_smi.txt"
PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 python3 benchmarks/gpu.py "$out/gpu.json" 2>&1 | tee "$out/gpu.log"
