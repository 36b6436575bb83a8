"""Rerank and embedding dialects through the client packages that speak them, against a real server on 127.0.0.1;
every number a client gets equals the library's own (``score`` / ``embed``) to 1e-5."""

from __future__ import annotations

import base64
import math

import httpx
import numpy as np
import pytest
from conftest import MEDIA, ServeProcess

TOL = 1e-5
QUERY = "a cat on a sofa"
DOCS = ["a dog in the park", "the cat sleeps on the red sofa", "quarterly revenue table"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real ``qwen3vl-rag serve`` process (embedding and rerank models)."""
    with ServeProcess("--models", "embed,rerank", db=tmp_path_factory.mktemp("dialects") / "db") as url:
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
    # a v1 document object whose ranked field is only `text` is ranked as that text (not "text: ...")
    resp = client.rerank(model="tiny-qwen3vl", query=QUERY, documents=[{"text": d} for d in DOCS], rank_fields=["text"])
    for r in resp.results:
        assert abs(r.relevance_score - expected[r.index]) < TOL
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
    body = {"model": "tiny-qwen3vl", "query": QUERY, "documents": DOCS}
    assert all(
        "document" not in r or r["document"] is None
        for r in httpx.post(f"{server}/rerank", json=body).json()["results"]
    )
    vllm = httpx.post(f"{server}/rerank", json={**body, "return_documents": True}).json()
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


def test_openai_embeddings_every_encoding_and_dimensions(server, embedder):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    texts = ["a cat", "a rocket"]
    expected = embedder.embed(texts)
    floats = client.embeddings.create(model="tiny-qwen3vl", input=texts, encoding_format="float")
    assert np.abs(np.array([d.embedding for d in floats.data]) - expected).max() < TOL
    packed = client.embeddings.create(model="tiny-qwen3vl", input=texts, encoding_format="base64")
    decoded = np.array([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in packed.data])
    assert np.abs(decoded - expected).max() < TOL
    plain = client.embeddings.create(model="tiny-qwen3vl", input=texts)  # the SDK asks for base64 and decodes it
    assert np.abs(np.array([d.embedding for d in plain.data]) - expected).max() < TOL
    short = client.embeddings.create(model="tiny-qwen3vl", input=texts, dimensions=16)
    assert np.abs(np.array([d.embedding for d in short.data]) - embedder.embed(texts, dim=16)).max() < TOL
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0


def test_token_ids_are_refused_with_what_to_do(server, embedder):
    import openai
    from langchain_openai import OpenAIEmbeddings

    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    for token_ids in ([1, 2, 3], [[1, 2, 3], [4, 5]]):  # what LangChain's default sends (tiktoken ids)
        with pytest.raises(openai.BadRequestError, match="check_embedding_ctx_length=False"):
            client.embeddings.create(model="tiny-qwen3vl", input=token_ids)
    works = OpenAIEmbeddings(
        base_url=f"{server}/v1", api_key="unused", model="tiny-qwen3vl", check_embedding_ctx_length=False
    )
    got = np.array(works.embed_documents(["a cat", "a rocket"]))
    assert np.abs(got - embedder.embed(["a cat", "a rocket"])).max() < TOL
    query = np.array(works.embed_query("a cat"))
    assert np.abs(query - embedder.embed(["a cat"])[0]).max() < TOL


def test_llama_index_openai_like_embedding(server, embedder):
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    emb = OpenAILikeEmbedding(model_name="tiny-qwen3vl", api_base=f"{server}/v1", api_key="unused")
    got = np.array(emb.get_text_embedding_batch(["a cat", "a rocket"]))
    assert np.abs(got - embedder.embed(["a cat", "a rocket"])).max() < TOL


def test_vllm_messages_input(server, embedder):
    data = "data:image/jpeg;base64," + base64.b64encode((MEDIA / "chelsea.jpg").read_bytes()).decode()
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "a photo"}, {"type": "image_url", "image_url": {"url": data}}],
        }
    ]
    r = httpx.post(f"{server}/v1/embeddings", json={"model": "tiny-qwen3vl", "messages": messages}, timeout=60)
    assert r.status_code == 200, r.text
    expected = embedder.embed([{"text": "a photo", "image": data}])[0]
    assert np.abs(np.array(r.json()["data"][0]["embedding"]) - expected).max() < TOL


def test_vllm_messages_system_message_is_the_instruction(server, embedder):
    """As vLLM's chat template makes it: a system message is the instruction, not part of the input (issue 30)."""
    from retrieval_pipeline.retriever import QUERY_INSTRUCTION

    messages = [{"role": "system", "content": QUERY_INSTRUCTION}, {"role": "user", "content": "a cat on a sofa"}]
    r = httpx.post(f"{server}/v1/embeddings", json={"messages": messages}, timeout=60)
    assert r.status_code == 200, r.text
    expected = embedder.embed(["a cat on a sofa"], instruction=QUERY_INSTRUCTION)[0]
    assert np.abs(np.array(r.json()["data"][0]["embedding"]) - expected).max() < TOL
    image = {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}
    r = httpx.post(f"{server}/v1/embeddings", json={"messages": [image, messages[1]]}, timeout=60)
    assert r.status_code == 400 and "a system message holds text only" in r.json()["error"]["message"]


def test_cohere_v2_embed_types_round_trip(server, embedder):
    import cohere

    from retrieval_pipeline.retriever import QUERY_INSTRUCTION

    client = cohere.ClientV2(api_key="unused", base_url=server)
    texts = ["a cat", "quarterly revenue"]
    kinds = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
    resp = client.embed(
        model="tiny-qwen3vl", texts=texts, input_type="search_document", embedding_types=kinds, output_dimension=32
    )
    expected = embedder.embed(texts, dim=32)
    e = resp.embeddings
    assert np.abs(np.array(e.float_) - expected).max() < TOL
    assert np.abs(np.array(e.int8) / 127 - expected).max() <= 0.5 / 127 + TOL
    assert np.abs(np.array(e.uint8) / 127.5 - 1 - expected).max() <= 0.5 / 127.5 + TOL
    bits = np.unpackbits(np.array(e.ubinary, dtype=np.uint8), axis=-1)
    assert np.array_equal(bits.astype(bool), expected > 0)
    assert np.array_equal(np.array(e.binary) + 128, np.array(e.ubinary))
    decoded = np.array([np.frombuffer(base64.b64decode(b), dtype="<f4") for b in e.base64])
    assert np.abs(decoded - expected).max() < TOL
    query = client.embed(model="tiny-qwen3vl", texts=["a cat"], input_type="search_query", embedding_types=["float"])
    assert (
        np.abs(np.array(query.embeddings.float_[0]) - embedder.embed(["a cat"], instruction=QUERY_INSTRUCTION)[0]).max()
        < TOL
    )
    data = "data:image/jpeg;base64," + base64.b64encode((MEDIA / "chelsea.jpg").read_bytes()).decode()
    image = client.embed(model="tiny-qwen3vl", images=[data], input_type="image", embedding_types=["float"])
    assert np.abs(np.array(image.embeddings.float_[0]) - embedder.embed([{"image": data}])[0]).max() < TOL
    mixed = client.embed(
        model="tiny-qwen3vl",
        inputs=[{"content": [{"type": "text", "text": "a photo"}, {"type": "image_url", "image_url": {"url": data}}]}],
        input_type="search_document",
        embedding_types=["float"],
    )
    expected_mixed = embedder.embed([{"text": "a photo", "image": data}])[0]
    assert np.abs(np.array(mixed.embeddings.float_[0]) - expected_mixed).max() < TOL


def test_long_token_id_lists_get_the_same_advice_from_the_body_guard(server):
    body = {"model": "tiny-qwen3vl", "input": [list(range(50_000))]}  # a body over the guard's pre-check size
    r = httpx.post(f"{server}/v1/embeddings", json=body, timeout=30)
    assert r.status_code == 400 and "check_embedding_ctx_length=False" in r.json()["error"]["message"]
    many = httpx.post(f"{server}/v1/embeddings", json={"input": ["a"] * 3000}, timeout=30)
    assert many.status_code == 413 and many.json()["error"]["limit"] == "max_items"  # past OpenAI's 2048


def test_every_route_answers_errors_in_one_envelope(server):
    for method, path, body in (
        ("POST", "/v3/nothing", {}),
        ("GET", "/v1/embeddings", None),
        ("POST", "/v2/embed", {"texts": ["a"], "images": ["data:,"]}),
        ("POST", "/rerank", {"query": "a"}),
        ("POST", "/v1/chat/completions", {"messages": []}),
    ):
        r = httpx.request(method, f"{server}{path}", json=body)
        assert r.status_code >= 400
        error = r.json()["error"]
        assert isinstance(error["message"], str) and isinstance(error["type"], str), (path, r.text)
