"""qwen3-vl-rag core engine: Qwen3-VL embedder and reranker (no agent framework imported here).

The names below load on first use: ``import retrieval_pipeline`` (and the command line's ``--help``) does not load
torch; ``from retrieval_pipeline import Qwen3VLEmbedder`` does.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import (
        CollectionMismatchError,
        CollectionNotFoundError,
        InputError,
        LimitError,
        ModelLoadError,
        RAGError,
        StoreError,
    )
    from .ingest import Indexer, IndexReport, IngestOptions
    from .layout import SearchOptions, VectorLayout
    from .models.embedder import Qwen3VLEmbedder
    from .models.generator import Answer, Qwen3VLGenerator
    from .models.reranker import PreparedRerank, Qwen3VLReranker
    from .pipeline import ModelSpec, RAGPipeline, RetrievalSettings, Staging
    from .retriever import Hit, TwoStageRetriever
    from .store import VectorStore, open_store

# public name -> the module that defines it
_LAZY = {
    "CollectionMismatchError": ".errors",
    "CollectionNotFoundError": ".errors",
    "InputError": ".errors",
    "LimitError": ".errors",
    "ModelLoadError": ".errors",
    "RAGError": ".errors",
    "StoreError": ".errors",
    "Qwen3VLEmbedder": ".models.embedder",
    "PreparedRerank": ".models.reranker",
    "Qwen3VLReranker": ".models.reranker",
    "Answer": ".models.generator",
    "Qwen3VLGenerator": ".models.generator",
    "VectorStore": ".store",
    "open_store": ".store",
    "SearchOptions": ".layout",
    "VectorLayout": ".layout",
    "IndexReport": ".ingest",
    "Indexer": ".ingest",
    "IngestOptions": ".ingest",
    "Hit": ".retriever",
    "TwoStageRetriever": ".retriever",
    "ModelSpec": ".pipeline",
    "RAGPipeline": ".pipeline",
    "RetrievalSettings": ".pipeline",
    "Staging": ".pipeline",
}
__all__ = [
    "Answer",
    "CollectionMismatchError",
    "CollectionNotFoundError",
    "Hit",
    "IndexReport",
    "Indexer",
    "IngestOptions",
    "InputError",
    "LimitError",
    "ModelLoadError",
    "ModelSpec",
    "PreparedRerank",
    "Qwen3VLEmbedder",
    "Qwen3VLGenerator",
    "Qwen3VLReranker",
    "RAGError",
    "RAGPipeline",
    "RetrievalSettings",
    "SearchOptions",
    "Staging",
    "StoreError",
    "TwoStageRetriever",
    "VectorLayout",
    "VectorStore",
    "open_store",
    "__version__",
]

try:
    __version__ = version("qwen3-vl-rag")  # one source: pyproject.toml
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'retrieval_pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
