"""LlamaIndex components on Qwen3-VL (install with ``pip install qwen3-vl-rag[llama-index]``)."""

from .embeddings import Qwen3VLEmbedding
from .llm import Qwen3VLLLM
from .nodes import hit_to_node, node_to_input, query_to_input
from .rerank import Qwen3VLRerank
from .retriever import Qwen3VLRetriever

__all__ = [
    "Qwen3VLEmbedding",
    "Qwen3VLLLM",
    "Qwen3VLRerank",
    "Qwen3VLRetriever",
    "hit_to_node",
    "node_to_input",
    "query_to_input",
]
