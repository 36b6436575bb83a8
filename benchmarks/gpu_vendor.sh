#!/usr/bin/env bash
# Build .gpu-vendor.tar.xz: the pure-Python and binary packages the lent GPU machine lacks (it has torch,
# transformers, pyarrow, pandas and no registry access), for its Python (3.12, manylinux x86_64). Ray is trimmed to
# what Ray Data and a local cluster need (no dashboard UI, Java jars, RLlib / Tune / Train / Serve / LLM), so the
# archive fits the device tool's carry limit (64 MiB). Run here, then carry it:
#   bash benchmarks/gpu_vendor.sh && run(carry=[".gpu-vendor.tar.xz"]) bash benchmarks/gpu_ray_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -c requirements-lock.txt \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d "$work/wheels" \
  "ray[data]" msgpack click jsonschema jsonschema-specifications referencing rpds-py attrs protobuf \
  qdrant-edge-py qwen-vl-utils
mkdir -p "$work/site"
for wheel in "$work"/wheels/*.whl; do python3 -m zipfile -e "$wheel" "$work/site"; done
(cd "$work/site/ray" && rm -rf jars rllib tune train llm serve workflow dashboard/client/build)
find "$work/site" -name __pycache__ -type d -prune -exec rm -rf {} +
chmod +x "$work"/site/ray/core/src/ray/raylet/raylet "$work"/site/ray/core/src/ray/gcs/gcs_server
tar cf - -C "$work/site" . | xz -9 -T0 > .gpu-vendor.tar.xz
rm -rf "$work"
ls -la .gpu-vendor.tar.xz
