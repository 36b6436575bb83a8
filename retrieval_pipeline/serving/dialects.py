"""The shapes real clients send for one thing: a query or document as a string, the project's multimodal object,
the content-part form of vLLM and Jina (``{"content": [{"type": "text" | "image_url" | "video_url", ...}]}``) or
a Cohere structured document (any other object: ranked on its ``rank_fields``). Each becomes the core's input.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import ValidationError

from .error_handlers import HTTPError
from .schemas import MultimodalInput

PROJECT_FIELDS = frozenset(MultimodalInput.model_fields)


def _bad(where: str, message: str) -> HTTPError:
    return HTTPError(400, f"{where}: {message}", "invalid_request_error", param=where)


def content_parts(parts: Any, where: str) -> dict[str, Any]:
    """``[{"type": "text", "text"}, {"type": "image_url", "image_url": {"url"}}, {"type": "video_url", ...}]`` ->
    the project's object."""
    if not isinstance(parts, list) or not parts:
        raise _bad(where, "content must be a non-empty list of parts")
    texts: list[str] = []
    images: list[str] = []
    videos: list[str] = []
    for i, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text"):
            if not isinstance(part.get("text"), str):
                raise _bad(f"{where}.content.{i}", f"a {kind} part needs a 'text' string")
            texts.append(part["text"])
        elif kind in ("image_url", "video_url"):
            ref = part.get(kind)
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str):
                raise _bad(f"{where}.content.{i}", f"{kind} needs a url")
            (images if kind == "image_url" else videos).append(url)
        else:
            raise _bad(f"{where}.content.{i}", f"unsupported part type {kind!r} (text, image_url, video_url)")
    out: dict[str, Any] = {}
    if texts:
        out["text"] = "\n".join(texts)
    if images:
        out["image"] = images[0] if len(images) == 1 else images
    if videos:
        out["video"] = videos[0] if len(videos) == 1 else videos
    return out


def to_input(item: Any, where: str, rank_fields: list[str] | None = None) -> Any:
    """One query or document as the core takes it (a string or a multimodal dict)."""
    if isinstance(item, str):
        return item
    if not isinstance(item, dict):
        raise _bad(where, f"expected a string or an object, got {type(item).__name__}")
    if set(item) == {"content"} or (set(item) <= {"content", "type"} and "content" in item):
        return content_parts(item["content"], where)
    if item and set(item) <= PROJECT_FIELDS and not rank_fields:
        try:
            return MultimodalInput.model_validate(item).model_dump(exclude_none=True)
        except ValidationError as exc:
            raise _bad(where, exc.errors()[0]["msg"]) from None
    return structured(item, where, rank_fields)


def structured(doc: dict[str, Any], where: str, rank_fields: list[str] | None) -> str:
    """A Cohere structured document as the text the reranker reads: ``key: value`` lines of ``rank_fields`` (all
    fields when not given), in that order."""
    fields = rank_fields or list(doc)
    lines = []
    for key in fields:
        if key not in doc:
            continue
        value = doc[key]
        text = value if isinstance(value, str) else repr(value)
        lines.append(f"{key}: {text}")
    if not lines:
        raise _bad(where, f"none of the rank_fields {fields} is in the document")
    if [key for key in fields if key in doc] == ["text"] and isinstance(doc["text"], str):
        return doc["text"]  # Cohere v1: a document's `text` alone is ranked as that text
    return "\n".join(lines)


def returned_document(item: Any) -> dict[str, Any]:
    """A document as a response returns it (Cohere, Jina and vLLM clients read ``document.text``)."""
    return {"text": item} if isinstance(item, str) else dict(item)


def raw_score(score: float) -> float:
    """The reranker's raw score: the "yes" minus "no" logit before the sigmoid (``relevance_score`` is its
    sigmoid), recovered from the score."""
    p = min(max(score, 1e-45), 1 - 1e-16)
    return math.log(p) - math.log1p(-p)
