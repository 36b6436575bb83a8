"""Search latency with the result caches: a repeated query (cache hit) against a new one (cache miss) and against no
cache at all, for text and image queries, with reranking on and off, side by side in one run.

A collection of ~50 items (texts and images, :func:`common.mixed_corpus`) is indexed into a temporary embedded
store; each cell is the median of ``--repeat`` searches through :class:`~retrieval_pipeline.pipeline.RAGPipeline`
(top 5 of ``--candidates``, dense stage one: the hybrid fusion's equal scores come back from the store in any
order, which would blur the check), interleaved. A hit must return exactly the hits and scores of the miss before
it and of the search without a cache (checked).
``--figure`` also draws the table as a bar chart.

    python benchmarks/bench_caches.py [--items 50] [--repeat 15] [--candidates 20] [--figure docs/cache-latency.png]
        [--embedding-model PATH --reranker-model PATH] [--device cpu] [--dtype float32]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MEDIA, TINY, WORDS, mixed_corpus  # noqa: E402
from PIL import Image  # noqa: E402

from retrieval_pipeline.caching import RetrievalCaches  # noqa: E402

MODES = ("no cache", "miss", "hit")


def write_corpus(folder: Path, n: int) -> None:
    """``n`` files: the texts as .txt, the images as .png."""
    for i, item in enumerate(mixed_corpus(n)):
        if isinstance(item, str):
            (folder / f"text_{i:03d}.txt").write_text(item)
        else:
            item["image"].save(folder / f"image_{i:03d}.png")


def queries(kind: str, n: int, seed: int = 1) -> list[Any]:
    """``n`` different queries of a kind: texts of 4-12 words, or images (a photo turned and cropped)."""
    rng = random.Random(seed)
    if kind == "text":
        return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n)]
    photo = Image.open(MEDIA / "chelsea.jpg").convert("RGB")
    out = []
    for _ in range(n):
        side = rng.choice([128, 192, 256])
        out.append(photo.rotate(rng.randint(0, 359)).resize((side, side)))
    return out


def timed(pipeline: Any, query: Any, rerank: bool) -> tuple[float, list[tuple[Any, ...]]]:
    t0 = time.perf_counter()
    hits = pipeline.search(query, top_k=5, rerank=rerank)
    return time.perf_counter() - t0, [(h.id, h.score, h.vector_score, h.rerank_score) for h in hits]


def measure(pipeline: Any, kind: str, rerank: bool, repeat: int) -> dict[str, float]:
    """Median seconds of a search per mode, interleaved: each new query without a cache and as a cache miss (in
    alternating order, so neither gains from going second), then again as a cache hit. Checks that the three
    searches return the same hits and scores."""
    caches = RetrievalCaches()
    pipeline.caches = None
    timed(pipeline, queries(kind, 1, seed=0)[0], rerank)  # warm-up (first-call costs out of the way)
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    for n, query in enumerate(queries(kind, repeat)):
        results = {}
        for mode in ("no cache", "miss") if n % 2 else ("miss", "no cache"):
            pipeline.caches = None if mode == "no cache" else caches
            took, results[mode] = timed(pipeline, query, rerank)
            seconds[mode].append(took)
        pipeline.caches = caches
        took, results["hit"] = timed(pipeline, query, rerank)
        seconds["hit"].append(took)
        if not results["hit"] == results["miss"] == results["no cache"]:
            raise AssertionError(f"a cached {kind} search differs from the fresh one")
    pipeline.caches = None
    return {mode: statistics.median(values) for mode, values in seconds.items()}


def draw(rows: dict[str, dict[str, float]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(rows)
    width = 0.27
    fig, ax = plt.subplots(figsize=(8, 4))
    for n, mode in enumerate(MODES):
        values = [rows[label][mode] * 1000 for label in labels]
        bars = ax.bar([i + (n - 1) * width for i in range(len(labels))], values, width, label=mode)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yscale("log")
    ax.set_ylabel("search latency, median (ms, log scale)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=15, help="searches per cell (the median is shown)")
    parser.add_argument("--candidates", type=int, default=20, help="stage-one candidates reranked")
    parser.add_argument("--embedding-model", default=str(TINY))
    parser.add_argument("--reranker-model", default=str(TINY))
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--figure", default=None, help="also draw the table into this image file")
    args = parser.parse_args()

    from retrieval_pipeline import Qwen3VLEmbedder, Qwen3VLReranker
    from retrieval_pipeline.ingest import Indexer
    from retrieval_pipeline.pipeline import RAGPipeline
    from retrieval_pipeline.store import EdgeStore

    embedder = Qwen3VLEmbedder(args.embedding_model, device=args.device, torch_dtype=args.dtype)
    reranker = Qwen3VLReranker(args.reranker_model, device=args.device, torch_dtype=args.dtype)
    with tempfile.TemporaryDirectory(prefix="bench-caches-") as tmp:
        folder = Path(tmp) / "corpus"
        folder.mkdir()
        write_corpus(folder, args.items)
        store = EdgeStore(Path(tmp) / "db", "bench")
        try:
            report = Indexer(embedder, store).index_paths([folder], show_progress_bar=False)
            pipeline = RAGPipeline(
                store,
                embedder=embedder,
                reranker=reranker,
                generation=None,
                candidates=args.candidates,
                rerank_budget=None,
                offload=False,
                search_options={"hybrid": False},
            )
            title = (
                f"{Path(args.embedding_model).name} / {Path(args.reranker_model).name}, {embedder.device} "
                f"{args.dtype}, {report.indexed} points, top 5 of {args.candidates}, median of {args.repeat}"
            )
            print(title)
            print(f"  {'query':<22} {'no cache':>10} {'miss':>10} {'hit':>10} {'miss / hit':>11}")
            rows: dict[str, dict[str, float]] = {}
            for kind in ("text", "image"):
                for rerank in (False, True):
                    label = f"{kind}, {'reranked' if rerank else 'stage one'}"
                    row = rows[label] = measure(pipeline, kind, rerank, args.repeat)
                    cells = " ".join(f"{row[m] * 1000:8.1f}ms" for m in MODES)
                    print(f"  {label:<22} {cells} {row['miss'] / row['hit']:10.1f}x")
            print("  every hit returned the hits and scores of its miss and of the search without a cache, bit for bit")
        finally:
            store.close()
    if args.figure:
        draw(rows, args.figure, title)


if __name__ == "__main__":
    main()
