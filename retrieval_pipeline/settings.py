"""What configures the project, in one place and without loading torch: the ``QWEN3VL_RAG_*`` environment variables
and the default checkpoint of each role (the command line, the server and the framework adapters read them here)."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "QWEN3VL_RAG_"  # every environment variable of the project starts with this

DEFAULT_EMBEDDING_MODEL = "Qwen/Qwen3-VL-Embedding-2B"
DEFAULT_RERANKER_MODEL = "Qwen/Qwen3-VL-Reranker-2B"
DEFAULT_GENERATOR_MODEL = "Qwen/Qwen3-VL-2B-Instruct"

# Qwen3-VL sees 16-pixel patches merged 2 x 2: one vision token per 32 x 32 pixels (pixel budgets are written as
# tokens times this; media.video derives the same number from qwen-vl-utils' own constants, and a test checks that
# the two agree)
PIXELS_PER_TOKEN = 32 * 32


def env(name: str, default: str | None = None) -> str | None:
    """``$QWEN3VL_RAG_<name>``, else ``default``."""
    return os.environ.get(ENV + name, default)


def cache_dir() -> Path:
    """Where the project keeps what it can make again (office documents converted to PDF, members extracted from
    mail and archives for a video reader): ``$QWEN3VL_RAG_CACHE``, else ``$XDG_CACHE_HOME/qwen3-vl-rag``
    (``~/.cache/qwen3-vl-rag``)."""
    given = env("CACHE")
    if given:
        return Path(given).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qwen3-vl-rag"
