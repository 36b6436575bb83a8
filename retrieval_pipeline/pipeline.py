"""The whole job in one object: index a folder, search it, answer questions about it.

Models load lazily (indexing needs only the embedder) and, by default on the CPU, are resident only while their
stage runs: the embedder is dropped before the reranker loads, the reranker before the generator, so the peak is
one model, not three (``offload=False`` keeps them all). On a GPU all three stay loaded unless ``offload=True``,
which keeps only the running stage's model on the GPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from . import observe
from .caching import LazyModel, RetrievalCaches
from .errors import CollectionMismatchError, CollectionNotFoundError, ModelLoadError, StoreError  # noqa: F401
from .ingest import Indexer, IndexReport, IngestOptions
from .layout import SearchOptions, VectorLayout
from .media import InputLike
from .models.generator import Answer, Qwen3VLGenerator
from .models.runtime import release_memory, resolve_device
from .retriever import QUERY_INSTRUCTION, Hit, TwoStageRetriever, default_candidates, default_rerank_budget
from .settings import DEFAULT_EMBEDDING_MODEL, DEFAULT_GENERATOR_MODEL, DEFAULT_RERANKER_MODEL
from .store import VectorStore, open_store

logger = logging.getLogger(__name__)

STAGES = ("embedder", "reranker", "generator")


# The pipeline's stage names as retrieval_pipeline.observe names them (loads: "load_model" with the role)
OBSERVED_STAGES = {"embed query": "embed", "vector search": "vector_search"}


def observed_stage(stage: str) -> tuple[str, dict[str, str]]:
    """(observe's stage name, span attributes) of a :meth:`RAGPipeline.timed` stage."""
    if stage.startswith("load "):  # "load embedding model"
        return "load_model", {"role": stage.split()[1]}
    return OBSERVED_STAGES.get(stage, stage.replace(" ", "_")), {}


# The answer when the search finds nothing: no generation runs (the same rule streamed or not).
NO_MATCH = "The collection holds nothing that matches the question."


@dataclass(frozen=True)
class ModelSpec:
    """One role's model: a hub id or local folder to load when first needed (``name``), or a model already
    loaded (``model``; for the generator also a callable ``(question, hits) -> str``), and the model class's
    keyword arguments (``options``: media settings, batching, ``max_new_tokens``, ``from_pretrained`` arguments)."""

    name: str | None = None
    model: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, value: Any) -> ModelSpec | None:
        """A spec from what a caller passed: a spec, a name, None, or a loaded model / callable."""
        if value is None or isinstance(value, ModelSpec):
            return value
        if isinstance(value, (str, Path)):
            return cls(name=str(value))
        return cls(model=value)


@dataclass(frozen=True)
class RetrievalSettings:
    """How the pipeline retrieves: the stored vectors' Matryoshka ``dim`` (None: the model's size, or the
    collection's), stage-one ``candidates`` reranked (None: by device), the reranker's work per query in tokens
    (``rerank_budget``: -1 by device, None or 0 none), the query instruction, the vector search knobs and a new
    collection's vector ``layout``."""

    dim: int | None = None
    candidates: int | None = None
    rerank_budget: int | None = -1
    query_instruction: str = QUERY_INSTRUCTION
    search: SearchOptions | Mapping[str, Any] | None = None
    layout: VectorLayout | Mapping[str, Any] | None = None


_RETRIEVAL_KEYWORDS = {
    "dim": "dim",
    "candidates": "candidates",
    "rerank_budget": "rerank_budget",
    "query_instruction": "query_instruction",
    "layout": "layout",
    "search_options": "search",
}


def _from_legacy(
    legacy: dict[str, Any],
    embedding: ModelSpec | None,
    reranking: ModelSpec | None,
    generation: ModelSpec | None,
    retrieval: RetrievalSettings | None,
) -> tuple[ModelSpec | None, ModelSpec | None, ModelSpec | None, RetrievalSettings]:
    """Version 0.2's keywords folded into the role specs and the retrieval settings (an unknown one is a
    TypeError, as for any function)."""
    unknown = (
        set(legacy)
        - set(_RETRIEVAL_KEYWORDS)
        - {
            "embedding_model",
            "embedder",
            "reranker_model",
            "reranker",
            "generator",
            "generator_options",
            "media_options",
            "model_kwargs",
        }
    )
    if unknown:
        raise TypeError(f"RAGPipeline() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    if "embedding_model" in legacy:
        embedding = ModelSpec.of(legacy["embedding_model"])
    if "reranker_model" in legacy:
        reranking = ModelSpec.of(legacy["reranker_model"])
    if "generator" in legacy:
        generation = ModelSpec.of(legacy["generator"])
    if legacy.get("embedder") is not None:
        embedding = replace(embedding or ModelSpec(), model=legacy["embedder"])
    if legacy.get("reranker") is not None:
        reranking = replace(reranking or ModelSpec(), model=legacy["reranker"])
    shared = dict(legacy.get("model_kwargs") or {})
    media = {**dict(legacy.get("media_options") or {}), **shared}
    if media and embedding is not None:
        embedding = replace(embedding, options={**embedding.options, **media})
    if media and reranking is not None:
        reranking = replace(reranking, options={**reranking.options, **media})
    generator_options = {**dict(legacy.get("generator_options") or {}), **shared}
    if generator_options and generation is not None:
        generation = replace(generation, options={**generation.options, **generator_options})
    given = {_RETRIEVAL_KEYWORDS[k]: v for k, v in legacy.items() if k in _RETRIEVAL_KEYWORDS}
    settings = replace(retrieval or RetrievalSettings(), **given)
    return embedding, reranking, generation, settings


class Staging(str, Enum):
    """How a pipeline's models share memory. A ``str`` too: ``pipeline.staging == "free"`` keeps working."""

    KEEP = "keep"  # every model stays loaded where it is
    MOVE = "move"  # a GPU holds only the running stage's model; the others wait on the CPU
    FREE = "free"  # on the CPU, the models this pipeline loaded are dropped when another stage starts (reloaded later)


class RAGPipeline:
    """Embedder + Qdrant store + optional reranker + optional generator, loaded on first use."""

    def __init__(
        self,
        store: VectorStore,
        *,
        embedding: ModelSpec | str | None = DEFAULT_EMBEDDING_MODEL,
        reranking: ModelSpec | str | None = DEFAULT_RERANKER_MODEL,
        generation: ModelSpec | str | Callable[[str, Sequence[Hit]], str] | None = DEFAULT_GENERATOR_MODEL,
        retrieval: RetrievalSettings | None = None,
        device: str | None = None,
        torch_dtype: str | torch.dtype | None = None,
        offload: bool | None = None,
        caches: RetrievalCaches | None = None,
        **legacy: Any,
    ) -> None:
        """``embedding`` / ``reranking`` / ``generation``: each role's :class:`ModelSpec` (or just a hub id or
        folder; ``embedding=None``: the model the collection was built with; ``reranking=None``: stage one only;
        ``generation=None``: no answers, or a callable ``(question, hits) -> str``). ``retrieval``: the
        :class:`RetrievalSettings`. ``device`` / ``torch_dtype`` / ``offload``: where and how the models run.
        ``caches``: a :class:`~retrieval_pipeline.caching.RetrievalCaches` for query vectors and rerank scores (a
        repeated search then runs no model; the results are the same); None, the default: no caching.

        Version 0.2's keywords are still accepted and mean the same: ``embedding_model``, ``embedder``,
        ``reranker_model``, ``reranker``, ``generator``, ``generator_options``, ``media_options`` (the embedder's and
        the reranker's), ``model_kwargs`` (every model's), and ``dim``, ``candidates``, ``rerank_budget``,
        ``query_instruction``, ``layout``, ``search_options`` (the retrieval settings')."""
        embedding_spec, reranking_spec, generation_spec, settings = _from_legacy(
            legacy, ModelSpec.of(embedding), ModelSpec.of(reranking), ModelSpec.of(generation), retrieval
        )
        self.store = store
        # a new collection's vector layout (None: chosen for its dimension, VectorLayout.choose); an existing
        # collection keeps its own, and a different one asked for here is refused
        self.layout = settings.layout
        self.search_options = (
            settings.search
            if isinstance(settings.search, SearchOptions)
            else SearchOptions.from_mapping(settings.search)
        )
        self.embedding_model = embedding_spec.name if embedding_spec else None
        self.reranker_model = reranking_spec.name if reranking_spec else None
        self.generator_spec: str | Callable[[str, Sequence[Hit]], str] | None = None
        if generation_spec is not None:
            self.generator_spec = generation_spec.name or generation_spec.model
        self.device = device
        self.torch_dtype = torch_dtype
        self.dim = settings.dim
        # None: 50 on a GPU, fewer on a CPU (retriever.default_candidates)
        self.candidates = (
            settings.candidates if settings.candidates is not None else default_candidates(resolve_device(device))
        )
        # -1: by device (a budget on a CPU, none on a GPU); None or 0: none
        budget = settings.rerank_budget
        self.rerank_budget = default_rerank_budget(resolve_device(device)) if budget == -1 else budget
        self.query_instruction = settings.query_instruction
        self.offload = offload
        # each role's model-class options (the embedder's and reranker's media settings -- max_pixels, max_frames,
        # fps -- are the speed/quality knobs)
        self.embedding_options = dict(embedding_spec.options) if embedding_spec else {}
        self.reranking_options = dict(reranking_spec.options) if reranking_spec else {}
        self.generator_options = dict(generation_spec.options) if generation_spec else {}
        self._embedder = embedding_spec.model if embedding_spec else None
        self._reranker = reranking_spec.model if reranking_spec else None
        self.timings: list[tuple[str, float, float]] = []
        self._owned: set[str] = set()  # the models this pipeline loaded (and so may drop and load again)
        self._generator: Callable[[str, Sequence[Hit]], str] | None = (
            None if isinstance(self.generator_spec, str) else self.generator_spec
        )
        self.caches = caches
        # the retrievers' ways to the models: each remembers what the model it gave is, so a cached result needs
        # neither a model load (stage-wise residency drops the embedder) nor a move onto the GPU
        self._lazy_embedder = LazyModel(lambda: self.embedder)
        self._lazy_reranker = LazyModel(lambda: self.reranker)

    @classmethod
    def open(
        cls,
        db: str | Path | None = None,
        url: str | None = None,
        *,
        collection: str = "default",
        api_key: str | None = None,
        store_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> RAGPipeline:
        """A pipeline on the collection :func:`~retrieval_pipeline.store.open_store` finds: embedded under ``db``
        (default: where ``qwen3vl-rag index`` puts things) or on the Qdrant server at ``url``. ``kwargs`` are the
        constructor's (models, device, ...)."""
        store = open_store(db, url, collection=collection, api_key=api_key, **dict(store_options or {}))
        return cls(store, **kwargs)

    # ----------------------------------------------------------------------------------------------------------
    # lazily loaded components

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Record how long ``stage`` takes in :attr:`timings` (``(stage, start, seconds)``, ``time.time()`` start),
        and tell :mod:`~retrieval_pipeline.observe` (metrics, traces) under its stage name (:func:`observed_stage`)."""
        start, t0 = time.time(), time.perf_counter()
        name, attributes = observed_stage(stage)
        try:
            with observe.stage(name, **attributes):
                yield
        finally:
            seconds = time.perf_counter() - t0
            self.timings.append((stage, start, seconds))
            logger.info("%s: %.1fs", stage, seconds)

    def _load(self, what: str, factory: Callable[..., Any], name: str, **options: Any) -> Any:
        logger.info("loading %s model %s", what, name)
        try:
            with self.timed(f"load {what} model"):
                return factory(name, device=self.device, torch_dtype=self.torch_dtype, **options)
        except (OSError, ValueError) as exc:
            where = "a local folder" if Path(name).exists() else "a hub id or a local folder"
            raise ModelLoadError(f"cannot load the {what} model {name!r} ({where}): {exc}") from None

    @property
    def embedder(self) -> Any:
        self._enter("embedder")
        if self._embedder is None:
            from .models.embedder import Qwen3VLEmbedder

            name = self.embedding_model
            if name is None:  # take the model the collection was built with
                name = self.store.open(create=False).model
            self._embedder = self._load("embedding", Qwen3VLEmbedder, name, **self.embedding_options)
            self._owned.add("embedder")
        return self._on_device(self._embedder)

    @property
    def reranker(self) -> Any:
        if self._reranker is None and not self.reranker_model:
            return None
        self._enter("reranker")
        if self._reranker is None:
            from .models.reranker import Qwen3VLReranker

            self._reranker = self._load("reranker", Qwen3VLReranker, self.reranker_model, **self.reranking_options)
            self._owned.add("reranker")
        return self._on_device(self._reranker)

    @property
    def generator(self) -> Callable[[str, Sequence[Hit]], str] | None:
        if isinstance(self.generator_spec, str) or isinstance(self._generator, Qwen3VLGenerator):
            self._enter("generator")
        if self._generator is None and isinstance(self.generator_spec, str):
            self._generator = self._load("generator", Qwen3VLGenerator, self.generator_spec, **self.generator_options)
            self._owned.add("generator")
        if isinstance(self._generator, Qwen3VLGenerator):
            self._on_device(self._generator)
        return self._generator

    @property
    def has_generator(self) -> bool:
        """Whether :meth:`ask` can answer (a generator model or callable was given)."""
        return self.generator_spec is not None or self._generator is not None

    @property
    def staging(self) -> Staging:
        """How the models share memory (:class:`Staging`)."""
        if self.offload is False:
            return Staging.KEEP
        on_gpu = resolve_device(self.device).type == "cuda"
        if on_gpu:
            return Staging.MOVE if self.offload else Staging.KEEP
        return Staging.FREE

    def _enter(self, stage: str) -> None:
        """Before ``stage`` runs (and before its model loads): make room for it."""
        if self.staging is not Staging.FREE:
            return
        dropped = [name for name in STAGES if name != stage and name in self._owned]
        for name in dropped:
            setattr(self, f"_{name}", None)
            self._owned.discard(name)
            logger.info("released the %s model (stage-wise residency on the CPU)", name)
        if dropped:
            release_memory()

    def _on_device(self, component: Any) -> Any:
        """When moving, the running stage's model goes to the GPU and the others to the CPU."""
        if self.staging is not Staging.MOVE or not hasattr(component, "to"):
            return component
        home = resolve_device(self.device)
        for other in (self._embedder, self._reranker, self._generator):
            if other is not None and other is not component and hasattr(other, "to") and other.device.type != "cpu":
                other.to("cpu")
        if component.device != home:
            component.to(home)
        torch.cuda.empty_cache()
        return component

    # ----------------------------------------------------------------------------------------------------------
    # the job

    def index(
        self,
        paths: Sequence[str | Path],
        *,
        options: IngestOptions | None = None,
        metadata: Mapping[str, Any] | None = None,
        show_progress_bar: bool = True,
        prune: bool = False,
    ) -> IndexReport:
        indexer = self.indexer()
        with self.timed("index"):
            return indexer.index_paths(
                paths, options=options, metadata=metadata, show_progress_bar=show_progress_bar, prune=prune
            )

    def watch(self, paths: Sequence[str | Path], **kwargs: Any) -> Any:
        """Keep the collection equal to ``paths`` (:meth:`Indexer.watch`): ``with rag.watch(["docs"]) as w:`` then
        ``for report in w: ...``, or ``w.start()`` to sync on a thread while this pipeline answers questions."""
        return self.indexer().watch(paths, **kwargs)

    def indexer(self) -> Indexer:
        """An indexer on this pipeline's embedder and store (the collection's dimension and layout)."""
        return Indexer(self.embedder, self.store, dim=self.dim or self._stored_dim(), layout=self.layout)

    def ray_indexer(self, ray_options: Any = None) -> Any:
        """An indexer on Ray (:class:`~retrieval_pipeline.ingest.distributed.RayExecutor`) with this pipeline's
        embedding model, settings and store: embedding on a Ray actor pool (``ray_options``: a
        :class:`~retrieval_pipeline.ingest.distributed.RayOptions`; needs the ``[ray]`` extra). No model is loaded
        here; the actors load it."""
        from .ingest.distributed import EmbedderSpec, RayIndexer, RayOptions

        options = ray_options or RayOptions()
        name = self.embedding_model or self.store.open(create=False).model
        try:
            embedder = EmbedderSpec(
                name,
                device_type="cuda" if options.gpus_per_actor else "cpu",
                torch_dtype=self.torch_dtype,
                **self.embedding_options,
            )
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        return RayIndexer(
            embedder, self.store, ray_options=options, dim=self.dim or self._stored_dim(), layout=self.layout
        )

    def _stored_dim(self) -> int | None:
        return self.store.open(create=False).dim if self.store.exists() else None

    def retriever(self, *, rerank: bool = True) -> TwoStageRetriever:
        """Stage one runs on the embedder; the reranker is fetched (loaded, or moved to the GPU when offloading)
        only when stage two starts."""
        has_reranker = rerank and (self.reranker_model or self._reranker is not None)
        return TwoStageRetriever(
            self._lazy_embedder,
            self.store,
            self._lazy_reranker if has_reranker else None,
            candidates=self.candidates,
            query_instruction=self.query_instruction,
            timer=self.timed,
            rerank_budget=self.rerank_budget,
            search_options=self.search_options,
            caches=self.caches,
        )

    def search(
        self,
        query: InputLike,
        *,
        top_k: int = 5,
        filters: Mapping[str, Any] | None = None,
        rerank: bool = True,
        search_options: SearchOptions | Mapping[str, Any] | None = None,
        min_score: float | None = None,
    ) -> list[Hit]:
        """Two-stage retrieval; ``search_options`` tune stage one for this query (see :class:`SearchOptions`);
        ``min_score`` leaves out hits scoring less (see :meth:`TwoStageRetriever.retrieve`)."""
        retriever = self.retriever(rerank=rerank)
        return retriever.retrieve(
            query, top_k=top_k, filters=filters, search_options=search_options, min_score=min_score
        )

    def ask(
        self,
        question: str,
        *,
        image: Any = None,
        top_k: int = 3,
        filters: Mapping[str, Any] | None = None,
        rerank: bool = True,
        search_options: SearchOptions | Mapping[str, Any] | None = None,
        min_score: float | None = None,
    ) -> Answer:
        """An answer from the ``top_k`` best hits (``min_score``: only those scoring at least this; with none left,
        the answer says nothing matched and no generation runs)."""
        query: InputLike = {"text": question, "image": image} if image is not None else question
        hits = self.search(
            query, top_k=top_k, filters=filters, rerank=rerank, search_options=search_options, min_score=min_score
        )
        generator = self.generator
        if generator is None:
            raise ModelLoadError("no generator: pass a generator model or a callable")
        if not hits:
            return Answer(question, NO_MATCH, [])
        with self.timed("generate"):
            if hasattr(generator, "answer"):  # the sources are what it was given (fitting, readable)
                text, hits = generator.answer(question, hits)
            else:
                text = generator(question, hits)
        return Answer(question, text, hits)

    def close(self) -> None:
        self.store.close()
