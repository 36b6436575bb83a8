"""Store and ingestion benchmarks, side by side in one run.

1. Qdrant Edge (the embedded default) vs qdrant-client's local mode: upsert throughput and query latency
   (p50 / p95, top-10 cosine, with and without a payload filter) at 10k and 100k random 2048-d vectors.
2. End-to-end ingestion items/s on the tiny checkpoint (files -> embed -> upsert), first run and re-run.

    python benchmarks/bench_store.py [--sizes 10000,100000] [--dim 2048] [--queries 200]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MEDIA, TINY  # noqa: E402

from retrieval_pipeline.store import CollectionSpec, EdgeStore, Point, ServerStore  # noqa: E402

BATCH = 1000


def _points(vectors: np.ndarray, start: int) -> list[Point]:
    return [
        Point(
            f"00000000-0000-0000-0000-{start + i:012d}",
            v.tolist(),
            {"modality": ("text", "image", "pdf-page")[(start + i) % 3], "source": f"/data/{(start + i) % 100}"},
        )
        for i, v in enumerate(vectors)
    ]


def bench_backend(name: str, store, vectors: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    spec = CollectionSpec("bench", vectors.shape[1], "bench")
    store.open(spec)
    t0 = time.perf_counter()
    for start in range(0, len(vectors), BATCH):
        store.upsert(_points(vectors[start : start + BATCH], start))
    upsert = time.perf_counter() - t0
    t0 = time.perf_counter()
    if isinstance(store, EdgeStore):
        store.optimize()  # build the HNSW index now rather than in the background
    index = time.perf_counter() - t0
    assert store.count() == len(vectors)
    result = {"upsert_s": upsert, "ingest_per_s": len(vectors) / upsert, "index_s": index}
    for label, filters in (("query", None), ("filtered", {"modality": "image"})):
        store.search(queries[0].tolist(), limit=10, filters=filters)  # warm-up
        times = []
        for q in queries:
            t = time.perf_counter()
            store.search(q.tolist(), limit=10, filters=filters)
            times.append(time.perf_counter() - t)
        result[f"{label}_p50_ms"] = float(np.percentile(times, 50) * 1000)
        result[f"{label}_p95_ms"] = float(np.percentile(times, 95) * 1000)
    if isinstance(store, EdgeStore):
        sample = queries[:50]
        for ef in (128, 512):
            store.hnsw_ef = ef
            hits = [[h.id for h in store.search(q.tolist(), limit=10)] for q in sample]
            result[f"recall_ef{ef}"] = recall_at_10(hits, vectors, sample)
    store.close()
    return result


def recall_at_10(store_hits: list[list[str]], vectors: np.ndarray, queries: np.ndarray) -> float:
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    exact = np.argsort(-(queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ normed.T, axis=1)[:, :10]
    found = 0
    for hits, truth in zip(store_hits, exact):
        ids = {f"00000000-0000-0000-0000-{i:012d}" for i in truth}
        found += len(ids & set(hits))
    return found / (10 * len(store_hits))


def bench_stores(sizes: list[int], dim: int, n_queries: int) -> None:
    rng = np.random.default_rng(0)
    print(f"Qdrant Edge vs qdrant-client local mode, {dim}-d random vectors, top-10 cosine, {n_queries} queries")
    print(
        f"  {'size':>7} {'backend':<22} {'upsert/s':>10} {'HNSW s':>9} {'p50 ms':>8} {'p95 ms':>8}"
        f" {'filt p50':>9} {'filt p95':>9}"
    )
    for size in sizes:
        vectors = rng.normal(size=(size, dim)).astype(np.float32)
        queries = rng.normal(size=(n_queries, dim)).astype(np.float32)
        results = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, store in (
                ("Qdrant Edge", EdgeStore(Path(tmp) / "edge", "bench")),
                ("qdrant-client local", ServerStore(path=":memory:", collection="bench")),
            ):
                r = bench_backend(name, store, vectors, queries)
                results[name] = r
                print(
                    f"  {size:>7} {name:<22} {r['ingest_per_s']:>10.0f} {r['index_s']:>9.1f} {r['query_p50_ms']:>8.2f}"
                    f" {r['query_p95_ms']:>8.2f} {r['filtered_p50_ms']:>9.2f} {r['filtered_p95_ms']:>9.2f}",
                    flush=True,
                )
        edge, local = results["Qdrant Edge"], results["qdrant-client local"]
        print(
            f"  {size:>7} Edge vs local: upsert {edge['ingest_per_s'] / local['ingest_per_s']:.1f}x, "
            f"query p50 {local['query_p50_ms'] / edge['query_p50_ms']:.1f}x faster, "
            f"filtered p50 {local['filtered_p50_ms'] / edge['filtered_p50_ms']:.1f}x faster"
        )
        print(
            f"  {size:>7} Qdrant Edge recall@10 vs exact search (random vectors, HNSW's worst case): "
            f"ef=128: {edge['recall_ef128']:.3f}, ef=512: {edge['recall_ef512']:.3f}"
        )


def bench_recall_clustered(dim: int, size: int = 10000, clusters: int = 200) -> None:
    """Embeddings are not uniform noise: they form topical clusters. Recall on such data (mixture of Gaussians)."""
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(clusters, dim))
    vectors = (centers[rng.integers(0, clusters, size)] + 0.9 * rng.normal(size=(size, dim))).astype(np.float32)
    queries = (centers[rng.integers(0, clusters, 50)] + 0.9 * rng.normal(size=(50, dim))).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        store = EdgeStore(Path(tmp) / "edge", "bench")
        store.open(CollectionSpec("bench", dim, "bench"))
        for start in range(0, size, BATCH):
            store.upsert(_points(vectors[start : start + BATCH], start))
        store.optimize()
        hits = [[h.id for h in store.search(q.tolist(), limit=10)] for q in queries]
        print(
            f"  {size:>7} Qdrant Edge recall@10 on clustered {dim}-d vectors ({clusters} clusters, ef=128): "
            f"{recall_at_10(hits, vectors, queries):.3f}"
        )
        store.close()


def bench_ingestion() -> None:
    from retrieval_pipeline import Qwen3VLEmbedder
    from retrieval_pipeline.ingest import Indexer
    from retrieval_pipeline.testing import make_text_pdf

    print("\nEnd-to-end ingestion on the tiny checkpoint (files -> embed -> upsert into Qdrant Edge):")
    embedder = Qwen3VLEmbedder(str(TINY), max_pixels=65536, total_pixels=1048576)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        for i in range(20):
            for name in ("chelsea.jpg", "coffee.jpg", "report_page.png"):
                shutil.copy(MEDIA / name, corpus / f"{i}_{name}")
            (corpus / f"{i}_notes.md").write_text(f"Note {i}. " + "Revenue and costs by quarter. " * (20 + i))
        make_text_pdf(corpus / "report.pdf", [f"Page {p}: quarterly figures." for p in range(10)])
        shutil.copy(MEDIA / "moving_square.mp4", corpus / "clip.mp4")
        store = EdgeStore(Path(tmp) / "db", "docs")
        indexer = Indexer(embedder, store)
        t = time.perf_counter()
        report = indexer.index_paths([corpus], show_progress_bar=False)
        first = time.perf_counter() - t
        t = time.perf_counter()
        again = indexer.index_paths([corpus], show_progress_bar=False)
        second = time.perf_counter() - t
        print(
            f"  first run: {report.indexed} items in {first:.1f}s = {report.indexed / first:.1f} items/s "
            f"(copies of one image count once: content-derived ids)"
        )
        print(f"  re-run:    {again.present} already present, {again.indexed} embedded, {second:.1f}s")
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--skip-ingestion", action="store_true")
    args = parser.parse_args()
    bench_stores([int(s) for s in args.sizes.split(",")], args.dim, args.queries)
    bench_recall_clustered(args.dim)
    if not args.skip_ingestion:
        bench_ingestion()


if __name__ == "__main__":
    main()
