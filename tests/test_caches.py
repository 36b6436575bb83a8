"""The query-vector and rerank-score caches: bounded in bytes, least recently used out first, keyed by what the
models see; a cached search gives the fresh search's hits and scores, bit for bit, without model work."""

from __future__ import annotations

import base64
import shutil
from collections import Counter
from dataclasses import replace

import httpx
import numpy as np
import pytest
from conftest import MEDIA, LiveServer
from PIL import Image

from retrieval_pipeline.caching import (
    ENTRY_OVERHEAD,
    BytesLRU,
    LazyModel,
    RetrievalCaches,
    content_key,
    identity_of,
    sizeof,
)
from retrieval_pipeline.ingest import Indexer
from retrieval_pipeline.pipeline import RAGPipeline
from retrieval_pipeline.retriever import TwoStageRetriever
from retrieval_pipeline.serving.app import ServerConfig, create_app
from retrieval_pipeline.store import CollectionMismatchError, EdgeStore
from retrieval_pipeline.testing import make_text_pdf

DENSE = {"hybrid": False}
NOTES = "Revenue grew twelve percent in the third quarter. The office cat sleeps on the red sofa."


class Counting:
    """The real model, its model calls counted (``calls``) and the documents each rerank call scored (``scored``)."""

    def __init__(self, model):
        self._model = model
        self.calls: Counter[str] = Counter()
        self.scored: list[int] = []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def embed(self, *args, **kwargs):
        self.calls["embed"] += 1
        return self._model.embed(*args, **kwargs)

    def embed_prepared(self, *args, **kwargs):
        self.calls["embed"] += 1
        return self._model.embed_prepared(*args, **kwargs)

    def score(self, query, documents, **kwargs):
        self.calls["score"] += 1
        self.scored.append(len(documents))
        return self._model.score(query, documents, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# the LRU


def entry(key, value) -> int:
    return ENTRY_OVERHEAD + sizeof(key) + sizeof(value)


def test_bound_eviction_order_and_stats():
    one = entry("a", np.zeros(100, np.float32))
    cache = BytesLRU(3 * one)
    for key in "abc":
        assert cache.put(key, np.zeros(100, np.float32))
    assert cache.stats() == {
        "hits": 0,
        "misses": 0,
        "evictions": 0,
        "entries": 3,
        "bytes": 3 * one,
        "max_bytes": 3 * one,
    }
    assert cache.get("a") is not None  # "a" is now the most recently used: "b" goes first
    cache.put("d", np.zeros(100, np.float32))
    assert cache.get("b") is None and all(cache.get(k) is not None for k in "acd")
    cache.put("e", 0.5)  # small: room is made by evicting the least recently used ("a"), one entry is enough
    assert cache.get("a") is None and cache.get("e") == 0.5
    stats = cache.stats()
    assert stats["evictions"] == 2 and stats["entries"] == 3 and stats["bytes"] <= stats["max_bytes"]
    assert (stats["hits"], stats["misses"]) == (5, 2)
    cache.put("c", np.ones(100, np.float32))  # replacing an entry counts its size once
    assert cache.stats()["entries"] == 3 and float(cache.get("c")[0]) == 1.0
    cache.clear()
    assert len(cache) == 0 and cache.stats()["bytes"] == 0 and cache.get("c", "gone") == "gone"


def test_an_item_over_the_bound_is_not_stored_and_zero_is_off():
    cache = BytesLRU(1000)
    cache.put("small", 1.0)
    assert not cache.put("big", np.zeros(1000, np.float32))  # 4000 bytes of data: never stored, nothing evicted
    assert cache.get("big") is None and cache.get("small") == 1.0 and cache.stats()["evictions"] == 0
    off = BytesLRU(0)
    assert not off.enabled and not off.put("k", 1.0) and off.get("k") is None
    assert off.stats() == {"hits": 0, "misses": 0, "evictions": 0, "entries": 0, "bytes": 0, "max_bytes": 0}
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="max_bytes"):
            BytesLRU(bad)
    caches = RetrievalCaches.sized(0, 2048)
    assert not caches.query.enabled and caches.rerank.enabled and set(caches.stats()) == {"query", "rerank"}


# ----------------------------------------------------------------------------------------------------------------
# what a query is


def test_content_key_names_every_input_form_by_content(tmp_path):
    image = tmp_path / "cat.jpg"
    shutil.copy(MEDIA / "chelsea.jpg", image)
    data = image.read_bytes()
    uri = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    pil = Image.open(image)
    frames = [str(MEDIA / f"frame_{i}.png") for i in range(4)]
    forms = [
        "a cat",
        pil,
        {"text": "a cat", "image": str(image)},
        {"image": data},
        {"image": uri},
        {"image": [pil, data], "text": ["a", "cat"], "instruction": "find"},
        {"video": frames, "fps": 2.0, "max_frames": 4},
        {"video": str(MEDIA / "moving_square.mp4"), "video_start": 0.0, "video_end": 1.0},
    ]
    keys = [content_key(form) for form in forms]
    assert all(isinstance(k, str) and len(k) == 64 for k in keys) and len(set(keys)) == len(keys)
    assert keys == [content_key(form) for form in forms]  # stable
    assert content_key({"image": str(image), "text": "a cat"}) == keys[2]  # field order does not matter
    assert content_key({"text": "a cat", "image": f"file://{image}"}) == keys[2]  # the same file
    assert content_key(Image.open(image)) == keys[1]  # the same pixels
    assert content_key(pil.convert("L")) != keys[1] and content_key("a cat ") != keys[0]
    assert content_key({"text": "a cat"}) != keys[0]  # a dict is another input than a str (not merged: a miss only)
    # a file is named by its bytes: changed in place, another key
    image.write_bytes((MEDIA / "coffee.jpg").read_bytes())
    assert content_key({"text": "a cat", "image": str(image)}) != keys[2]
    # what cannot be named is not cached, and nothing raises
    for odd in (
        {"image": "https://example.com/cat.jpg"},
        {"image": str(tmp_path / "missing.jpg")},
        {"image": object()},
        object(),
        ["x", {1, 2}],
    ):
        assert content_key(odd) is None
    assert isinstance(content_key({"text": "\ud800"}), str)  # not valid text; parse_input refuses it, not this


# ----------------------------------------------------------------------------------------------------------------
# the retriever


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache-corpus")
    for name in ("chelsea.jpg", "coffee.jpg"):
        shutil.copy(MEDIA / name, folder / name)
    (folder / "notes.md").write_text(NOTES)
    make_text_pdf(folder / "report.pdf", ["Quarterly revenue by region.", "Outlook for next year: growth."])
    return folder


@pytest.fixture(scope="module")
def store(embedder, corpus, tmp_path_factory):
    s = EdgeStore(tmp_path_factory.mktemp("cache-db"), "docs")
    Indexer(embedder, s).index_paths([corpus], show_progress_bar=False)
    yield s
    s.close()


def pair(embedder, reranker, store, caches=None, **options):
    """(cached retriever, its counted embedder, its counted reranker, the same retriever without caches)."""
    emb, rer = Counting(embedder), Counting(reranker)
    options.setdefault("candidates", 20)
    # the dense search alone: hybrid fusion's equal scores come back from the store in any order, caches or not
    options.setdefault("search_options", DENSE)
    cached = TwoStageRetriever(emb, store, rer, caches=caches or RetrievalCaches(), **options)
    return cached, emb, rer, TwoStageRetriever(embedder, store, reranker, **options)


def summary(hits):
    return [(h.id, h.score, h.vector_score, h.rerank_score, h.rank, h.stage_one_rank, h.snippet) for h in hits]


QUERIES = [
    ("text", "the revenue chart", {}),
    ("image", {"image": str(MEDIA / "chelsea.jpg")}, {}),
    ("stage one", "a cat on a sofa", {"rerank": False}),
    ("filtered", "a photo", {"filters": {"modality": "image"}}),
    ("mixed", {"text": "a cat", "image": str(MEDIA / "chelsea.jpg")}, {"top_k": 3}),
]


@pytest.mark.parametrize("name, query, options", QUERIES, ids=[q[0] for q in QUERIES])
def test_cached_searches_are_the_fresh_ones_without_model_work(embedder, reranker, store, name, query, options):
    cached, emb, rer, fresh = pair(embedder, reranker, store)
    options = {"top_k": 5, **options}
    expected = summary(fresh.retrieve(query, **options))
    assert summary(cached.retrieve(query, **options)) == expected
    reranked = options.get("rerank", True)
    assert emb.calls["embed"] == 1 and rer.calls["score"] == int(reranked)
    again = cached.retrieve(query, **options)
    assert summary(again) == expected  # bit for bit: the same floats, order and ranks
    assert emb.calls["embed"] == 1 and rer.calls["score"] == int(reranked)  # no model work
    stats = cached.caches.stats()
    assert stats["query"]["hits"] == 1 and stats["query"]["misses"] == 1
    assert stats["rerank"]["hits"] == stats["rerank"]["entries"] == sum(rer.scored)


def test_a_rerank_budget_and_min_score_behave_as_without_caches(embedder, reranker, store):
    cached, emb, rer, fresh = pair(embedder, reranker, store, rerank_budget=1)
    query = "quarterly revenue"
    top = summary(fresh.retrieve(query, top_k=3))
    expected = fresh.rerank_hits(query, fresh.retrieve(query, top_k=20, rerank=False), at_least=3)
    for _ in range(2):  # scored, then from the cache
        assert summary(cached.retrieve(query, top_k=3)) == top
        candidates = fresh.retrieve(query, top_k=20, rerank=False)
        assert summary(cached.rerank_hits(query, candidates, at_least=3)) == summary(expected)
    n = sum(h.rerank_score is not None for h in expected)  # the budget's: at least top_k, not all
    assert 3 <= n < store.count() and [h.rerank_score is None for h in expected] == [False] * n + [True] * (
        store.count() - n
    )
    assert rer.scored == [n]  # the best n, once
    cut = sorted(h.rerank_score for h in expected[:3])[-2]
    kept = cached.retrieve(query, top_k=3, min_score=cut)
    assert len(kept) == 2 and summary(kept) == summary(fresh.retrieve(query, top_k=3, min_score=cut))
    assert emb.calls["embed"] == 1 and rer.scored == [n]


def test_another_query_instruction_or_dimension_misses(embedder, reranker, store, tmp_path):
    caches = RetrievalCaches()
    cached, emb, rer, _ = pair(embedder, reranker, store, caches)
    cached.retrieve("a cat", rerank=False)
    cached.retrieve("a dog", rerank=False)
    assert emb.calls["embed"] == 2
    other = TwoStageRetriever(emb, store, caches=caches, query_instruction="Find the picture.")
    other.retrieve("a cat")
    assert emb.calls["embed"] == 3
    small = EdgeStore(tmp_path / "small", "docs")
    Indexer(embedder, small, dim=16).index_items(["a cat", "a dog"])
    try:
        narrow = TwoStageRetriever(emb, small, caches=caches)
        vector = narrow.embed_query("a cat")
        assert vector.shape == (16,) and emb.calls["embed"] == 4
        assert narrow.retrieve("a cat", top_k=1)[0].text == "a cat" and emb.calls["embed"] == 4  # now cached
    finally:
        small.close()
    assert caches.stats()["query"]["entries"] == 4


def test_a_returned_vector_is_the_callers_own(embedder, store):
    emb = Counting(embedder)
    retriever = TwoStageRetriever(emb, store, caches=RetrievalCaches())
    first = retriever.embed_query("a cat")
    expected = TwoStageRetriever(embedder, store).embed_query("a cat")
    assert np.array_equal(first, expected) and first.flags.writeable
    first[:] = 0.0
    second = retriever.embed_query("a cat")
    assert np.array_equal(second, expected) and emb.calls["embed"] == 1
    second *= 2
    assert np.array_equal(retriever.embed_query("a cat"), expected)


@pytest.mark.slow
def test_only_the_candidates_not_scored_yet_go_to_the_reranker(embedder, reranker, store):
    cached, emb, rer, fresh = pair(embedder, reranker, store)
    images = cached.retrieve("a photo", top_k=20, filters={"modality": "image"})
    assert rer.scored == [len(images)] == [2]
    everything = cached.retrieve("a photo", top_k=20)
    assert len(everything) == store.count() and rer.scored == [2, store.count() - 2]  # the images' scores kept
    by_id = {h.id: h.rerank_score for h in images}
    assert all(h.rerank_score == by_id[h.id] for h in everything if h.id in by_id)  # the very same numbers
    direct = fresh.retrieve("a photo", top_k=20)
    assert [h.id for h in everything] == [h.id for h in direct]
    assert np.allclose([h.rerank_score for h in everything], [h.rerank_score for h in direct], atol=1e-6)
    assert cached.retrieve("a photo", top_k=20, rerank=True) and rer.scored == [2, store.count() - 2]


def test_a_lazy_model_that_gave_its_model_is_not_fetched_for_a_cached_result(embedder, reranker, store):
    fetched = Counter()

    def fetch(role, model):
        def get():
            fetched[role] += 1
            return model

        return LazyModel(get)

    lazy_embedder, lazy_reranker = fetch("embedder", embedder), fetch("reranker", reranker)
    caches = RetrievalCaches()
    retriever = TwoStageRetriever(
        lazy_embedder, store, lazy_reranker, candidates=20, caches=caches, search_options=DENSE
    )
    expected = summary(retriever.retrieve("the revenue chart"))
    assert fetched == Counter(embedder=1, reranker=1) and lazy_embedder.identity == identity_of(embedder)
    assert summary(retriever.retrieve("the revenue chart")) == expected
    assert fetched == Counter(embedder=1, reranker=1)  # neither model was needed
    # the collection's spec is still checked against the model the lazy function gives
    lazy_embedder.identity = replace(lazy_embedder.identity, model_name_or_path="other", model_id="hub:other@main")
    with pytest.raises(CollectionMismatchError):
        retriever.retrieve("the revenue chart")
    # a pipeline passes its caches and lazy models to every retriever it makes
    pipeline = RAGPipeline(
        store, embedding=None, embedder=embedder, reranker=reranker, generation=None, candidates=20, rerank_budget=None,
        search_options=DENSE,
    )  # fmt: skip
    assert pipeline.caches is None and pipeline.retriever().caches is None
    pipeline.caches = caches
    assert summary(pipeline.search("the revenue chart", top_k=5)) == expected[:5]


@pytest.mark.slow
def test_a_source_changed_since_it_was_scored_is_scored_again(embedder, reranker, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name in ("chelsea.jpg", "coffee.jpg"):
        shutil.copy(MEDIA / name, folder / name)
    store = EdgeStore(tmp_path / "db", "docs")
    try:
        Indexer(embedder, store).index_paths([folder], show_progress_bar=False)
        cached, emb, rer, fresh = pair(embedder, reranker, store)
        assert summary(cached.retrieve("a cat")) == summary(fresh.retrieve("a cat"))
        first = cached.retrieve("a cat")  # from the cache
        (folder / "coffee.jpg").write_bytes(b"not an image any more")  # unreadable now: as without a cache,
        expected = fresh.retrieve("a cat")  # it is left unreranked, after the reranked one
        again = cached.retrieve("a cat")
        assert [(h.id, h.rerank_score is None) for h in again] == [(h.id, h.rerank_score is None) for h in expected]
        assert [h.rerank_score is None for h in again] == [False, True]
        # the cat's score is the cached one (scored beside the coffee; alone, the reranker's batch differs a little)
        assert again[0].rerank_score == {h.id: h.rerank_score for h in first}[again[0].id]
        assert again[0].rerank_score == pytest.approx(expected[0].rerank_score, abs=1e-6)
        assert emb.calls["embed"] == 1 and rer.scored == [2]
    finally:
        store.close()


# ----------------------------------------------------------------------------------------------------------------
# the server


@pytest.mark.slow
@pytest.mark.parametrize("query_mb", [64.0, 0.0])
def test_a_repeated_search_over_http_runs_no_model(embedder, reranker, store, query_mb):
    emb, rer = Counting(embedder), Counting(reranker)
    pipeline = RAGPipeline(store, embedding=None, embedder=emb, reranker=rer, generation=None, candidates=20)
    config = ServerConfig(query_cache_bytes=int(query_mb * 1024 * 1024))
    app = create_app(pipeline=pipeline, config=config)
    state = app.state.serving
    assert pipeline.caches is state.caches and state.caches.query.enabled == bool(query_mb)
    with LiveServer(app) as url:
        body = {"query": "the revenue chart", "top_k": 3, "search_options": DENSE}
        first = httpx.post(f"{url}/v1/search", json=body, timeout=60)
        assert first.status_code == 200, first.text
        second = httpx.post(f"{url}/v1/search", json=body, timeout=60)
        assert second.json() == first.json()
    assert rer.calls["score"] == 1  # the rerank cache is on (16 MB by default)
    assert emb.calls["embed"] == (1 if query_mb else 2)
    stats = state.caches.stats()
    assert stats["rerank"]["hits"] == rer.scored[0] and stats["query"]["hits"] == (1 if query_mb else 0)
