"""Generation as the routes share it (chat completions and ``/v1/ask`` with streaming): the chat model the server
has, and a reply's pieces as they are generated, queued behind the generation queue and stopped when the client
goes away."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from ..models.generator import GenerationResult, Qwen3VLGenerator
from .error_handlers import HTTPError
from .state import ServingState


def chat_model(state: ServingState) -> Qwen3VLGenerator:
    rag = state.pipeline
    generator = rag.generator if rag is not None and rag.has_generator else None
    if not isinstance(generator, Qwen3VLGenerator):
        raise HTTPError(404, "this server has no chat (generator) model loaded", "not_found_error")
    return generator


async def generated_pieces(
    generator: Qwen3VLGenerator,
    chat: list[dict[str, Any]],
    options: dict[str, Any],
    ticket: Any,
    request: Request,
    result: GenerationResult,
) -> AsyncIterator[str]:
    """The reply's pieces as they are generated, when the ticket's turn comes; the generation stops when the client
    disconnects (or the consumer stops early)."""
    queue = request.app.state.serving.generation_queue
    cancel = threading.Event()
    sentinel = object()
    async with ticket:
        pieces = generator.stream(chat, cancel=cancel, result=result, **options)
        try:
            while True:
                piece = await queue.run(lambda: next(pieces, sentinel))
                if piece is sentinel or await request.is_disconnected():
                    break
                yield piece
        finally:
            cancel.set()  # the generation stops at its next token
            # closed (and counted) on the generation thread, after a piece it may still be waiting for; not awaited:
            # a client that went away cancels this task
            queue.pool.submit(_close_and_count, pieces, queue, result)


def _close_and_count(pieces: Any, queue: Any, result: GenerationResult) -> None:
    pieces.close()
    queue.count(result)
