"""The HTTP API through a real uvicorn server on 127.0.0.1, on tiny checkpoints."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil

import httpx
import numpy as np
import pytest
from conftest import MEDIA, LiveServer

from retrieval_pipeline.ingest import Indexer
from retrieval_pipeline.pipeline import NO_MATCH, RAGPipeline
from retrieval_pipeline.retriever import QUERY_INSTRUCTION
from retrieval_pipeline.serving.app import ServerConfig, create_app
from retrieval_pipeline.store import EdgeStore

TOKEN = "test-token"


@pytest.fixture(scope="module")
def data_url():
    return "data:image/jpeg;base64," + base64.b64encode((MEDIA / "chelsea.jpg").read_bytes()).decode()


@pytest.fixture(scope="module")
def rag(embedder, reranker, generator, tmp_path_factory):
    store = EdgeStore(tmp_path_factory.mktemp("server-db"), "docs")
    Indexer(embedder, store).index_paths([MEDIA / "chelsea.jpg", MEDIA / "report_page.png"], show_progress_bar=False)
    pipeline = RAGPipeline(store, embedder=embedder, reranker=reranker, generator=generator)
    yield pipeline
    store.close()


@pytest.fixture(scope="module")
def base_url(rag):
    config = ServerConfig(
        api_key=TOKEN, max_items=20, max_request_bytes=2_000_000, served_model_names=("qwen3-vl",), max_in_flight=32
    )
    app = create_app(pipeline=rag, config=config)
    with LiveServer(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
        yield c


def test_health_models_and_openapi(client, embedder):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["embedding_model"] == "tiny-qwen3vl"  # a name, not a folder
    models = client.get("/v1/models").json()
    assert {m["type"] for m in models["data"]} == {"embedding", "rerank", "chat"}  # the pipeline has a generator
    assert {m["id"] for m in models["data"]} == {"tiny-qwen3vl"}
    spec = client.get("/openapi.json").json()
    assert {"/v1/embeddings", "/v1/rerank", "/v1/search", "/v1/ask", "/v1/chat/completions"} <= set(spec["paths"])


def test_auth(base_url):
    assert httpx.post(f"{base_url}/v1/embeddings", json={"input": "x"}).status_code == 401
    wrong = httpx.post(f"{base_url}/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "bearer token" in wrong.json()["error"]["message"]
    assert httpx.get(f"{base_url}/health").status_code == 200


def test_embeddings_openai_compatible(client, embedder, data_url):
    r = client.post("/v1/embeddings", json={"input": ["a cat", "a dog"], "model": "tiny-qwen3vl"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny-qwen3vl"
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] > 0
    expected = embedder.embed(["a cat", "a dog"])
    assert np.allclose([d["embedding"] for d in body["data"]], expected, atol=1e-5)

    single = client.post("/v1/embeddings", json={"input": "a cat", "input_type": "query"}).json()
    assert np.allclose(
        single["data"][0]["embedding"], embedder.embed(["a cat"], instruction=QUERY_INSTRUCTION)[0], atol=1e-5
    )

    mm = client.post(
        "/v1/embeddings",
        json={"input": [{"image": data_url, "text": "a cat"}], "dimensions": 16, "encoding_format": "base64"},
    ).json()
    vec = np.frombuffer(base64.b64decode(mm["data"][0]["embedding"]), dtype="<f4")
    ref = embedder.embed([{"image": str(MEDIA / "chelsea.jpg"), "text": "a cat"}], dim=16)[0]
    assert vec.shape == (16,) and np.allclose(vec, ref, atol=1e-5)


def test_the_official_openai_client_works(base_url, embedder):
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key=TOKEN)
    out = client.embeddings.create(model="qwen3-vl", input=["a cat", "a dog"])  # base64 on the wire by default
    assert np.allclose([d.embedding for d in out.data], embedder.embed(["a cat", "a dog"]), atol=1e-5)
    small = client.embeddings.create(model="qwen3-vl", input="a cat", dimensions=8, encoding_format="float")
    assert np.allclose(small.data[0].embedding, embedder.embed(["a cat"], dim=8)[0], atol=1e-5)
    assert out.usage.prompt_tokens > 0


def test_embeddings_bad_input_is_4xx_naming_the_item(client):
    r = client.post("/v1/embeddings", json={"input": ["ok", {"image": "https://127.0.0.1:9/x.png"}]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["index"] == 1 and err["param"] == "image" and "fetching media URLs is disabled" in err["message"]
    r = client.post("/v1/embeddings", json={"input": ["ok", {"image": "/etc/passwd"}]})
    assert r.status_code == 400 and "local file paths" in r.json()["error"]["message"]
    r = client.post("/v1/embeddings", json={"input": [{"image": "data:image/png;base64,AAAA"}]})
    assert r.status_code == 400 and r.json()["error"]["index"] == 0
    assert client.post("/v1/embeddings", json={"input": []}).status_code == 400
    assert client.post("/v1/embeddings", json={"input": ["x"] * 21}).status_code == 413
    r = client.post("/v1/embeddings", json={"input": "x", "dimensions": 100000})
    assert r.status_code == 400 and "Matryoshka" in r.json()["error"]["message"]
    for empty in ({}, {"image": None}, {"text": []}):  # JSON null is an absent field here: "empty input"
        r = client.post("/v1/embeddings", json={"input": ["ok", empty]})
        assert r.status_code == 400 and r.json()["error"]["index"] == 1, empty
        assert "empty input" in r.json()["error"]["message"] or r.json()["error"]["param"] == "text"
    r = client.post("/v1/rerank", json={"query": "q", "documents": ["ok", {}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "documents.1"
    r = client.post("/v1/rerank", json={"query": {"text": []}, "documents": ["ok"]})
    assert r.status_code in (400, 422) and "text" in r.json()["error"]["message"]
    r = client.post("/v1/embeddings", json={"input": [{"txt": "typo"}]})
    assert r.status_code == 422 and "txt" in r.json()["error"]["message"]
    r = client.post("/v1/embeddings", content=b"x" * 2_100_000, headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_rerank(client, reranker, data_url):
    docs = ["A cat sleeps on a red sofa.", {"image": data_url}, "Rockets launch in spring."]
    r = client.post("/v1/rerank", json={"query": "a cat", "documents": docs, "top_n": 2, "return_documents": True})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    expected = reranker.score("a cat", [docs[0], {"image": str(MEDIA / "chelsea.jpg")}, docs[2]])
    order = sorted(range(3), key=lambda i: -expected[i])[:2]
    assert [x["index"] for x in results] == order
    assert [x["relevance_score"] for x in results] == pytest.approx([expected[i] for i in order], abs=1e-6)
    assert results[0]["document"] == {"text": docs[order[0]]}  # Cohere / Jina: an object with text
    bad = client.post("/v1/rerank", json={"query": "q", "documents": ["ok", {"image": "data:image/png;base64,AAAA"}]})
    assert bad.status_code == 400 and bad.json()["error"]["index"] == 1
    assert client.post("/v1/rerank", json={"query": "q", "documents": []}).json()["results"] == []


def test_rerank_min_score(client):
    """``min_score`` leaves out results scoring less (before ``top_n``, each keeping its ``index``), on every
    rerank route, and on the 0..1 score also when ``raw_scores`` reports logits."""
    docs = ["Rockets launch in spring.", "A cat sleeps on a red sofa.", "Quarterly revenue.", "A kitten plays."]
    every = client.post("/v1/rerank", json={"query": "a cat", "documents": docs}).json()["results"]
    scores = [x["relevance_score"] for x in every]
    order = [x["index"] for x in every]
    assert len(every) == 4 and scores[1] > scores[2]
    cut = (scores[1] + scores[2]) / 2
    for route in ("/v1/rerank", "/v2/rerank", "/rerank"):
        r = client.post(route, json={"query": "a cat", "documents": docs, "min_score": cut, "return_documents": True})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["index"] for x in results] == order[:2] and all(x["relevance_score"] >= cut for x in results)
        assert [x["document"]["text"] for x in results] == [docs[i] for i in order[:2]]
    r = client.post("/v1/rerank", json={"query": "a cat", "documents": docs, "min_score": scores[1]})  # at it: kept
    assert [x["index"] for x in r.json()["results"]] == order[:2]
    r = client.post("/v1/rerank", json={"query": "a cat", "documents": docs, "min_score": cut, "top_n": 1})
    assert [x["index"] for x in r.json()["results"]] == order[:1]  # the cut first, then top_n
    r = client.post("/rerank", json={"query": "a cat", "documents": docs, "min_score": cut, "raw_scores": True})
    assert [x["index"] for x in r.json()["results"]] == order[:2]
    above = float(np.nextafter(scores[0], 2))
    r = client.post("/v1/rerank", json={"query": "a cat", "documents": docs, "min_score": above})
    assert r.status_code == 200 and r.json()["results"] == []
    for bad in (1.5, -2, "high", [0.5]):
        r = client.post("/v1/rerank", json={"query": "a cat", "documents": docs, "min_score": bad})
        assert r.status_code == 422 and "min_score" in r.json()["error"]["message"], (bad, r.text)
    nan = b'{"query": "a cat", "documents": ["a"], "min_score": NaN}'
    r = client.post("/v1/rerank", content=nan, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "min_score" in r.json()["error"]["message"], r.text


def test_search_and_ask(client):
    r = client.post("/v1/search", json={"query": "a cat", "top_k": 2})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [h["rank"] for h in results] == [1, 2] and all(h["rerank_score"] is not None for h in results)
    r = client.post("/v1/search", json={"query": "x", "filters": {"modality": "image"}, "rerank": False})
    assert {h["modality"] for h in r.json()["results"]} == {"image"}
    # search-time knobs per request; an exact scan is not offered over HTTP, and hybrid needs BM25 vectors
    knobs = {"hnsw_ef": 256, "oversampling": 2.0, "rescore": True, "prefetch": 50, "hybrid": False}
    r = client.post("/v1/search", json={"query": "a cat", "top_k": 2, "rerank": False, "search_options": knobs})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 2 and all(h["rerank_score"] is None for h in r.json()["results"])
    for bad in ({"exact": True}, {"hnsw_ef": 0}, {"oversampling": 500.0}, {"prefetch": "many"}):
        r = client.post("/v1/search", json={"query": "a cat", "search_options": bad})
        assert r.status_code == 422, (bad, r.text)
    r = client.post("/v1/ask", json={"question": "What is in the picture?", "top_k": 1})
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["answer"], str) and len(r.json()["sources"]) == 1
    assert client.post("/v1/ask", json={"question": ""}).status_code == 422
    # min_score: a cut on the rerank score; above every hit's, nothing is returned and nothing is generated
    scores = [
        h["rerank_score"] for h in client.post("/v1/search", json={"query": "a cat", "top_k": 2}).json()["results"]
    ]
    cut = (scores[0] + scores[1]) / 2
    r = client.post("/v1/search", json={"query": "a cat", "top_k": 2, "min_score": cut})
    assert [h["rerank_score"] for h in r.json()["results"]] == scores[:1]
    r = client.post("/v1/ask", json={"question": "a cat", "min_score": float(np.nextafter(scores[0], 2))})
    assert r.json()["sources"] == [] and r.json()["answer"] == NO_MATCH
    body = {
        "model": "qwen3-vl",
        "messages": [{"role": "user", "content": "a cat"}],
        "max_tokens": 4,
        "retrieval": {"top_k": 2, "min_score": cut},
    }
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert [s["rerank_score"] for s in r.json()["sources"]] == scores[:1]
    for bad in (1.5, -2, "0.5"):
        assert client.post("/v1/search", json={"query": "a cat", "min_score": bad}).status_code == 422, bad


@pytest.mark.parametrize("stream", [False, True])
def test_ask_applies_the_query_limits_and_the_no_match_rule(client, stream):
    """/v1/ask's question is checked like /v1/search's query (max_text_chars: 413 before anything runs), and a
    question that matches nothing is answered without generating, streamed or not."""
    r = client.post("/v1/ask", json={"question": "x" * 100_001, "stream": stream})
    assert r.status_code == 413 and r.json()["error"]["limit"] == "max_text_chars", r.text
    body = {"question": "What is this?", "filters": {"modality": "video"}, "stream": stream}
    r = client.post("/v1/ask", json=body)
    assert r.status_code == 200, r.text
    if not stream:
        assert r.json()["sources"] == [] and r.json()["answer"] == NO_MATCH
        return
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert events == [{"sources": []}, {"delta": NO_MATCH}, {"finish_reason": "stop"}]
    assert r.text.rstrip().endswith("data: [DONE]")


def test_concurrent_requests_are_batched_and_none_lost(base_url, rag):
    app_batcher_before = None

    async def main():
        async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
            texts = [f"request number {i}" for i in range(24)]
            responses = await asyncio.gather(*[c.post("/v1/embeddings", json={"input": t}) for t in texts])
            return texts, responses

    auth = {"Authorization": f"Bearer {TOKEN}"}
    health_before = httpx.get(f"{base_url}/health", headers=auth).json()["batches"]
    texts, responses = asyncio.run(main())
    assert all(r.status_code == 200 for r in responses)
    got = np.array([r.json()["data"][0]["embedding"] for r in responses])
    assert np.allclose(got, rag.embedder.embed(texts), atol=1e-5)  # every answer is its own request's
    health = httpx.get(f"{base_url}/health", headers=auth).json()["batches"]
    batches = health["embeddings"] - health_before["embeddings"]
    assert health["embedded_items"] - health_before["embedded_items"] == 24
    assert batches < 24  # concurrent requests shared model batches
    assert app_batcher_before is None


def test_no_pipeline_means_404(embedder):
    app = create_app(embedder=embedder)
    with LiveServer(app) as url:
        assert httpx.post(f"{url}/v1/search", json={"query": "x"}).status_code == 404
        assert httpx.post(f"{url}/v1/rerank", json={"query": "x", "documents": ["y"]}).status_code == 404
        assert httpx.post(f"{url}/v1/embeddings", json={"input": "x"}).status_code == 200


@pytest.mark.slow
@pytest.mark.fuzz
def test_openapi_schema_fuzzing(rag):
    """schemathesis against the app's own OpenAPI spec, bounded: no input may produce a server error."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    app = create_app(pipeline=rag, config=ServerConfig(max_items=8))
    with LiveServer(app) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        failures = []
        for operation in schema.get_all_operations():
            op = operation.ok()
            if op.method.upper() != "POST":
                continue
            examples = 10 if op.path == "/v1/ask" else 25  # /v1/ask generates text: fewer, still every field

            @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(case=op.as_strategy())
            def check(case):
                response = case.call(base_url=url, timeout=60)
                if response.status_code >= 500:
                    failures.append((case.path, case.body, response.status_code, response.text[:200]))

            check()
        assert failures == []


def test_a_corrupt_and_a_deleted_source_never_break_search_ask_or_chat(embedder, reranker, generator, tmp_path):
    """Files changed after indexing: one truncated (its header still reads), one deleted. Every search, ask and chat
    that retrieves them still answers, from the other items; no server path appears in a response."""
    import shutil

    folder = tmp_path / "corpus"
    folder.mkdir()
    for name in ("chelsea.jpg", "coffee.jpg", "report_page.png", "rocket.jpg"):
        shutil.copy(MEDIA / name if (MEDIA / name).exists() else MEDIA / "chelsea.jpg", folder / name)
    store = EdgeStore(tmp_path / "db", "docs")
    rag = RAGPipeline(store, embedder=embedder, reranker=reranker, generator=generator)
    rag.index([folder], show_progress_bar=False)
    data = (folder / "coffee.jpg").read_bytes()
    (folder / "coffee.jpg").write_bytes(data[: len(data) // 3])  # corrupt: the header reads, the pixels do not
    (folder / "rocket.jpg").unlink()  # deleted
    app = create_app(pipeline=rag, config=ServerConfig(api_key=TOKEN))
    with LiveServer(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        r = c.post("/v1/search", json={"query": "a picture", "top_k": 4}, timeout=120)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == 4 and sum(h["rerank_score"] is None for h in results) == 2
        r = c.post("/v1/ask", json={"question": "What is in the pictures?", "top_k": 4}, timeout=120)
        assert r.status_code == 200, r.text
        assert {s["source"] for s in r.json()["sources"]} <= {"chelsea.jpg", "report_page.png"}  # what it was given
        chat = {"messages": [{"role": "user", "content": "What is in the pictures?"}], "max_tokens": 2}
        chat["retrieval"] = {"top_k": 4}
        r = c.post("/v1/chat/completions", json=chat, timeout=120)
        assert r.status_code == 200, r.text
        assert {s["source"] for s in r.json()["sources"]} <= {"chelsea.jpg", "report_page.png"}  # the readable ones
        assert str(tmp_path) not in r.text
    store.close()


def test_max_tokens_per_doc_is_cut_off_the_event_loop_from_a_bounded_prefix(client, reranker, monkeypatch):
    """Cohere's max_tokens_per_doc tokenises documents: on the preparation threads (never the event loop, which
    /health needs), and only a prefix that surely holds the tokens kept."""
    import asyncio

    from retrieval_pipeline.serving.routes import rerank as rerank_route

    seen = []
    original = rerank_route._cut

    def spy(text, tokens, tokenizer):
        try:
            asyncio.get_running_loop()
            seen.append("event loop")
        except RuntimeError:
            seen.append("worker thread")
        return original(text, tokens, tokenizer)

    monkeypatch.setattr(rerank_route, "_cut", spy)
    long_doc = "the cat sleeps on the red sofa " * 5000  # 155,000 characters: past max_text_chars if not cut
    r = client.post("/v2/rerank", json={"query": "a cat", "documents": ["a dog", long_doc], "max_tokens_per_doc": 8})
    assert r.status_code == 200, r.text
    assert seen == ["worker thread", "worker thread"]
    tokenizer = reranker.processor.tokenizer
    short = tokenizer.decode(tokenizer(long_doc, add_special_tokens=False)["input_ids"][:8])
    assert rerank_route._cut(long_doc, 8, tokenizer) == short  # the prefix gives the same first tokens
    scores = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    assert abs(scores[1] - reranker.score("a cat", [short])[0]) < 1e-5


def test_a_store_error_is_503_without_the_server_path(client, rag, monkeypatch):
    from retrieval_pipeline.errors import StoreError

    def unavailable(*args, **kwargs):
        raise StoreError("cannot open the Qdrant Edge shard at /srv/data/db/docs: another process has it open")

    monkeypatch.setattr(rag, "search", unavailable)
    r = client.post("/v1/search", json={"query": "a cat"})
    assert r.status_code == 503 and "/srv" not in r.text
    assert r.json()["error"]["message"] == "the collection is unavailable (another process has the embedded store open)"


def test_source_filters_speak_the_clients_paths_and_never_probe_server_files(embedder, tmp_path):
    """A source filter names a file as results show it (relative to --source-root); an absolute server path is
    refused whatever is indexed, so the answer cannot tell whether a server file is in the collection."""
    folder = tmp_path / "corpus"
    (folder / "pets").mkdir(parents=True)
    shutil.copy(MEDIA / "chelsea.jpg", folder / "pets" / "cat.jpg")
    shutil.copy(MEDIA / "rocket.jpg", folder / "rocket.jpg")
    store = EdgeStore(tmp_path / "db", "docs")
    Indexer(embedder, store).index_paths([folder], show_progress_bar=False)
    rag = RAGPipeline(store, embedder=embedder, reranker_model=None, generator=None)
    config = ServerConfig(source_root=str(folder))
    with LiveServer(create_app(pipeline=rag, config=config)) as url, httpx.Client(base_url=url) as c:
        r = c.post("/v1/search", json={"query": "x", "rerank": False, "filters": {"source": "pets/cat.jpg"}})
        assert r.status_code == 200 and [h["source"] for h in r.json()["results"]] == ["pets/cat.jpg"]
        for probe in (str(folder / "rocket.jpg"), "/etc/passwd", "../corpus/rocket.jpg"):
            for where in (
                {"source": probe},
                {"$or": [{"modality": "text"}, {"$not": {"source": probe}}]},  # nested: mapped and checked too
                {"source": {"in": ["rocket.jpg", probe]}},
            ):
                r = c.post("/v1/search", json={"query": "x", "rerank": False, "filters": where})
                assert r.status_code == 400 and "relative to the source root" in r.json()["error"]["message"], where
        # comparisons and boolean filters, with sources as results name them
        either = {"$or": [{"source": "rocket.jpg"}, {"source": {"in": ["pets/cat.jpg"]}}]}
        r = c.post("/v1/search", json={"query": "x", "rerank": False, "filters": either})
        assert sorted(h["source"] for h in r.json()["results"]) == ["pets/cat.jpg", "rocket.jpg"]
        r = c.post("/v1/search", json={"query": "x", "rerank": False, "filters": {"$not": {"source": "rocket.jpg"}}})
        assert [h["source"] for h in r.json()["results"]] == ["pets/cat.jpg"]
        r = c.post("/v1/search", json={"query": "x", "filters": {"metadata.year": {"between": 1}}})
        assert r.status_code == 400 and "comparison takes" in r.json()["error"]["message"]
    store.close()
