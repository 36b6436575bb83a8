"""Rerank in every common dialect, multimodal on both sides, one engine behind them:

- ``POST /v1/rerank``: Jina-style clients and the Cohere v1 SDK (``return_documents``, ``rank_fields`` for
  structured documents); a returned ``document`` is an object with ``text`` (strings) or the object sent.
- ``POST /v2/rerank``: the Cohere v2 SDK, ``langchain-cohere``, LiteLLM ``cohere/`` (``max_tokens_per_doc``);
  results ``{index, relevance_score}`` (documents only when ``return_documents``).
- ``POST /rerank``: LiteLLM ``hosted_vllm/`` and ``infinity/``, and Infinity's own client. Documents come back
  only when ``return_documents`` is true (LiteLLM's two providers send the same body but read ``document``
  differently, and both accept none); their shape is told apart by what the request sends: Infinity's client
  always sends ``raw_scores`` and gets ``document`` as a string, any other request vLLM's ``document.text``.
- ``POST /infinity/rerank``: always Infinity's shape, for LiteLLM's ``infinity/`` provider (``api_base`` ending in
  ``/infinity``): its requests are byte for byte those of ``hosted_vllm/``, so only the address can tell them.

``raw_scores: true``: ``relevance_score`` is the raw score, the "yes" minus "no" logit before the sigmoid.
``min_score`` (every route): only results whose rerank score (0..1, the sigmoid, also with ``raw_scores``) is at
least this, cut before ``top_n``; each keeps its ``index`` in the documents sent.
``usage`` carries ``prompt_tokens`` and ``total_tokens`` (the tokens the reranker read) everywhere.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter

from ...models.encoding import CHARS_PER_TOKEN_BOUND
from ...models.reranker import rank_scores
from ..dialects import raw_score, returned_document, to_input
from ..error_handlers import HTTPError
from ..prepare import check_sources
from ..schemas import ERRORS, RerankRequest, RerankResponse, RerankResult
from ..state import ServingState, State, model_name

router = APIRouter(tags=["rerank"])


def _cut(text: str, tokens: int, tokenizer: Any) -> str:
    """The text's first ``tokens`` tokens (Cohere's ``max_tokens_per_doc``). Only a prefix that surely holds them is
    tokenised (:data:`CHARS_PER_TOKEN_BOUND` characters a token), so a long document costs no more than a short one."""
    prefix = text[: tokens * CHARS_PER_TOKEN_BOUND]
    ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= tokens and prefix == text else tokenizer.decode(ids[:tokens])


async def _scores(body: RerankRequest, state: ServingState) -> tuple[list[float], int, Any]:
    """(scores in document order, tokens read, the model) for any dialect's request."""
    model = state.need(state.reranker, "reranker")
    state.check_model(body.model, model)
    if len(body.documents) > state.config.max_items:
        raise HTTPError(
            413,
            f"{len(body.documents)} documents exceed the limit of {state.config.max_items} (max_items)",
            param="documents",
            limit="max_items",
        )
    query = to_input(body.query, "query")
    documents = [to_input(d, f"documents.{i}", body.rank_fields) for i, d in enumerate(body.documents)]
    everything = [query, *documents]

    def work() -> object:  # on the preparation threads: tokenising and loading never run on the event loop
        check_sources(everything, state.config.allow_local_files, kinds=["query"] + ["document"] * len(documents))
        if not documents:
            return None
        docs = documents
        if body.max_tokens_per_doc:
            tokenizer = model.processor.tokenizer
            docs = [_cut(d, body.max_tokens_per_doc, tokenizer) if isinstance(d, str) else d for d in documents]
        return model.prepare(query, docs, instruction=body.instruction, limits=state.config.limits)

    prepared = await state.preparer.run(work, everything)
    if prepared is None:
        return [], 0, model
    (scores,) = await state.rerank_batcher.submit([prepared])
    return list(scores), sum(len(pair) for pair in prepared.pairs), model


def _response(
    body: RerankRequest, scores: list[float], tokens: int, model: Any, *, document_as: str, with_documents: bool
) -> RerankResponse:
    ranked = rank_scores(scores)
    if body.min_score is not None:
        ranked = [(i, score) for i, score in ranked if score >= body.min_score]
    results = []
    for i, score in ranked[: body.top_n]:
        relevance = raw_score(score) if body.raw_scores else score
        document = None
        if with_documents:
            sent = body.documents[i]
            document = sent if document_as == "string" and isinstance(sent, str) else returned_document(sent)
        results.append(RerankResult(index=i, relevance_score=relevance, document=document))
    return RerankResponse(
        id=str(uuid.uuid4()),
        model=model_name(model) or "",
        results=results,
        usage={"prompt_tokens": tokens, "total_tokens": tokens, "documents": len(body.documents)},
        meta={"billed_units": {"search_units": 1}},
    )


@router.post("/v1/rerank", response_model=RerankResponse, responses=ERRORS)
async def rerank_v1(body: RerankRequest, state: State) -> RerankResponse:
    """Jina and Cohere v1 clients; Infinity's client deployed under ``/v1`` (it sends ``raw_scores``) gets its own
    shape here too, as on ``/rerank``."""
    scores, tokens, model = await _scores(body, state)
    with_documents = bool(body.return_documents)
    if body.raw_scores is not None:
        return _infinity(body, scores, tokens, model, with_documents)
    return _response(body, scores, tokens, model, document_as="object", with_documents=with_documents)


def _infinity(body: RerankRequest, scores: list[float], tokens: int, model: Any, with_documents: bool) -> Any:
    response = _response(body, scores, tokens, model, document_as="string", with_documents=with_documents)
    response.object = "rerank"
    return response


@router.post("/v2/rerank", response_model=RerankResponse, responses=ERRORS)
async def rerank_v2(body: RerankRequest, state: State) -> RerankResponse:
    scores, tokens, model = await _scores(body, state)
    return _response(body, scores, tokens, model, document_as="object", with_documents=bool(body.return_documents))


@router.post("/rerank", response_model=RerankResponse, responses=ERRORS)
async def rerank_plain(body: RerankRequest, state: State) -> RerankResponse:
    scores, tokens, model = await _scores(body, state)
    with_documents = bool(body.return_documents)  # LiteLLM's infinity/ and hosted_vllm/ send the same body
    if body.raw_scores is not None:  # Infinity's client: document as a string, usage tokens
        return _infinity(body, scores, tokens, model, with_documents)
    return _response(body, scores, tokens, model, document_as="object", with_documents=with_documents)  # vLLM


@router.post("/infinity/rerank", response_model=RerankResponse, responses=ERRORS)
async def rerank_infinity(body: RerankRequest, state: State) -> RerankResponse:
    """Infinity's shape whatever the request sends (``document`` a string): the base URL for LiteLLM's
    ``infinity/`` provider, whose requests cannot be told from ``hosted_vllm/``'s."""
    scores, tokens, model = await _scores(body, state)
    return _infinity(body, scores, tokens, model, bool(body.return_documents))
