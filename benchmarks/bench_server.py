"""HTTP server under a bounded concurrent load, with and without dynamic batching, side by side in one run.

Concurrent clients on loopback each send single-input ``/v1/embeddings`` requests (the chatbot-backend pattern);
printed: requests/s, p50 / p95 latency, model batches used, and a check that every request got its own answer.

    python benchmarks/bench_server.py [--clients 32] [--requests 8] [--hidden 128] [--layers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORDS, checkpoint  # noqa: E402


def start_server(app):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


async def load(url: str, texts: list[list[str]]) -> tuple[float, list[float], list[list[float]]]:
    import httpx

    latencies: list[float] = []
    vectors: dict[tuple[int, int], list[float]] = {}

    async def client(c: httpx.AsyncClient, cid: int) -> None:
        for rid, text in enumerate(texts[cid]):
            t = time.perf_counter()
            r = await c.post("/v1/embeddings", json={"input": text})
            latencies.append(time.perf_counter() - t)
            r.raise_for_status()
            vectors[(cid, rid)] = r.json()["data"][0]["embedding"]

    limits = httpx.Limits(max_connections=len(texts))
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as c:
        await c.post("/v1/embeddings", json={"input": "warm-up"})
        t0 = time.perf_counter()
        await asyncio.gather(*[client(c, i) for i in range(len(texts))])
        elapsed = time.perf_counter() - t0
    ordered = [vectors[(i, j)] for i in range(len(texts)) for j in range(len(texts[i]))]
    return elapsed, latencies, ordered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=8, help="requests per client")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "qwen3vl-rag-bench"))
    args = parser.parse_args()

    from retrieval_pipeline import Qwen3VLEmbedder
    from retrieval_pipeline.serving.app import ServerConfig, create_app

    ckpt = checkpoint(Path(args.cache) / f"h{args.hidden}-l{args.layers}", args.hidden, args.layers)
    embedder = Qwen3VLEmbedder(str(ckpt))
    rng = np.random.default_rng(0)
    texts = [
        [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 40)))) for _ in range(args.requests)]
        for _ in range(args.clients)
    ]
    flat = [t for per_client in texts for t in per_client]
    expected = embedder.embed(flat)
    n = len(flat)
    print(
        f"{args.clients} concurrent clients x {args.requests} single-text /v1/embeddings requests = {n}, "
        f"checkpoint hidden {args.hidden} x {args.layers} layers, {embedder.device}"
    )
    rows = {}
    for label, batching in (("without dynamic batching", False), ("with dynamic batching", True)):
        config = ServerConfig(
            dynamic_batching=batching, max_wait_ms=args.max_wait_ms, max_items=1024, max_in_flight=args.clients
        )
        app = create_app(embedder=embedder, config=config)
        server, thread, url = start_server(app)
        batcher = app.state.embed_batcher
        before = batcher.batches
        elapsed, latencies, got = asyncio.run(load(url, texts))
        server.should_exit = True
        thread.join(10)
        ok = np.allclose(np.asarray(got), expected, atol=1e-5)
        rows[label] = n / elapsed
        print(
            f"  {label:<26} {n / elapsed:8.1f} req/s   p50 {np.percentile(latencies, 50) * 1000:7.1f} ms   "
            f"p95 {np.percentile(latencies, 95) * 1000:7.1f} ms   {batcher.batches - before - 1:4d} model batches   "
            f"{len(got)}/{n} answered, {'all correct' if ok else 'WRONG VECTORS'}"
        )
    print(f"  dynamic batching: {rows['with dynamic batching'] / rows['without dynamic batching']:.2f}x throughput")


if __name__ == "__main__":
    main()
