"""The ML engine: checkpoint loading and devices (``runtime``), prompts and tokens (``encoding``), batching, the
reranker's shared-prefix cache (``prefix_cache``), and the three models (``embedder``, ``reranker``,
``generator``). Imports no storage or serving code."""

from .embedder import Qwen3VLEmbedder
from .generator import Qwen3VLGenerator
from .reranker import PreparedRerank, Qwen3VLReranker

__all__ = ["PreparedRerank", "Qwen3VLEmbedder", "Qwen3VLGenerator", "Qwen3VLReranker"]
