"""qwen3-vl-rag core engine: Qwen3-VL embedder and reranker (no agent framework imported here).

The names below load on first use: ``import retrieval_pipeline`` (and the command line's ``--help``) does not load
torch; ``from retrieval_pipeline import Qwen3VLEmbedder`` does.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import InputError, LimitError
    from .models.embedder import Qwen3VLEmbedder
    from .models.reranker import PreparedRerank, Qwen3VLReranker

# public name -> the module that defines it
_LAZY = {
    "InputError": ".errors",
    "LimitError": ".errors",
    "PreparedRerank": ".models.reranker",
    "Qwen3VLEmbedder": ".models.embedder",
    "Qwen3VLReranker": ".models.reranker",
}
__all__ = ["InputError", "LimitError", "PreparedRerank", "Qwen3VLEmbedder", "Qwen3VLReranker", "__version__"]

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
