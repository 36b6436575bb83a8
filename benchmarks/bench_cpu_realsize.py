"""What to expect per item on a CPU at the released size: a random-weight Qwen3-VL-2B (or 8B) checkpoint, float32
against bfloat16 and int8 (quantized linear layers), side by side in one run.

    python benchmarks/bench_cpu_realsize.py [--size 2B] [--cache /tmp/qwen3vl-realsize] [--dtypes float32,int8]
    python benchmarks/bench_cpu_realsize.py --knobs --dtypes bfloat16     # time and cosine per speed knob

Per dtype (each in a fresh process, one model resident at a time, as the CLI runs on a CPU): load time and peak
resident memory of each model; the embedder on texts, a 1024x768 photo, a PDF page at the default resolution and a
30-s video at the default frame budget; the reranker on 20 text candidates and on image candidates; the generator
on 128 new tokens. Then the fidelity of bfloat16 against float32: on the real-size checkpoint (max abs diff and
cosine of the embeddings, whether the top-10 order of a retrieval changes) and on the parity fixture (against the
reference numbers too); the same for int8. Random weights give true memory and speed, not quality.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MEDIA, ROOT, TINY, WORDS, peak_mib  # noqa: E402

CORPUS_TEXTS = 40
QUERIES = ["quarterly revenue growth chart", "a cat sitting on a sofa", "rocket launch into space"]


def reset_peak() -> None:
    """Peak RSS starts again from the current RSS (Linux: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def texts(n: int, words: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def media(folder: Path) -> dict[str, Any]:
    """A 1024x768 photo, the first page of a PDF rendered as ingestion renders it, a 30-s 640x360 video."""
    from hostile_media import write_video
    from PIL import Image

    from retrieval_pipeline.ingest import render_pdf
    from retrieval_pipeline.models.encoding import MAX_PIXELS

    photo = Image.open(MEDIA / "chelsea.jpg").convert("RGB").resize((1024, 768))
    _, page, _ = next(render_pdf(ROOT / "examples" / "corpus" / "annual_report.pdf", max_pixels=MAX_PIXELS))
    video = write_video(folder / "video30s.mp4", 640, 360, 30.0, fps=24)
    return {"photo": photo, "page": page, "video": str(video)}


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def child(model: str, dtype: str, out: Path) -> None:
    import gc

    import torch

    from retrieval_pipeline import Qwen3VLEmbedder, Qwen3VLReranker
    from retrieval_pipeline.models.generator import Qwen3VLGenerator
    from retrieval_pipeline.models.runtime import release_memory

    torch.manual_seed(0)
    res: dict[str, Any] = {"dtype": dtype, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        m = media(Path(tmp))
        reset_peak()
        res["load_embedder_s"], emb = timed(lambda: Qwen3VLEmbedder(model, torch_dtype=dtype))
        emb.embed(["warm up"])
        sample = texts(8, 60, seed=1)
        s, _ = timed(lambda: emb.embed(sample))
        res["text_s"] = s / len(sample)
        res["photo_s"], photo_vec = timed(lambda: emb.embed([{"image": m["photo"]}]))
        res["pdf_page_s"], _ = timed(lambda: emb.embed([{"image": m["page"]}]))
        res["video_30s_s"], _ = timed(lambda: emb.embed([{"video": m["video"]}]))
        corpus = texts(CORPUS_TEXTS, 30, seed=2)
        vectors = emb.embed(corpus)
        queries = emb.embed(QUERIES, instruction="Retrieve images or text relevant to the user's query.")
        np.savez(out.with_suffix(".npz"), corpus=vectors, queries=queries, photo=photo_vec)
        res["embedder_peak_mib"] = peak_mib()
        emb = None  # dropped before the next model loads
        gc.collect()
        release_memory()
        reset_peak()
        res["load_reranker_s"], rr = timed(lambda: Qwen3VLReranker(model, torch_dtype=dtype))
        rr.score("warm up", ["a document"])
        docs = texts(20, 80, seed=3)
        res["rerank_20_texts_s"], _ = timed(lambda: rr.score(QUERIES[0], docs))
        s, _ = timed(lambda: rr.score(QUERIES[1], [{"image": m["photo"]}, {"image": m["page"]}]))
        res["rerank_image_candidate_s"] = s / 2
        res["reranker_peak_mib"] = peak_mib()
        rr = None
        gc.collect()
        release_memory()
        reset_peak()
        res["load_generator_s"], gen = timed(lambda: Qwen3VLGenerator(model, torch_dtype=dtype))
        prompt = gen.processor.tokenizer(" ".join(texts(1, 300, seed=4)), return_tensors="pt")
        kwargs = {"max_new_tokens": 128, "min_new_tokens": 128, "do_sample": False, "pad_token_id": 0}
        with torch.inference_mode():
            gen.model.generate(**prompt, max_new_tokens=2, do_sample=False, pad_token_id=0)
            res["generate_128_s"], output = timed(lambda: gen.model.generate(**prompt, **kwargs))
        res["prompt_tokens"] = int(prompt["input_ids"].shape[1])
        res["new_tokens"] = int(output.shape[1] - prompt["input_ids"].shape[1])
        res["generator_peak_mib"] = peak_mib()
    out.write_text(json.dumps(res))


def knobs(model: str, dtype: str) -> None:
    """The speed knobs at real size: a PDF page at several image-token budgets, the 30-s video at several frame
    budgets (the CLI's --image-tokens and --video-frames), with the cosine of each vector to the default one."""
    from retrieval_pipeline import Qwen3VLEmbedder

    with tempfile.TemporaryDirectory() as tmp:
        m = media(Path(tmp))
        print(f"\nspeed knobs ({dtype}): seconds per item, cosine to the default setting's vector")
        reference: dict[str, Any] = {}

        def run(label: str, key: str, item: dict[str, Any], **settings: Any) -> None:
            emb = Qwen3VLEmbedder(model, torch_dtype=dtype, **settings)
            emb.embed(["warm up"])
            s, vec = timed(lambda: emb.embed([item]))
            reference.setdefault(key, vec[0])
            print(f"  {label:34} {s:7.1f} s   cosine {float(vec[0] @ reference[key]):.4f}")

        for tokens in (1800, 1024, 512, 256):
            run(f"PDF page, --image-tokens {tokens}", "page", {"image": m["page"]}, max_pixels=tokens * 32 * 32)
        for frames in (64, 16, 8):
            run(f"30-s video, --video-frames {frames}", "video", {"video": m["video"]}, max_frames=frames)


def fidelity(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, Any]:
    """b (bfloat16 or int8) against a (float32): max abs diff, worst cosine, top-10 order changes per query."""
    diffs = [np.abs(a[k] - b[k]).max() for k in ("corpus", "queries", "photo")]
    cos = min(float((a[k] * b[k]).sum(1).min()) for k in ("corpus", "queries", "photo"))
    changed = 0
    overlap = []
    for q32, q16 in zip(a["queries"], b["queries"]):
        top32 = list(np.argsort(-(a["corpus"] @ q32))[:10])
        top16 = list(np.argsort(-(b["corpus"] @ q16))[:10])
        changed += top32 != top16
        overlap.append(len(set(top32) & set(top16)))
    return {
        "max_abs_diff": float(max(diffs)),
        "min_cosine": cos,
        "top10_order_changed": f"{changed}/{len(a['queries'])} queries",
        "top10_overlap": overlap,
    }


def parity_fidelity(dtypes: list[str]) -> dict[str, Any]:
    """The parity fixture in float32 and ``dtypes`` against the reference numbers."""
    from retrieval_pipeline import Qwen3VLEmbedder, Qwen3VLReranker

    public = json.loads((TINY.parent / "public.json").read_text())

    def fix(item: dict[str, Any]) -> dict[str, Any]:
        return {k: (str(MEDIA / v) if k in ("image", "video") and isinstance(v, str) else v) for k, v in item.items()}

    inputs = [fix(e) for e in public["embed_inputs"]]
    expected = np.array(public["expected_embeddings"], dtype=np.float32)
    ref_scores = np.array([s for row in public["expected_scores"] for s in row])
    out: dict[str, Any] = {}
    vectors = {}
    for dtype in ["float32", *(d for d in dtypes if d != "float32")]:
        emb = Qwen3VLEmbedder(str(TINY), torch_dtype=dtype, **public["settings"])
        vectors[dtype] = got = emb.process(inputs).float().numpy()
        out[f"{dtype} embeddings vs reference: max abs diff"] = float(np.abs(got - expected).max())
        norms = np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
        out[f"{dtype} embeddings vs reference: min cosine"] = float(((got * expected).sum(1) / norms).min())
        rr = Qwen3VLReranker(str(TINY), torch_dtype=dtype, **public["settings"])
        scores = []
        for request in public["rerank_requests"]:
            request = {**request, "query": fix(request["query"]), "documents": [fix(d) for d in request["documents"]]}
            scores.extend(rr.process(request))
        out[f"{dtype} rerank scores vs reference: max abs diff"] = float(np.abs(np.array(scores) - ref_scores).max())
    sims32 = vectors["float32"] @ vectors["float32"].T
    for dtype in vectors:
        if dtype == "float32":
            continue
        other = vectors[dtype] @ vectors[dtype].T
        changed = sum(list(np.argsort(-sims32[i])) != list(np.argsort(-other[i])) for i in range(len(inputs)))
        out[f"{dtype} order changed"] = f"{changed}/{len(inputs)} inputs as queries over all {len(inputs)}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="2B", choices=["2B", "8B"])
    ap.add_argument("--cache", default="/tmp/qwen3vl-realsize")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--knobs", action="store_true", help="only the speed knobs, in --dtypes' first dtype")
    ap.add_argument("--child", nargs=3, metavar=("MODEL", "DTYPE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], Path(args.child[2]))
        return
    from retrieval_pipeline.models.runtime import cpu_has_native_bf16
    from retrieval_pipeline.testing import build_random_checkpoint

    model = Path(args.cache) / args.size
    if not (model / "config.json").exists():
        print(f"building the random {args.size} checkpoint in {model} ...", flush=True)
        build_random_checkpoint(model, like=TINY, size=args.size)
    print(f"checkpoint: random Qwen3-VL-{args.size} architecture at {model}; native bfloat16: {cpu_has_native_bf16()}")
    if args.knobs:
        knobs(str(model), args.dtypes.split(",")[0])
        return
    results, arrays = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes.split(","):
            out = Path(tmp) / f"{dtype}.json"
            subprocess.run([sys.executable, __file__, "--child", str(model), dtype, str(out)], check=True)
            results[dtype] = json.loads(out.read_text())
            arrays[dtype] = dict(np.load(out.with_suffix(".npz")))
    rows = [
        ("load embedder (s)", "load_embedder_s"),
        ("text, 60 words (s/item)", "text_s"),
        ("photo 1024x768 (s)", "photo_s"),
        ("PDF page, default resolution (s)", "pdf_page_s"),
        ("video 30 s, default frames (s)", "video_30s_s"),
        ("embedder peak RSS (MiB)", "embedder_peak_mib"),
        ("load reranker (s)", "load_reranker_s"),
        ("rerank 20 text candidates (s)", "rerank_20_texts_s"),
        ("rerank, per image candidate (s)", "rerank_image_candidate_s"),
        ("reranker peak RSS (MiB)", "reranker_peak_mib"),
        ("load generator (s)", "load_generator_s"),
        ("generate 128 tokens (s)", "generate_128_s"),
        ("generator peak RSS (MiB)", "generator_peak_mib"),
    ]
    dtypes = list(results)
    ratio_label = f"   {dtypes[1]}/{dtypes[0]}" if len(dtypes) == 2 else ""
    print(f"\n{'':40}" + "".join(f"{d:>12}" for d in dtypes) + ratio_label)
    for label, key in rows:
        values = [results[d][key] for d in dtypes]
        ratio = f"   {values[1] / values[0]:8.2f}x" if len(values) == 2 and values[0] else ""
        print(f"{label:40}" + "".join(f"{v:12.2f}" for v in values) + ratio)
    print(f"threads: {results[dtypes[0]]['threads']}; generate: {results[dtypes[0]]['prompt_tokens']} prompt tokens")
    for dtype in arrays:
        if dtype != "float32" and "float32" in arrays:
            print(f"\nfidelity, real-size checkpoint, {dtype} vs float32:", fidelity(arrays["float32"], arrays[dtype]))
    print("fidelity, parity fixture:", json.dumps(parity_fidelity(list(arrays)), indent=1))


if __name__ == "__main__":
    main()
