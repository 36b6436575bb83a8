#!/usr/bin/env bash
# GPU check (run on a lent GPU machine, from the repository root): CUDA parity in float32 on the tiny fixture, then the
# released 2B architecture built on the device (random weights) in bfloat16 (benchmarks/bench_gpu_realsize.py):
# embedding throughput and MFU at batch sizes 1-64 (128-token texts, 1024x768 photos, PDF pages), rerank latency
# (20 / 50 / 100 texts, 20 pages), generation tokens/s, peak memory per model, and the official reference
# implementation on the same card with max |diff|, targets PASS / MISS; then, if time is left, the core benchmark on
# a smaller random checkpoint. Expected on an H100 (an estimate, not yet timed there): about 6-7 minutes in all
# (building the 2B checkpoint ~1 min, the real-size benchmark ~5 min with the reference, ~4 without; the core benchmark
# runs only if under 7 minutes have passed): run it with timeout_s=600. Everything printed is also
# written to $OUT/gpu_check.log and the numbers to $OUT/bench_gpu_realsize.json (rewritten after each phase, so a
# run cut short still brings back what it measured).
#
# The GPU image has torch / transformers but no registry access: build the missing pure-Python packages here
# first and carry the folder with the run:
#   pip install --no-deps --target .gpu-vendor -c requirements-lock.txt qwen-vl-utils transformers huggingface_hub \
#     tokenizers safetensors     (the lock's versions: the ones the parity fixture was recorded with)
#
# The reference (optional; skipped when the folder is missing): a checkout of the official implementation,
# QwenLM/Qwen3-VL-Embedding, made on the workstation in .reference/ (its src/models is imported from there by the
# benchmark; its code is never copied into this repository). Only src/models is read, so a sparse clone is enough
# (about 1 MB with its .git; a plain `git clone --depth 1` is ~27 MB, which counts against the 64 MiB carry):
#   git clone --depth 1 --filter=blob:none --sparse https://github.com/QwenLM/Qwen3-VL-Embedding \
#     .reference/Qwen3-VL-Embedding && git -C .reference/Qwen3-VL-Embedding sparse-checkout set src/models
# .reference/ must be git-ignored (a line `.reference/` in .gitignore), so that it is never committed. A nested git
# checkout travels with a device run only when carry names it (or a folder above it), so name it:
#   run(carry=[".gpu-vendor", ".reference"], timeout_s=600)  --  bash benchmarks/gpu_check.sh
# REFERENCE=<dir> points elsewhere. The benchmark prints the reference's commit and any adaptation it needed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD:$PWD/.gpu-vendor${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUTDIR=${OUT:-/tmp}
exec > >(tee "$OUTDIR/gpu_check.log") 2>&1
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
REFERENCE=${REFERENCE:-.reference/Qwen3-VL-Embedding}
ref=()
if [[ -d "$REFERENCE/src/models" ]]; then
  ref=(--reference "$REFERENCE")
else
  echo "no reference checkout at $REFERENCE (see the top of this script): the comparison is skipped"
fi
$PY benchmarks/bench_gpu_realsize.py --size 2B --device cuda --dtype bfloat16 --cache /tmp/qwen3vl-realsize \
  --json-out "$OUTDIR/bench_gpu_realsize.json" ${ref[@]+"${ref[@]}"}
if (( SECONDS < 420 )); then
  $PY benchmarks/bench_core.py --device cuda --dtype bfloat16 --hidden 1024 --layers 16 --items 256 --docs 64 \
    --batch-size 32 --cache /tmp/qwen3vl-bench
else
  echo "skipped benchmarks/bench_core.py: ${SECONDS} s spent already (the device session allows 600 s a command)"
fi
echo "gpu_check.sh done in ${SECONDS} s"
