"""The routes, one router per resource: ``embeddings``, ``rerank``, ``retrieval`` (search and ask), ``info``
(health and models), ``chat`` (OpenAI chat completions over the corpus), ``items`` (a stored item, its
thumbnail and its media, by point id), ``vector_stores`` (files and vector stores in OpenAI's shape) and ``page``
(the search page at ``/``). Handlers check and shape a request; the work is the core's public methods."""

from .chat import router as chat_router
from .embeddings import router as embeddings_router
from .info import router as info_router
from .items import router as items_router
from .page import router as page_router
from .rerank import router as rerank_router
from .retrieval import router as retrieval_router
from .vector_stores import router as vector_stores_router

ROUTERS = (
    info_router,
    embeddings_router,
    rerank_router,
    retrieval_router,
    chat_router,
    items_router,
    vector_stores_router,
    page_router,
)

__all__ = ["ROUTERS"]
