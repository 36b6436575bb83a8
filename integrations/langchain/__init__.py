"""Version 0.2's import path: the same objects as :mod:`retrieval_pipeline.integrations.langchain`."""

from retrieval_pipeline.integrations.langchain import (
    ChatQwen3VL,
    Qwen3VLEmbeddings,
    Qwen3VLRerank,
    Qwen3VLRetriever,
    add_images,
    add_media_documents,
    add_vectors,
    document_to_input,
    hit_to_document,
)

__all__ = [
    "ChatQwen3VL",
    "Qwen3VLEmbeddings",
    "Qwen3VLRerank",
    "Qwen3VLRetriever",
    "add_images",
    "add_media_documents",
    "add_vectors",
    "document_to_input",
    "hit_to_document",
]
