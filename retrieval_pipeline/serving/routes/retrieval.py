"""``POST /v1/search`` and ``POST /v1/ask``: two-stage retrieval over the collection, and an answer with its
sources. Hits name local sources relative to ``source_root`` (a file name otherwise) unless ``expose_paths``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ...models.generator import GenerationResult, Qwen3VLGenerator
from ...pipeline import NO_MATCH
from ..generation import chat_model, generated_pieces
from ..schemas import ERRORS, AskRequest, AskResponse, SearchHit, SearchRequest, SearchResponse, knobs, plain
from ..state import ServingState, State, public_source

router = APIRouter(tags=["retrieval"])


def _hit(hit: Any, state: ServingState) -> SearchHit:
    data = hit.to_dict()
    data["source"] = public_source(data.get("source"), state)
    return SearchHit(**data)


async def _search(state: ServingState, rag: Any, query: Any, body: SearchRequest | AskRequest) -> list[Any]:
    """Two-stage retrieval for a request's query with its top_k, filters, rerank and search_options."""
    options = knobs(body.search_options)
    return await state.store_call(
        rag.search,
        query,
        top_k=body.top_k,
        filters=state.search_filters(rag, body.filters),
        rerank=body.rerank,
        search_options=options,
        min_score=body.min_score,
    )


@router.post("/v1/search", response_model=SearchResponse, responses=ERRORS)
async def search(body: SearchRequest, request: Request, state: State) -> SearchResponse:
    rag = state.collections.for_request(request, body.collection)
    query = await state.preparer.query(plain(body.query))
    hits = await _search(state, rag, query, body)
    return SearchResponse(results=[_hit(h, state) for h in hits])


@router.post("/v1/ask", response_model=AskResponse, responses=ERRORS)
async def ask(body: AskRequest, request: Request, state: State) -> Any:
    """The answer with its sources; ``stream: true`` sends server-sent events: ``{"sources": [...]}`` first, then
    ``{"delta": "..."}`` pieces as they are generated, then ``{"finish_reason": ...}`` and ``[DONE]``."""
    rag = state.collections.for_request(request, body.collection)
    if not rag.has_generator:
        state.need(None, "generator")
    # the question is a query like /v1/search's: the same limits (max_text_chars, images), by the same code
    item: Any = {"text": body.question, "image": body.image} if body.image is not None else body.question
    prepared = await state.preparer.query(item)
    image = prepared["image"] if isinstance(prepared, dict) else None
    if isinstance(rag.generator, Qwen3VLGenerator):  # a question over max_prompt_tokens: 413 before any search
        await run_in_threadpool(rag.generator.conversation, body.question, [])
    if not body.stream:
        ticket = state.generation_queue.admit()
        async with ticket:
            answer = await state.store_call(
                rag.ask,
                body.question,
                image=image,
                top_k=body.top_k,
                filters=state.search_filters(rag, body.filters),
                rerank=body.rerank,
                search_options=knobs(body.search_options),
                min_score=body.min_score,
            )
        return AskResponse(question=body.question, answer=answer.text, sources=[_hit(h, state) for h in answer.sources])
    generator = chat_model(state)
    query: Any = {"text": body.question, "image": image} if image is not None else body.question
    hits = await _search(state, rag, query, body)
    if not hits:  # as without streaming: nothing to answer from, nothing generated
        return StreamingResponse(_no_match(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    ticket = state.generation_queue.admit()
    chat = await run_in_threadpool(generator.conversation, body.question, hits)  # tokenises: off the event loop

    async def events() -> AsyncIterator[str]:
        result = GenerationResult()
        yield _event({"sources": [_hit(h, state).model_dump() for h in hits]})
        async with aclosing(generated_pieces(generator, chat, {}, ticket, request, result)) as pieces:
            async for piece in pieces:
                yield _event({"delta": piece})
        yield _event({"finish_reason": result.finish_reason or "stop"})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _no_match() -> AsyncIterator[str]:
    yield _event({"sources": []})
    yield _event({"delta": NO_MATCH})
    yield _event({"finish_reason": "stop"})
    yield "data: [DONE]\n\n"


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"
