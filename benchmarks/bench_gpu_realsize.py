"""Real-size throughput and memory on a GPU: a random-weight Qwen3-VL-2B checkpoint built on the machine itself
(what travels with a device run is limited to tens of MiB), in bfloat16, batched.

    python benchmarks/bench_gpu_realsize.py [--size 2B] [--device cuda] [--cache /tmp/qwen3vl-realsize]

One checkpoint plays all three roles. Prints texts/s and images/s embedded in batches vs one at a time, rerank
candidates/s (50 texts, 16 images), generated tokens/s, and the allocator's peak memory per model.
``--device cpu --size tiny`` runs the same script on a small checkpoint (a smoke test of the script).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu_realsize import QUERIES, texts  # noqa: E402
from common import MEDIA, TINY  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="2B", choices=["2B", "8B", "tiny"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--cache", default="/tmp/qwen3vl-realsize")
    args = ap.parse_args()
    import torch
    from PIL import Image

    from retrieval_pipeline import Qwen3VLEmbedder, Qwen3VLReranker
    from retrieval_pipeline.models.generator import Qwen3VLGenerator
    from retrieval_pipeline.models.runtime import release_memory
    from retrieval_pipeline.testing import build_random_checkpoint

    cuda = args.device.startswith("cuda")
    model = TINY if args.size == "tiny" else Path(args.cache) / args.size
    if not (Path(model) / "config.json").exists():
        t0 = time.perf_counter()
        build_random_checkpoint(model, like=TINY, size=args.size)
        print(f"built the random {args.size} checkpoint in {time.perf_counter() - t0:.0f} s")
    if cuda:
        print("device:", torch.cuda.get_device_name(), "torch", torch.__version__)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def peak_gib() -> float:
        return torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")

    def rate(label: str, n: int, fn, unit: str) -> float:
        fn() if n > 1 else None  # warm-up of the shapes
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        per_s = n / (time.perf_counter() - t0)
        print(f"  {label:44} {per_s:9.2f} {unit}/s")
        return per_s

    photo = Image.open(MEDIA / "chelsea.jpg").convert("RGB").resize((1024, 768))
    photos = [{"image": photo.rotate(7 * i)} for i in range(16)]  # distinct: identical inputs would run once
    sample = texts(128, 60, seed=1)
    kw = {"device": args.device, "torch_dtype": args.dtype}
    emb = Qwen3VLEmbedder(str(model), **kw)
    print(f"embedder ({emb.dtype}):")
    batched = rate("texts, batched (128)", 128, lambda: emb.embed(sample), "texts")
    single = rate("texts, one at a time (16)", 16, lambda: [emb.embed([t]) for t in sample[:16]], "texts")
    print(f"  {'batched / one at a time':44} {batched / single:9.2f}x")
    rate("photos 1024x768, batched (16)", 16, lambda: emb.embed(photos), "images")
    print(f"  peak memory {peak_gib():.2f} GiB")
    emb = None
    release_memory()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rr = Qwen3VLReranker(str(model), **kw)
    print("reranker:")
    docs = texts(50, 80, seed=3)
    rate("50 text candidates", 50, lambda: rr.score(QUERIES[0], docs), "candidates")
    rate("16 image candidates", 16, lambda: rr.score(QUERIES[1], photos), "candidates")
    print(f"  peak memory {peak_gib():.2f} GiB")
    rr = None
    release_memory()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    gen = Qwen3VLGenerator(str(model), **kw)
    prompt = gen.processor.tokenizer(" ".join(texts(1, 300, seed=4)), return_tensors="pt").to(gen.device)
    options = {"max_new_tokens": 128, "min_new_tokens": 128, "do_sample": False, "pad_token_id": 0}
    with torch.inference_mode():
        print("generator:")
        rate("128 new tokens", 128, lambda: gen.model.generate(**prompt, **options), "tokens")
    print(f"  peak memory {peak_gib():.2f} GiB")


if __name__ == "__main__":
    main()
