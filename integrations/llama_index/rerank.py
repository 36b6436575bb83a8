"""Qwen3-VL-Reranker as a LlamaIndex node postprocessor: text, image and video nodes in one batched pass."""

from __future__ import annotations

import base64
from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CallbackManager
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, ImageNode, MetadataMode, NodeWithScore, QueryBundle

from retrieval_pipeline import InputError, Qwen3VLReranker

from .._common import image_input, in_thread

DEFAULT_MODEL = "Qwen/Qwen3-VL-Reranker-2B"
RETRIEVAL_SCORE_KEY = "retrieval_score"


def node_to_input(node: BaseNode, video_key: str = "video_path") -> dict[str, Any]:
    """What the Qwen3-VL models see for a LlamaIndex node: its text, plus its image or video.

    Images: ``ImageNode.image`` (base64), ``image_path``, ``image_url``, or a ``Node``'s ``image_resource``.
    Videos: a ``Node``'s ``video_resource``, or a path / URL in ``node.metadata[video_key]``.
    """
    item: dict[str, Any] = {}
    text = node.get_content(metadata_mode=MetadataMode.NONE)
    if text:
        item["text"] = text
    image = None
    if isinstance(node, ImageNode):
        image = node.image or node.image_path or node.image_url
        if node.image:
            image = base64.b64decode(node.image)
    else:
        resource = getattr(node, "image_resource", None)
        if resource is not None:
            image = base64.b64decode(resource.data) if resource.data else (resource.path or resource.url)
    if image is not None:
        item["image"] = image_input(str(image) if not isinstance(image, bytes) else image)
    video = node.metadata.get(video_key) if node.metadata else None
    resource = getattr(node, "video_resource", None)
    if video is None and resource is not None:
        video = str(resource.path or resource.url) if (resource.path or resource.url) else None
    if video is not None:
        item["video"] = str(video)
    if not item:
        raise InputError(f"no text, image or video to rank ({type(node).__name__})", index=node.node_id, kind="node")
    return item


def query_to_input(query_bundle: QueryBundle) -> Any:
    if getattr(query_bundle, "image_path", None):
        return {"text": query_bundle.query_str, "image": query_bundle.image_path}
    return query_bundle.query_str


class Qwen3VLRerank(BaseNodePostprocessor):
    """Rerank retrieved nodes with a Qwen3-VL-Reranker checkpoint; ``NodeWithScore.score`` becomes the rerank
    score and the first-stage score is kept in ``node.metadata["retrieval_score"]``.

    ``Qwen3VLRerank(model="Qwen/Qwen3-VL-Reranker-2B", top_n=5, device="cuda")`` loads the model;
    ``Qwen3VLRerank(reranker=existing)`` shares an already loaded :class:`Qwen3VLReranker`.
    """

    model: str = Field(default=DEFAULT_MODEL, description="Hub id or local folder of the checkpoint.")
    top_n: int | None = Field(default=5, description="Nodes to keep, best first (None keeps all).")
    instruction: str | None = Field(default=None, description="Task instruction; None = the model's default.")
    video_metadata_key: str = Field(default="video_path", description="Node metadata key holding a video path.")
    keep_retrieval_score: bool = Field(default=True, description="Store the first-stage score in node metadata.")
    core_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for Qwen3VLReranker.")

    _reranker: Qwen3VLReranker = PrivateAttr()

    def __init__(
        self,
        model: str | None = None,
        *,
        top_n: int | None = 5,
        reranker: Qwen3VLReranker | None = None,
        instruction: str | None = None,
        video_metadata_key: str = "video_path",
        keep_retrieval_score: bool = True,
        callback_manager: CallbackManager | None = None,
        **core_kwargs: Any,
    ) -> None:
        if top_n is not None and top_n < 1:
            raise ValueError(f"top_n must be >= 1 or None, got {top_n}")
        if reranker is None:
            reranker = Qwen3VLReranker(model or DEFAULT_MODEL, **core_kwargs)
        elif core_kwargs:
            raise ValueError(f"pass either reranker= or model keyword arguments, not both ({sorted(core_kwargs)})")
        super().__init__(
            model=model or reranker.model_name_or_path,
            top_n=top_n,
            instruction=instruction,
            video_metadata_key=video_metadata_key,
            keep_retrieval_score=keep_retrieval_score,
            core_kwargs=core_kwargs,
            callback_manager=callback_manager or CallbackManager([]),
        )
        self._reranker = reranker

    @classmethod
    def class_name(cls) -> str:
        return "Qwen3VLRerank"

    @property
    def reranker(self) -> Qwen3VLReranker:
        return self._reranker

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("Qwen3VLRerank needs the query (query_bundle or query_str)")
        if not nodes:
            return []
        documents = [node_to_input(n.node, self.video_metadata_key) for n in nodes]
        try:
            scores = self._reranker.score(query_to_input(query_bundle), documents, instruction=self.instruction)
        except InputError as exc:
            if exc.index is not None and exc.kind == "document":
                raise InputError(
                    exc.reason, index=nodes[exc.index].node.node_id, field=exc.field, kind="node"
                ) from None
            raise
        out = []
        for node, score in zip(nodes, scores):
            if self.keep_retrieval_score and node.score is not None:
                node.node.metadata[RETRIEVAL_SCORE_KEY] = node.score
            out.append(NodeWithScore(node=node.node, score=score))
        out.sort(key=lambda n: -(n.score or 0.0))
        return out[: self.top_n] if self.top_n is not None else out

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        return await in_thread(self._postprocess_nodes, nodes, query_bundle)
