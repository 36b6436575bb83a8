"""qwen3-vl-rag core engine: Qwen3-VL embedder and reranker (no agent framework imported here)."""

from .embedder import Qwen3VLEmbedder
from .media import InputError, LimitError
from .reranker import PreparedRerank, Qwen3VLReranker

__all__ = ["InputError", "LimitError", "PreparedRerank", "Qwen3VLEmbedder", "Qwen3VLReranker"]
__version__ = "0.1.0"
