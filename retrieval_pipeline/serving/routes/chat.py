"""``POST /v1/chat/completions``: OpenAI's chat completions over the corpus. The last user turn (its text and first
image) is retrieved through the two-stage pipeline; the retrieved items (images as images, pages as page images,
text as text, videos as frames) and the conversation go to the generator. ``stream: true`` sends OpenAI's
``chat.completion.chunk`` events as tokens are generated; a client that goes away stops the generation.

Extensions OpenAI clients ignore: the request's ``retrieval`` object (``top_k``, ``filters``, ``rerank``,
``collection``, ``enabled``) and the response's ``sources`` (in the first chunk when streaming).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ...media import check_text
from ...models.generator import GenerationResult, Qwen3VLGenerator, rag_conversation
from ..error_handlers import HTTPError
from ..generation import chat_model, generated_pieces
from ..schemas import (
    ERRORS,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    ChatSource,
    ChatUsage,
    RetrievalOptions,
    knobs,
)
from ..state import ServingState, State, model_name, public_source

logger = logging.getLogger(__name__)
router = APIRouter(tags=["chat"])

DEFAULT_MAX_TOKENS = 512


def refuse_unsupported(body: ChatCompletionRequest) -> None:
    """OpenAI fields that would change what the answer means, which this server cannot honour: a clear 400."""
    if body.n not in (None, 1):
        raise HTTPError(400, f"n must be 1 (one choice per request), got {body.n}", "invalid_request_error", param="n")
    if body.tools or body.functions or body.tool_choice not in (None, "none", "auto"):
        raise HTTPError(400, "tools / function calling are not supported", "invalid_request_error", param="tools")
    if body.response_format and body.response_format.get("type") not in (None, "text"):
        raise HTTPError(400, "only response_format text is supported", "invalid_request_error", param="response_format")
    if body.logprobs:
        raise HTTPError(400, "logprobs are not supported", "invalid_request_error", param="logprobs")
    if body.messages[-1].role != "user":
        raise HTTPError(400, "the last message must be the user's", "invalid_request_error", param="messages")


def _parts(message: ChatMessage, index: int) -> list[dict[str, Any]]:
    """A message's content as multimodal objects: ``{"text"}`` and ``{"image": url}``."""
    if message.content is None or isinstance(message.content, str):
        return [{"text": message.content}] if message.content else []
    out: list[dict[str, Any]] = []
    for p, part in enumerate(message.content):
        if part.type in ("text", "input_text"):
            if part.text is None:
                raise HTTPError(
                    400,
                    f"messages[{index}].content[{p}]: a {part.type} part needs a 'text' string",
                    "invalid_request_error",
                    param=f"messages.{index}.content.{p}",
                )
            out.append({"text": part.text})
        elif part.type == "image_url" and part.image_url is not None:
            url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
            out.append({"image": url})
        else:
            raise HTTPError(
                400,
                f"messages[{index}].content[{p}]: unsupported content part type {part.type!r} (text, image_url)",
                "invalid_request_error",
                param=f"messages.{index}.content.{p}",
            )
    return out


async def prepared_turns(messages: list[ChatMessage], state: ServingState) -> tuple[str, list[dict[str, Any]]]:
    """(the clients' system text, the user / assistant turns with their images fetched under the server's policy)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if message.role == "tool":
            raise HTTPError(400, "tool messages are not supported", "invalid_request_error", param=f"messages.{i}")
        parts = _parts(message, i)
        for p, part in enumerate(parts):  # every turn's text checked now, not when the generator meets it
            if "text" in part:
                check_text(part["text"], f"messages.{i}.content.{p}")
        if message.role in ("system", "developer"):
            system.extend(p["text"] for p in parts if "text" in p)
        else:
            turns.append({"role": message.role, "content": parts})
    refs = [p["image"] for t in turns for p in t["content"] if "image" in p]
    check_conversation_size("\n\n".join(system), turns, len(refs), state)
    if refs:
        fetched = iter((await state.preparer.query({"image": refs}))["image"])
        for turn in turns:
            turn["content"] = [{"image": next(fetched)} if "image" in p else p for p in turn["content"]]
    return "\n\n".join(system), turns


def check_conversation_size(system: str, turns: list[dict[str, Any]], images: int, state: ServingState) -> None:
    """A conversation is one input to the generator: the server's per-input limits bound its characters and
    images (413 naming the limit), so one request cannot make a prompt of millions of tokens."""
    limits = state.config.limits
    chars = len(system) + sum(len(p["text"]) for t in turns for p in t["content"] if "text" in p)
    if limits.max_text_chars is not None and chars > limits.max_text_chars:
        raise HTTPError(
            413,
            f"the conversation has {chars} characters of text, over the limit of {limits.max_text_chars} "
            "(max_text_chars)",
            param="messages",
            limit="max_text_chars",
        )
    if limits.max_images_per_item is not None and images > limits.max_images_per_item:
        raise HTTPError(
            413,
            f"the conversation has {images} images, over the limit of {limits.max_images_per_item} "
            "(max_images_per_item)",
            param="messages",
            limit="max_images_per_item",
        )


def _query(turn: dict[str, Any]) -> Any:
    text = " ".join(p["text"] for p in turn["content"] if "text" in p).strip()
    images = [p["image"] for p in turn["content"] if "image" in p]
    if images:
        return {"text": text, "image": images[0]} if text else {"image": images[0]}
    return text or None


REWRITE_PROMPT = (
    "Rewrite the user's last message as one standalone search query that can be understood without the "
    "conversation. Reply with the query only."
)


def rewrite_conversation(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The generator's chat that turns a follow-up ("and in Q4?") into a standalone query (texts only)."""
    lines = []
    for turn in turns:
        text = " ".join(p["text"] for p in turn["content"] if "text" in p).strip()
        if text:
            lines.append(f"{turn['role']}: {text}")
    return [
        {"role": "system", "content": [{"text": REWRITE_PROMPT}]},
        {"role": "user", "content": [{"text": "\n".join(lines)}]},
    ]


async def retrieve(
    turns: list[dict[str, Any]],
    options: RetrievalOptions,
    state: ServingState,
    generator: Qwen3VLGenerator,
    request: Request,
) -> tuple[list[Any], Any]:
    """(hits, the query searched) for the last user turn; ``rewrite``: first made standalone by the generator."""
    rag = state.collections.for_request(request, options.collection)
    query = _query(turns[-1])
    if not options.enabled or query is None:
        return [], None
    if options.rewrite and len(turns) > 1:
        queue = state.generation_queue
        async with queue.turn():  # the request's admission covers it: wait for the generator's turn only
            text = await queue.run(lambda: generator.chat(rewrite_conversation(turns), max_new_tokens=64))
        if text:
            query = {**query, "text": text} if isinstance(query, dict) else text
    hits = await state.store_call(
        rag.search,
        query,
        top_k=options.top_k,
        filters=state.search_filters(rag, options.filters),
        rerank=options.rerank,
        search_options=knobs(options.search_options),
        min_score=options.min_score,
    )
    return hits, query


def conversation(
    generator: Qwen3VLGenerator, system: str, turns: list[dict[str, Any]], hits: list[Any], *, rag: bool | None = None
) -> list[dict[str, Any]]:
    """The generator's chat: the same RAG prompt as ``ask`` (:func:`rag_conversation`, the generator's system
    prompt) with the client's system text and earlier turns."""
    return rag_conversation(generator.system_prompt, turns, hits, client_system=system, rag=rag)


def sampling(body: ChatCompletionRequest, max_tokens: int) -> dict[str, Any]:
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    wanted = body.max_completion_tokens or body.max_tokens or min(DEFAULT_MAX_TOKENS, max_tokens)
    if wanted > max_tokens:
        raise HTTPError(
            413,
            f"max_tokens {wanted} is over this server's limit of {max_tokens} (max_generation_tokens)",
            param="max_tokens",
            limit="max_generation_tokens",
        )
    return {
        "max_new_tokens": wanted,
        "temperature": body.temperature or 0.0,
        "top_p": body.top_p,
        "stop": stop,
        "seed": body.seed,
    }


def sources(hits: list[Any], state: ServingState) -> list[ChatSource]:
    out = []
    for hit in hits:
        data = hit.to_dict()
        data["source"] = public_source(data.get("source"), state)
        out.append(ChatSource(**data))
    return out


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=ERRORS)
async def chat_completions(body: ChatCompletionRequest, request: Request, state: State) -> Any:
    refuse_unsupported(body)
    options = sampling(body, state.config.max_generation_tokens)  # refused before any work
    generator = chat_model(state)
    state.check_model(body.model, generator)
    ticket = state.generation_queue.admit()  # 429 now, before retrieval and before any byte of a stream
    try:
        system, turns = await prepared_turns(body.messages, state)
        # the conversation's tokens, before retrieval: over max_prompt_tokens a 413; the context gets what is left
        spent = await run_in_threadpool(generator.check_prompt, conversation(generator, system, turns, [], rag=True))
        hits, query = await retrieve(turns, body.retrieval or RetrievalOptions(), state, generator, request)
        given = await run_in_threadpool(generator.fit_context, hits, spent)
        chat = conversation(generator, system, turns, given)
    except BaseException:
        ticket.release()
        raise
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_name(generator)}
    searched = _query_text(query)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        found = {"sources": [x.model_dump() for x in sources(given, state)], "retrieval_query": searched}
        events = stream_events(generator, chat, options, ticket, meta, found, include_usage, request)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    result = GenerationResult()
    async with ticket:
        text = await state.generation_queue.run(lambda: generator.chat(chat, result=result, **options))
    state.generation_queue.count(result)
    return ChatCompletion(
        **meta,
        choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=result.finish_reason or "stop")],
        usage=_usage(result),
        sources=sources(given, state),
        retrieval_query=searched,
    )


def _query_text(query: Any) -> str | None:
    return query.get("text") if isinstance(query, dict) else query


def _usage(result: GenerationResult) -> ChatUsage:
    return ChatUsage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


def _chunk(meta: dict[str, Any], delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> str:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body = {**meta, "object": "chat.completion.chunk", "choices": choices, **extra}
    return f"data: {json.dumps(body)}\n\n"


async def stream_events(
    generator: Qwen3VLGenerator,
    chat: list[dict[str, Any]],
    options: dict[str, Any],
    ticket: Any,
    meta: dict[str, Any],
    found: dict[str, Any],
    include_usage: bool,
    request: Request,
) -> AsyncIterator[str]:
    """Server-sent ``chat.completion.chunk`` events: the role, the sources and the query searched first, then the
    text as it is generated, the finish reason, the usage when asked, ``[DONE]``."""
    result = GenerationResult()
    yield _chunk(meta, {"role": "assistant", "content": ""}, **found)
    try:
        async with aclosing(generated_pieces(generator, chat, options, ticket, request, result)) as pieces:
            async for piece in pieces:
                yield _chunk(meta, {"content": piece})
    except Exception as exc:  # noqa: BLE001 - the status line is sent: an error event, then the stream's end
        yield stream_error(exc)
        yield "data: [DONE]\n\n"
        return
    yield _chunk(meta, {}, result.finish_reason or "stop")
    if include_usage:
        yield _chunk(meta, None, usage=_usage(result).model_dump())
    yield "data: [DONE]\n\n"


def stream_error(exc: BaseException) -> str:
    """An error inside a stream whose status line was sent: OpenAI's error object as an event (the error family's
    type and message; an unknown error is logged and named only as an internal error)."""
    from ...errors import classify

    kind = classify(exc)
    if kind is None:
        logger.exception("chat stream failed")
        message, kind_type = "internal server error", "server_error"
    else:
        message, kind_type = str(exc), kind.type
    return f"data: {json.dumps({'error': {'message': message, 'type': kind_type}})}\n\n"
