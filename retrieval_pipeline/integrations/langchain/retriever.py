"""The two-stage pipeline (Qdrant -> Qwen3-VL reranker) as a LangChain retriever, usable in LCEL chains."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, field_validator, model_validator

from retrieval_pipeline import Qwen3VLEmbedder, Qwen3VLReranker
from retrieval_pipeline.client import RemoteEmbedder, RemoteReranker
from retrieval_pipeline.retriever import CANDIDATES, QUERY_INSTRUCTION, Hit, TwoStageRetriever, check_min_score
from retrieval_pipeline.store import VectorStore

from .._common import FromPath, default_store, deprecated_alias, hit_metadata, in_thread, rename_deprecated


def hit_to_document(hit: Hit) -> Document:
    """Text and PDF-page text as ``page_content``; an image's or a video's path under metadata ``image`` / ``video``."""
    metadata = {**hit_metadata(hit), "score": hit.score}
    if hit.rerank_score is not None:
        metadata["relevance_score"] = hit.rerank_score
    if hit.modality in ("image", "video"):
        metadata[hit.modality] = hit.source
    return Document(page_content=hit.text, metadata=metadata, id=hit.id)


class Qwen3VLRetriever(FromPath, BaseRetriever):
    """Query -> Qwen3-VL embedding -> top-N from Qdrant -> Qwen3-VL rerank -> top-``k`` documents. ``store``
    defaults to the embedded Qdrant Edge collection the command line indexes into (``qwen3vl-rag index``).

    ``min_score``: only documents scoring at least this, on the score they are ranked by (the rerank score, else
    the cosine: see :meth:`TwoStageRetriever.retrieve`); fewer than ``k``, or none, may come back.

    ``k`` (LangChain's name; ``top_k`` is its deprecated alias), ``filters`` and ``min_score`` may also be passed
    per call: ``retriever.invoke("a cat", k=3, min_score=0.5)``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    embedder: Qwen3VLEmbedder | RemoteEmbedder  # RemoteEmbedder: a running ``qwen3vl-rag serve``'s model
    store: VectorStore = Field(default_factory=default_store)
    reranker: Qwen3VLReranker | RemoteReranker | None = None
    k: int = Field(default=5, gt=0, description="Documents to return, best first.")
    candidates: int = Field(default=CANDIDATES, gt=0, description="First-stage (vector) hits handed to the reranker.")
    filters: dict[str, Any] | None = Field(default=None, description="Payload filters of the first stage.")
    query_instruction: str = Field(default=QUERY_INSTRUCTION, description="Instruction the query is embedded with.")
    min_score: float | None = Field(default=None, description="Only documents scoring at least this.")

    @model_validator(mode="before")
    @classmethod
    def _rename_deprecated(cls, values: Any) -> Any:
        return rename_deprecated(values, cls.__name__, {"top_k": "k"}) if isinstance(values, dict) else values

    @field_validator("min_score")
    @classmethod
    def _check_min_score(cls, value: float | None) -> float | None:
        check_min_score(value)
        return value

    top_k = deprecated_alias("top_k", "k", settable=True)

    def _pipeline(self) -> TwoStageRetriever:
        return TwoStageRetriever(
            self.embedder,
            self.store,
            self.reranker,
            candidates=self.candidates,
            query_instruction=self.query_instruction,
        )

    def _search(
        self, query: str, k: int | None, filters: dict[str, Any] | None, min_score: float | None = None
    ) -> list[Document]:
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"k must be a positive int (documents to return), got {k!r}")
        hits = self._pipeline().retrieve(
            query,
            top_k=self.k if k is None else k,
            filters=filters or self.filters,
            min_score=self.min_score if min_score is None else min_score,
        )
        return [hit_to_document(h) for h in hits]

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        filters: dict[str, Any] | None = None,
        min_score: float | None = None,
    ) -> list[Document]:
        return self._search(query, k, filters, min_score)

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        filters: dict[str, Any] | None = None,
        min_score: float | None = None,
    ) -> list[Document]:
        return await in_thread(self._search, query, k, filters, min_score)
