"""What configures the project, in one place and without loading torch: the ``QWEN3VL_RAG_*`` environment variables
and the default checkpoint of each role (the command line, the server and the framework adapters read them here)."""

from __future__ import annotations

import os

ENV = "QWEN3VL_RAG_"  # every environment variable of the project starts with this

DEFAULT_EMBEDDING_MODEL = "Qwen/Qwen3-VL-Embedding-2B"
DEFAULT_RERANKER_MODEL = "Qwen/Qwen3-VL-Reranker-2B"
DEFAULT_GENERATOR_MODEL = "Qwen/Qwen3-VL-2B-Instruct"


def env(name: str, default: str | None = None) -> str | None:
    """``$QWEN3VL_RAG_<name>``, else ``default``."""
    return os.environ.get(ENV + name, default)
