"""The two-stage pipeline (Qdrant -> Qwen3-VL reranker) as a LangChain retriever, usable in LCEL chains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from retrieval_pipeline import Qwen3VLEmbedder, Qwen3VLReranker
from retrieval_pipeline.retriever import CANDIDATES, QUERY_INSTRUCTION, Hit, TwoStageRetriever
from retrieval_pipeline.store import EdgeStore, VectorStore, default_db

from .._common import in_thread


def hit_to_document(hit: Hit) -> Document:
    """Text and PDF-page text as ``page_content``; an image's or a video's path under metadata ``image`` / ``video``."""
    metadata = {k: v for k, v in hit.payload.items() if k not in ("text", "item")}
    metadata.update(vector_score=hit.vector_score, score=hit.score)
    if hit.rerank_score is not None:
        metadata["relevance_score"] = hit.rerank_score
    if hit.modality in ("image", "video"):
        metadata[hit.modality] = hit.source
    return Document(page_content=hit.text, metadata=metadata, id=hit.id)


class Qwen3VLRetriever(BaseRetriever):
    """Query -> Qwen3-VL embedding -> top-N from Qdrant -> Qwen3-VL rerank -> top-k documents. ``store`` defaults
    to the embedded Qdrant Edge collection the command line indexes into (``qwen3vl-rag index``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    embedder: Qwen3VLEmbedder
    store: VectorStore = Field(default_factory=lambda: EdgeStore(default_db(), "default"))
    reranker: Qwen3VLReranker | None = None
    top_k: int = Field(default=5, gt=0)
    candidates: int = Field(default=CANDIDATES, gt=0)
    filters: dict[str, Any] | None = None
    query_instruction: str = QUERY_INSTRUCTION

    @classmethod
    def from_path(
        cls,
        db: str | Path,
        *,
        embedding_model: str,
        reranker_model: str | None = None,
        collection: str = "default",
        **kwargs: Any,
    ) -> Qwen3VLRetriever:
        """Open an embedded Qdrant Edge collection (e.g. one built by ``qwen3vl-rag index``)."""
        reranker = Qwen3VLReranker(reranker_model) if reranker_model else None
        return cls(
            embedder=Qwen3VLEmbedder(embedding_model), store=EdgeStore(db, collection), reranker=reranker, **kwargs
        )

    def _pipeline(self) -> TwoStageRetriever:
        return TwoStageRetriever(
            self.embedder,
            self.store,
            self.reranker,
            candidates=self.candidates,
            query_instruction=self.query_instruction,
        )

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        hits = self._pipeline().retrieve(query, top_k=self.top_k, filters=self.filters)
        return [hit_to_document(h) for h in hits]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        hits = await in_thread(self._pipeline().retrieve, query, top_k=self.top_k, filters=self.filters)
        return [hit_to_document(h) for h in hits]
