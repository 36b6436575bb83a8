"""The HTTP API (``qwen3vl-rag serve``): the app and its routes (``app``) and the dynamic batcher (``batcher``)."""

from .app import ServerConfig, create_app, serve

__all__ = ["ServerConfig", "create_app", "serve"]
