"""LangChain components on Qwen3-VL (install with ``pip install qwen3-vl-rag[langchain]``)."""

from .chat_model import ChatQwen3VL
from .embeddings import Qwen3VLEmbeddings
from .rerank import Qwen3VLRerank, document_to_input
from .retriever import Qwen3VLRetriever, hit_to_document
from .stores import add_images, add_media_documents, add_vectors

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
