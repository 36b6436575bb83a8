"""Serving safely: SSRF, slow sources, isolation of requests, limits, auth and disclosure.

Real uvicorn servers on 127.0.0.1 over the tiny checkpoint, and a real loopback HTTP server as the media source.
The positive fetches reach 127.0.0.1 the way an operator would allow it: ``fetch_allow``.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import MEDIA, TINY, LiveServer

from retrieval_pipeline import media
from retrieval_pipeline.ingest import Indexer
from retrieval_pipeline.media import InputError
from retrieval_pipeline.media.fetch import FetchPolicy, fetch, fetch_policy
from retrieval_pipeline.pipeline import RAGPipeline
from retrieval_pipeline.serving.app import ServerConfig, create_app
from retrieval_pipeline.serving.batcher import DynamicBatcher
from retrieval_pipeline.store import EdgeStore

TOKEN = "sec-token"
VIDEO = MEDIA / "moving_square.mp4"
CHELSEA = (MEDIA / "chelsea.jpg").read_bytes()


class Source(http.server.BaseHTTPRequestHandler):
    """The media source: images, a video, a playlist naming a server file, redirects, errors, a slow drip."""

    hits: Counter = Counter()

    def do_GET(self):  # noqa: N802 - http.server's naming
        Source.hits[self.path] += 1
        path = self.path.split("?")[0]
        if path.startswith("/img"):
            return self._send(200, CHELSEA, "image/jpeg")
        if path == "/video.mp4":
            return self._send(200, VIDEO.read_bytes(), "video/mp4")
        if path == "/list.m3u8":
            playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile://{VIDEO}\n#EXT-X-ENDLIST\n"
            return self._send(200, playlist.encode(), "application/vnd.apple.mpegurl")
        if path == "/to-loopback":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/img.jpg")
            self.end_headers()
            return None
        if path == "/forbidden":
            return self._send(403, b"no", "text/plain")
        if path == "/slow.jpg":
            self.send_response(200)
            self.send_header("Content-Length", str(len(CHELSEA)))
            self.end_headers()
            try:
                for i in range(120):  # one byte a second: every read succeeds, the whole never ends in time
                    self.wfile.write(CHELSEA[i : i + 1])
                    self.wfile.flush()
                    time.sleep(1)
            except OSError:
                pass
            return None
        return self._send(404, b"missing", "text/plain")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def source():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Source)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _client(url: str, token: str | None = TOKEN) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def open_server(embedder, reranker):
    """Remote media allowed (public addresses only): every private address is refused."""
    app = create_app(embedder=embedder, reranker=reranker, config=ServerConfig(allow_remote_media=True))
    with LiveServer(app) as url:
        yield url


@pytest.fixture(scope="module")
def allow_server(embedder, reranker):
    """Only 127.0.0.1 is fetched from (the operator's allowlist), with short deadlines and a small fan-out."""
    config = ServerConfig(
        api_key=TOKEN,
        fetch_allow=("127.0.0.1",),
        fetch_timeout=1.5,
        max_fetches=4,
        max_in_flight=32,
        max_wait_ms=20,
    )
    app = create_app(embedder=embedder, reranker=reranker, config=config)
    with LiveServer(app) as url:
        yield url


def test_urls_are_refused_unless_the_operator_allows_them(embedder, source):
    with LiveServer(create_app(embedder=embedder)) as url, _client(url, None) as c:
        r = c.post("/v1/embeddings", json={"input": [{"image": f"http://127.0.0.1:{source}/img.jpg"}]})
        assert r.status_code == 400 and "fetching media URLs is disabled" in r.json()["error"]["message"]
        data = "data:image/jpeg;base64," + base64.b64encode(CHELSEA).decode()
        assert c.post("/v1/embeddings", json={"input": [{"image": data}]}).status_code == 200  # data URIs work
    assert Source.hits["/img.jpg"] == 0


def test_ssrf_variants_are_refused_with_one_message(open_server, source):
    p = source
    variants = [
        f"http://127.0.0.1:{p}/img.jpg",
        f"http://localhost:{p}/img.jpg",
        f"http://[::1]:{p}/img.jpg",
        f"http://[::ffff:127.0.0.1]:{p}/img.jpg",
        f"http://[::ffff:7f00:1]:{p}/img.jpg",
        f"http://2130706433:{p}/img.jpg",
        f"http://0x7f000001:{p}/img.jpg",
        f"http://0x7f.1:{p}/img.jpg",
        f"http://0177.0.0.1:{p}/img.jpg",
        f"http://127.1:{p}/img.jpg",
        f"http://0.0.0.0:{p}/img.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://10.0.0.1/x.png",
        "http://192.168.1.1/x.png",
        f"http://user:pw@127.0.0.1:{p}/img.jpg",
    ]
    before = sum(Source.hits.values())
    with _client(open_server, None) as c:
        for url in variants:
            r = c.post("/v1/embeddings", json={"input": [{"image": url}]})
            assert r.status_code == 400, (url, r.text)
            assert r.json()["error"]["message"] == f"input 0, field 'image': could not fetch media URL {url}", url
        # frames and videos go through the same gate
        r = c.post("/v1/embeddings", json={"input": [{"video": [f"http://127.0.0.1:{p}/img.jpg"] * 2}]})
        assert r.status_code == 400 and "could not fetch media URL" in r.json()["error"]["message"]
        r = c.post("/v1/rerank", json={"query": "q", "documents": [{"video": f"http://127.1:{p}/video.mp4"}]})
        assert r.status_code == 400 and "could not fetch media URL" in r.json()["error"]["message"]
    assert sum(Source.hits.values()) == before  # nothing reached the loopback service


def test_redirect_to_a_blocked_address_is_refused(source):
    # the first hop is an allowed name; the redirect names 127.0.0.1, which is not allowed
    policy = FetchPolicy.server(allow_remote=True, allow_hosts={"localhost"})
    before = Source.hits["/img.jpg"]
    with pytest.raises(InputError) as info:
        fetch(f"http://localhost:{source}/to-loopback", policy)
    assert str(info.value) == f"could not fetch media URL http://localhost:{source}/to-loopback"
    assert Source.hits["/to-loopback"] >= 1 and Source.hits["/img.jpg"] == before
    assert fetch(f"http://localhost:{source}/img.jpg", policy) == CHELSEA
    allow_ip = FetchPolicy.server(allow_hosts={"127.0.0.1"})
    assert fetch(f"http://127.0.0.1:{source}/to-loopback", allow_ip) == CHELSEA  # allowed target: followed
    with pytest.raises(InputError):
        fetch(f"http://127.0.0.1:{source}/to-loopback", FetchPolicy.server(allow_hosts={"127.0.0.1"}, max_redirects=0))


def test_allowlisted_host_is_fetched_and_failures_read_the_same(allow_server, source, embedder):
    with _client(allow_server) as c:
        r = c.post("/v1/embeddings", json={"input": [{"image": f"http://127.0.0.1:{source}/img-a.jpg"}]})
        assert r.status_code == 200, r.text
        expected = embedder.embed([{"image": str(MEDIA / "chelsea.jpg")}])[0]
        assert np.allclose(r.json()["data"][0]["embedding"], expected, atol=1e-5)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        messages = set()
        for url in (
            f"http://127.0.0.1:{closed}/x.jpg",  # closed port
            f"http://127.0.0.1:{source}/forbidden",  # 403
            f"http://127.0.0.1:{source}/nothing",  # 404
            f"http://localhost.invalid:{source}/img.jpg",  # not on the allowlist
            f"ftp://127.0.0.1:{source}/img.jpg",  # not http(s): never fetched
        ):
            r = c.post("/v1/embeddings", json={"input": [{"image": url}]})
            assert r.status_code == 400, (url, r.text)
            messages.add(r.json()["error"]["message"].replace(url, "URL"))
        assert len(messages) <= 2  # ftp:// is refused before fetching (local-path rule); the rest read the same
        assert "input 0, field 'image': could not fetch media URL URL" in messages


@pytest.mark.slow
def test_slow_source_hits_the_total_deadline_while_others_stay_fast(allow_server, source):
    slow = {"input": [{"image": f"http://127.0.0.1:{source}/slow.jpg"}]}

    async def main():
        async with httpx.AsyncClient(base_url=allow_server, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            started = time.perf_counter()
            slow_calls = [asyncio.create_task(c.post("/v1/embeddings", json=slow, timeout=30)) for _ in range(6)]
            await asyncio.sleep(0.3)
            t = time.perf_counter()
            health = await c.get("/health", timeout=5)
            health_s = time.perf_counter() - t
            t = time.perf_counter()
            fast = await c.post("/v1/embeddings", json={"input": "a quick one"}, timeout=10)
            fast_s = time.perf_counter() - t
            results = await asyncio.gather(*slow_calls)
            return health, health_s, fast, fast_s, results, time.perf_counter() - started

    health, health_s, fast, fast_s, results, total = asyncio.run(main())
    assert health.status_code == 200 and health_s < 1.0
    assert fast.status_code == 200 and fast_s < 2.0
    for r in results:
        assert r.status_code == 400 and "could not fetch media URL" in r.json()["error"]["message"]
    assert total < 8  # 1.5 s deadline each (a byte a second would take minutes)


def test_fan_out_is_capped(allow_server, source):
    before = Source.hits["/img-fan.jpg"]
    frames = [f"http://127.0.0.1:{source}/img-fan.jpg?{i}" for i in range(50)]
    with _client(allow_server) as c:
        r = c.post("/v1/embeddings", json={"input": [{"video": frames, "max_frames": 50}]})
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert err["limit"] == "max_fetches" and "max_fetches" in err["message"]
    fetched = sum(n for path, n in Source.hits.items() if path.startswith("/img-fan.jpg"))
    assert fetched - before <= 4


def test_hls_playlist_naming_a_server_file_is_refused(allow_server, source, embedder):
    url = f"http://127.0.0.1:{source}/list.m3u8"
    with _client(allow_server) as c:
        r = c.post("/v1/embeddings", json={"input": [{"video": url}]})
        assert r.status_code == 400, r.text
        assert "not a self-contained video" in r.json()["error"]["message"]
        ok = c.post("/v1/embeddings", json={"input": [{"video": f"http://127.0.0.1:{source}/video.mp4", "fps": 2.0}]})
        assert ok.status_code == 200, ok.text
    expected = embedder.embed([{"video": str(VIDEO), "fps": 2.0}])[0]
    assert np.allclose(ok.json()["data"][0]["embedding"], expected, atol=1e-5)
    # library users are protected the same way
    with pytest.raises(InputError, match="not a self-contained video"):
        embedder.embed([{"video": url}])
    cache = media.video_cache_dir()
    assert cache is not None and not any(p.suffix in (".m3u8", ".part") for p in Path(cache).iterdir())


def test_video_cache_is_bounded(source, monkeypatch):
    size = VIDEO.stat().st_size
    monkeypatch.setattr(media.downloads, "VIDEO_CACHE_BYTES", int(size * 1.5))
    monkeypatch.setattr(media.downloads, "VIDEO_CACHE_PIN", 0.0)
    first = media.download_video(f"http://127.0.0.1:{source}/video.mp4?a", 5)
    second = media.download_video(f"http://127.0.0.1:{source}/video.mp4?b", 5)
    assert os.path.exists(second) and not os.path.exists(first)  # least recently used evicted
    total = sum(p.stat().st_size for p in Path(media.video_cache_dir()).iterdir())
    assert total <= media.downloads.VIDEO_CACHE_BYTES
    monkeypatch.setattr(media.downloads, "VIDEO_CACHE_PIN", 600.0)  # a video in use is never evicted: refuse instead
    with pytest.raises(media.LimitError) as info:
        media.download_video(f"http://127.0.0.1:{source}/video.mp4?c", 5)
    assert info.value.limit == "video_cache_bytes"


def test_one_bad_request_fails_alone_and_nothing_is_fetched_twice(allow_server, source, embedder):
    texts = [f"good request {i}" for i in range(16)]
    with_urls = {"input": [{"image": f"http://127.0.0.1:{source}/img-iso{i}.jpg"} for i in range(2)]}
    bad = {"input": ["fine", {"image": "data:image/png;base64,AAAA"}]}
    before = Counter(Source.hits)

    async def main():
        async with httpx.AsyncClient(
            base_url=allow_server, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
        ) as c:
            calls = [c.post("/v1/embeddings", json={"input": t}) for t in texts]
            calls += [c.post("/v1/embeddings", json=bad), c.post("/v1/embeddings", json=with_urls)]
            return await asyncio.gather(*calls)

    responses = asyncio.run(main())
    good, poisoned, urls = responses[:16], responses[16], responses[17]
    assert [r.status_code for r in good] == [200] * 16
    got = np.array([r.json()["data"][0]["embedding"] for r in good])
    assert np.allclose(got, embedder.embed(texts), atol=1e-5)
    assert poisoned.status_code == 400 and poisoned.json()["error"]["index"] == 1
    assert urls.status_code == 200
    for i in range(2):
        assert Source.hits[f"/img-iso{i}.jpg"] - before[f"/img-iso{i}.jpg"] == 1


def test_a_model_failure_of_a_merged_batch_is_not_blamed_on_the_others():
    calls = []

    def run(items):
        calls.append(list(items))
        if "poison" in items:
            raise RuntimeError("the model choked")
        return [f"vec:{x}" for x in items]

    async def main():
        batcher = DynamicBatcher(run, max_items=64, max_wait_ms=50)
        results = await asyncio.gather(
            batcher.submit(["a", "b"]), batcher.submit(["poison"]), batcher.submit(["c"]), return_exceptions=True
        )
        await batcher.close()
        return results

    first, second, third = asyncio.run(main())
    assert first == ["vec:a", "vec:b"] and third == ["vec:c"]
    assert isinstance(second, RuntimeError)
    assert calls[0] == ["a", "b", "poison", "c"] and len(calls) == 4  # merged once, then each alone once


@pytest.mark.slow
def test_requests_past_the_slots_wait_in_a_bounded_queue_then_429(embedder, source):
    """Two slots held by slow requests: the next waits and is answered; past the queue's length or its wait, 429
    with Retry-After naming the limit; /health answers throughout."""
    config = ServerConfig(fetch_allow=("127.0.0.1",), fetch_timeout=2.0, max_in_flight=2, max_queued=1)
    slow = {"input": [{"image": f"http://127.0.0.1:{source}/slow.jpg"}]}  # held until its 2-s fetch deadline

    async def main(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            held = [asyncio.create_task(c.post("/v1/embeddings", json=slow)) for _ in range(2)]
            await asyncio.sleep(0.5)
            queued = asyncio.create_task(c.post("/v1/embeddings", json={"input": "x"}))
            await asyncio.sleep(0.3)
            extra = await c.post("/v1/embeddings", json={"input": "x"})
            health = await c.get("/health")
            done = await asyncio.gather(*held, queued)
            return extra, health, done

    with LiveServer(create_app(embedder=embedder, config=config)) as url:
        extra, health, done = asyncio.run(main(url))
    assert [r.status_code for r in done] == [400, 400, 200]  # the queued one waited for a slot, then was answered
    assert extra.status_code == 429 and extra.headers["Retry-After"] == "1"
    assert extra.json()["error"]["limit"] == "max_queued"
    assert health.status_code == 200

    config = ServerConfig(fetch_allow=("127.0.0.1",), fetch_timeout=2.0, max_in_flight=1, queue_timeout=0.5)

    async def timeout(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            held = asyncio.create_task(c.post("/v1/embeddings", json=slow))
            await asyncio.sleep(0.5)
            waited = await c.post("/v1/embeddings", json={"input": "x"})
            await held
            return waited

    with LiveServer(create_app(embedder=embedder, config=config)) as url:
        waited = asyncio.run(timeout(url))
    assert waited.status_code == 429 and waited.json()["error"]["limit"] == "queue_timeout"


def test_a_burst_of_64_small_requests_against_a_default_server_gets_64_answers(embedder):
    async def main(url):
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            return await asyncio.gather(*[c.post("/v1/embeddings", json={"input": f"text {i}"}) for i in range(64)])

    with LiveServer(create_app(embedder=embedder, config=ServerConfig())) as url:
        answers = asyncio.run(main(url))
    assert [r.status_code for r in answers] == [200] * 64
    vectors = [r.json()["data"][0]["embedding"] for r in answers]
    assert np.allclose(vectors[5], embedder.embed(["text 5"])[0], atol=1e-5)


def test_strict_types_and_the_model_field(allow_server):
    with _client(allow_server) as c:
        r = c.post("/v1/embeddings", json={"input": "x", "dimensions": True})
        assert r.status_code == 422 and "dimensions" in r.json()["error"]["message"]
        r = c.post(
            "/v1/embeddings",
            content=b'{"input": [{"text": "a", "fps": NaN}]}',
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 422 and "fps" in r.json()["error"]["message"]
        r = c.post("/v1/rerank", json={"query": "q", "documents": ["d"], "top_n": True})
        assert r.status_code == 422 and "top_n" in r.json()["error"]["message"]
        r = c.post("/v1/embeddings", json={"input": "x", "model": "text-embedding-3-small"})
        assert r.status_code == 404
        err = r.json()["error"]
        assert err["code"] == "model_not_found" and "tiny-qwen3vl" in err["message"]
        assert c.post("/v1/embeddings", json={"input": "x", "model": "tiny-qwen3vl"}).status_code == 200
        # the model's folder on the server is not a name it answers to: no oracle for the server's file names
        r = c.post("/v1/embeddings", json={"input": "x", "model": str(TINY)})
        assert r.status_code == 404 and str(TINY) not in r.json()["error"]["message"].replace(repr(str(TINY)), "")
    with pytest.raises(ValueError, match="non-empty name"):
        ServerConfig(served_model_names=("qwen3-vl", " "))
        assert c.post("/v1/rerank", json={"query": "q", "documents": ["d"], "model": "nope"}).status_code == 404
        r = c.post("/v1/embeddings", json={"input": ["ok", "x" * 100_001]})  # the server's input limits apply
        assert r.status_code == 413 and r.json()["error"]["limit"] == "max_text_chars", r.text
        assert r.json()["error"]["index"] == 1


def test_health_and_search_disclose_no_server_paths(embedder, reranker, tmp_path):
    store = EdgeStore(tmp_path / "db", "docs")
    Indexer(embedder, store).index_paths([MEDIA / "chelsea.jpg"], show_progress_bar=False)
    rag = RAGPipeline(store, embedder=embedder, reranker=reranker, generator=None)
    try:
        for config, expected in (
            (ServerConfig(api_key=TOKEN), "chelsea.jpg"),
            (ServerConfig(api_key=TOKEN, source_root=str(MEDIA.parent)), "media/chelsea.jpg"),
            (ServerConfig(api_key=TOKEN, expose_paths=True), str((MEDIA / "chelsea.jpg").resolve())),
        ):
            with LiveServer(create_app(pipeline=rag, config=config)) as url:
                anonymous = httpx.get(f"{url}/health").json()
                assert anonymous == {"status": "ok"}
                with _client(url) as c:
                    details = c.get("/health").json()
                    assert details["embedding_model"] == "tiny-qwen3vl" and "/" not in json.dumps(details)
                    hits = c.post("/v1/search", json={"query": "a cat", "top_k": 1, "rerank": False}).json()
                    assert hits["results"][0]["source"] == expected
    finally:
        store.close()


def test_empty_token_is_refused(tmp_path, monkeypatch, capsys):
    from retrieval_pipeline.cli import main

    with pytest.raises(ValueError, match="empty bearer token"):
        ServerConfig(api_key="  ")
    for args, env_token in ((["serve", "--token", ""], None), (["serve"], ""), (["serve", "--host", "0.0.0.0"], None)):
        if env_token is None:
            monkeypatch.delenv("QWEN3VL_RAG_SERVER_TOKEN", raising=False)
        else:
            monkeypatch.setenv("QWEN3VL_RAG_SERVER_TOKEN", env_token)
        with pytest.raises(SystemExit) as info:
            main([*args, "--db", str(tmp_path)])
        assert info.value.code == 2, args
        assert "--token" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.subprocess
def test_serve_closes_the_store_and_removes_the_video_cache_on_sigterm(tmp_path, source, embedder):
    """SIGTERM: uvicorn's graceful shutdown, then every exit step of the process: the embedded store flushed and
    closed (its state file says so), the video cache removed, exit status 143."""
    from retrieval_pipeline.ingest import Indexer
    from retrieval_pipeline.store import EdgeStore

    indexed = EdgeStore(tmp_path / "db", "default")
    Indexer(embedder, indexed).index_items(["a cat on a red sofa", "a rocket at dawn"])
    indexed.close()
    state = tmp_path / "db" / "default" / "state.json"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "retrieval_pipeline.cli", "serve", "--db", str(tmp_path / "db"), "--port", str(port)]
    cmd += ["--embedding-model", str(TINY), "--reranker-model", str(TINY), "--fetch-allow", "127.0.0.1", "-q"]
    cmd += ["--models", "embed,rerank"]  # no generator: it would be loaded (from the hub) at start
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                if time.time() > deadline or proc.poll() is not None:
                    raise AssertionError(f"serve did not start: {proc.stderr.read() if proc.poll() else ''}") from None
                time.sleep(0.3)
        video = {"input": [{"video": f"http://127.0.0.1:{source}/video.mp4?sigterm", "fps": 2.0}]}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json=video, timeout=60)
        assert r.status_code == 200, r.text
        caches = list(tmp_path.glob("qwen3vl-rag-videos-*"))
        assert len(caches) == 1 and any(caches[0].iterdir())
        r = httpx.post(f"http://127.0.0.1:{port}/v1/search", json={"query": "a cat", "rerank": False}, timeout=60)
        assert r.status_code == 200 and r.json()["results"], r.text  # the store is open now
        assert json.loads(state.read_text()) == {"clean": False}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 143
        assert not caches[0].exists()
        assert json.loads(state.read_text()) == {"clean": True, "points": 2}  # flushed and closed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_library_default_policy_and_scopes(source):
    url = f"http://127.0.0.1:{source}/img.jpg"
    assert fetch(url) == CHELSEA  # library users: their own machine, private addresses allowed
    with pytest.raises(InputError, match="could not fetch media URL"):
        fetch("http://169.254.169.254/latest/meta-data/", FetchPolicy(deadline=1))  # metadata: never
    with fetch_policy(FetchPolicy.server()):
        with pytest.raises(InputError, match="disabled"):
            fetch(url)
    assert fetch(url) == CHELSEA  # the scope ended


def test_huge_json_lists_are_refused_off_the_event_loop(allow_server):
    """Four requests of a 2-million-entry list (10 MB each) were parsed and validated on the event loop:
    /health took 9 s. They are refused from a worker thread; /health answers meanwhile."""
    body = json.dumps({"input": ["a"] * 2_000_000}).encode()

    async def main():
        async with httpx.AsyncClient(base_url=allow_server, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            headers = {"content-type": "application/json"}
            calls = [
                asyncio.create_task(c.post("/v1/embeddings", content=body, headers=headers, timeout=60))
                for _ in range(4)
            ]
            await asyncio.sleep(0.2)
            slowest = 0.0
            while not all(t.done() for t in calls):
                t = time.perf_counter()
                assert (await c.get("/health", timeout=5)).status_code == 200
                slowest = max(slowest, time.perf_counter() - t)
                await asyncio.sleep(0.05)
            return [t.result() for t in calls], slowest

    results, slowest = asyncio.run(main())
    for r in results:
        assert r.status_code == 413 and r.json()["error"]["limit"] == "max_items"
        assert "2000000 entries" in r.json()["error"]["message"]
    assert slowest < 1.0


@pytest.mark.slow
def test_silent_addresses_share_one_deadline(monkeypatch):
    """A name with five addresses that never answer took five deadlines (each connect got the whole time)."""
    import retrieval_pipeline.media.fetch as netfetch

    listeners, fillers = [], []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for k in range(1, 6):
        srv = socket.socket()
        srv.bind((f"127.0.0.{k}", port))
        srv.listen(0)  # one pending connection fills it: further connects hang, like a silent host
        filler = socket.create_connection((f"127.0.0.{k}", port), timeout=1)
        listeners.append(srv)
        fillers.append(filler)
    real = socket.getaddrinfo

    def five_addresses(host, *args, **kwargs):
        if host == "many.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (f"127.0.0.{k}", port)) for k in range(1, 6)]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(netfetch.socket, "getaddrinfo", five_addresses)
    try:
        for policy in (
            FetchPolicy(deadline=1.0, allow_hosts={"many.example"}),
            FetchPolicy.server(allow_hosts=("many.example",), deadline=1.0),
        ):
            started = time.perf_counter()
            with pytest.raises(InputError, match="could not fetch media URL"):
                fetch(f"http://many.example:{port}/x.jpg", policy)
            assert time.perf_counter() - started < 1.8
    finally:
        for s in fillers + listeners:
            s.close()


def test_deprecated_site_local_ipv6_is_blocked():
    import ipaddress

    from retrieval_pipeline.media.fetch import is_blocked_address

    assert is_blocked_address(ipaddress.ip_address("fec0::1"))
    assert not is_blocked_address(ipaddress.ip_address("2606:4700::1111"))


def test_a_video_cached_by_the_library_is_not_served_to_a_stricter_policy(source):
    url = f"http://127.0.0.1:{source}/video.mp4?cached-by-library"
    assert os.path.exists(media.download_video(url, 5.0))  # the library's permissive default fetched it
    before = Source.hits["/video.mp4?cached-by-library"]
    with fetch_policy(FetchPolicy.server()), pytest.raises(InputError, match="URLs is disabled"):
        media.download_video(url, 5.0)
    assert Source.hits["/video.mp4?cached-by-library"] == before  # refused before any connection


def test_deeply_nested_json_is_a_400_not_a_500(allow_server):
    with _client(allow_server) as c:
        for n in (20_000, 100_000):  # under and over the size where bodies are pre-checked off the event loop
            body = ("[" * n + "]" * n).encode()
            r = c.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
            assert r.status_code in (400, 422), (n, r.status_code)
            assert "error" in r.json()


def test_batcher_serves_an_app_driven_by_several_event_loops():
    """A test client that runs each request on a new loop hung on the third request (queue bound to a dead loop)."""
    batcher = DynamicBatcher(lambda items: [i * 2 for i in items], max_items=4, max_wait_ms=1)
    for k in range(3):
        assert asyncio.run(asyncio.wait_for(batcher.submit([k, k + 1]), 5)) == [2 * k, 2 * k + 2]


def test_a_trickled_request_body_is_cut_off_and_others_stay_fast(embedder):
    """A client sending its body a byte a second held an in-flight slot for as long as it liked."""
    config = ServerConfig(body_timeout=1.0, max_in_flight=4)
    with LiveServer(create_app(embedder=embedder, config=config)) as url:
        port = int(url.rsplit(":", 1)[1])
        body = json.dumps({"input": ["x" * 200]}).encode()
        slow = []
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", port))
            head = (
                f"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            sock.sendall(head.encode() + body[:5])
            slow.append(sock)
        time.sleep(0.2)
        with _client(url, token=None) as c:
            t = time.perf_counter()
            assert c.post("/v1/embeddings", json={"input": "a quick one"}).status_code == 200
            assert time.perf_counter() - t < 2.0
        answers = []
        for sock in slow:
            sock.settimeout(5)
            answer = b""
            while b"}}" not in answer:  # headers, then the JSON error body
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
            answers.append(answer.decode(errors="replace"))
            sock.close()
        assert all(a.startswith("HTTP/1.1 408") and "body_timeout" in a for a in answers), answers


@pytest.mark.slow
@pytest.mark.subprocess
def test_serve_on_a_store_another_process_holds_says_so_at_start(tmp_path, embedder):
    """A running `index` holds the embedded store: `serve` on it exits at start (4) saying so, instead of starting,
    answering /health ok and every request 503 with the store's path."""
    from retrieval_pipeline.ingest import Indexer
    from retrieval_pipeline.store import EdgeStore

    held = EdgeStore(tmp_path / "db", "default")
    Indexer(embedder, held).index_items(["a cat on a red sofa"])  # open, as an index run holds it
    cmd = [sys.executable, "-m", "retrieval_pipeline.cli", "serve", "--db", str(tmp_path / "db"), "--port", "0"]
    cmd += ["--embedding-model", str(TINY), "--reranker-model", str(TINY), "--models", "embed,rerank"]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        held.close()
    assert run.returncode == 4, run.stderr
    assert "another process has it open" in run.stderr and "Traceback" not in run.stderr
