#!/usr/bin/env bash
# GPU check (run on a lent GPU machine, from the repository root): CUDA parity in float32, the core benchmark in
# bfloat16 on a larger random checkpoint (batched embedding and shared-prefix reranking), then the released 2B
# architecture built on the device (random weights) for real throughput and memory (benchmarks/bench_gpu_realsize.py).
#
# The GPU image has torch / transformers but no registry access: build the missing pure-Python packages here
# first and carry the folder with the run:
#   pip install --no-deps --target .gpu-vendor -c requirements-lock.txt qwen-vl-utils transformers huggingface_hub \
#     tokenizers safetensors     (the lock's versions: the ones the parity fixture was recorded with)
#   (then run with carry=[".gpu-vendor"])  --  bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD:$PWD/.gpu-vendor${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
$PY - <<'PY'
import transformers
major = int(transformers.__version__.split(".")[0])
assert major >= 5, f"transformers {transformers.__version__} on this machine; the project needs >= 5 (carry it)"
PY
$PY - <<'PY'
import json, torch
from pathlib import Path
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
from retrieval_pipeline import Qwen3VLEmbedder, Qwen3VLReranker
assert torch.cuda.is_available(), "no CUDA device"
print("device:", torch.cuda.get_device_name(), "torch", torch.__version__)
root = Path("tests/fixtures/parity"); public = json.loads((root / "public.json").read_text())
def fix(o):
    o = dict(o)
    for k in ("image",):
        if k in o: o[k] = str(root / "media" / o[k])
    return o
items = [(i, fix(e)) for i, e in enumerate(public["embed_inputs"]) if "video" not in e]  # no decord on the GPU image
emb = Qwen3VLEmbedder(str(root / "tiny-qwen3vl"), device="cuda", dtype="float32", **public["settings"])
out = emb.process([e for _, e in items]).numpy()
exp = torch.tensor([public["expected_embeddings"][i] for i, _ in items]).numpy()
print(f"cuda float32 embedding parity: max |diff| {abs(out - exp).max():.2e} over {len(items)} inputs")
bf = Qwen3VLEmbedder(str(root / "tiny-qwen3vl"), device="cuda", **public["settings"])
print("default dtype on cuda:", bf.dtype)
PY
$PY benchmarks/bench_core.py --device cuda --dtype bfloat16 --hidden 1024 --layers 16 --items 256 --docs 64 \
  --batch-size 32 --cache /tmp/qwen3vl-bench
$PY benchmarks/bench_gpu_realsize.py --size 2B --device cuda --cache /tmp/qwen3vl-realsize
