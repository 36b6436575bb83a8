#!/usr/bin/env bash
# GPU check of distributed ingestion (run on a lent GPU machine, from the repository root, with
# carry=[".gpu-vendor.tar.xz"], built by benchmarks/gpu_vendor.sh): Ray Data with GPU actors on the real device.
#  1. parity: the tiny checkpoint in float32, Ray with one GPU actor vs the single process on the GPU and on the CPU
#     (same ids, payloads and report; vector differences printed);
#  2. throughput: a random 1024-wide, 16-layer checkpoint in bfloat16, a cold `index` of the same folder: the single
#     process on the GPU vs Ray with one GPU actor and with two actors sharing it (0.5 GPU each).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .gpu-vendor.tar.xz ] && [ ! -d .gpu-vendor ]; then
  python3 -c "import tarfile; tarfile.open('.gpu-vendor.tar.xz').extractall('.gpu-vendor', filter='fully_trusted')"
fi
export PYTHONPATH="$PWD:$PWD/.gpu-vendor${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
$PY -c "import ray, torch; assert torch.cuda.is_available(); print('ray', ray.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"
$PY benchmarks/bench_ray.py --device cuda --dtype bfloat16 --hidden 1024 --layers 16 --files "${FILES:-360}" \
  --actors 1,2 --gpus-per-actor 1,0.5 --batch-size 32 --image-tokens 256 --parity --cache /tmp/qwen3vl-ray \
  --json "${OUT:-/tmp}/ray_gpu.json"
