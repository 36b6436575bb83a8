"""qwen3-vl-rag core engine: Qwen3-VL embedder and reranker (no agent framework imported here)."""

from .media import InputError, LimitError
from .models.embedder import Qwen3VLEmbedder
from .models.reranker import PreparedRerank, Qwen3VLReranker

__all__ = ["InputError", "LimitError", "PreparedRerank", "Qwen3VLEmbedder", "Qwen3VLReranker"]
__version__ = "0.1.0"
