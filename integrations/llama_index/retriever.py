"""The two-stage pipeline (Qdrant -> Qwen3-VL reranker) as a LlamaIndex retriever."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle, TextNode

from retrieval_pipeline import Qwen3VLEmbedder, Qwen3VLReranker
from retrieval_pipeline.retriever import CANDIDATES, QUERY_INSTRUCTION, Hit, TwoStageRetriever
from retrieval_pipeline.store import EdgeStore, VectorStore, default_db

from .rerank import query_to_input


def hit_to_node(hit: Hit) -> NodeWithScore:
    """Images become ImageNodes (image_path); PDF pages carry their text and page; videos their path."""
    metadata = {k: v for k, v in hit.payload.items() if k not in ("text", "item")}
    metadata["vector_score"] = hit.vector_score
    if hit.rerank_score is not None:
        metadata["rerank_score"] = hit.rerank_score
    if hit.modality == "image":
        node: TextNode = ImageNode(id_=hit.id, image_path=hit.source, text=hit.text, metadata=metadata)
    else:
        if hit.modality == "video":
            metadata["video_path"] = hit.source
        node = TextNode(id_=hit.id, text=hit.text, metadata=metadata)
    return NodeWithScore(node=node, score=hit.score)


class Qwen3VLRetriever(BaseRetriever):
    """Query -> Qwen3-VL embedding -> top-N from Qdrant -> Qwen3-VL rerank -> top-k nodes. ``store`` defaults to
    the embedded Qdrant Edge collection the command line indexes into (``qwen3vl-rag index``).

    Works wherever LlamaIndex takes a retriever, e.g. ``RetrieverQueryEngine.from_args(retriever, llm=...)``.
    """

    def __init__(
        self,
        embedder: Qwen3VLEmbedder,
        store: VectorStore | None = None,
        reranker: Qwen3VLReranker | None = None,
        *,
        top_k: int = 5,
        candidates: int = CANDIDATES,
        filters: dict[str, Any] | None = None,
        query_instruction: str = QUERY_INSTRUCTION,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        super().__init__(callback_manager=callback_manager)
        store = store if store is not None else EdgeStore(default_db(), "default")  # what `qwen3vl-rag index` fills
        self.pipeline = TwoStageRetriever(
            embedder, store, reranker, candidates=candidates, query_instruction=query_instruction
        )
        self.top_k = top_k
        self.filters = filters

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
        return cls(Qwen3VLEmbedder(embedding_model), EdgeStore(db, collection), reranker, **kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self.pipeline.retrieve(query_to_input(query_bundle), top_k=self.top_k, filters=self.filters)
        return [hit_to_node(h) for h in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        import asyncio

        return await asyncio.to_thread(self._retrieve, query_bundle)
