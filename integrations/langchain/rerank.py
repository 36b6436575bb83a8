"""Qwen3-VL-Reranker as a LangChain document compressor (text, image and video documents, one batched pass)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.utils import from_env
from pydantic import ConfigDict, Field, model_validator

from retrieval_pipeline import InputError, Qwen3VLReranker

from .._common import collect_model_kwargs, image_input, in_thread

DEFAULT_MODEL = "Qwen/Qwen3-VL-Reranker-2B"


def document_to_input(doc: Document, image_key: str = "image", video_key: str = "video") -> dict[str, Any]:
    """What the model sees for a document: ``page_content`` plus the image / video named in its metadata."""
    item: dict[str, Any] = {}
    if doc.page_content:
        item["text"] = doc.page_content
    if doc.metadata.get(image_key) is not None:
        item["image"] = image_input(doc.metadata[image_key])
    if doc.metadata.get(video_key) is not None:
        item["video"] = doc.metadata[video_key]
    return item


class Qwen3VLRerank(BaseDocumentCompressor):
    """Rerank documents with a Qwen3-VL-Reranker checkpoint; keeps the ``top_n`` best and writes
    ``metadata["relevance_score"]``. Works inside ``ContextualCompressionRetriever``.

    ``Qwen3VLRerank(model="Qwen/Qwen3-VL-Reranker-2B", top_n=3, device="cuda")`` loads the model (``model``
    defaults to ``$QWEN3VL_RAG_RERANKER_MODEL``); ``Qwen3VLRerank(reranker=existing)`` shares a loaded one.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), extra="forbid")

    model: str = Field(default_factory=from_env("QWEN3VL_RAG_RERANKER_MODEL", default=DEFAULT_MODEL))
    top_n: int | None = Field(default=3, description="Documents to keep, best first (None keeps all).")
    instruction: str | None = Field(default=None, description="Task instruction; None = the model's default.")
    image_key: str = Field(default="image", description="Metadata key of a document's image (path / URL).")
    video_key: str = Field(default="video", description="Metadata key of a document's video (path / URL).")
    score_key: str = Field(default="relevance_score", description="Metadata key the score is written to.")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for Qwen3VLReranker.")
    reranker: Qwen3VLReranker | None = Field(default=None, exclude=True, description="A loaded core reranker.")

    @model_validator(mode="before")
    @classmethod
    def _collect_model_kwargs(cls, values: Any) -> Any:
        """Unknown keyword arguments (``max_pixels``, ``device``, ...) are core model arguments."""
        return collect_model_kwargs(cls.model_fields, values)

    @model_validator(mode="after")
    def _load(self) -> Qwen3VLRerank:
        if self.top_n is not None and self.top_n < 1:
            raise ValueError(f"top_n must be >= 1 or None, got {self.top_n}")
        if self.reranker is None:
            self.reranker = Qwen3VLReranker(self.model, **self.model_kwargs)
        elif self.model_kwargs:
            raise ValueError("pass either reranker= or model keyword arguments, not both")
        return self

    def rerank(self, documents: Sequence[Document], query: Any) -> list[tuple[int, float]]:
        """(index, score) for every document, best first."""
        inputs = []
        for i, doc in enumerate(documents):
            item = document_to_input(doc, self.image_key, self.video_key)
            if not item:
                raise InputError("no page_content, image or video to rank", index=doc.id or i, kind="document")
            inputs.append(item)
        try:
            return self.reranker.rerank(query, inputs, instruction=self.instruction)
        except InputError as exc:
            if exc.index is not None and exc.kind == "document":
                name = documents[exc.index].id or exc.index
                raise InputError(exc.reason, index=name, field=exc.field, kind="document") from None
            raise

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        ranked = self.rerank(documents, query)
        if self.top_n is not None:
            ranked = ranked[: self.top_n]
        out = []
        for index, score in ranked:
            doc = documents[index]
            out.append(
                Document(page_content=doc.page_content, metadata={**doc.metadata, self.score_key: score}, id=doc.id)
            )
        return out

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        return await in_thread(self.compress_documents, documents, query, callbacks)
