"""Qwen3-VL-Embedding as LangChain ``Embeddings`` (text, queries, images, videos, mixed objects)."""

from __future__ import annotations

from typing import Any, ClassVar

from langchain_core.embeddings import Embeddings
from langchain_core.utils import from_env
from pydantic import BaseModel, ConfigDict, Field, model_validator

from retrieval_pipeline import Qwen3VLEmbedder
from retrieval_pipeline.retriever import QUERY_INSTRUCTION

from .._common import (
    DEFAULT_EMBEDDING_MODEL,
    MODEL_ENV,
    RebuiltWhenUnpickled,
    collect_model_kwargs,
    image_input,
    in_thread,
    load_into,
    video_input,
)

DEFAULT_MODEL = DEFAULT_EMBEDDING_MODEL  # kept for imports of the old name


class Qwen3VLEmbeddings(RebuiltWhenUnpickled, BaseModel, Embeddings):
    """Qwen3-VL-Embedding for LangChain.

    ``Qwen3VLEmbeddings(model_name="Qwen/Qwen3-VL-Embedding-2B", max_pixels=..., device="cuda")`` loads the model
    (``model_name`` defaults to ``$QWEN3VL_RAG_EMBEDDING_MODEL``); ``Qwen3VLEmbeddings(embedder=existing)`` shares
    a loaded :class:`Qwen3VLEmbedder`. Other keyword arguments go to :class:`Qwen3VLEmbedder`.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), extra="forbid")

    model_name: str = Field(default_factory=from_env(MODEL_ENV["embedding"], default=DEFAULT_EMBEDDING_MODEL))
    query_instruction: str = Field(default=QUERY_INSTRUCTION, description="Instruction for queries.")
    document_instruction: str | None = Field(default=None, description="Instruction for documents; None = default.")
    dim: int | None = Field(default=None, description="Matryoshka dimension (truncate, then normalise).")
    batch_size: int = Field(default=8, gt=0, description="Inputs per model batch.")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for Qwen3VLEmbedder.")
    embedder: Qwen3VLEmbedder | None = Field(default=None, exclude=True, description="A loaded core embedder.")
    _core_field: ClassVar[str] = "embedder"

    @model_validator(mode="before")
    @classmethod
    def _collect_model_kwargs(cls, values: Any) -> Any:
        """Unknown keyword arguments (``max_pixels``, ``device``, ...) are core model arguments; deprecated names
        (``text_instruction``) are renamed."""
        return collect_model_kwargs(cls.model_fields, values, cls.__name__)

    @model_validator(mode="after")
    def _load(self) -> Qwen3VLEmbeddings:
        load_into(self, Qwen3VLEmbedder, "embedder", "model_name")
        self.embedder.check_dim(self.dim)
        return self

    def _embed(self, inputs: list[Any], instruction: str | None) -> list[list[float]]:
        if not inputs:
            return []
        vectors = self.embedder.embed(inputs, instruction=instruction, dim=self.dim, batch_size=self.batch_size)
        return vectors.tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._embed(_as_list(texts, "texts"), self.document_instruction)

    def embed_query(self, text: str) -> list[float]:
        return self._embed([text], self.query_instruction)[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await in_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await in_thread(self.embed_query, text)

    def embed_image(self, uris: list[str]) -> list[list[float]]:
        """Images by path / URL / data URI (the convention of LangChain's OpenCLIP embeddings)."""
        return self._embed([{"image": image_input(u)} for u in _as_list(uris, "uris")], self.document_instruction)

    def embed_image_query(self, uri: Any) -> list[float]:
        """An image as a query (the query instruction, as ``qwen3vl-rag search --image`` and the server embed it):
        ``vector_store.similarity_search_by_vector(emb.embed_image_query("cat.jpg"))``."""
        return self._embed([{"image": image_input(uri)}], self.query_instruction)[0]

    def embed_video(
        self, videos: list[Any], *, fps: float | None = None, max_frames: int | None = None
    ) -> list[list[float]]:
        """Video files / URLs, or lists of frames."""
        items = [video_input(v, fps=fps, max_frames=max_frames) for v in _as_list(videos, "videos")]
        return self._embed(items, self.document_instruction)

    def embed_multimodal(self, objects: list[dict[str, Any] | str], *, query: bool = False) -> list[list[float]]:
        """Multimodal objects (``{"text", "image", "video", ...}``), as documents or as queries."""
        return self._embed(_as_list(objects, "objects"), self.query_instruction if query else self.document_instruction)

    async def aembed_multimodal(self, objects: list[dict[str, Any] | str], *, query: bool = False) -> list[list[float]]:
        return await in_thread(self.embed_multimodal, objects, query=query)


def _as_list(values: Any, name: str) -> list[Any]:
    """A list of inputs; a lone str or dict is refused (``list("hello")`` would embed five letters)."""
    if isinstance(values, (str, bytes, dict)):
        raise TypeError(f"{name} must be a list, got a single {type(values).__name__}: wrap it in a list")
    return list(values)
