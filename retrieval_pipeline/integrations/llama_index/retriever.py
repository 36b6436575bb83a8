"""The two-stage pipeline (Qdrant -> Qwen3-VL reranker) as a LlamaIndex retriever."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle

from retrieval_pipeline import Qwen3VLEmbedder, Qwen3VLReranker
from retrieval_pipeline.retriever import CANDIDATES, QUERY_INSTRUCTION, TwoStageRetriever, check_min_score
from retrieval_pipeline.store import VectorStore

from .._common import FromPath, default_store, in_thread
from .nodes import hit_to_node, query_to_input

__all__ = ["Qwen3VLRetriever", "hit_to_node"]


class Qwen3VLRetriever(FromPath, BaseRetriever):
    """Query -> Qwen3-VL embedding -> top-N from Qdrant -> Qwen3-VL rerank -> top-k nodes. ``store`` defaults to
    the embedded Qdrant Edge collection the command line indexes into (``qwen3vl-rag index``).

    ``min_score``: only nodes scoring at least this, on the score they are ranked by (the rerank score, else the
    cosine: see :meth:`TwoStageRetriever.retrieve`); fewer than ``top_k``, or none, may come back.

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
        min_score: float | None = None,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        check_min_score(min_score)
        super().__init__(callback_manager=callback_manager)
        store = store if store is not None else default_store()  # what `qwen3vl-rag index` fills
        self.pipeline = TwoStageRetriever(
            embedder, store, reranker, candidates=candidates, query_instruction=query_instruction
        )
        self.top_k = top_k
        self.filters = filters
        self.min_score = min_score

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = query_to_input(query_bundle)
        hits = self.pipeline.retrieve(query, top_k=self.top_k, filters=self.filters, min_score=self.min_score)
        return [hit_to_node(h) for h in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await in_thread(self._retrieve, query_bundle)
