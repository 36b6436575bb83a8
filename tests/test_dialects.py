"""Rerank and embedding dialects through the client packages that speak them, against a real server on 127.0.0.1;
every number a client gets equals the library's own (``score`` / ``embed``) to 1e-5."""

from __future__ import annotations

import base64
import math

import httpx
import numpy as np
import pytest
from conftest import MEDIA, LiveServer

from retrieval_pipeline.serving import create_app

TOL = 1e-5
QUERY = "a cat on a sofa"
DOCS = ["a dog in the park", "the cat sleeps on the red sofa", "quarterly revenue table"]


@pytest.fixture(scope="module")
def server(embedder, reranker):
    with LiveServer(create_app(embedder=embedder, reranker=reranker)) as url:
        yield url


def test_cohere_v1_sdk_rerank_with_documents_and_rank_fields(server, reranker):
    import cohere

    client = cohere.Client(api_key="unused", base_url=server)
    expected = reranker.score(QUERY, DOCS)
    resp = client.rerank(model="tiny-qwen3vl", query=QUERY, documents=DOCS, top_n=2, return_documents=True)
    assert [r.index for r in resp.results] == list(np.argsort(expected)[::-1][:2])
    for r in resp.results:
        assert abs(r.relevance_score - expected[r.index]) < TOL
        assert r.document.text == DOCS[r.index]
    docs = [{"title": "Pets", "body": d, "year": 2024} for d in DOCS]
    resp = client.rerank(model="tiny-qwen3vl", query=QUERY, documents=docs, rank_fields=["body", "title"])
    structured = reranker.score(QUERY, [f"body: {d}\ntitle: Pets" for d in DOCS])
    assert {r.index: r.relevance_score for r in resp.results} == pytest.approx(dict(enumerate(structured)), abs=TOL)


def test_cohere_v2_sdk_rerank(server, reranker):
    import cohere

    client = cohere.ClientV2(api_key="unused", base_url=server)
    resp = client.rerank(model="tiny-qwen3vl", query=QUERY, documents=DOCS, top_n=3)
    expected = reranker.score(QUERY, DOCS)
    assert sorted(r.index for r in resp.results) == [0, 1, 2]
    for r in resp.results:
        assert abs(r.relevance_score - expected[r.index]) < TOL
    cut = client.rerank(model="tiny-qwen3vl", query=QUERY, documents=[DOCS[1] * 20], max_tokens_per_doc=4)
    tokenizer = reranker.processor.tokenizer
    short = tokenizer.decode(tokenizer(DOCS[1] * 20, add_special_tokens=False)["input_ids"][:4])
    assert abs(cut.results[0].relevance_score - reranker.score(QUERY, [short])[0]) < TOL


def test_rerank_plain_route_vllm_and_infinity_shapes_and_raw_scores(server, reranker):
    expected = reranker.score(QUERY, DOCS)
    vllm = httpx.post(f"{server}/rerank", json={"model": "tiny-qwen3vl", "query": QUERY, "documents": DOCS}).json()
    assert all(r["document"] == {"text": DOCS[r["index"]]} for r in vllm["results"])
    assert vllm["usage"]["total_tokens"] > 0
    infinity = httpx.post(
        f"{server}/rerank",
        json={"query": QUERY, "documents": DOCS, "raw_scores": True, "return_documents": True},
    ).json()
    assert infinity["object"] == "rerank" and infinity["usage"]["prompt_tokens"] == infinity["usage"]["total_tokens"]
    for r in infinity["results"]:
        assert r["document"] == DOCS[r["index"]]  # Infinity reads a string
        sigmoid = 1 / (1 + math.exp(-r["relevance_score"]))  # raw: the yes - no logit
        assert abs(sigmoid - expected[r["index"]]) < TOL


def test_multimodal_documents_in_every_form(server, reranker):
    image = str(MEDIA / "chelsea.jpg")
    data = "data:image/jpeg;base64," + base64.b64encode((MEDIA / "chelsea.jpg").read_bytes()).decode()
    expected = reranker.score(QUERY, [{"image": data}, {"text": "a photo", "image": data}])
    project = [{"image": data}, {"text": "a photo", "image": data}]
    parts = [
        {"content": [{"type": "image_url", "image_url": {"url": data}}]},
        {"content": [{"type": "text", "text": "a photo"}, {"type": "image_url", "image_url": {"url": data}}]},
    ]
    for route in ("/v1/rerank", "/v2/rerank", "/rerank"):
        for documents in (project, parts):
            r = httpx.post(f"{server}{route}", json={"query": QUERY, "documents": documents}, timeout=60)
            assert r.status_code == 200, r.text
            got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
            assert got == pytest.approx(dict(enumerate(expected)), abs=TOL), (route, documents is parts)
    assert image  # a local path would be refused by the server's default (no local files)
    bad = httpx.post(f"{server}/v2/rerank", json={"query": QUERY, "documents": [{"content": [{"type": "audio"}]}]})
    assert bad.status_code == 400 and "documents.0.content.0" in bad.text
