"""The HTTP API (``qwen3vl-rag serve``): ``create_app`` and ``serve`` (``app``), the settings (``config``), the
wire format (``schemas``), one router per resource (``routes``), the gate (``guard``), per-request preparation
(``prepare``), the dynamic batcher (``batcher``) and the error bodies (``error_handlers``)."""

from .app import ServerConfig, create_app, serve

__all__ = ["ServerConfig", "create_app", "serve"]
