"""Qwen3-VL-Embedding as a LlamaIndex ``MultiModalEmbedding`` (text, queries, images, videos, mixed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.embeddings.base import Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CallbackManager
from llama_index.core.embeddings import MultiModalEmbedding
from llama_index.core.schema import BaseNode, ImageType

from retrieval_pipeline import InputError, Qwen3VLEmbedder
from retrieval_pipeline.retriever import QUERY_INSTRUCTION

from .._common import (
    DEFAULT_EMBEDDING_MODEL,
    VIDEO_KEY,
    RebuiltWhenUnpickled,
    deprecated_alias,
    image_input,
    in_thread,
    init_core_model,
    video_input,
)
from .nodes import node_media, node_to_input

DEFAULT_MODEL = DEFAULT_EMBEDDING_MODEL  # kept for imports of the old name


class Qwen3VLEmbedding(RebuiltWhenUnpickled, MultiModalEmbedding):
    """Text, query, image, video and mixed embeddings in one space, from a Qwen3-VL-Embedding checkpoint.

    ``Qwen3VLEmbedding(model_name="Qwen/Qwen3-VL-Embedding-2B", max_pixels=..., device="cuda")`` loads the model
    (``model_name`` defaults to ``$QWEN3VL_RAG_EMBEDDING_MODEL``; other keyword arguments go to
    :class:`Qwen3VLEmbedder`); ``Qwen3VLEmbedding(embedder=existing)`` shares an already loaded one.
    Deprecated names still accepted: ``text_instruction`` (``document_instruction``), ``video_metadata_key``
    (``video_key``), ``core_kwargs`` (``model_kwargs``).
    """

    model_name: str = Field(default=DEFAULT_EMBEDDING_MODEL, description="Hub id or local folder of the checkpoint.")
    embed_batch_size: int = Field(default=8, gt=0, description="Inputs per call into the model.")
    query_instruction: str = Field(
        default=QUERY_INSTRUCTION, description="Instruction for queries (retrieval task description)."
    )
    document_instruction: str | None = Field(
        default=None, description="Instruction for documents (text, images, videos); None = the model's default."
    )
    dim: int | None = Field(default=None, description="Matryoshka dimension (truncate, then normalise); None = full.")
    video_key: str = Field(default=VIDEO_KEY, description="Node metadata key holding a video path / URL.")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to Qwen3VLEmbedder (max_pixels, device, ...)."
    )

    _embedder: Qwen3VLEmbedder = PrivateAttr()

    def __init__(
        self,
        model_name: str | None = None,
        *,
        embedder: Qwen3VLEmbedder | None = None,
        query_instruction: str = QUERY_INSTRUCTION,
        document_instruction: str | None = None,
        dim: int | None = None,
        embed_batch_size: int = 8,
        video_key: str = VIDEO_KEY,
        model_kwargs: dict[str, Any] | None = None,
        callback_manager: CallbackManager | None = None,
        **kwargs: Any,
    ) -> None:
        embedder, name, opts = init_core_model(
            "embedding",
            Qwen3VLEmbedder,
            embedder,
            model_name,
            kwargs,
            type(self),
            document_instruction=document_instruction,
            video_key=video_key,
            model_kwargs=model_kwargs,
        )
        super().__init__(
            model_name=name,
            embed_batch_size=embed_batch_size,
            query_instruction=query_instruction,
            dim=embedder.check_dim(dim),
            callback_manager=callback_manager,
            **opts,  # document_instruction, video_key, model_kwargs
        )
        self._embedder = embedder

    # deprecated names ----------------------------------------------------------------------------------------
    text_instruction = deprecated_alias("text_instruction", "document_instruction")
    video_metadata_key = deprecated_alias("video_metadata_key", "video_key")
    core_kwargs = deprecated_alias("core_kwargs", "model_kwargs")

    @classmethod
    def class_name(cls) -> str:
        return "Qwen3VLEmbedding"

    @property
    def embedder(self) -> Qwen3VLEmbedder:
        return self._embedder

    def _embed(self, inputs: list[Any], instruction: str | None) -> list[Embedding]:
        vectors = self._embedder.embed(inputs, instruction=instruction, dim=self.dim, batch_size=self.embed_batch_size)
        return vectors.tolist()

    # text and queries ----------------------------------------------------------------------------------------
    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed([query], self.query_instruction)[0]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await in_thread(self._get_query_embedding, query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await in_thread(self._get_text_embedding, text)

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        for i, text in enumerate(texts):
            if not text.strip():  # most often an image or video node on LlamaIndex's text-only path
                raise InputError(
                    "empty text: LlamaIndex's text path (VectorStoreIndex, get_text_embedding) passes a node's text "
                    "only, so an image or video node would get the vector of nothing. Embed nodes with the "
                    "embedding as a transformation first (IngestionPipeline(transformations=[..., embed_model]) or "
                    "embed_model(nodes): VectorStoreIndex keeps their vectors), or use MultiModalVectorStoreIndex",
                    index=i,
                    kind="text",
                )
        return self._embed(list(texts), self.document_instruction)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await in_thread(self._get_text_embeddings, texts)

    # images --------------------------------------------------------------------------------------------------
    # LlamaIndex embeds documents' images in batches (``get_image_embedding_batch``: MultiModalVectorStoreIndex) and
    # an image query alone (``get_image_embedding``: ``image_to_image_retrieve``): the single call is the query, and
    # takes the query instruction, as ``qwen3vl-rag search --image`` and the server do.
    def _get_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return self._embed([{"image": image_input(img_file_path)}], self.query_instruction)[0]

    async def _aget_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return await in_thread(self._get_image_embedding, img_file_path)

    def _get_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        return self._embed([{"image": image_input(p)} for p in img_file_paths], self.document_instruction)

    async def _aget_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        return await in_thread(self._get_image_embeddings, img_file_paths)

    # beyond LlamaIndex's interface: video, mixed objects, whole nodes ----------------------------------------
    def get_video_embedding(self, video: Any, *, fps: float | None = None, max_frames: int | None = None) -> Embedding:
        """A video file / URL or a list of frames."""
        return self._embed([video_input(video, fps=fps, max_frames=max_frames)], self.document_instruction)[0]

    def get_multimodal_embedding(self, obj: dict[str, Any] | str, *, query: bool = False) -> Embedding:
        """A multimodal object (``{"text", "image", "video", ...}``), as a document or as a query."""
        return self._embed([obj], self.query_instruction if query else self.document_instruction)[0]

    async def aget_multimodal_embedding(self, obj: dict[str, Any] | str, *, query: bool = False) -> Embedding:
        return await in_thread(self.get_multimodal_embedding, obj, query=query)

    # as a transformation (IngestionPipeline, VectorStoreIndex's transformations) ------------------------------
    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        """Embed nodes in place: text nodes as LlamaIndex does (their text, the cache and events included), nodes
        with an image or a video as that image / video with their text, never as their text alone."""
        media = [n for n in nodes if node_media(n, self.video_key)]
        text = [n for n in nodes if not node_media(n, self.video_key)]
        if text:
            super().__call__(text, **kwargs)
        if media:
            for node, vector in zip(media, self.get_node_embeddings(media)):
                node.embedding = vector
        return nodes

    async def acall(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        return await in_thread(self.__call__, nodes, **kwargs)

    def node_input(self, node: BaseNode) -> Any:
        """What the model sees for a node: its text, plus its image (ImageNode) or video (metadata)."""
        return node_to_input(node, self.video_key)

    def get_node_embeddings(self, nodes: list[BaseNode]) -> list[Embedding]:
        """Embed nodes as whole items: an ImageNode's image with its text, a node's video with its text."""
        return self._embed([self.node_input(n) for n in nodes], self.document_instruction)
