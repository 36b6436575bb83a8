"""``GET /health`` (details only for authorised callers) and ``GET /v1/models`` (model names, never folders)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ..guard import principal_of
from ..keys import Role
from ..state import State, model_name

router = APIRouter(tags=["info"])


def fingerprint(component: Any) -> str:
    from ...store import model_fingerprint

    cached = getattr(component, "_fingerprint", None)
    if cached is None:
        cached = model_fingerprint(str(component.model_name_or_path), getattr(component, "revision", None))
        component._fingerprint = cached
    return cached


@router.get("/health")
async def health(request: Request, state: State) -> dict[str, Any]:
    body: dict[str, Any] = {"status": "ok"}
    key = principal_of(request, state.config, request.app.state.keys)
    if key is not None:
        served = state.pipeline.store.collection if state.pipeline is not None else None
        body.update(
            {
                "embedding_model": model_name(state.embedder),
                "reranker_model": model_name(state.reranker),
                "collection": served if served is not None and key.may_use(served) else None,
                "batches": {"embeddings": state.embed_batcher.batches, "embedded_items": state.embed_batcher.items},
                "in_flight": request.app.state.admission.in_flight,
                "waiting": request.app.state.admission.waiting,
            }
        )
        watch = state.watch_status()
        if watch is not None and served is not None and key.may_use(served):
            body["watch"] = watch  # serve --watch: last sync, pending changes, totals
        if state.jobs is not None and key.can(Role.ADMIN) and key.collections == ("*",):
            body["indexing"] = state.jobs.counts()  # every team's files: for the operator only
    return body


@router.get("/v1/models")
async def models(state: State) -> dict[str, Any]:
    data = []
    rag = state.pipeline
    chat = rag._generator if rag is not None and hasattr(rag._generator, "model_name_or_path") else None
    for component, kind in ((state.embedder, "embedding"), (state.reranker, "rerank"), (chat, "chat")):
        if component is not None:
            data.append(
                {
                    "id": model_name(component),
                    # what the model is (config and weights), never where: remote clients key ids by it (hashing
                    # the weights the first time reads them: off the event loop)
                    "fingerprint": await run_in_threadpool(fingerprint, component),
                    "object": "model",
                    "owned_by": "qwen3-vl-rag",
                    "type": kind,
                    "created": 0,
                    "aliases": list(state.config.served_model_names),
                }
            )
    return {"object": "list", "data": data}
