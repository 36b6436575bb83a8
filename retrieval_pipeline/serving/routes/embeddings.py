"""``POST /v1/embeddings`` (OpenAI-compatible): strings or multimodal objects -> vectors, Matryoshka
``dimensions``, ``encoding_format`` float / base64."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter

from ...models.embedder import truncate_and_normalize
from ...retriever import QUERY_INSTRUCTION
from ..error_handlers import HTTPError
from ..prepare import check_sources
from ..schemas import ERRORS, EmbeddingData, EmbeddingRequest, EmbeddingResponse, Usage, plain
from ..state import State, model_name

router = APIRouter(tags=["embeddings"])


def _items(body: EmbeddingRequest, max_items: int) -> list[dict[str, Any]]:
    """The request's inputs as multimodal dicts, each with its instruction (the request's or the query one)."""
    raw = [body.input] if isinstance(body.input, str) else [plain(i) for i in body.input]
    if not raw:
        raise HTTPError(400, "input is empty", param="input")
    if len(raw) > max_items:
        raise HTTPError(
            413,
            f"{len(raw)} inputs exceed the limit of {max_items} per request (max_items)",
            param="input",
            limit="max_items",
        )
    instruction = body.instruction or (QUERY_INSTRUCTION if body.input_type == "query" else None)
    items = []
    for item in raw:
        item = {"text": item} if isinstance(item, str) else dict(item)
        if instruction and not item.get("instruction"):
            item["instruction"] = instruction
        items.append(item)
    return items


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERRORS)
async def embeddings(body: EmbeddingRequest, state: State) -> EmbeddingResponse:
    model = state.need(state.embedder, "embedding")
    state.check_model(body.model, model)
    items = _items(body, state.config.max_items)
    try:
        dim = model.check_dim(body.dimensions)
    except ValueError as exc:
        raise HTTPError(400, str(exc), param="dimensions") from None

    def work() -> list[Any]:
        check_sources(items, state.config.allow_local_files)
        return model.prepare(items, limits=state.config.limits)

    encoded = await state.preparer.run(work, items)
    vectors = truncate_and_normalize(np.asarray(await state.embed_batcher.submit(encoded), dtype=np.float32), dim)
    if body.encoding_format == "base64":
        data = [
            EmbeddingData(index=i, embedding=base64.b64encode(v.astype("<f4").tobytes()).decode())
            for i, v in enumerate(vectors)
        ]
    else:
        data = [EmbeddingData(index=i, embedding=v.tolist()) for i, v in enumerate(vectors)]
    tokens = sum(len(e) for e in encoded)  # what the model read: template, text and vision tokens
    usage = Usage(prompt_tokens=tokens, total_tokens=tokens)
    return EmbeddingResponse(data=data, model=model_name(model) or "", usage=usage)
