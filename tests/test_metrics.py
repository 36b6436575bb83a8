"""Metrics, traces and access logs of the server: ``GET /metrics`` counts exactly what was sent, per route and
status (refusals included), the stages of the work and the batches; traces follow W3C ``traceparent``; ``--log-format
json`` writes one line per request. A real uvicorn server on 127.0.0.1, on the tiny checkpoints."""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest
from conftest import MEDIA, LiveServer

from retrieval_pipeline import observe
from retrieval_pipeline.errors import UsageError
from retrieval_pipeline.ingest import Indexer
from retrieval_pipeline.pipeline import RAGPipeline
from retrieval_pipeline.serving.app import ServerConfig, create_app
from retrieval_pipeline.serving.metrics import ACCESS_LOGGER
from retrieval_pipeline.store import EdgeStore

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

TOKEN = "metrics-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PREFIX = "qwen3vl_rag_"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


@pytest.fixture(scope="module")
def spans():
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def rag(embedder, reranker, generator, tmp_path_factory):
    store = EdgeStore(tmp_path_factory.mktemp("metrics-db"), "docs")
    Indexer(embedder, store).index_paths([MEDIA / "chelsea.jpg", MEDIA / "report_page.png"], show_progress_bar=False)
    pipeline = RAGPipeline(store, embedder=embedder, reranker=reranker, generator=generator)
    yield pipeline
    store.close()


@pytest.fixture(scope="module")
def base_url(rag, spans):
    """A server with a token, JSON access logs and traces to an in-memory exporter (no global provider set)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    config = ServerConfig(api_key=TOKEN, log_format="json", max_in_flight=8)
    with LiveServer(create_app(pipeline=rag, config=config, tracer_provider=provider)) as url:
        yield url


def scrape(url: str, headers: dict | None = None) -> dict[str, dict[tuple, float]]:
    """/metrics as {sample name: {sorted label items: value}}."""
    r = httpx.get(f"{url}/metrics", headers=headers if headers is not None else AUTH)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def requests_by_route(samples: dict) -> dict[tuple[str, str, str], float]:
    got = samples.get(PREFIX + "requests_total", {})
    return {
        (dict(k)["route"], dict(k)["method"], dict(k)["status"]): v
        for k, v in got.items()
        if dict(k)["route"] != "/metrics"
    }


def eventually(check, timeout: float = 5.0):
    """``check()`` once it holds: a request is counted (and logged) just after its last byte is sent."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_metrics_count_exactly_what_was_sent(base_url):
    before = requests_by_route(scrape(base_url))
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=60) as c:
        assert c.post("/v1/embeddings", json={"input": ["a cat", "a dog"]}).status_code == 200
        assert c.post("/v1/rerank", json={"query": "a cat", "documents": ["a kitten", "a rocket"]}).status_code == 200
        assert c.post("/v1/search", json={"query": "a cat", "top_k": 1}).status_code == 200
        chat = {"messages": [{"role": "user", "content": "a cat"}], "max_tokens": 3, "retrieval": {"top_k": 1}}
        assert c.post("/v1/chat/completions", json=chat).status_code == 200
        assert c.post("/v1/embeddings", json={"input": []}).status_code == 400  # bad input
        assert c.get("/no/such/path").status_code == 404
    assert httpx.post(f"{base_url}/v1/search", json={"query": "x"}).status_code == 401  # no key
    expected = {
        ("/v1/embeddings", "POST", "200"): 1,
        ("/v1/rerank", "POST", "200"): 1,
        ("/v1/search", "POST", "200"): 1,
        ("/v1/chat/completions", "POST", "200"): 1,
        ("/v1/embeddings", "POST", "400"): 1,
        ("unmatched", "GET", "404"): 1,
        ("/v1/search", "POST", "401"): 1,  # refused before routing, counted under the route it was meant for
    }

    def counted():
        samples = scrape(base_url)
        after = requests_by_route(samples)
        assert {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)} == expected
        return samples

    samples = eventually(counted)
    keys = samples[PREFIX + "key_requests_total"]
    assert keys[(("key", "anonymous"),)] >= 1 and all(TOKEN not in str(k) for k in keys)
    latency = samples[PREFIX + "request_seconds_count"]
    assert latency[(("route", "/v1/search"),)] == 2 and (("route", "/metrics"),) not in latency
    stages = {dict(k)["stage"]: v for k, v in samples[PREFIX + "stage_seconds_count"].items()}
    # embed: the batched /v1/embeddings run, the search's query and the chat's; rerank: /v1/rerank, search, chat
    assert stages["embed"] >= 3 and stages["vector_search"] >= 2 and stages["rerank"] >= 3, stages
    assert stages["prepare"] >= 3 and stages["generate"] >= 1, stages
    batches = {dict(k)["model"]: v for k, v in samples[PREFIX + "batch_size_count"].items()}
    assert batches == {"embed": 1, "rerank": 1}
    assert samples[PREFIX + "batch_size_sum"][(("model", "rerank"),)] == 2  # two documents
    waits = {dict(k)["queue"] for k in samples[PREFIX + "queue_wait_seconds_count"]}
    assert waits == {"embed", "rerank", "generate"}
    tokens = {dict(k)["model"]: v for k, v in samples[PREFIX + "tokens_total"].items()}
    assert tokens["embed"] > 0 and tokens["rerank"] > 0 and tokens["generate"] > 0
    assert samples[PREFIX + "in_flight_requests"][()] == 1  # the scrape itself
    assert samples[PREFIX + "queued_requests"][()] == 0 and samples[PREFIX + "generation_queue_depth"][()] == 0
    if PREFIX + "cache_misses_total" in samples:  # the result caches, when the app has them
        assert {dict(k)["cache"] for k in samples[PREFIX + "cache_misses_total"]} <= {"query", "rerank"}


def test_metrics_need_the_key_unless_public_and_each_app_counts_its_own(base_url, embedder, media_server):
    assert httpx.get(f"{base_url}/metrics").status_code == 401
    config = ServerConfig(api_key=TOKEN, public_metrics=True, fetch_allow=("127.0.0.1",))
    with LiveServer(create_app(embedder=embedder, config=config)) as url:
        fetched = {"input": [{"image": f"{media_server}/chelsea.jpg"}]}  # fetched, decoded, embedded
        assert httpx.post(f"{url}/v1/embeddings", json=fetched, headers=AUTH, timeout=60).status_code == 200
        image = {"image": str(MEDIA / "chelsea.jpg")}  # a path: refused (400) after the guard, before the model
        assert httpx.post(f"{url}/v1/embeddings", json={"input": [image]}, headers=AUTH).status_code == 400
        assert httpx.post(f"{url}/v1/embeddings", json={"input": "x"}).status_code == 401
        samples = eventually(lambda: _own(scrape(url, headers={})))
    stages = {dict(k)["stage"] for k in samples[PREFIX + "stage_seconds_count"]}
    assert {"prepare", "fetch", "decode", "embed"} <= stages and "vector_search" not in stages  # not the other app's
    pixels = samples[PREFIX + "pixels_total"][(("model", "embed"),)]
    assert pixels > 0 and pixels % 256 == 0  # 16x16 patches, as prepared


def _own(samples: dict) -> dict:
    assert requests_by_route(samples) == {
        ("/v1/embeddings", "POST", "200"): 1,
        ("/v1/embeddings", "POST", "400"): 1,
        ("/v1/embeddings", "POST", "401"): 1,
    }
    return samples


def test_json_log_line_per_request(base_url, caplog):
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        r = httpx.post(
            f"{base_url}/v1/search", json={"query": "a cat"}, headers={**AUTH, "x-request-id": "req-42"}, timeout=60
        )
        assert r.status_code == 200 and r.headers["x-request-id"] == "req-42"

        def logged():
            lines = [json.loads(x.getMessage()) for x in caplog.records if x.name == ACCESS_LOGGER]
            mine = [x for x in lines if x["request_id"] == "req-42"]
            assert len(mine) == 1
            return mine[0]

        line = eventually(logged)
    assert line["route"] == "/v1/search" and line["method"] == "POST" and line["status"] == 200
    assert line["key"] == "admin" and TOKEN not in json.dumps(line)
    assert line["duration_ms"] > 0 and len(line["trace_id"]) == 32 and "time" in line
    assert {"prepare", "embed", "vector_search", "rerank"} <= set(line["stages_ms"])
    made = httpx.get(f"{base_url}/health", headers={"x-request-id": "bad;id"}).headers["x-request-id"]
    assert made != "bad;id" and len(made) == 32  # an insane one is replaced


def test_a_search_is_a_trace_with_its_stages(base_url, spans):
    spans.clear()
    incoming = f"00-{TRACE_ID}-{PARENT_ID}-01"
    r = httpx.post(
        f"{base_url}/v1/search", json={"query": "a cat", "top_k": 1}, headers={**AUTH, "traceparent": incoming}
    )
    assert r.status_code == 200
    version, trace_id, span_id, flags = r.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01") and span_id != PARENT_ID

    def finished():
        server = [s for s in spans.get_finished_spans() if s.name == "POST /v1/search"]
        assert len(server) == 1
        return server[0]

    server = eventually(finished)
    assert f"{server.context.trace_id:032x}" == TRACE_ID and f"{server.context.span_id:016x}" == span_id
    assert f"{server.parent.span_id:016x}" == PARENT_ID  # the caller's span
    assert server.attributes["http.route"] == "/v1/search" and server.attributes["http.response.status_code"] == 200
    children = {s.name for s in spans.get_finished_spans() if s.parent and s.parent.span_id == server.context.span_id}
    assert {"prepare", "embed", "vector_search", "rerank"} <= children
    # without a traceparent: a trace of its own, named in the response
    fresh = httpx.post(f"{base_url}/v1/search", json={"query": "a dog", "top_k": 1}, headers=AUTH)
    assert fresh.headers["traceparent"].split("-")[1] != TRACE_ID


def test_observe_is_free_without_listeners_and_tells_the_scope_and_listeners():
    assert observe.current() is None and not observe.active()
    assert type(observe.stage("embed")).__name__ == "_NoStage"  # nothing listens: a shared no-op
    heard: list[tuple] = []

    def listener(*event):
        heard.append(event)

    observe.register(listener)
    try:
        with observe.stage("decode", size=3):
            pass
        observe.count("tokens", 5, model="embed")
    finally:
        observe.unregister(listener)
    assert [e[:2] for e in heard] == [("stage", "decode"), ("count", "tokens")] and heard[0][3] == {"size": 3}
    scope = observe.Scope(listener)
    token = observe.enter(scope)
    try:
        with pytest.raises(ValueError), observe.stage("embed"):
            raise ValueError("timed all the same")
        observe.wait("embed", 0.25)
    finally:
        observe.leave(token)
    assert [name for name, _ in scope.timings] == ["embed", "embed_queue"] and heard[-1][:3] == ("wait", "embed", 0.25)


def test_the_options_and_a_missing_exporter(embedder, monkeypatch):
    from retrieval_pipeline.cli import build_parser

    monkeypatch.delenv("QWEN3VL_RAG_SERVER_TOKEN", raising=False)
    args = build_parser().parse_args(["serve", "--public-metrics", "--log-format", "json", "--otlp-endpoint", "u"])
    config = ServerConfig.from_cli_args(args)
    assert config.public_metrics and config.log_format == "json" and config.otlp_endpoint == "u"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--log-format", "xml"])
    with pytest.raises(ValueError, match="log_format"):
        ServerConfig(log_format="xml")
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="pip install opentelemetry-exporter-otlp-proto-http"):
            create_app(embedder=embedder, config=ServerConfig(otlp_endpoint="http://127.0.0.1:4318/v1/traces"))
