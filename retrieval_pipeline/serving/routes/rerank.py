"""``POST /v1/rerank`` (the Cohere / Jina shape): ``query``, ``documents``, ``top_n``, ``return_documents`` ->
``results[{index, relevance_score}]`` best first."""

from __future__ import annotations

from fastapi import APIRouter

from ...models.reranker import rank_scores
from ..error_handlers import HTTPError
from ..prepare import check_sources
from ..schemas import ERRORS, RerankRequest, RerankResponse, RerankResult, plain
from ..state import State, model_name

router = APIRouter(tags=["rerank"])


@router.post("/v1/rerank", response_model=RerankResponse, responses=ERRORS)
async def rerank(body: RerankRequest, state: State) -> RerankResponse:
    model = state.need(state.reranker, "reranker")
    state.check_model(body.model, model)
    name = model_name(model) or ""
    if len(body.documents) > state.config.max_items:
        raise HTTPError(
            413,
            f"{len(body.documents)} documents exceed the limit of {state.config.max_items} (max_items)",
            param="documents",
            limit="max_items",
        )
    query, documents = plain(body.query), [plain(d) for d in body.documents]
    everything = [query, *documents]

    def work() -> object:
        check_sources(everything, state.config.allow_local_files, kinds=["query"] + ["document"] * len(documents))
        if not documents:
            return None
        return model.prepare(query, documents, instruction=body.instruction, limits=state.config.limits)

    prepared = await state.preparer.run(work, everything)
    if prepared is None:
        return RerankResponse(model=name, results=[], usage={"documents": 0})
    (scores,) = await state.rerank_batcher.submit([prepared])
    results = [
        RerankResult(index=i, relevance_score=score, document=body.documents[i] if body.return_documents else None)
        for i, score in rank_scores(scores, body.top_n)
    ]
    return RerankResponse(model=name, results=results, usage={"documents": len(documents)})
