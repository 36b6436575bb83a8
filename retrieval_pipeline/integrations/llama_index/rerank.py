"""Qwen3-VL-Reranker as a LlamaIndex node postprocessor: text, image and video nodes in one batched pass, reported
through LlamaIndex's reranking callback (``CBEventType.RERANKING``) and instrumentation events
(``ReRankStartEvent`` / ``ReRankEndEvent``) like its own rerankers."""

from __future__ import annotations

from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle

from retrieval_pipeline import InputError, Qwen3VLReranker
from retrieval_pipeline.retriever import check_min_score

from .._common import (
    DEFAULT_RERANKER_MODEL,
    VIDEO_KEY,
    RebuiltWhenUnpickled,
    deprecated_alias,
    in_thread,
    init_core_model,
)
from .nodes import RETRIEVAL_SCORE_KEY, node_to_input, query_to_input

__all__ = ["Qwen3VLRerank", "node_to_input", "query_to_input"]

DEFAULT_MODEL = DEFAULT_RERANKER_MODEL  # kept for imports of the old name
dispatcher = get_dispatcher(__name__)


def keep_score(node: BaseNode, score: float) -> None:
    """The first-stage score into the node's metadata, out of what the LLM and the embedding see of it (else
    prompts would read "retrieval_score: 0.77...")."""
    node.metadata[RETRIEVAL_SCORE_KEY] = score
    for keys in (node.excluded_llm_metadata_keys, node.excluded_embed_metadata_keys):
        if RETRIEVAL_SCORE_KEY not in keys:
            keys.append(RETRIEVAL_SCORE_KEY)


class Qwen3VLRerank(RebuiltWhenUnpickled, BaseNodePostprocessor):
    """Rerank retrieved nodes with a Qwen3-VL-Reranker checkpoint; ``NodeWithScore.score`` becomes the rerank
    score and the first-stage score is kept in ``node.metadata["retrieval_score"]``.

    ``Qwen3VLRerank(model="Qwen/Qwen3-VL-Reranker-2B", top_n=5, device="cuda")`` loads the model (``model``
    defaults to ``$QWEN3VL_RAG_RERANKER_MODEL``; other keyword arguments go to :class:`Qwen3VLReranker`);
    ``Qwen3VLRerank(reranker=existing)`` shares an already loaded one. ``min_score`` (also accepted as
    ``similarity_cutoff``, the name of LlamaIndex's ``SimilarityPostprocessor``) leaves out nodes whose rerank score
    (0..1) is below it, before ``top_n``: fewer nodes, or none, may come back. Deprecated names still accepted:
    ``video_metadata_key`` (``video_key``), ``core_kwargs`` (``model_kwargs``).
    """

    model: str = Field(default=DEFAULT_RERANKER_MODEL, description="Hub id or local folder of the checkpoint.")
    top_n: int | None = Field(default=5, description="Nodes to keep, best first (None keeps all).")
    min_score: float | None = Field(default=None, description="Only nodes with a rerank score at least this.")
    instruction: str | None = Field(default=None, description="Task instruction; None = the model's default.")
    video_key: str = Field(default=VIDEO_KEY, description="Node metadata key holding a video path / URL.")
    keep_retrieval_score: bool = Field(default=True, description="Store the first-stage score in node metadata.")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for Qwen3VLReranker.")

    _reranker: Qwen3VLReranker = PrivateAttr()

    def __init__(
        self,
        model: str | None = None,
        *,
        top_n: int | None = 5,
        min_score: float | None = None,
        similarity_cutoff: float | None = None,
        reranker: Qwen3VLReranker | None = None,
        instruction: str | None = None,
        video_key: str = VIDEO_KEY,
        keep_retrieval_score: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        callback_manager: CallbackManager | None = None,
        **kwargs: Any,
    ) -> None:
        if top_n is not None and top_n < 1:
            raise ValueError(f"top_n must be >= 1 or None, got {top_n}")
        if similarity_cutoff is not None:
            if min_score is not None:
                raise ValueError("Qwen3VLRerank: pass min_score or similarity_cutoff (the same cut-off), not both")
            min_score = similarity_cutoff
        check_min_score(min_score)
        reranker, name, opts = init_core_model(
            "reranker",
            Qwen3VLReranker,
            reranker,
            model,
            kwargs,
            type(self),
            video_key=video_key,
            min_score=min_score,
            model_kwargs=model_kwargs,
        )
        super().__init__(
            model=name,
            top_n=top_n,
            instruction=instruction,
            keep_retrieval_score=keep_retrieval_score,
            callback_manager=callback_manager or CallbackManager([]),
            **opts,  # video_key, min_score, model_kwargs
        )
        self._reranker = reranker

    @classmethod
    def class_name(cls) -> str:
        return "Qwen3VLRerank"

    @property
    def reranker(self) -> Qwen3VLReranker:
        return self._reranker

    # deprecated names
    video_metadata_key = deprecated_alias("video_metadata_key", "video_key")
    core_kwargs = deprecated_alias("core_kwargs", "model_kwargs")

    def _scores(self, nodes: list[NodeWithScore], query_bundle: QueryBundle) -> list[float]:
        documents = [node_to_input(n.node, self.video_key) for n in nodes]
        try:
            return self._reranker.score(query_to_input(query_bundle), documents, instruction=self.instruction)
        except InputError as exc:
            if exc.index is not None and exc.kind == "document":
                raise InputError(
                    exc.reason, index=nodes[exc.index].node.node_id, field=exc.field, kind="node"
                ) from None
            raise

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("Qwen3VLRerank needs the query (query_bundle or query_str)")
        if not nodes:
            return []
        top_n = self.top_n if self.top_n is not None else len(nodes)
        dispatcher.event(ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=top_n, model_name=self.model))
        payload = {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.model,
            EventPayload.QUERY_STR: query_bundle.query_str,
            EventPayload.TOP_K: top_n,
        }
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
            scores = self._scores(nodes, query_bundle)
            out = []
            for node, score in zip(nodes, scores):
                if self.keep_retrieval_score and node.score is not None:
                    keep_score(node.node, node.score)
                out.append(NodeWithScore(node=node.node, score=score))
            out.sort(key=lambda n: -(n.score or 0.0))
            if self.min_score is not None:
                out = [n for n in out if n.score is not None and n.score >= self.min_score]
            out = out[:top_n]
            event.on_end(payload={EventPayload.NODES: out})
        dispatcher.event(ReRankEndEvent(nodes=out))
        return out

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        return await in_thread(self._postprocess_nodes, nodes, query_bundle)
