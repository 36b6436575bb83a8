"""The HTTP API (``qwen3vl-rag serve``): ``create_app`` and ``serve`` (``app``), the settings (``config``), the
wire format (``schemas``), one router per resource (``routes``), the gate (``guard``), per-request preparation
(``prepare``), the dynamic batcher (``batcher``) and the error bodies (``error_handlers``).

The names load on first use, so that the command line reads the settings (:mod:`.config`) without loading the
web stack and the models."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app, serve
    from .config import ServerConfig

_LAZY = {"ServerConfig": ".config", "create_app": ".app", "serve": ".app"}
__all__ = ["ServerConfig", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'retrieval_pipeline.serving' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
