"""Version 0.2's import path: the same objects as :mod:`retrieval_pipeline.integrations.llama_index`."""

from retrieval_pipeline.integrations.llama_index import (
    Qwen3VLEmbedding,
    Qwen3VLLLM,
    Qwen3VLRerank,
    Qwen3VLRetriever,
    hit_to_node,
    node_to_input,
    query_to_input,
)

__all__ = [
    "Qwen3VLEmbedding",
    "Qwen3VLLLM",
    "Qwen3VLRerank",
    "Qwen3VLRetriever",
    "hit_to_node",
    "node_to_input",
    "query_to_input",
]
