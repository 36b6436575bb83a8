"""Peak memory of hostile requests and files (issue 10, findings 10 and 11), alone and as 32 concurrent copies.

    python benchmarks/bench_hostile.py [--copies 32] [--only NAME]

Starts a real ``qwen3vl-rag serve`` (tiny checkpoint: the pixel tensors and decoded media are the released
model's size; only the weights are small) over an indexed example corpus, and a loopback file server for media
URLs (reached through the operator allowlist ``--fetch-allow 127.0.0.1``). For every request it prints the
status codes, the server's peak resident memory over idle (sampled every 10 ms) and the slowest ``/health``
answer while it ran. Then it indexes each small-but-huge file with ``qwen3vl-rag index`` and prints the
indexing process's peak over an index of a one-line text file. Target: every peak under 2 GiB, ``/health``
under a second.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).parent))
import hostile_media as hm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "parity" / "tiny-qwen3vl"
GIB = 1024**3
MIB = 1024**2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sampler:
    """Peak RSS of a process (and its children) while a block runs, plus the slowest /health answer."""

    def __init__(self, pid: int, health_url: str | None = None):
        self.proc = psutil.Process(pid)
        self.health_url = health_url

    def rss(self) -> int:
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs)
        except psutil.NoSuchProcess:
            return 0

    def __enter__(self) -> Sampler:
        self.idle = self.rss()
        self.peak = self.idle
        self.health = 0.0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._sample, daemon=True)]
        if self.health_url:
            self._threads.append(threading.Thread(target=self._poll_health, daemon=True))
        for t in self._threads:
            t.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.01)

    def _poll_health(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                requests.get(self.health_url, timeout=10)
            except requests.RequestException:
                pass
            self.health = max(self.health, time.perf_counter() - start)
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    @property
    def over_idle(self) -> int:
        return self.peak - self.idle


def start_file_server(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "retrieval_pipeline.cli", *args]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise SystemExit("server did not start")


def post(url: str, body: bytes) -> int:
    try:
        return requests.post(url, data=body, headers={"content-type": "application/json"}, timeout=300).status_code
    except requests.RequestException as exc:
        return -1 if "timed out" not in str(exc) else -2


def run_requests(base: str, pid: int, media_url: str, copies: int, only: str | None) -> list[tuple]:
    bodies = hm.requests_of_finding_10()
    bodies["embeddings: a 4K 66-s MP4 by URL"] = ("/v1/embeddings", {"input": [{"video": f"{media_url}/v4k.mp4"}]})
    bodies["embeddings: an 8K MP4 by URL"] = ("/v1/embeddings", {"input": [{"video": f"{media_url}/v8k.mp4"}]})
    rows = []
    for name, (route, body) in bodies.items():
        if only and only not in name:
            continue
        data = json.dumps(body).encode()
        for n in (1, copies):
            with Sampler(pid, base + "/health") as s, ThreadPoolExecutor(n) as pool:
                codes = Counter(pool.map(post, [base + route] * n, [data] * n))
            rows.append((name, len(data), n, dict(codes), s.over_idle, s.health))
            print(
                f"{name:45s} {len(data) / 1024:9.0f} KB x{n:<3d} {str(dict(codes)):28s} "
                f"peak +{s.over_idle / MIB:7.0f} MiB   /health max {s.health:5.2f} s",
                flush=True,
            )
    return rows


def index_peak(paths: list[Path], db: Path, env: dict[str, str]) -> tuple[int, int]:
    proc = subprocess.Popen(
        cli("index", *map(str, paths), "--db", str(db), "--embedding-model", str(TINY), "-q", "--json"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    peak = 0
    p = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, p.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.01)
    proc.communicate()
    return peak, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=32)
    parser.add_argument("--only", default=None, help="run the requests / files whose name contains this")
    parser.add_argument("--no-files", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    media = work / "media"
    media.mkdir()
    print("generating media ...", flush=True)
    hm.write_video(media / "v4k.mp4", 3840, 2160, 66, 2)
    hm.write_video(media / "v8k.mp4", 7680, 4320, 20, 1)
    hm.write_pdf(media / "one-14400pt-page.pdf", 1, 14400)
    hm.write_pdf(media / "32-pages-of-4700pt.pdf", 32, 4700)
    for f in sorted(media.iterdir()):
        print(f"  {f.name:28s} {f.stat().st_size / 1024:8.1f} KB")
    env = {**os.environ, "QWEN3VL_RAG_DB": str(work / "db"), "TOKENIZERS_PARALLELISM": "false"}

    db = work / "db"
    subprocess.run(
        cli("index", str(ROOT / "examples" / "corpus"), "--db", str(db), "--embedding-model", str(TINY), "-q"),
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    file_server, media_url = start_file_server(media)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        cli(
            "serve",
            "--embedding-model", str(TINY),
            "--reranker-model", str(TINY),
            "--db", str(db),
            "--port", str(port),
            "--allow-remote-media",
            "--fetch-allow", "127.0.0.1",
            "-q",
        ),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_ready(base, server)
        requests.post(base + "/v1/embeddings", json={"input": ["warm up"]}, timeout=60)
        print(
            f"\nserver idle RSS {Sampler(server.pid).rss() / MIB:.0f} MiB; "
            f"requests (alone, then {args.copies} at once):"
        )
        rows = run_requests(base, server.pid, media_url, args.copies, args.only)
    finally:
        server.terminate()
        server.wait(timeout=30)
        file_server.shutdown()

    if not args.no_files:
        note = work / "note.txt"
        note.write_text("one line of text\n")
        idle, _ = index_peak([note], work / "idle-db", env)
        print(f"\nindexing (peak RSS over indexing a one-line note: {idle / MIB:.0f} MiB):")
        for f in sorted(media.iterdir()):
            if args.only and args.only not in f.name:
                continue
            peak, code = index_peak([f], work / f"db-{f.stem}", env)
            rows.append((f"index {f.name}", f.stat().st_size, 1, {f"exit {code}": 1}, peak - idle, 0.0))
            print(f"  index {f.name:28s} exit {code}   peak +{(peak - idle) / MIB:7.0f} MiB", flush=True)

    worst = max(r[4] for r in rows)
    slowest = max(r[5] for r in rows)
    print(
        f"\nworst peak over idle: {worst / MIB:.0f} MiB (target < 2048); slowest /health: {slowest:.2f} s (target < 1)"
    )


if __name__ == "__main__":
    main()
