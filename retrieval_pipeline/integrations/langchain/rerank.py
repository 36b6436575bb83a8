"""Qwen3-VL-Reranker as a LangChain document compressor (text, image and video documents, one batched pass)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.utils import from_env
from pydantic import ConfigDict, Field, model_validator

from retrieval_pipeline import InputError, Qwen3VLReranker
from retrieval_pipeline.retriever import check_min_score

from .._common import (
    DEFAULT_RERANKER_MODEL,
    IMAGE_KEY,
    MODEL_ENV,
    VIDEO_KEY,
    RebuiltWhenUnpickled,
    collect_model_kwargs,
    in_thread,
    load_into,
    media_input,
)

DEFAULT_MODEL = DEFAULT_RERANKER_MODEL  # kept for imports of the old name


def document_to_input(doc: Document, image_key: str = IMAGE_KEY, video_key: str = VIDEO_KEY) -> dict[str, Any]:
    """What the model sees for a document: ``page_content`` plus the image / video named in its metadata."""
    return media_input(doc.page_content, doc.metadata.get(image_key), doc.metadata.get(video_key))


class Qwen3VLRerank(RebuiltWhenUnpickled, BaseDocumentCompressor):
    """Rerank documents with a Qwen3-VL-Reranker checkpoint; keeps the ``top_n`` best and writes
    ``metadata["relevance_score"]``. Works inside ``ContextualCompressionRetriever``.

    ``Qwen3VLRerank(model="Qwen/Qwen3-VL-Reranker-2B", top_n=3, device="cuda")`` loads the model (``model``
    defaults to ``$QWEN3VL_RAG_RERANKER_MODEL``); ``Qwen3VLRerank(reranker=existing)`` shares a loaded one.
    ``min_score`` leaves out documents whose rerank score (0..1) is below it, before ``top_n``: fewer documents, or
    none, may come back.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), extra="forbid")

    model: str = Field(default_factory=from_env(MODEL_ENV["reranker"], default=DEFAULT_RERANKER_MODEL))
    top_n: int | None = Field(default=3, description="Documents to keep, best first (None keeps all).")
    min_score: float | None = Field(default=None, description="Only documents with a rerank score at least this.")
    instruction: str | None = Field(default=None, description="Task instruction; None = the model's default.")
    image_key: str = Field(default=IMAGE_KEY, description="Metadata key of a document's image (path / URL).")
    video_key: str = Field(default=VIDEO_KEY, description="Metadata key of a document's video (path / URL).")
    score_key: str = Field(default="relevance_score", description="Metadata key the score is written to.")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for Qwen3VLReranker.")
    reranker: Qwen3VLReranker | None = Field(default=None, exclude=True, description="A loaded core reranker.")
    _core_field: ClassVar[str] = "reranker"

    @model_validator(mode="before")
    @classmethod
    def _collect_model_kwargs(cls, values: Any) -> Any:
        """Unknown keyword arguments (``max_pixels``, ``device``, ...) are core model arguments."""
        return collect_model_kwargs(cls.model_fields, values, cls.__name__)

    @model_validator(mode="after")
    def _load(self) -> Qwen3VLRerank:
        if self.top_n is not None and self.top_n < 1:
            raise ValueError(f"top_n must be >= 1 or None, got {self.top_n}")
        check_min_score(self.min_score)
        load_into(self, Qwen3VLReranker, "reranker", "model")
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
        if self.min_score is not None:
            ranked = [(index, score) for index, score in ranked if score >= self.min_score]
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
