"""``/v1/chat/completions`` through the client packages people use (openai, langchain-openai, LlamaIndex's
OpenAI-like LLM) against a real server on 127.0.0.1: answers over the corpus, streaming, sources, refusals."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest
from conftest import MEDIA, TINY, LiveServer

from retrieval_pipeline.models.generator import GenerationResult
from retrieval_pipeline.pipeline import RAGPipeline
from retrieval_pipeline.serving import ServerConfig, create_app
from retrieval_pipeline.store import EdgeStore

QUESTION = "What does the revenue chart show?"


@pytest.fixture(scope="module")
def server(embedder, reranker, generator, tmp_path_factory, indexed_corpus):
    from conftest import copy_indexed

    store = EdgeStore(copy_indexed(indexed_corpus, tmp_path_factory.mktemp("chat") / "db"), "default")
    rag = RAGPipeline(store, embedder=embedder, reranker=reranker, generator=generator, offload=False)
    app = create_app(pipeline=rag, config=ServerConfig(max_queued_generations=2))
    with LiveServer(app) as url:
        yield url, app, rag
    store.close()


@pytest.fixture(scope="module")
def serve_url(tmp_path_factory, indexed_corpus):
    """A real ``qwen3vl-rag serve`` process with all three models over an indexed corpus."""
    from conftest import ServeProcess, copy_indexed

    db = copy_indexed(indexed_corpus, tmp_path_factory.mktemp("chat-serve") / "db")
    with ServeProcess(db=db) as url:
        yield url


def _client(url):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_openai_chat_answers_over_the_corpus_with_sources(server, generator):
    url, app, rag = server
    client = _client(url)
    listed = {m.id: m for m in client.models.list().data}
    assert "tiny-qwen3vl" in listed and listed["tiny-qwen3vl"].model_extra["type"] == "chat"
    resp = client.chat.completions.create(
        model="tiny-qwen3vl", messages=[{"role": "user", "content": QUESTION}], max_tokens=12, temperature=0
    )
    assert resp.object == "chat.completion" and resp.choices[0].message.role == "assistant"
    sources = resp.model_extra["sources"]
    assert len(sources) == 3 and [s["rank"] for s in sources] == [1, 2, 3]
    hits = rag.search(QUESTION, top_k=3)
    assert [s["id"] for s in sources] == [h.id for h in hits]
    # the prompt `ask` builds for this question and these hits: one prompt builder for both
    expected = generator.chat(generator.conversation(QUESTION, hits), max_new_tokens=12)
    assert resp.choices[0].message.content == expected  # the library's own answer
    assert resp.usage.completion_tokens <= 12 and resp.usage.prompt_tokens > 0
    assert resp.choices[0].finish_reason in ("stop", "length")


def test_openai_streaming_equals_the_answer_and_reports_usage(serve_url):
    url = serve_url
    client = _client(url)
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Tell me about the cat."},
        {"role": "assistant", "content": "Which cat?"},
        {"role": "user", "content": "The one on the sofa."},
    ]
    whole = client.chat.completions.create(model="tiny-qwen3vl", messages=messages, max_tokens=16)
    chunks = list(
        client.chat.completions.create(
            model="tiny-qwen3vl",
            messages=messages,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].model_extra["sources"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2  # pieces, as generated
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_image_parts_retrieval_off_and_stop(server):
    url, _, rag = server
    client = _client(url)
    data = base64.b64encode((MEDIA / "chelsea.jpg").read_bytes()).decode()
    content = [
        {"type": "text", "text": "Which picture is like this one?"},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{data}"}},
    ]
    resp = client.chat.completions.create(model="tiny-qwen3vl", messages=[{"role": "user", "content": content}])
    query = {"text": "Which picture is like this one?", "image": (MEDIA / "chelsea.jpg").read_bytes()}
    assert [s["id"] for s in resp.model_extra["sources"]] == [h.id for h in rag.search(query, top_k=3)]
    plain = client.chat.completions.create(
        model="tiny-qwen3vl",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=8,
        extra_body={"retrieval": {"enabled": False}},
    )
    assert plain.model_extra["sources"] == []
    full = plain.choices[0].message.content
    if len(full) > 3:
        stopped = client.chat.completions.create(
            model="tiny-qwen3vl",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=8,
            stop=[full[2:4]],
            extra_body={"retrieval": {"enabled": False}},
        )
        assert stopped.choices[0].message.content == full[: full.index(full[2:4])].rstrip()


def test_refusals_are_clear(serve_url):
    import openai

    url = serve_url
    client = _client(url)
    user = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        client.chat.completions.create(model="tiny-qwen3vl", messages=user, n=2)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(model="tiny-qwen3vl", messages=user, tools=[tool])
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.chat.completions.create(model="gpt-4o", messages=user)
    with pytest.raises(openai.BadRequestError, match="last message"):
        client.chat.completions.create(model="tiny-qwen3vl", messages=[{"role": "system", "content": "x"}])
    ok = client.chat.completions.create(model="tiny-qwen3vl", messages=user, max_tokens=2, frequency_penalty=0.0)
    assert ok.choices  # an unknown-to-us OpenAI field is accepted and ignored


def test_a_full_queue_is_429_with_retry_after(server):
    url, app, _ = server
    queue = app.state.serving.generation_queue
    held = [queue.admit(), queue.admit()]  # the queue's two places taken
    try:
        r = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        assert r.json()["error"]["limit"] == "max_queued_generations"
    finally:
        for ticket in held:
            ticket.release()
    r = httpx.post(
        f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    )
    assert r.status_code == 200


def test_a_client_that_disconnects_stops_the_generation(server, generator):
    url, app, _ = server
    queue = app.state.serving.generation_queue
    before, generations = queue.completion_tokens, queue.generations
    body = {
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": 4000,
        "stream": True,
        "retrieval": {"enabled": False},
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert '"role": "assistant"' in first
        next(line for line in lines if '"content": "' in line and '"role"' not in line)  # the first generated piece
    deadline = time.time() + 30
    while (queue.admitted or queue.generations == generations) and time.time() < deadline:
        time.sleep(0.1)
    assert queue.admitted == 0 and queue.generations == generations + 1
    generated = queue.completion_tokens - before
    assert 0 < generated < 4000  # stopped long before max_tokens
    # the same generation, not cancelled, runs to the limit (the tiny model never emits end of text early)
    result = GenerationResult()
    generator.chat([{"role": "user", "content": [{"text": "Write a long story."}]}], max_new_tokens=300, result=result)
    assert result.completion_tokens == 300 or result.finish_reason == "stop"


def test_langchain_openai_chat_model(serve_url):
    from langchain_openai import ChatOpenAI

    url = serve_url
    llm = ChatOpenAI(base_url=f"{url}/v1", api_key="unused", model="tiny-qwen3vl", max_tokens=12, temperature=0)
    answer = llm.invoke(QUESTION)
    streamed = "".join(chunk.content for chunk in llm.stream(QUESTION))
    assert isinstance(answer.content, str) and streamed == answer.content


def test_llama_index_openai_like_llm(serve_url):
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    url = serve_url
    llm = OpenAILike(
        api_base=f"{url}/v1", api_key="unused", model="tiny-qwen3vl", is_chat_model=True, max_tokens=12, temperature=0
    )
    messages = [ChatMessage(role="user", content=QUESTION)]
    answer = llm.chat(messages).message.content
    streamed = "".join(r.delta or "" for r in llm.stream_chat(messages))
    assert streamed == answer
    assert str(TINY.name) == "tiny-qwen3vl"


def test_ask_streams_the_same_answer(server):
    import json

    url, _, _ = server
    body = {"question": QUESTION, "top_k": 2}
    whole = httpx.post(f"{url}/v1/ask", json=body, timeout=60).json()
    events = []
    with httpx.stream("POST", f"{url}/v1/ask", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    assert [s["id"] for s in events[0]["sources"]] == [s["id"] for s in whole["sources"]]
    assert "".join(e.get("delta", "") for e in events) == whole["answer"]
    assert events[-1]["finish_reason"] in ("stop", "length")


def test_the_prompt_budget_leaves_the_lowest_ranked_out_and_sources_say_so(server, generator, monkeypatch):
    from retrieval_pipeline.media import parse_input
    from retrieval_pipeline.models import generator as generator_module
    from retrieval_pipeline.models.encoding import estimate_tokens

    url, _, rag = server
    hits = rag.search(QUESTION, top_k=3)
    costs = [sum(estimate_tokens(parse_input(p), generator.media) for p in h.context()) for h in hits]
    overhead = generator_module.HIT_OVERHEAD_TOKENS
    monkeypatch.setattr(generator_module, "CONTEXT_TOKENS", costs[0] + costs[1] + 2 * overhead)
    resp = _client(url).chat.completions.create(
        model="tiny-qwen3vl", messages=[{"role": "user", "content": QUESTION}], max_tokens=2
    )
    assert [s["id"] for s in resp.model_extra["sources"]] == [h.id for h in hits[:2]]


def test_the_prompt_is_bounded_in_tokens_and_characters(server, generator, monkeypatch):
    """A conversation over max_prompt_tokens is refused (413) before retrieval -- also one of empty messages, which
    has no characters; a system message counts its characters against max_text_chars like any other text."""
    url, _, _ = server
    client = httpx.Client(base_url=url, timeout=60)
    big_system = [{"role": "system", "content": "s" * 200_000}, {"role": "user", "content": QUESTION}]
    r = client.post("/v1/chat/completions", json={"model": "tiny-qwen3vl", "messages": big_system, "max_tokens": 2})
    assert r.status_code == 413 and r.json()["error"]["limit"] == "max_text_chars", r.text
    monkeypatch.setattr(generator, "max_prompt_tokens", 800)
    empty = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}] * 400
    for messages in (empty + [{"role": "user", "content": QUESTION}], [{"role": "user", "content": "word " * 400}]):
        r = client.post("/v1/chat/completions", json={"model": "tiny-qwen3vl", "messages": messages, "max_tokens": 2})
        assert r.status_code == 413 and r.json()["error"]["limit"] == "max_prompt_tokens", r.text
        assert "over the limit of 800" in r.json()["error"]["message"]
    for stream in (False, True):
        r = client.post("/v1/ask", json={"question": "word " * 400, "stream": stream})
        assert r.status_code == 413 and r.json()["error"]["limit"] == "max_prompt_tokens", r.text
    # within the bound, the context gets what the conversation leaves: fewer sources, never an over-long prompt
    r = client.post(
        "/v1/chat/completions",
        json={"model": "tiny-qwen3vl", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 2},
    )  # noqa: E501
    assert r.status_code == 200, r.text
    result = GenerationResult()
    hits = server[2].search(QUESTION, top_k=3)
    generator.chat(generator.conversation(QUESTION, hits), max_new_tokens=1, result=result)
    assert result.prompt_tokens <= 800


def test_a_follow_up_can_be_rewritten_into_a_standalone_query(server, generator):
    from retrieval_pipeline.serving.routes.chat import rewrite_conversation

    url, _, rag = server
    messages = [
        {"role": "user", "content": "What did revenue do in Q3?"},
        {"role": "assistant", "content": "It grew twelve percent."},
        {"role": "user", "content": "and in Q4?"},
    ]
    resp = _client(url).chat.completions.create(
        model="tiny-qwen3vl", messages=messages, max_tokens=2, extra_body={"retrieval": {"rewrite": True}}
    )
    turns = [{"role": m["role"], "content": [{"text": m["content"]}]} for m in messages]
    rewritten = generator.chat(rewrite_conversation(turns), max_new_tokens=64)
    assert resp.model_extra["retrieval_query"] == rewritten
    assert [s["id"] for s in resp.model_extra["sources"]] == [h.id for h in rag.search(rewritten, top_k=3)]
    plain = _client(url).chat.completions.create(model="tiny-qwen3vl", messages=messages, max_tokens=2)
    assert plain.model_extra["retrieval_query"] == "and in Q4?"  # off by default: the last turn as it is
    first = next(
        iter(
            _client(url).chat.completions.create(
                model="tiny-qwen3vl",
                messages=messages,
                max_tokens=2,
                stream=True,
                extra_body={"retrieval": {"rewrite": True}},
            )
        )
    )
    assert first.model_extra["retrieval_query"] == rewritten  # streaming says it in the first chunk


def test_a_conversation_is_bounded_like_any_input(server):
    url, _, _ = server
    huge = {"messages": [{"role": "user", "content": "x" * 100_001}]}
    r = httpx.post(f"{url}/v1/chat/completions", json=huge, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["limit"] == "max_text_chars"
    pixel = "data:image/png;base64," + base64.b64encode((MEDIA / "camera_gray.png").read_bytes()).decode()
    parts = [{"type": "image_url", "image_url": {"url": pixel}}] * 17
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": parts}]}, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["limit"] == "max_images_per_item"
    long = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100_000}
    r = httpx.post(f"{url}/v1/chat/completions", json=long, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["limit"] == "max_generation_tokens"


def test_concurrent_requests_with_one_bad_among_them(server):
    import asyncio

    url, app, _ = server
    bad_image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}
    good = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    bad = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, bad_image]}], "max_tokens": 3}

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/chat/completions", json=b) for b in (good, bad)))

    ok, refused = asyncio.run(main())
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] is not None
    assert 400 <= refused.status_code < 500 and refused.json()["error"]["message"]
    assert app.state.serving.generation_queue.admitted == 0  # the bad one gave its place back


def test_every_field_is_checked_before_retrieval_and_named(server):
    """A seed past int64, a lone surrogate in an earlier turn, n=0, a text part without text: 4xx naming the field,
    before any retrieval or generation (they used to cut a stream after its first chunk)."""
    url, _, _ = server
    client = httpx.Client(base_url=url, timeout=60)
    user = {"role": "user", "content": QUESTION}
    cases = [
        ({"seed": 2**64}, 422, "seed"),
        ({"messages": [{"role": "user", "content": "ok \ud800"}, {"role": "assistant", "content": "a"}, user]},
         400, "messages.0.content.0"),
        ({"n": 0}, 400, "n"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, 400, "messages.0.content.0"),
    ]  # fmt: skip
    for extra, status, param in cases:
        for stream in (False, True):
            body = {"model": "tiny-qwen3vl", "messages": [user], "max_tokens": 2, "stream": stream, **extra}
            r = client.post(
                "/v1/chat/completions", content=json.dumps(body), headers={"Content-Type": "application/json"}
            )
            assert r.status_code == status, (extra, r.text)
            error = r.json()["error"]
            assert param in (error.get("param") or "") + error["message"], (extra, error)
            assert "got 0" in error["message"] if param == "n" else True


def test_embedding_messages_of_the_wrong_type_are_400_naming_the_message(server):
    url, _, _ = server
    client = httpx.Client(base_url=url, timeout=60)
    for content in (5, True, {"text": "x"}):
        r = client.post("/v1/embeddings", json={"messages": [{"role": "user", "content": content}]})
        assert r.status_code in (400, 422), r.text
        assert "messages" in r.json()["error"]["message"] or "messages" in (r.json()["error"].get("param") or "")
    r = client.post("/v1/embeddings", json={"messages": [{"role": "user", "content": [{"type": "text"}]}]})
    assert r.status_code == 400 and "needs a 'text' string" in r.json()["error"]["message"]
