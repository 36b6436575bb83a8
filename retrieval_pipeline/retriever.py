"""Two-stage retrieval: embed the query -> top-N candidates from Qdrant -> rerank -> top-k hits.

A :class:`Hit` is a stored point with its scores; what its payload means (the model input it stands for, its
description) is the :class:`~retrieval_pipeline.records.Record`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, cast

from .layout import SearchOptions
from .media import InputError, InputLike, parse_input
from .media.documents import document_pdf, page_highlights, query_terms, snippet
from .models.encoding import estimate_text_tokens, estimate_vision_tokens
from .protocols import Embedder, Reranker
from .records import Record
from .store import CollectionSpec, VectorStore

logger = logging.getLogger(__name__)

# The instruction Qwen3-VL-Embedding's documentation uses for retrieval queries (documents keep the default).
QUERY_INSTRUCTION = "Retrieve images or text relevant to the user's query."
# Stage-one candidates the reranker scores: on a GPU 50; on a CPU fewer, and within a budget of work, so that one
# search at the released 2B size stays within about a minute (benchmarks/bench_cpu_realsize.py: on 2 cores in
# bfloat16 a text token costs ~11 ms to rerank, an image token ~30-40 ms with its share of the vision tower).
CANDIDATES = 50
CPU_CANDIDATES = 20
CPU_RERANK_BUDGET = 6000
VISION_TOKEN_COST = 3  # an image or video token costs about three text tokens (the vision tower runs for it)


def default_candidates(device: Any) -> int:
    """The rerank depth for a reranker on ``device`` (a ``torch.device`` or its name)."""
    return CANDIDATES if _is_cuda(device) else CPU_CANDIDATES


def default_rerank_budget(device: Any) -> int | None:
    """The rerank work budget (see :class:`TwoStageRetriever`) on ``device``: none on a GPU."""
    return None if _is_cuda(device) else CPU_RERANK_BUDGET


def _is_cuda(device: Any) -> bool:
    return str(getattr(device, "type", device)).startswith("cuda")


def rerank_cost(item: Any, media: Any) -> int:
    """The work of reranking one document, in text tokens: its text, plus its vision tokens (estimated from the
    headers) at :data:`VISION_TOKEN_COST` each."""
    parsed = parse_input(item)
    text = estimate_text_tokens(parsed)
    if media is None:
        return text + VISION_TOKEN_COST * 1024 * (len(parsed.images) + len(parsed.videos))
    return text + VISION_TOKEN_COST * estimate_vision_tokens(parsed, media)


@dataclass
class Hit:
    """One retrieved item: ``score`` is the rerank score when reranked, else the vector (cosine) score."""

    id: str
    score: float
    vector_score: float
    rerank_score: float | None
    payload: dict[str, Any]
    rank: int = 0
    stage_one_rank: int = 0  # the rank stage one gave it (before reranking)
    # where the query's words are on a page hit (``[{"term", "boxes": [[x0, y0, x1, y1], ...]}]``, page-relative,
    # origin top-left; empty for a page without a text layer), and the part of the hit's text around them
    highlights: list[dict[str, Any]] | None = None
    snippet: str | None = None
    _item: Any = field(default=None, repr=False)
    _record: Record | None = field(default=None, repr=False)

    @property
    def record(self) -> Record:
        """The typed payload (read once)."""
        if self._record is None:
            self._record = Record.from_payload(self.payload)
        return self._record

    @property
    def item(self) -> Any:
        """The model input this hit stands for (text, image path, rendered PDF page, video segment)."""
        if self._item is None:
            self._item = self.record.to_input()
        return self._item

    @property
    def modality(self) -> str:
        return self.record.modality

    @property
    def source(self) -> str:
        return self.record.source

    @property
    def text(self) -> str:
        return self.record.text

    def describe(self) -> str:
        return self.record.describe()

    def context(self) -> list[Any]:
        """What a generator is shown for this hit (the item, then a PDF page's text): see :meth:`Record.context`."""
        return self.record.context(self.item)

    def to_dict(self, text_chars: int = 300) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "id": self.id,
            "score": self.score,
            "vector_score": self.vector_score,
            "rerank_score": self.rerank_score,
            "stage_one_rank": self.stage_one_rank,
            **self.record.hit_fields(),
            "text": self.text[:text_chars],
            **({"snippet": self.snippet} if self.snippet is not None else {}),
            **({"highlights": self.highlights} if self.highlights is not None else {}),
        }

    def annotate(self, query_text: str) -> None:
        """Set :attr:`snippet` and, on a page, :attr:`highlights` for the words of ``query_text``."""
        record = self.record
        if not query_text:
            return
        if record.text:
            self.snippet = snippet(record.text, query_text)
        if record.modality == "pdf-page" and record.page:
            self.highlights = []
            terms = query_terms(query_text)
            if not (terms and record.text):  # a scanned page has no text layer: nothing to point at
                return
            try:
                self.highlights = page_highlights(document_pdf(record.source, record.member), record.page, terms)
            except Exception as exc:  # noqa: BLE001 - the file moved or changed: the hit stands without boxes
                logger.debug("no highlights for %s: %s", record.describe(), exc)


def check_min_score(value: float | None) -> None:
    """A relevance cut-off is a finite number (a rerank score is 0..1, a cosine -1..1)."""
    import math

    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"min_score must be a finite number, got {value!r}")
    if not -1.0 <= value <= 1.0:
        raise ValueError(f"min_score must be between -1 and 1 (a rerank score is 0..1, a cosine -1..1), got {value}")


def _options(value: SearchOptions | Mapping[str, Any] | None) -> SearchOptions:
    return value if isinstance(value, SearchOptions) else SearchOptions.from_mapping(value)


class TwoStageRetriever:
    """Stage one: cosine top-``candidates`` from the store (with payload filters). Stage two: the reranker's
    scores (batched, on the reranker's device). Without a reranker, stage one alone.

    ``rerank_budget``: at most this much work for the reranker per query, in text tokens (an image or video token
    counts :data:`VISION_TOKEN_COST`), taken from the best candidates down, but always the ``top_k`` best; the rest
    keep their vector order after the reranked ones (``rerank_score`` None) and are not returned ahead of them. The
    pipeline sets it on a CPU, where a page image costs most of a minute at the released size.

    ``embedder`` and ``reranker`` may also be functions returning the model, called when their stage starts and not
    held after it (lazy loading, moving a model onto the GPU for its stage, or freeing the embedder's memory before
    the reranker loads on a CPU: see :class:`~retrieval_pipeline.pipeline.RAGPipeline`)."""

    def __init__(
        self,
        embedder: Embedder | Callable[[], Embedder],
        store: VectorStore,
        reranker: Reranker | Callable[[], Reranker | None] | None = None,
        *,
        candidates: int = CANDIDATES,
        query_instruction: str = QUERY_INSTRUCTION,
        rerank_instruction: str | None = None,
        timer: Callable[[str], AbstractContextManager[Any]] | None = None,
        rerank_budget: int | None = None,
        search_options: SearchOptions | Mapping[str, Any] | None = None,
    ):
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        self._embedder = embedder
        self.store = store
        self.reranker = reranker
        self.candidates = candidates
        self.query_instruction = query_instruction
        self.rerank_instruction = rerank_instruction
        self._timer = timer or (lambda stage: nullcontext())
        self.rerank_budget = rerank_budget
        self.search_options = _options(search_options)

    @property
    def embedder(self) -> Any:
        """The embedder (resolved now when the retriever was given a function)."""
        given = self._embedder
        if callable(given) and not hasattr(given, "embed"):  # a function that gives the embedder
            return given()
        return cast(Embedder, given)

    def _spec(self, embedder: Any) -> CollectionSpec:
        spec = self.store.open(create=False)
        mine = CollectionSpec(
            embedder.model_name_or_path, spec.dim, spec.instruction, model_id=getattr(embedder, "model_id", None)
        )
        mine.check(spec, self.store.collection)
        return spec

    def retrieve(
        self,
        query: InputLike,
        *,
        top_k: int = 5,
        filters: Mapping[str, Any] | None = None,
        rerank: bool = True,
        search_options: SearchOptions | Mapping[str, Any] | None = None,
        min_score: float | None = None,
    ) -> list[Hit]:
        """The ``top_k`` best hits for ``query``. ``search_options`` (:class:`SearchOptions` or a dict: ``hnsw_ef``,
        ``oversampling``, ``rescore``, ``prefetch``, ``hybrid``, ``exact``) tune stage one for this query, over the
        retriever's own.

        ``min_score``: only hits scoring at least this -- the rerank score (the probability of "yes", 0..1) in a
        reranked search, where a hit the reranker did not score (past ``rerank_budget``) is left out too; the
        vector (cosine) score without reranking. Fewer than ``top_k`` hits, or none, may come back."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        check_min_score(min_score)
        options = _options(search_options).merged(self.search_options)
        try:
            parsed = parse_input(query)
        except InputError as exc:
            raise exc.at(kind="query") from None
        with self._timer("embed query"):
            embedder = self.embedder
            spec = self._spec(embedder)
            vector = embedder.embed([query], instruction=self.query_instruction, dim=spec.dim)[0]
            del embedder  # a stage-wise pipeline may free it before the reranker loads
        use_reranker = self.reranker is not None and rerank
        limit = max(self.candidates, top_k) if use_reranker else top_k
        with self._timer("vector search"):
            # the query's words also search the BM25 vectors of a hybrid collection (fused inside Qdrant)
            text = " ".join(parsed.texts) or None
            found = self.store.search(vector.tolist(), limit=limit, filters=filters, text=text, options=options)
        hits = [Hit(h.id, h.score, h.score, None, h.payload, stage_one_rank=n) for n, h in enumerate(found, 1)]
        if use_reranker and hits:
            with self._timer("rerank"):
                hits = self.rerank_hits(query, hits, at_least=top_k)  # the reranker is resolved only now
        if min_score is not None:
            reranked = use_reranker and any(h.rerank_score is not None for h in hits)
            ranked_by = [h.rerank_score if reranked else h.score for h in hits]
            hits = [h for h, score in zip(hits, ranked_by) if score is not None and score >= min_score]
        hits = hits[:top_k]
        for rank, hit in enumerate(hits, 1):
            hit.rank = rank
            if text:
                hit.annotate(text)
        return hits

    def rerank_hits(self, query: InputLike, hits: list[Hit], *, at_least: int = 1) -> list[Hit]:
        """Stage two on given candidates: reranker scores, best first. With a ``rerank_budget``, the best
        ``at_least`` candidates are reranked whatever it says (the hits returned are always reranked ones)."""
        given = self.reranker
        reranker = cast(Reranker, given) if hasattr(given, "score") else cast(Callable[[], Reranker], given)()
        usable: list[Hit] = []
        unusable: list[Hit] = []
        for hit in hits:
            try:
                parse_input(hit.item)
                usable.append(hit)
            except (InputError, OSError, ValueError) as exc:
                # The stored item's source is gone (moved or deleted file): keep the hit, ranked after the
                # reranked ones, and say so.
                logger.warning("cannot rerank %s: %s", hit.describe(), exc)
                unusable.append(hit)
        usable, deferred = self._within_budget(usable, getattr(reranker, "media", None), at_least)
        while usable:
            try:
                scores = reranker.score(query, [h.item for h in usable], instruction=self.rerank_instruction)
            except InputError as exc:
                if exc.kind != "document" or not isinstance(exc.index, int) or not 0 <= exc.index < len(usable):
                    raise  # the query's own problem
                # A stored item that cannot be decoded any more (a corrupt or replaced file): it is left unreranked
                # with a logged reason, the others are reranked (one bad file never fails every search).
                bad = usable.pop(exc.index)
                logger.warning("cannot rerank %s: %s", bad.describe(), exc.reason)
                unusable.append(bad)
                continue
            for hit, score in zip(usable, scores):
                hit.rerank_score = score
                hit.score = score
            usable.sort(key=lambda h: -h.score)
            break
        return usable + deferred + unusable

    def _within_budget(self, hits: list[Hit], media: Any, at_least: int) -> tuple[list[Hit], list[Hit]]:
        """With a ``rerank_budget``, the best candidates (by vector score) whose summed :func:`rerank_cost` fits it
        (and at least ``at_least``) are reranked; the others follow them in vector order, with no rerank score."""
        if not self.rerank_budget or len(hits) <= at_least:
            return hits, []
        spent, kept = 0, 0
        for hit in hits:
            spent += rerank_cost(hit.item, media)
            if kept >= at_least and spent > self.rerank_budget:
                break
            kept += 1
        if kept < len(hits):
            logger.info(
                "reranked the best %d of %d candidates (rerank budget %d tokens; an image token counts %d)",
                kept,
                len(hits),
                self.rerank_budget,
                VISION_TOKEN_COST,
            )
        return hits[:kept], hits[kept:]
