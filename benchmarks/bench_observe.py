"""What observing costs a search: the same ``/v1/search`` with metrics, traces and JSON access logs on and off.

One process, one collection (short text documents, the tiny test checkpoints: the search is as short as it gets, so
the overhead is at its largest share), one uvicorn server per variant (each with a pipeline of its own over the
same models and store), the variants interleaved request by request: each query goes to every variant in turn
(rotating order), so each variant does the same work under the same load, and no query repeats on a server (no
result cache helps). Variants:

* ``off``: the observing middleware removed -- no scope, no metrics, no spans (the library's stage marks are
  shared no-ops);
* ``metrics``: ``/metrics`` counting (the default server);
* ``metrics+traces+json``: also an OpenTelemetry SDK provider (batched, spans dropped by the exporter, no network)
  and ``--log-format json`` lines (to a null stream).

Printed: the median client-side latency of each variant and its overhead over ``off`` (the median of the paired
per-query differences, as a share of ``off``'s median, and the ratio of the medians); then, since a loaded
machine's noise can hide a cost this small, the cost itself measured in isolation: the observing middleware around
an app that only marks a search's stages (``prepare``, ``embed``, ``vector_search``, ``rerank``) against the same
app bare, per request, and as a share of the ``off`` search's median.

    python benchmarks/bench_observe.py [--queries 600] [--docs 60] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TINY, WORDS  # noqa: E402


def start_server(app):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


def dropping_provider():
    """An SDK tracer provider whose spans are made, batched and then dropped (the cost without the network)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    return provider


def make_apps(pipeline):
    from retrieval_pipeline.serving.app import ServerConfig, create_app
    from retrieval_pipeline.serving.metrics import ObserveMiddleware

    off = create_app(pipeline=pipeline(), config=ServerConfig())
    off.user_middleware = [m for m in off.user_middleware if m.cls is not ObserveMiddleware]  # before it starts
    metrics = create_app(pipeline=pipeline(), config=ServerConfig())
    everything = create_app(
        pipeline=pipeline(), config=ServerConfig(log_format="json"), tracer_provider=dropping_provider()
    )
    return {"off": off, "metrics": metrics, "metrics+traces+json": everything}


SEARCH_STAGES = ("prepare", "embed", "vector_search", "rerank")


def isolated_cost(app, n: int) -> tuple[float, float]:
    """(seconds per request bare, with ``app``'s observing middleware) for an ASGI app that only marks the stages
    of a search and answers 200, called in-process; interleaved blocks, medians."""
    import asyncio

    from retrieval_pipeline import observe
    from retrieval_pipeline.serving.metrics import ObserveMiddleware, leaf_routes

    route = next(r for r in leaf_routes(app.router.routes) if r.path == "/v1/search")

    async def bare(scope, receive, send):
        scope["route"] = route
        for name in SEARCH_STAGES:
            with observe.stage(name):
                pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    observed = ObserveMiddleware(bare, app.state.observer)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    def request():
        return {"type": "http", "method": "POST", "path": "/v1/search", "headers": [(b"authorization", b"Bearer x")]}

    async def block(handler, k: int) -> float:
        t0 = time.perf_counter()
        for _ in range(k):
            await handler(request(), receive, send)
        return (time.perf_counter() - t0) / k

    async def run() -> tuple[float, float]:
        plain, with_observing = [], []
        for _ in range(max(1, n // 200)):
            plain.append(await block(bare, 200))
            with_observing.append(await block(observed, 200))
        return statistics.median(plain), statistics.median(with_observing)

    return asyncio.run(run())


def corpus(folder: Path, n: int, rng: random.Random) -> list[Path]:
    paths = []
    for i in range(n):
        path = folder / f"doc{i:03d}.txt"
        path.write_text(" ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40))))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=600, help="queries, each sent to every variant")
    parser.add_argument("--docs", type=int, default=60)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: less noise on a shared machine)")
    parser.add_argument("--isolated", type=int, default=20000, help="requests of the isolated measurement")
    args = parser.parse_args()

    import httpx
    import torch

    torch.set_num_threads(args.threads)

    from retrieval_pipeline import Qwen3VLEmbedder, Qwen3VLReranker
    from retrieval_pipeline.ingest import Indexer
    from retrieval_pipeline.pipeline import RAGPipeline
    from retrieval_pipeline.serving.metrics import ACCESS_LOGGER
    from retrieval_pipeline.store import EdgeStore

    access = logging.getLogger(ACCESS_LOGGER)  # json lines formatted and written, to a null stream
    access.handlers[:] = [logging.StreamHandler(open(os.devnull, "w"))]  # noqa: SIM115
    access.setLevel(logging.INFO)
    access.propagate = False

    rng = random.Random(0)
    folder = Path(tempfile.mkdtemp(prefix="bench-observe-"))
    embedder, reranker = Qwen3VLEmbedder(str(TINY)), Qwen3VLReranker(str(TINY))
    store = EdgeStore(folder / "db", "docs")
    Indexer(embedder, store).index_paths(corpus(folder, args.docs, rng), show_progress_bar=False)
    apps = make_apps(lambda: RAGPipeline(store, embedder=embedder, reranker=reranker))
    servers = {name: start_server(app) for name, app in apps.items()}
    names = list(apps)
    queries = iter(" ".join(rng.choice(WORDS) for _ in range(6)) + f" {i}" for i in range(args.queries + 10))
    latencies: dict[str, list[float]] = {name: [] for name in names}
    clients = {name: httpx.Client(base_url=servers[name][2], timeout=60) for name in names}
    try:
        for i in range(args.queries + 10):  # the first 10: warm-up (lazy imports, the middleware stacks), left out
            body = {"query": next(queries), "top_k": args.top_k}
            for name in names[i % len(names) :] + names[: i % len(names)]:
                t0 = time.perf_counter()
                clients[name].post("/v1/search", json=body).raise_for_status()
                if i >= 10:
                    latencies[name].append(time.perf_counter() - t0)
    finally:
        for name in names:
            clients[name].close()
            servers[name][0].should_exit = True
            servers[name][1].join(10)
        store.close()
    base = statistics.median(latencies["off"])
    print(
        f"/v1/search, {args.docs} text documents, tiny checkpoints ({embedder.device}, {args.threads} torch threads), "
        f"top_k {args.top_k}, {args.queries} queries each sent to every variant, interleaved"
    )
    for name in names:
        median = statistics.median(latencies[name])
        q1, _, q3 = statistics.quantiles(latencies[name], n=4)
        paired = statistics.median(a - b for a, b in zip(latencies[name], latencies["off"]))
        print(
            f"  {name:<22} median {median * 1000:7.2f} ms  (IQR {q1 * 1000:6.2f}-{q3 * 1000:6.2f})   "
            f"overhead {paired / base * 100:+6.2f} % (paired, {paired * 1e6:+6.0f} us)   "
            f"{(median / base - 1) * 100:+6.2f} % (medians)"
        )
    print(f"the observing alone, in-process, {args.isolated} requests marking {', '.join(SEARCH_STAGES)}:")
    for name in names[1:]:
        plain, observed = isolated_cost(apps[name], args.isolated)
        cost = observed - plain
        print(
            f"  {name:<22} {cost * 1e6:7.1f} us per request ({plain * 1e6:.1f} -> {observed * 1e6:.1f} us)   "
            f"= {cost / base * 100:5.2f} % of the off search's median"
        )


if __name__ == "__main__":
    main()
