"""``POST /v1/embeddings`` (OpenAI-compatible): strings or multimodal objects (or vLLM's chat-style ``messages``)
-> vectors, Matryoshka ``dimensions``, ``encoding_format`` float / base64; token-id inputs are refused (400).
``POST /v2/embed`` (Cohere v2): ``texts`` / ``images`` / ``inputs``, ``input_type``, ``output_dimension`` and
``embedding_types`` float, int8, uint8, binary, ubinary, base64."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import numpy as np
from fastapi import APIRouter

from ...models.embedder import truncate_and_normalize
from ...retriever import QUERY_INSTRUCTION
from ..dialects import content_parts
from ..error_handlers import HTTPError
from ..guard import TOKEN_IDS
from ..prepare import check_sources
from ..schemas import ERRORS, CohereEmbedRequest, EmbeddingData, EmbeddingRequest, EmbeddingResponse, Usage, plain
from ..state import ServingState, State, model_name

router = APIRouter(tags=["embeddings"])


def _raw_inputs(body: EmbeddingRequest) -> tuple[list[Any], str | None]:
    """(the inputs, the instruction a vLLM-style request's system messages give, as its chat template would)."""
    if body.messages is not None:
        if body.input is not None:
            raise HTTPError(400, "send input or messages, not both", param="messages")
        system = [i for i, m in enumerate(body.messages) if isinstance(m, dict) and m.get("role") == "system"]
        parts = [p for i, m in enumerate(body.messages) if i not in system for p in _message_parts(m, i)]
        texts = [_system_text(p, i) for i in system for p in _message_parts(body.messages[i], i)]
        return [content_parts(parts, "messages")], "\n".join(texts) or None
    if body.input is None:
        raise HTTPError(400, "input is required (or messages)", param="input")
    if isinstance(body.input, str):
        return [body.input], None
    if any(isinstance(i, (int, list)) for i in body.input):
        raise HTTPError(400, TOKEN_IDS, param="input", code="token_ids_not_supported")
    return [plain(i) for i in body.input], None


def _system_text(part: Any, index: int) -> str:
    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
        return part["text"]
    raise HTTPError(400, f"messages[{index}]: a system message holds text only", param=f"messages.{index}.content")


def _message_parts(message: Any, index: int) -> list[Any]:
    """A message's content parts (a str is one text part); anything else is a 400 naming the message."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None or isinstance(content, list):
        return list(content or [])
    raise HTTPError(
        400,
        f"messages[{index}].content must be a string or a list of content parts, got {type(content).__name__}",
        param=f"messages.{index}.content",
    )


def _items(body: EmbeddingRequest, max_items: int) -> list[dict[str, Any]]:
    """The request's inputs as multimodal dicts, each with its instruction (the request's or the query one)."""
    raw, system = _raw_inputs(body)
    instruction = body.instruction or system or (QUERY_INSTRUCTION if body.input_type == "query" else None)
    return with_instruction(raw, instruction, max_items, "input")


def with_instruction(raw: list[Any], instruction: str | None, max_items: int, param: str) -> list[dict[str, Any]]:
    if not raw:
        raise HTTPError(400, f"{param} is empty", param=param)
    if len(raw) > max_items:
        raise HTTPError(
            413,
            f"{len(raw)} inputs exceed the limit of {max_items} per request (max_items)",
            param=param,
            limit="max_items",
        )
    items = []
    for item in raw:
        item = {"text": item} if isinstance(item, str) else dict(item)
        if instruction and not item.get("instruction"):
            item["instruction"] = instruction
        items.append(item)
    return items


async def embed_items(items: list[dict[str, Any]], dimensions: int | None, state: ServingState) -> tuple[Any, int]:
    """(L2-normalised vectors at ``dimensions``, tokens read) through the dynamic batcher."""
    model = state.need(state.embedder, "embedding")
    try:
        dim = model.check_dim(dimensions)
    except ValueError as exc:
        raise HTTPError(400, str(exc), param="dimensions") from None

    def work() -> list[Any]:
        check_sources(items, state.config.allow_local_files)
        return model.prepare(items, limits=state.config.limits)

    encoded = await state.preparer.run(work, items)
    vectors = truncate_and_normalize(np.asarray(await state.embed_batcher.submit(encoded), dtype=np.float32), dim)
    return vectors, sum(len(e) for e in encoded)  # what the model read: template, text and vision tokens


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERRORS)
async def embeddings(body: EmbeddingRequest, state: State) -> EmbeddingResponse:
    model = state.need(state.embedder, "embedding")
    state.check_model(body.model, model)
    items = _items(body, state.config.max_items)
    vectors, tokens = await embed_items(items, body.dimensions, state)
    if body.encoding_format == "base64":
        data = [
            EmbeddingData(index=i, embedding=base64.b64encode(v.astype("<f4").tobytes()).decode())
            for i, v in enumerate(vectors)
        ]
    else:
        data = [EmbeddingData(index=i, embedding=v.tolist()) for i, v in enumerate(vectors)]
    usage = Usage(prompt_tokens=tokens, total_tokens=tokens)
    return EmbeddingResponse(data=data, model=model_name(model) or "", usage=usage)


# ------------------------------------------------------------------------------------------------------------------
# Cohere v2: /v2/embed


def quantize(vectors: np.ndarray, kind: str) -> list[Any]:
    """Cohere's embedding types of L2-normalised vectors. ``int8``: round(v * 127); ``uint8``: round((v + 1) *
    127.5); ``ubinary``: the sign bits (1 where v > 0) packed 8 dimensions a byte, first dimension in the high bit;
    ``binary``: ``ubinary`` - 128 as signed bytes; ``base64``: little-endian float32 bytes; ``float``: as is."""
    if kind == "float":
        return vectors.tolist()
    if kind == "int8":
        return np.clip(np.rint(vectors * 127), -128, 127).astype(np.int8).tolist()
    if kind == "uint8":
        return np.clip(np.rint((vectors + 1) * 127.5), 0, 255).astype(np.uint8).tolist()
    packed = np.packbits(vectors > 0, axis=-1)
    if kind == "ubinary":
        return packed.tolist()
    if kind == "binary":
        return (packed.astype(np.int16) - 128).astype(np.int8).tolist()
    return [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]  # base64


def _cohere_items(body: CohereEmbedRequest) -> list[Any]:
    given = [x for x in (body.texts, body.images, body.inputs) if x is not None]
    if len(given) != 1:
        raise HTTPError(400, "send exactly one of texts, images, inputs", param="texts")
    if body.texts is not None:
        return list(body.texts)
    if body.images is not None:
        return [{"image": image} for image in body.images]
    return [content_parts(i.content, f"inputs.{n}") for n, i in enumerate(body.inputs or [])]


@router.post("/v2/embed", responses=ERRORS)
async def cohere_embed(body: CohereEmbedRequest, state: State) -> dict[str, Any]:
    """Cohere v2. ``input_type``: ``search_query`` embeds with the retrieval query instruction, the others
    (``search_document``, ``classification``, ``clustering``, ``image``) with the model's default one."""
    model = state.need(state.embedder, "embedding")
    state.check_model(body.model, model)
    instruction = QUERY_INSTRUCTION if body.input_type == "search_query" else None
    items = with_instruction(_cohere_items(body), instruction, state.config.max_items, "texts")
    vectors, tokens = await embed_items(items, body.output_dimension, state)
    kinds = body.embedding_types or ["float"]
    return {
        "id": str(uuid.uuid4()),
        "response_type": "embeddings_by_type",
        "embeddings": {kind: quantize(vectors, kind) for kind in dict.fromkeys(kinds)},
        "texts": list(body.texts or []),
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
    }
