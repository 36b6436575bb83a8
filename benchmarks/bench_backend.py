"""Documents over HTTP under load, measured side by side in one run.

1. Indexing uploaded files: one indexer run per file vs the queued files of a store in one run (the background
   indexer's grouping), per file, on the same files and model.
2. A real ``serve`` process: N files uploaded and indexed while M clients search the same vector store; search
   latency (p50 / p95 / max) while indexing vs idle, files per second, and the outcome of every file.

    python benchmarks/bench_backend.py [--files 200] [--clients 16] [--embedding-model PATH]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TINY  # noqa: E402


def grouped_vs_one_by_one(model: str, n: int) -> tuple[float, float]:
    from retrieval_pipeline.pipeline import RAGPipeline
    from retrieval_pipeline.serving.collections import Collections
    from retrieval_pipeline.serving.jobs import IndexJobs
    from retrieval_pipeline.serving.registry import Registry
    from retrieval_pipeline.store import EdgeStore

    tmp = Path(tempfile.mkdtemp())
    rag = RAGPipeline(EdgeStore(tmp / "db", "default"), embedding=model, reranking=None, generation=None)
    rag.embedder  # noqa: B018 - loaded before the clock starts
    registry = Registry(tmp / "data")
    jobs = IndexJobs(registry, Collections(rag, registry), max_queued=10_000)
    out = []
    for grouped in (False, True):
        store = registry.create_store(f"s{int(grouped)}", "bench", {}, {})
        ids = []
        for i in range(n):
            text = f"Record {i} ({'grouped' if grouped else 'single'}): shipment QX{i:04d} left dock {i % 7}."
            file = registry.add_file(f"doc-{i}.txt", text.encode(), "assistants", "bench")
            registry.attach(store["id"], file["id"], {}, {"type": "auto"})
            ids.append(file["id"])
        t0 = time.perf_counter()
        if grouped:
            for start in range(0, n, 32):
                jobs.run_group(store["id"], ids[start : start + 32])
        else:
            for file_id in ids:
                jobs.run(store["id"], file_id)
        out.append((time.perf_counter() - t0) / n)
        assert registry.counts(store["id"])["completed"] == n
    return out[0], out[1]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def under_load(model: str, files: int, clients: int) -> dict:
    tmp = Path(tempfile.mkdtemp())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "retrieval_pipeline.cli", "serve", "--port", str(port), "--models", "embed",
        "--embedding-model", model, "--dtype", "float32", "--db", str(tmp / "db"), "--data-dir", str(tmp / "data"),
        "--token", "k", "-q",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": "Bearer k"}
    try:
        for _ in range(600):
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        c = httpx.Client(base_url=url, headers=headers, timeout=120)
        store = c.post("/v1/vector_stores", json={"name": "load"}).json()["id"]

        def search_for(seconds: float, n: int, latencies: list[float], failures: list[str], stop=None) -> None:
            with httpx.Client(base_url=url, headers=headers, timeout=120) as mine:
                end = time.time() + seconds
                while time.time() < end and not (stop and stop.is_set()):
                    t0 = time.perf_counter()
                    r = mine.post(f"/v1/vector_stores/{store}/search", json={"query": f"shipment dock {n % 7}"})
                    latencies.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        failures.append(str(r.status_code))

        idle: list[float] = []
        idle_failures: list[str] = []
        threads = [threading.Thread(target=search_for, args=(5, n, idle, idle_failures)) for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        busy: list[float] = []
        failures: list[str] = []
        stop = threading.Event()
        threads = [threading.Thread(target=search_for, args=(3600, n, busy, failures, stop)) for n in range(clients)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()

        def upload(i: int) -> str:
            body = f"Record {i}: the shipment code is QX{i:04d} and it left dock {i % 7}.".encode()
            with httpx.Client(base_url=url, headers=headers, timeout=120) as mine:
                return mine.post("/v1/files", files={"file": (f"doc-{i}.txt", body)}).json()["id"]

        with ThreadPoolExecutor(4) as pool:
            ids = list(pool.map(upload, range(files)))
        for start in range(0, files, 50):
            c.post(f"/v1/vector_stores/{store}/file_batches", json={"file_ids": ids[start : start + 50]})
        while c.get(f"/v1/vector_stores/{store}").json()["file_counts"]["in_progress"]:
            time.sleep(0.2)
        took = time.perf_counter() - t0
        stop.set()
        for t in threads:
            t.join()
        counts = c.get(f"/v1/vector_stores/{store}").json()["file_counts"]
        return {
            "files": files,
            "clients": clients,
            "seconds": took,
            "files_per_s": files / took,
            "counts": counts,
            "idle": (len(idle), statistics.median(idle), percentile(idle, 0.95), max(idle), len(idle_failures)),
            "busy": (len(busy), statistics.median(busy), percentile(busy, 0.95), max(busy), len(failures)),
        }
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--embedding-model", default=str(TINY))
    args = parser.parse_args()
    single, grouped = grouped_vs_one_by_one(args.embedding_model, 64)
    print(f"indexing uploaded files, {args.embedding_model.split('/')[-1]}, 64 small text files")
    print(f"  one indexer run per file   {single * 1000:8.1f} ms/file")
    print(f"  queued files in one run    {grouped * 1000:8.1f} ms/file   ({single / grouped:.1f}x)")
    load = under_load(args.embedding_model, args.files, args.clients)
    print(f"\n{args.files} uploads indexed while {args.clients} clients search the same store (serve process)")
    print(f"  indexed in {load['seconds']:.1f} s ({load['files_per_s']:.1f} files/s); outcome {load['counts']}")
    print("  search latency        searches   p50 ms   p95 ms   max ms   failed")
    for label, (n, p50, p95, most, failed) in (("idle", load["idle"]), ("while indexing", load["busy"])):
        print(f"  {label:<20} {n:9d} {p50 * 1000:8.1f} {p95 * 1000:8.1f} {most * 1000:8.1f} {failed:8d}")
    print(json.dumps({"single_ms": single * 1000, "grouped_ms": grouped * 1000, **load}, default=str))


if __name__ == "__main__":
    main()
