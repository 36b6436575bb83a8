"""RAGPipeline is configured by one ModelSpec per role and a RetrievalSettings; version 0.2's keywords still mean the
same. Nothing is loaded here (models load on first use): the configuration is compared, and the CLI tests load
models through the new form."""

from __future__ import annotations

import pytest

from retrieval_pipeline import ModelSpec, RAGPipeline, RetrievalSettings, SearchOptions, Staging
from retrieval_pipeline.store import EdgeStore

CONFIG = ("embedding_model", "reranker_model", "generator_spec", "embedding_options", "reranking_options")
CONFIG += ("generator_options", "dim", "candidates", "rerank_budget", "query_instruction", "layout", "search_options")


def config(pipeline: RAGPipeline) -> dict:
    return {name: getattr(pipeline, name) for name in CONFIG}


@pytest.fixture
def store(tmp_path):
    return EdgeStore(tmp_path / "db", "docs")


def test_model_specs_and_the_old_keywords_configure_the_same_pipeline(store):
    new = RAGPipeline(
        store,
        embedding=ModelSpec("org/embed", options={"max_pixels": 65536, "attn_implementation": "sdpa"}),
        reranking=ModelSpec("org/rerank", options={"max_pixels": 65536, "attn_implementation": "sdpa"}),
        generation=ModelSpec("org/generate", options={"max_new_tokens": 64, "attn_implementation": "sdpa"}),
        retrieval=RetrievalSettings(dim=64, candidates=7, rerank_budget=None, search={"hnsw_ef": 64}),
        device="cpu",
    )
    old = RAGPipeline(
        store,
        embedding_model="org/embed",
        reranker_model="org/rerank",
        generator="org/generate",
        media_options={"max_pixels": 65536},
        model_kwargs={"attn_implementation": "sdpa"},  # every model's
        generator_options={"max_new_tokens": 64},
        dim=64,
        candidates=7,
        rerank_budget=None,
        search_options={"hnsw_ef": 64},
        device="cpu",
    )
    assert config(new) == config(old)
    assert new.search_options == SearchOptions(hnsw_ef=64) and new.candidates == 7 and new.rerank_budget is None


def test_roles_can_be_left_out_given_as_names_or_as_loaded_objects(store):
    def answer(question, hits):
        return "forty-two"

    sentinel = object()
    pipeline = RAGPipeline(store, embedding=None, reranking=None, generation=answer, device="cpu")
    assert pipeline.embedding_model is None  # the model the collection was built with
    assert pipeline.reranker is None and pipeline.has_generator and pipeline.generator is answer
    named = RAGPipeline(store, embedding="org/embed", reranking=ModelSpec(model=sentinel), device="cpu")
    assert named.embedding_model == "org/embed" and named.reranker is sentinel
    assert RAGPipeline(store, embedder=sentinel, device="cpu")._embedder is sentinel  # the 0.2 keyword


def test_an_unknown_keyword_is_refused(store):
    with pytest.raises(TypeError, match="embeding_model"):
        RAGPipeline(store, embeding_model="org/embed")


def test_staging_is_an_enum_that_still_compares_to_its_old_strings(store):
    cpu = RAGPipeline(store, device="cpu")
    assert cpu.staging is Staging.FREE and cpu.staging == "free"
    assert RAGPipeline(store, device="cpu", offload=False).staging is Staging.KEEP
    assert {s.value for s in Staging} == {"keep", "move", "free"}


def test_the_models_satisfy_the_contracts_the_pipeline_is_written_against(embedder, reranker):
    from retrieval_pipeline.ingest.distributed import EmbedderSpec
    from retrieval_pipeline.protocols import Embedder, EmbedderInfo, Reranker

    assert isinstance(embedder, Embedder) and isinstance(reranker, Reranker)
    spec = EmbedderSpec(embedder.model_name_or_path)  # what Ray actors load: described, not loaded
    assert isinstance(spec, EmbedderInfo) and not isinstance(spec, Embedder)
    assert not isinstance(reranker, Embedder)
