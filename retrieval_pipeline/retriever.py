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

from .caching import BytesLRU, LazyModel, ModelIdentity, RetrievalCaches, content_key, file_stamp, identity_of
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
    the reranker loads on a CPU: see :class:`~retrieval_pipeline.pipeline.RAGPipeline`).

    ``caches`` (:class:`~retrieval_pipeline.caching.RetrievalCaches`): a repeated query's vector and the rerank
    scores of candidates it already scored come from them, the same numbers, without model work; a model given as
    a :class:`~retrieval_pipeline.caching.LazyModel` that gave one before is not even fetched for a cached result."""

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
        caches: RetrievalCaches | None = None,
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
        self.caches = caches

    @property
    def embedder(self) -> Any:
        """The embedder (resolved now when the retriever was given a function)."""
        given = self._embedder
        if callable(given) and not hasattr(given, "embed"):  # a function that gives the embedder
            return given()
        return cast(Embedder, given)

    def _spec(self, embedder: Any) -> CollectionSpec:
        """The collection's spec, checked against ``embedder`` (a model, or its :class:`ModelIdentity`)."""
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
            key = content_key(query) if self._caching("query") or self._caching("rerank") else None
            vector = self._query_vector(query, key)
        use_reranker = self.reranker is not None and rerank
        limit = max(self.candidates, top_k) if use_reranker else top_k
        with self._timer("vector search"):
            # the query's words also search the BM25 vectors of a hybrid collection (fused inside Qdrant)
            text = " ".join(parsed.texts) or None
            found = self.store.search(vector.tolist(), limit=limit, filters=filters, text=text, options=options)
        hits = [Hit(h.id, h.score, h.score, None, h.payload, stage_one_rank=n) for n, h in enumerate(found, 1)]
        if use_reranker and hits:
            with self._timer("rerank"):
                hits = self._rerank(query, hits, top_k, key)  # the reranker is resolved only now
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

    def embed_query(self, query: InputLike) -> Any:
        """The query's vector as stage one searches with it (the collection's dimension; from the cache when it
        holds it): a float32 array of the caller's own."""
        try:
            parse_input(query)
        except InputError as exc:
            raise exc.at(kind="query") from None
        return self._query_vector(query, content_key(query) if self._caching("query") else None)

    def _caching(self, which: str) -> bool:
        return self._cache(which) is not None

    def _cache(self, which: str) -> BytesLRU | None:
        """The ``query`` or ``rerank`` cache when it is on."""
        cache = getattr(self.caches, which) if self.caches is not None else None
        return cache if cache is not None and cache.enabled else None

    def _query_vector(self, query: InputLike, key: str | None) -> Any:
        """Embed the query, or take its vector from the query cache (keyed by the embedder's fingerprint, the
        instruction, the dimension and ``key``, the query's content). A lazy embedder that gave its model before is
        not fetched for a cached vector; the collection's spec is checked either way."""
        cache = self._cache("query") if key is not None else None
        tried = None
        known = getattr(self._embedder, "identity", None)
        if cache is not None and isinstance(known, ModelIdentity):
            spec = self._spec(known)
            tried = (known.fingerprint, self.query_instruction, spec.dim, key)
            cached = cache.get(tried)
            if cached is not None:
                return cached.copy()
        embedder = self.embedder
        identity = self._remember(self._embedder, embedder) if cache is not None else None
        if tried is None or identity != known:  # (the model the lazy function gave is the one checked above)
            spec = self._spec(embedder)
        cache_key = None
        if cache is not None and identity is not None:
            cache_key = (identity.fingerprint, self.query_instruction, spec.dim, key)
            cached = cache.get(cache_key) if cache_key != tried else None
            if cached is not None:
                return cached.copy()
        vector = embedder.embed([query], instruction=self.query_instruction, dim=spec.dim)[0]
        del embedder  # a stage-wise pipeline may free it before the reranker loads
        if cache is not None and cache_key is not None:
            stored = vector.copy()  # the cache's own, read-only: a caller changing its vector changes no other
            stored.flags.writeable = False
            cache.put(cache_key, stored)
        return vector

    @staticmethod
    def _remember(given: Any, model: Any) -> ModelIdentity | None:
        """What ``model`` is; a :class:`LazyModel` that gave it remembers (the next cached result needs no model)."""
        identity = identity_of(model)
        if isinstance(given, LazyModel):
            given.identity = identity
        return identity

    def rerank_hits(self, query: InputLike, hits: list[Hit], *, at_least: int = 1) -> list[Hit]:
        """Stage two on given candidates: reranker scores, best first. With a ``rerank_budget``, the best
        ``at_least`` candidates are reranked whatever it says (the hits returned are always reranked ones)."""
        return self._rerank(query, hits, at_least, content_key(query) if self._caching("rerank") else None)

    def _rerank(self, query: InputLike, hits: list[Hit], at_least: int, key: str | None) -> list[Hit]:
        """:meth:`rerank_hits`; with a rerank cache and ``key`` (the query's content), the scores it holds are
        taken and only the other candidates go to the reranker (none: the reranker is not even fetched when a
        :class:`LazyModel` gave it before)."""
        given = self.reranker
        cache = self._cache("rerank") if key is not None else None
        reranker: Any = given if hasattr(given, "score") else None
        identity = getattr(given, "identity", None) if reranker is None else None
        if reranker is None and (cache is None or not isinstance(identity, ModelIdentity)):
            reranker = cast(Callable[[], Reranker], given)()
        if reranker is not None and cache is not None:
            identity = self._remember(given, reranker)
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
        media = getattr(reranker, "media", None) if reranker is not None else getattr(identity, "media", None)
        usable, deferred = self._within_budget(usable, media, at_least)
        keys: dict[int, Any] = {}
        scores: dict[int, Any] = {}
        if cache is not None and identity is not None:
            for hit in usable:
                keys[id(hit)] = (identity.fingerprint, key, self.rerank_instruction, hit.id, _document_stamp(hit))
                cached = cache.get(keys[id(hit)])
                if cached is not None:
                    scores[id(hit)] = cached
        while usable:
            todo = [h for h in usable if id(h) not in scores]
            if todo:
                if reranker is None:
                    reranker = cast(Callable[[], Reranker], given)()
                try:
                    fresh = reranker.score(query, [h.item for h in todo], instruction=self.rerank_instruction)
                except InputError as exc:
                    if exc.kind != "document" or not isinstance(exc.index, int) or not 0 <= exc.index < len(todo):
                        raise  # the query's own problem
                    # A stored item that cannot be decoded any more (a corrupt or replaced file): it is left
                    # unreranked with a logged reason, the others are reranked (one bad file never fails every
                    # search).
                    bad = todo[exc.index]
                    usable = [h for h in usable if h is not bad]
                    logger.warning("cannot rerank %s: %s", bad.describe(), exc.reason)
                    unusable.append(bad)
                    continue
                for hit, score in zip(todo, fresh):
                    scores[id(hit)] = score
                    if cache is not None and id(hit) in keys:
                        cache.put(keys[id(hit)], score)
            for hit in usable:
                hit.rerank_score = scores[id(hit)]
                hit.score = scores[id(hit)]
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


def _document_stamp(hit: Hit) -> str:
    """What besides its point id names the item a hit stands for: the stamps of the local files it is read from (a
    text chunk is its payload alone)."""
    record = hit.record
    if record.modality == "text":
        return ""
    refs = [record.source]
    if record.modality == "mixed" and isinstance(record.item, dict):
        refs = [r for k in ("image", "video") for r in _strings(record.item.get(k))]
    return "|".join(file_stamp(r) for r in refs)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []
