"""The routes, one router per resource: ``embeddings``, ``rerank``, ``retrieval`` (search and ask) and ``info``
(health and models). Handlers check and shape a request; the work is the core's public methods."""

from .embeddings import router as embeddings_router
from .info import router as info_router
from .rerank import router as rerank_router
from .retrieval import router as retrieval_router

ROUTERS = (info_router, embeddings_router, rerank_router, retrieval_router)

__all__ = ["ROUTERS"]
